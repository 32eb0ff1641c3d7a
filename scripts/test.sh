#!/usr/bin/env bash
# The one test command: set up .venv (cached), lint, then run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/core -k invert).
set -euo pipefail
cd "$(dirname "$0")/.."
# The ComfyUI host for tests/host and tests/harness: $COMFYUI_ROOT, ~/ComfyUI, or ComfyUI 0.3.64
# extracted once into .cache/ComfyUI (scripts/setup_host.sh says from where).
if root=$(bash scripts/setup_host.sh); then
  export COMFYUI_ROOT="$root"
elif [ "${CI:-}" = "true" ]; then
  echo "[test] CI: no ComfyUI host could be found or set up (see the line above); host tests cannot run" >&2
  exit 1
else
  echo "[test] no ComfyUI host: host tests will be skipped (see the line above)" >&2
fi
bash scripts/setup_env.sh
bash scripts/setup_browser.sh   # Debian chromium + playwright for the frontend test; never fails the setup
PY=.venv/bin/python
echo "[test] ruff check ." >&2
"$PY" -m ruff check .
echo "[test] pytest" >&2
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
