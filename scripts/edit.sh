#!/usr/bin/env bash
# The main job: set up .venv (cached) and run a headless edit through ComfyUI.
# Arguments go to `python -m psg_cli` (e.g. edit photo.jpg --source "..." --target "...").
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
cd "$repo"
exec .venv/bin/python -m psg_cli "$@"
