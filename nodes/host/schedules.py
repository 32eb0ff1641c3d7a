"""ComfyUI's own sigma schedules, for sampling and (flipped) for inversion."""

from __future__ import annotations

import math
from typing import Any

import comfy.samplers
import torch

SCHEDULERS: list[str] = list(comfy.samplers.SCHEDULER_NAMES)
DEFAULT_SCHEDULER = "simple"


def sampling_sigmas(model: Any, scheduler: str, steps: int, node: str) -> torch.Tensor:
    """ComfyUI's own schedule (descending, ending at 0), float32 on the CPU."""
    if scheduler not in comfy.samplers.SCHEDULER_HANDLERS:
        raise ValueError(f"{node}: unknown scheduler {scheduler!r}; pick one of {', '.join(SCHEDULERS)}.")
    if steps < 1:
        raise ValueError(f"{node}: steps must be at least 1 (got {steps}).")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    sigmas = sigmas.detach().to("cpu", torch.float32).clone()
    if float(sigmas[-1]) != 0.0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


def inversion_sigmas(model: Any, scheduler: str, steps: int, node: str) -> torch.Tensor:
    """The sampling schedule flipped: ascending with ``sigmas[0] == 0`` exactly (not FlipSigmas' 1e-4)."""
    sigmas = sampling_sigmas(model, scheduler, steps, node).flip(0).clone()
    sigmas[0] = 0.0
    return sigmas


def closest_index(sigmas: torch.Tensor, sigma: float) -> int | None:
    """Index of ``sigma`` in ``sigmas`` (relative tolerance 1e-3), None when absent."""
    diffs = (sigmas - sigma).abs()
    i = int(torch.argmin(diffs))
    if math.isclose(float(sigmas[i]), sigma, rel_tol=1e-3, abs_tol=1e-6):
        return i
    return None
