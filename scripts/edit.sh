#!/usr/bin/env bash
# The main job from any folder: `bash /path/to/pack/scripts/edit.sh edit photo.jpg --source ... --target ...`.
# Relative paths are the caller's (this script never changes directory). The client needs only
# Python 3.10+ with Pillow and numpy: $PSG_PYTHON if set, else python3 / python when it has them,
# else a small venv made once in <pack>/.cache/client-venv (pip install pillow numpy, nothing else).
set -euo pipefail
pack="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$pack/.cache/client-venv"

usable() {  # a Python >= 3.10 that imports PIL and numpy
  "$1" -c 'import sys; assert sys.version_info >= (3, 10); import PIL, numpy' >/dev/null 2>&1
}

py=""
if [ -n "${PSG_PYTHON:-}" ]; then
  usable "$PSG_PYTHON" || { echo "psg: error: PSG_PYTHON=$PSG_PYTHON is not a Python 3.10+ with Pillow and numpy" >&2; exit 2; }
  py="$PSG_PYTHON"
elif [ -x "$venv/bin/python" ] && usable "$venv/bin/python"; then
  py="$venv/bin/python"
else
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then py="$candidate"; break; fi
  done
fi
if [ -z "$py" ]; then
  base=""
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then
      base="$candidate"; break
    fi
  done
  [ -n "$base" ] || { echo "psg: error: the client needs Python 3.10 or newer (python3 not found)" >&2; exit 2; }
  echo "[psg] first run: installing the client's two packages (pillow, numpy) into $venv" >&2
  "$base" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check pillow numpy >&2
  py="$venv/bin/python"
fi
exec "$py" "$pack/psg_cli" "$@"
