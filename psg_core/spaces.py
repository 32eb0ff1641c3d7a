"""Noise spaces: how ComfyUI mixes a clean latent with noise at a given sigma.

Every model family ComfyUI loads is served by one of two forms, ``x = a(sigma) * x0 + b(sigma) * eps``:

- ``VE``   a = 1,         b = sigma  (ComfyUI EPS and V_PREDICTION: SD1.x, SD2.x, SDXL;
  alpha_bar = 1 / (1 + sigma^2), the latent is the DDPM latent divided by sqrt(alpha_bar));
- ``FLOW`` a = 1 - sigma, b = sigma  (ComfyUI CONST: SD3, Flux).

All samplers in ``psg_core`` are written once in terms of x0-hat and eps-hat through these helpers.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor


class NoiseSpace(str, Enum):
    VE = "ve"
    FLOW = "flow"

    def coefficients(self, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        return coefficients(self, sigma)


def _as_tensor(sigma: Tensor | float) -> Tensor:
    return sigma if torch.is_tensor(sigma) else torch.tensor(float(sigma), dtype=torch.float64)


def coefficients(space: NoiseSpace, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
    """(a, b) of ``x = a * x0 + b * eps`` at ``sigma`` (same shape as ``sigma``)."""
    s = _as_tensor(sigma)
    if space is NoiseSpace.VE:
        return torch.ones_like(s), s
    if space is NoiseSpace.FLOW:
        return 1.0 - s, s
    raise ValueError(f"unknown noise space {space!r}; use NoiseSpace.VE or NoiseSpace.FLOW")


def batch_view(v: Tensor, like: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample [B] coefficient over a [B, ...] latent."""
    v = v.to(device=like.device, dtype=like.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def eps_from_x0(x: Tensor, sigma: Tensor | float, x0: Tensor, space: NoiseSpace) -> Tensor:
    """The noise implied by a latent and its clean estimate: eps = (x - a x0) / b (needs sigma > 0)."""
    a, b = coefficients(space, sigma)
    return (x - batch_view(a, x) * x0) / batch_view(b, x)


def noisy(x0: Tensor, eps: Tensor, sigma: Tensor | float, space: NoiseSpace) -> Tensor:
    """The latent at ``sigma``: a x0 + b eps."""
    a, b = coefficients(space, sigma)
    return batch_view(a, x0) * x0 + batch_view(b, x0) * eps


def marginal_scale(space: NoiseSpace, sigma: Tensor | float) -> Tensor:
    """sqrt(a^2 + b^2): the RMS of ``x`` at ``sigma`` for unit-variance data. x / marginal_scale is
    the variance-preserving (DDPM-style) latent; for VE it is x sqrt(alpha_bar)."""
    a, b = coefficients(space, sigma)
    return torch.sqrt(a * a + b * b)
