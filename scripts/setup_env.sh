#!/usr/bin/env bash
# Create or reuse .venv/ with torch, the pack's runtime + dev dependencies and, when a ComfyUI host
# is found ($COMFYUI_ROOT or ~/ComfyUI), the host's own requirements. Idempotent: a stamp of the
# inputs' hash skips every install on the second run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="$VENV/bin/python"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
COMFY="${COMFYUI_ROOT:-$HOME/ComfyUI}"

[ -x "$PY" ] || python3 -m venv "$VENV"

host_reqs=""
[ -f "$COMFY/requirements.txt" ] && [ -f "$COMFY/main.py" ] && host_reqs="$COMFY/requirements.txt"

stamp_file="$VENV/.psg-setup-stamp"
stamp=$(cat pyproject.toml requirements.txt scripts/setup_env.sh ${host_reqs:+"$host_reqs"} | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi

echo "[setup] installing into $VENV (first run or inputs changed)" >&2
pins="$VENV/psg-constraints.txt"
printf '%s\n' "${TORCH_PINS[@]}" > "$pins"
# pip's notes about this machine's unreachable local indexes are noise: drop them, keep real errors.
pip_install() {
  "$PY" -m pip install -q --disable-pip-version-check -c "$pins" "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

pip_install "${TORCH_PINS[@]}"
# Runtime + dev dependencies, read from pyproject.toml (the pack itself is not pip-installed:
# ComfyUI loads it from custom_nodes/, tests import it from the repo root).
mapfile -t deps < <("$PY" - <<'PY'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))
PY
)
pip_install "${deps[@]}"

if [ -n "$host_reqs" ]; then
  echo "[setup] ComfyUI host found at $COMFY: installing its requirements (torch kept at the pin)" >&2
  grep -vE '^\s*(#|$)|^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$host_reqs" > "$VENV/psg-host-reqs.txt"
  pip_install -r "$VENV/psg-host-reqs.txt"
fi
echo "$stamp" > "$stamp_file"
