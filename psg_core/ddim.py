"""Deterministic DDIM (eta = 0) in ComfyUI's sigma space: the step, inversion and sampling.

The one DDIM step (``ddim_step``), for ``x = a(s) x0 + b(s) eps`` (see ``spaces``)::

    eps_hat = (x - a(s) x0_hat) / b(s)
    x_next  = a(s') x0_hat + b(s') eps_hat

Sampling walks sigmas downwards with x0_hat = D(x_s, s). Inversion walks upwards and, as in
null-text inversion (Mokady et al.), evaluates the model at the *target* level on the current
latent, so the first step from the clean latent (s = 0) is well defined. The latent is presented
at s' with the variance-preserving scaling that the reference (prompt-to-prompt's ``next_step``,
which feeds the current DDPM latent at the next timestep) implies, r(s) = sqrt(a(s)^2 + b(s)^2)::

    x_in    = x r(s') / r(s)             (VE: x sqrt((1 + s'^2) / (1 + s^2)))
    eps_hat = (x_in - a(s') D(x_in, s')) / b(s');   x0_s = (x - b(s) eps_hat) / a(s)
    x_next  = a(s') x0_s + b(s') eps_hat

(``InversionInput.LATENT`` feeds x itself, D(x, s'): measurably worse in both spaces, kept for
comparison). The approximation D(x_in, s') for D(x_s', s') is what makes inversion first order
and what null-text optimization corrects.

``fixed_point_iters > 0`` refines each step (s > 0) by solving the sampler's own step backwards,
x_next = (b(s') / b(s)) (x - a(s) D(x_next, s')) + a(s') D(x_next, s'), by fixed-point iteration
(one extra denoiser call per iteration): sampling then retraces the inversion far more closely.

Direct-inversion offsets are added to the latent after a sampling step (``ddim_sample``);
``offset_as_x0`` is the same move expressed as a shift of x0_hat, for samplers that only see x0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import torch
from torch import Tensor

from .guidance import TextGuidance, cfg
from .spaces import NoiseSpace, batch_view, coefficients, eps_from_x0, marginal_scale, noisy

__all__ = ["InversionInput", "Trajectory", "cfg", "ddim_invert", "ddim_sample", "ddim_step",
           "inversion_input", "offset_as_x0", "sigma_batch"]

Denoiser = Callable[[Tensor, Tensor, Sequence[Any]], list[Tensor]]
Callback = Callable[[int, int, Tensor, Tensor], None]


class PerceptualHook(Protocol):
    def __call__(self, *, step: int, total: int, x: Tensor, sigma: Tensor, sigma_next: Tensor,
                 x0_hat: Tensor, eps_hat: Tensor, predict: Callable[[Tensor], Tensor],
                 space: NoiseSpace) -> tuple[Tensor, Tensor]: ...


class InversionInput(str, Enum):
    """What an inversion step shows the model at the next level (module docstring)."""

    RESCALED = "rescaled"  # x r(s') / r(s): the reference's DDPM latent at the next timestep (default)
    LATENT = "latent"  # x itself: D(x_s, s')


@dataclass
class Trajectory:
    """An inversion path: ``latents[i]`` lies at ``sigmas[i]`` (ascending, ``sigmas[0] == 0``)."""

    sigmas: Tensor
    latents: Tensor  # [N+1, B, C, H, W]
    space: NoiseSpace = NoiseSpace.VE

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def noise(self) -> Tensor:
        return self.latents[-1]


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """A scalar sigma as the per-sample [B] tensor the denoiser contract takes."""
    return sigma.to(device=x.device, dtype=x.dtype).reshape(()).expand(x.shape[0])


def ddim_step(x: Tensor, sigma: Tensor, sigma_next: Tensor, x0_hat: Tensor, space: NoiseSpace) -> Tensor:
    """THE DDIM step (eta = 0) from ``sigma`` to ``sigma_next`` given x0_hat (sigma > 0)."""
    return noisy(x0_hat, eps_from_x0(x, sigma, x0_hat, space), sigma_next, space)


def offset_as_x0(offset: Tensor, sigma: Tensor | float, sigma_next: Tensor | float,
                 space: NoiseSpace) -> Tensor:
    """The x0_hat shift whose DDIM step from ``sigma`` moves x_next by ``offset``.

    x_next = a' x0 + b' (x - a x0) / b, so adding d to x0 moves x_next by d (a' - b' a / b)."""
    a, b = coefficients(space, sigma)
    a_n, b_n = coefficients(space, sigma_next)
    gain = a_n - b_n * a / b
    return offset / batch_view(gain, offset)


def inversion_input(x: Tensor, sigma: Tensor, sigma_next: Tensor, space: NoiseSpace,
                    convention: InversionInput = InversionInput.RESCALED) -> Tensor:
    """The latent an inversion step from ``sigma`` shows the model at ``sigma_next``."""
    if convention is InversionInput.LATENT:
        return x
    return x * batch_view(marginal_scale(space, sigma_next) / marginal_scale(space, sigma), x)


def _inversion_step(x: Tensor, x_in: Tensor, sigma: Tensor, sigma_next: Tensor, x0_hat: Tensor,
                    space: NoiseSpace) -> Tensor:
    """One inversion step with x0_hat = D(x_in, sigma_next) (module docstring)."""
    eps_hat = eps_from_x0(x_in, sigma_next, x0_hat, space)
    a, b = coefficients(space, sigma)
    x0_here = (x - batch_view(b, x) * eps_hat) / batch_view(a, x)
    return noisy(x0_here, eps_hat, sigma_next, space)


def _exact_inversion_update(x: Tensor, sigma: Tensor, sigma_next: Tensor, x0_hat: Tensor,
                            space: NoiseSpace) -> Tensor:
    """The x_next whose DDIM step to ``sigma`` lands on ``x``, given x0_hat = D(x_next, sigma_next)."""
    a, b = coefficients(space, sigma)
    a_n, b_n = coefficients(space, sigma_next)
    return batch_view(b_n / b, x) * (x - batch_view(a, x) * x0_hat) + batch_view(a_n, x) * x0_hat


def _check_sigmas(sigmas: Tensor, ascending: bool, what: str) -> None:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"{what}: sigmas must be a 1-D schedule with at least 2 entries, got shape "
                         f"{tuple(sigmas.shape)}")
    d = sigmas[1:] - sigmas[:-1]
    if ascending and not (sigmas[0] == 0 and bool((d > 0).all())):
        raise ValueError(f"{what}: sigmas must start at 0 and strictly increase (got "
                         f"{sigmas.tolist()[:4]}...)")
    if not ascending and not (sigmas[-1] == 0 and bool((d < 0).all())):
        raise ValueError(f"{what}: sigmas must strictly decrease and end at 0 (got "
                         f"...{sigmas.tolist()[-4:]})")


@torch.no_grad()
def ddim_invert(
    denoise: Denoiser,
    x0: Tensor,
    sigmas: Tensor,
    cond: Any,
    *,
    space: NoiseSpace = NoiseSpace.VE,
    null: Any = None,
    guidance_scale: float = 1.0,
    fixed_point_iters: int = 0,
    convention: InversionInput = InversionInput.RESCALED,
    callback: Callback | None = None,
) -> Trajectory:
    """DDIM-invert the clean latent ``x0`` along ascending ``sigmas`` under ``cond``.

    With ``null`` and ``guidance_scale != 1`` the inversion itself runs under CFG (both conds in
    one call); the default, unguided inversion is what null-text optimization expects.
    ``fixed_point_iters`` refines every step above sigma 0 (module docstring); ``convention`` says
    what the model sees at the next level (``InversionInput``).
    """
    _check_sigmas(sigmas, ascending=True, what="ddim_invert")
    if fixed_point_iters < 0:
        raise ValueError(f"ddim_invert: fixed_point_iters must be >= 0, got {fixed_point_iters}")
    use_cfg = null is not None and guidance_scale != 1.0
    conds = [null, cond] if use_cfg else [cond]

    def predict(x_in: Tensor, sigma: Tensor) -> Tensor:
        outs = denoise(x_in, sigma_batch(sigma, x_in), conds)
        return cfg(outs, guidance_scale) if use_cfg else outs[0]

    x, latents, n = x0, [x0], len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x_in = inversion_input(x, s, s_next, space, InversionInput(convention))
        x0_hat = predict(x_in, s_next)
        x_next = _inversion_step(x, x_in, s, s_next, x0_hat, space)
        for _ in range(fixed_point_iters if s > 0 else 0):
            x0_hat = predict(x_next, s_next)
            x_next = _exact_inversion_update(x, s, s_next, x0_hat, space)
        x = x_next
        latents.append(x)
        if callback is not None:
            callback(i, n, x, x0_hat)
    return Trajectory(sigmas=sigmas, latents=torch.stack(latents), space=space)


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    x_T: Tensor,
    sigmas: Tensor,
    guidance: TextGuidance | None,
    *,
    space: NoiseSpace = NoiseSpace.VE,
    nulls: Sequence[Tensor] | None = None,
    offsets: Sequence[Tensor] | None = None,
    perceptual: PerceptualHook | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Deterministic DDIM from ``x_T`` along descending ``sigmas`` (ending at 0).

    ``guidance=None``: the denoiser already returns the final x0 for ``conds=[None]`` (a ComfyUI
    GUIDER did the mixing). ``nulls[i]`` replaces the null cond at reverse step i (null-text
    optimization), ``offsets[i]`` is added to the latent after step i (direct inversion), and
    ``perceptual`` may correct (x0_hat, eps_hat) before the step is taken.
    """
    _check_sigmas(sigmas, ascending=False, what="ddim_sample")
    n = len(sigmas) - 1
    for name, seq in (("nulls", nulls), ("offsets", offsets)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"ddim_sample: {len(seq)} {name} for {n} steps; they must come from an "
                             f"inversion with the same number of steps")
    x = x_T
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        sig = sigma_batch(s, x)
        if guidance is None:
            conds: list[Any] = [None]

            def mix(outs: Sequence[Tensor]) -> Tensor:
                return outs[0]
        else:
            conds = guidance.conds(None if nulls is None else nulls[i])
            mix = guidance.combine

        def predict(x_in: Tensor, _sig: Tensor = sig, _conds: list[Any] = conds,
                    _mix: Callable[[Sequence[Tensor]], Tensor] = mix) -> Tensor:
            return _mix(denoise(x_in, _sig, _conds))

        x0_hat = predict(x)
        eps_hat = eps_from_x0(x, s, x0_hat, space)
        if perceptual is not None:
            x0_hat, eps_hat = perceptual(step=i, total=n, x=x, sigma=s, sigma_next=s_next, x0_hat=x0_hat,
                                         eps_hat=eps_hat, predict=predict, space=space)
        x = noisy(x0_hat, eps_hat, s_next, space)
        if offsets is not None:
            x = x + offsets[i]
        if callback is not None:
            callback(i, n, x, x0_hat)
    return x
