#!/usr/bin/env bash
# PSG GPU check: a random-weight full-size SD1.5 built from ComfyUI's own
# classes on CUDA; a 512 px, 50-step edit timed per phase (encode, inversion, null-text
# optimization, LPIPS-guided sampling, decode) with peak GPU memory, then the sampling variants
# (no guidance, TAESD, half resolution, checkpointed decode) and the fast text modes.
#
# Usage (from anywhere):  benchmarks/gpu_check.sh [extra gpu_edit.py options, e.g. --dtype fp32]
# Needs: an NVIDIA GPU, ComfyUI's source at $COMFYUI_ROOT (default ~/ComfyUI), and a Python with
# torch (CUDA), lpips and ComfyUI's requirements: $PYTHON, else the repo's .venv, else python3.
# Prints one markdown table; paste it into benchmarks/RESULTS.md with the machine line.
# Budget: 540 s hard limit (expected 2-4 minutes on an A100/H100-class GPU, most of it building
# 860M random weights on the CPU).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi

echo "# PSG GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "host: $(hostname), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu: /'
else
  echo "gpu: nvidia-smi not found"
fi
"$py" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: torch sees no CUDA device; stopping before building anything")
PY
export PYTHONUNBUFFERED=1
timeout --signal=INT --kill-after=20 540 "$py" -m benchmarks.gpu_edit "$@"
