#!/usr/bin/env bash
# The one test command: set up .venv (cached), lint, then run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/core -k invert).
set -euo pipefail
cd "$(dirname "$0")/.."
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
