"""Progress and interrupts: the core's step callback -> ComfyUI's progress bar, previews and
interrupt checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.model_management
import latent_preview
import torch


class StepReporter:
    """The core's ``callback(step, total, x, x0_hat)`` -> interrupt check, progress bar, x0 preview."""

    def __init__(self, model: Any, total: int, label: str = "") -> None:
        self._preview = latent_preview.prepare_callback(model, total)
        self.label = label
        self.calls = 0

    def __call__(self, step: int, total: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.calls += 1
        self._preview(min(int(step), int(total) - 1), x0_hat.detach(), x.detach(), int(total))


def k_callback_reporter(callback: Callable | None, total: int) -> Callable:
    """The core's callback -> the k-diffusion style callback SamplerCustomAdvanced hands a SAMPLER."""

    def report(step: int, _total: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback({"i": int(step), "denoised": x0_hat.detach(), "x": x.detach(), "sigma": None,
                      "sigma_hat": None})

    return report
