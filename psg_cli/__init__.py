"""Headless edit CLI for ComfyUI-PSG: drives a ComfyUI server (or its executor in-process).

Run ``python -m psg_cli edit PHOTO --source "..." --target "..."``. Only the standard library
plus what every ComfyUI install has (Pillow, numpy) is used, so the CLI also works from a bare
Python next to a remote ComfyUI.
"""

from __future__ import annotations

from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parent.parent
"""The node pack's root folder (holds ``example_workflows/``)."""
