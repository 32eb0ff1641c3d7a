"""PSG core: the method in pure torch (never imports ``comfy``).

Public API (equations in docs/method.md). Submodules are imported lazily so that importing one
piece (e.g. the noise spaces) does not pull in lpips.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NoiseSpace": "spaces",
    "Trajectory": "ddim",
    "ddim_step": "ddim",
    "ddim_invert": "ddim",
    "ddim_sample": "ddim",
    "offset_as_x0": "ddim",
    "InversionInput": "ddim",
    "TextGuidance": "guidance",
    "cfg": "guidance",
    "triple_combine": "guidance",
    "optimize_null_text": "null_text",
    "NullTextSchedule": "null_text",
    "negative_prompt_nulls": "null_text",
    "direct_inversion_offsets": "null_text",
    "PerceptualGuidance": "perceptual",
    "load_lpips": "lpips_weights",
    "ImageLoss": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'psg_core' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
