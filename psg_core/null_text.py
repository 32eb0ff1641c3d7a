"""Text-guidance optimization: make CFG sampling retrace a DDIM inversion.

Plain inversion + CFG sampling drifts: the inversion followed D(x, source), the sampler follows
D_null + g (D_source - D_null). Three remedies, each giving per-step inputs for ``ddim_sample``:

- ``optimize_null_text`` (Mokady et al. 2023): one optimized null embedding per reverse step
  (and per image). Most faithful and keeps CFG's editing strength; costs up to ``inner_steps + 2``
  denoiser passes per step. Preferable when quality matters and the edit relies on the null
  branch. Two schedules (``NullTextSchedule``): the default secant solver, and the reference
  schedule of prompt-to-prompt's null-text inversion (Adam), kept for comparison.
- ``negative_prompt_nulls`` (Miyake et al. 2023): null := source embedding, so CFG on the source
  collapses to the unguided source prediction the inversion used. Free; reconstruction is as good
  as unguided inversion; edits are somewhat weaker. Preferable for quick previews and batches.
- ``direct_inversion_offsets`` (Ju et al. 2023): record per step the gap between the inverted
  latent and where the CFG source step lands, and add it back after each sampling step. One extra
  pass per step; reconstruction is exact for the recorded guidance. Preferable when speed matters
  and the background must be reproduced exactly.

All three index their output by reverse step: index 0 is the first step from the noisiest latent.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from torch import Tensor

from .ddim import Callback, Denoiser, Trajectory, cfg, ddim_step, sigma_batch
from .spaces import coefficients


class NullTextSchedule(str, Enum):
    """How each reverse step's null embedding is fitted (docs/method.md, text-guidance optimization)."""

    SECANT = "secant"
    """Default: gradient steps whose length and combination come from the step's own secant
    (Gauss-Newton) model; stops on relative landing error or when progress stalls."""
    REFERENCE = "reference"
    """Prompt-to-prompt's null-text inversion: Adam, lr 1e-2 (1 - i/100), early stop at a
    variance-preserving MSE below ``tol + i * 2e-5``."""


SECANT_TOL = 1e-4
"""Default stop for the secant schedule: landing error / target norm, per image."""
SAME_BUDGET = 2
"""The secant schedule's calls per step beyond ``inner_steps``: the reference spends one on the
source prompt and one on the final step besides its ``inner_steps`` Adam steps."""
REFERENCE_TOL = 1e-5
"""prompt-to-prompt's base early-stop threshold (DDPM-space MSE)."""
STALL = 0.01
"""The secant schedule also stops an image once an improving evaluation cuts its error by less
than this fraction, or after ``FAILURES`` evaluations in a row that did not improve it."""
FAILURES = 3
WINDOW = 4
"""Evaluations the secant model is built from (older ones describe a region already left)."""
BACKTRACK = 10.0
"""A trial that does not improve is retried this many times shorter."""


def _reverse_steps(traj: Trajectory) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """(step index, sigma, sigma_next, target latent) from the noisiest level down to 0."""
    n = traj.steps
    return [(j, traj.sigmas[n - j], traj.sigmas[n - j - 1], traj.latents[n - j - 1]) for j in range(n)]


def _rows(a: Tensor, b: Tensor) -> Tensor:
    """Per-image inner products [B] of two [B, ...] tensors."""
    return (a * b).flatten(1).sum(1)


def _per_image(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def variance_preserving_scale(space: Any, sigma: Tensor) -> Tensor:
    """a(sigma)^2 + b(sigma)^2: a latent's mean square for unit-variance data, the factor that turns
    a squared error at sigma into the variance-preserving (DDPM-space) one. VE: 1 + sigma^2."""
    a, b = coefficients(space, sigma)
    return a * a + b * b


def optimize_null_text(
    denoise: Denoiser,
    traj: Trajectory,
    source: Tensor,
    null: Tensor,
    *,
    guidance_scale: float = 7.5,
    inner_steps: int = 10,
    tol: float | None = None,
    callback: Callback | None = None,
    schedule: NullTextSchedule | str = NullTextSchedule.SECANT,
) -> list[Tensor]:
    """Null-text optimization: one null per reverse step and per image such that
    ``ddim_step(x, CFG(null_i, source))`` lands on the inverted latent, warm-started from the
    previous step's null; then x moves on with the fitted null. Only the embedding gets gradients
    (the denoiser's weights are not touched); it is held in float32 (or wider) whatever the model.

    ``schedule`` SECANT (default): at most ``inner_steps + 2`` denoiser calls per step, the
    reference's worst case (the first also evaluates the source prompt), stopping once every
    image's landing error is below ``tol``
    (default 1e-4) relative to its target, or stalls. REFERENCE: prompt-to-prompt, 1 source call,
    up to ``inner_steps`` Adam steps and 1 final call; ``tol`` is its base threshold (1e-5).
    A null with batch 1 is fitted per image when the latent holds several (``nulls[i]`` is then
    [B, ...])."""
    schedule = NullTextSchedule(schedule)
    if inner_steps < 0 or (schedule is NullTextSchedule.SECANT and inner_steps < 1):
        raise ValueError("optimize_null_text: inner_steps must be >= "
                         f"{int(schedule is NullTextSchedule.SECANT)}, got {inner_steps}")
    # Clones: host tensors may be inference tensors, which autograd cannot save for backward.
    traj = Trajectory(sigmas=traj.sigmas.clone(), latents=traj.latents.clone(), space=traj.space)
    batch = traj.noise.shape[0]
    work = torch.promote_types(null.dtype, torch.float32)
    start = null.detach().clone().to(work)
    if start.shape[0] == 1 and batch > 1:
        start = start.expand(batch, *start.shape[1:]).clone()
    if guidance_scale == 1.0:  # CFG at scale 1 ignores the null: nothing to fit
        return [start] * traj.steps
    if schedule is NullTextSchedule.REFERENCE:
        return _reference(denoise, traj, source.clone(), start, guidance_scale, inner_steps,
                          REFERENCE_TOL if tol is None else tol, callback)
    return _secant(denoise, traj, source.clone(), start, guidance_scale, inner_steps + SAME_BUDGET,
                   SECANT_TOL if tol is None else tol, callback)


def _reference(denoise: Denoiser, traj: Trajectory, source: Tensor, current: Tensor, scale: float,
               inner_steps: int, tol: float, callback: Callback | None) -> list[Tensor]:
    """prompt-to-prompt's loop. Its loss is the MSE of DDPM latents; here the per-image MSE divided
    by a(s')^2 + b(s')^2, which is exactly that in VE space and the same measure in flow space.
    Backward runs on the loss times the per-image element count (no fp16 underflow) with Adam's
    eps scaled alike, so the Adam steps are unchanged."""
    space, x = traj.space, traj.noise
    per_image = x[0].numel()
    nulls: list[Tensor] = []
    for j, s, s_next, target in _reverse_steps(traj):
        sig = sigma_batch(s, x)
        vp = variance_preserving_scale(space, s_next).to(x.dtype)
        with torch.no_grad():
            x0_source = denoise(x, sig, [source])[0]
        current = current.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([current], lr=1e-2 * (1.0 - j / 100.0), eps=1e-8 * per_image)
        for _ in range(inner_steps):
            with torch.enable_grad():
                x0_null = denoise(x, sig, [current])[0]
                x0_hat = cfg([x0_null, x0_source], scale)
                err = (ddim_step(x, s, s_next, x0_hat, space) - target).float().pow(2)
                mse = err.flatten(1).mean(1) / vp
                optimizer.zero_grad(set_to_none=True)
                (mse.sum() * per_image).backward()
            optimizer.step()
            if callback is not None:
                callback(j, traj.steps, x, x0_hat.detach())
            if bool((mse < tol + j * 2e-5).all()):
                break
        current = current.detach()
        nulls.append(current)
        with torch.no_grad():
            x0_hat = cfg([denoise(x, sig, [current])[0], x0_source], scale)
            x = ddim_step(x, s, s_next, x0_hat, space)
        if callback is not None:
            callback(j, traj.steps, x, x0_hat)
    return nulls


class _Evaluation:
    """One evaluated null of one step: its embedding, landing residual, gradient of 1/2 |r|^2 and
    null prediction (all detached, per image along dim 0)."""

    def __init__(self, null: Tensor, residual: Tensor, gradient: Tensor, x0_null: Tensor) -> None:
        self.null, self.residual, self.gradient, self.x0_null = null, residual, gradient, x0_null
        self.error = _rows(residual, residual).sqrt()


def _secant(denoise: Denoiser, traj: Trajectory, source: Tensor, current: Tensor, scale: float,
            max_calls: int, tol: float, callback: Callback | None) -> list[Tensor]:
    """Per step and image: evaluate the null (prediction + gradient, one call), fit the landing
    residual as affine in the last ``WINDOW`` evaluated nulls (exact if the denoiser were linear in
    the null: the CFG step is affine in the null's prediction), move to that fit's minimiser and
    step along its interpolated gradient, with a Barzilai-Borwein length from the last two
    evaluations (first trial of a step: a Polyak length), shortened by ``BACKTRACK`` after a trial
    that did not improve; every trial stays within the distance between the source and the
    starting null of the best null so far (a trust region: a saturated null has no gradient left)."""
    space, x = traj.space, traj.noise
    batch, work = x.shape[0], current.dtype
    radius = (source.to(work) - current).flatten(1).norm(dim=1).expand(batch).clamp_min(1e-12)
    nulls: list[Tensor] = []
    for j, s, s_next, target in _reverse_steps(traj):
        sig = sigma_batch(s, x)
        target_norm = _rows(target, target).sqrt().to(work).clamp_min(1e-30)
        kept: list[list[_Evaluation]] = [[] for _ in range(batch)]  # per image: its improving evaluations
        best: list[_Evaluation | None] = [None] * batch
        lengths: list[float | None] = [None] * batch
        failures = [0] * batch
        done = [False] * batch
        x0_source: Tensor | None = None
        trial, calls = current, 0
        while True:
            leaf = trial.detach().requires_grad_(True)
            with torch.enable_grad():
                outs = denoise(x, sig, [leaf, source] if x0_source is None else [leaf])
            calls += 1
            if x0_source is None:
                x0_source = outs[1].detach().to(work)
            x0_null = outs[0]
            ev = _evaluate(leaf, x0_null, x0_source, x, s, s_next, target, scale, space, work)
            if callback is not None:
                callback(j, traj.steps, x, cfg([ev.x0_null, x0_source], scale))
            improved = [bool(torch.isfinite(ev.error[b]))
                        and (best[b] is None or bool(ev.error[b] <= best[b].error[b]))
                        for b in range(batch)]
            for b in range(batch):
                previous = None if best[b] is None else float(best[b].error[b])
                if improved[b]:
                    best[b] = ev
                    kept[b] = (kept[b] + [ev])[-WINDOW:]
                if best[b] is None:
                    raise ValueError("optimize_null_text: the denoiser returned non-finite values for the "
                                     f"starting null at reverse step {j}")
                error = float(best[b].error[b])
                failures[b] = 0 if improved[b] else failures[b] + 1
                stalled = improved[b] and previous is not None and error > (1.0 - STALL) * previous
                done[b] = done[b] or stalled or failures[b] >= FAILURES or error < tol * float(target_norm[b])
            if all(done) or calls >= max_calls:
                break
            rows = []
            for b in range(batch):
                if done[b]:
                    rows.append(best[b].null[b])
                    continue
                point, length = _next_trial(kept[b], best[b], b, improved[b], lengths[b], float(radius[b]))
                lengths[b] = length
                rows.append(point)
            trial = torch.stack(rows)
        current = torch.stack([best[b].null[b] for b in range(batch)])
        x0_null = torch.stack([best[b].x0_null[b] for b in range(batch)])
        nulls.append(current)
        with torch.no_grad():
            x0_hat = cfg([x0_null, x0_source], scale)
            x = ddim_step(x, s, s_next, x0_hat.to(x.dtype), space)
        if callback is not None:
            callback(j, traj.steps, x, x0_hat)
    return nulls


def _evaluate(leaf: Tensor, x0_null: Tensor, x0_source: Tensor, x: Tensor, s: Tensor, s_next: Tensor,
              target: Tensor, scale: float, space: Any, work: torch.dtype) -> _Evaluation:
    """Residual and gradient for one evaluated null. The model's backward gets the residual
    normalised to unit length per image (no fp16 underflow, whatever the error); the true gradient
    is rescaled afterwards in ``work`` precision."""
    pred = x0_null.detach().to(work).requires_grad_(True)
    with torch.enable_grad():
        residual = ddim_step(x.to(work), s, s_next, cfg([pred, x0_source], scale), space) - target.to(work)
        length = _rows(residual, residual).sqrt().detach().clamp_min(1e-30)
        (toward,) = torch.autograd.grad(0.5 * (residual.pow(2) / _per_image(length, residual)).sum(), pred)
    (grad,) = torch.autograd.grad(x0_null, leaf, grad_outputs=toward.to(x0_null.dtype))
    grad = grad.to(work) * _per_image(length, grad)
    return _Evaluation(leaf.detach(), residual.detach(), grad, pred.detach())


def _next_trial(kept: list[_Evaluation], best: _Evaluation, b: int, improved: bool, last: float | None,
                radius: float) -> tuple[Tensor, float]:
    """The next null to evaluate for image ``b`` and the step length used (see ``_secant``)."""
    anchor = best
    others = [e for e in kept if e is not anchor]
    e0, r0, g0 = anchor.null[b].flatten(), anchor.residual[b].flatten(), anchor.gradient[b].flatten()
    point, direction, length = e0, g0, None
    if others:
        d_res = torch.stack([e.residual[b].flatten() - r0 for e in others], 1)
        d_null = torch.stack([e.null[b].flatten() - e0 for e in others], 1)
        d_grad = torch.stack([e.gradient[b].flatten() - g0 for e in others], 1)
        coef = -(torch.linalg.pinv(d_res, rtol=1e-6) @ r0)
        point, direction = e0 + d_null @ coef, g0 + d_grad @ coef
        if len(kept) >= 2:
            step = kept[-1].null[b].flatten() - kept[-2].null[b].flatten()
            change = kept[-1].gradient[b].flatten() - kept[-2].gradient[b].flatten()
            curvature = float(step @ change)
            if curvature > 0:
                length = float(step @ step) / curvature
    if length is None:  # Polyak: the length that would remove the whole error if the model were linear
        length = 0.5 * float(r0 @ r0) / max(float(g0 @ g0), 1e-300)
    if not improved and last is not None:
        length = last / BACKTRACK
    move = point - length * direction - e0
    norm = float(move.norm())
    if norm > radius:  # a trust region around the best null so far
        move = move * (radius / norm)
    return (e0 + move).reshape(best.null.shape[1:]), length


def negative_prompt_nulls(traj: Trajectory, source: Tensor) -> list[Tensor]:
    """Negative-prompt inversion: the source embedding as every step's null (no model calls)."""
    return [source] * traj.steps


@torch.no_grad()
def direct_inversion_offsets(
    denoise: Denoiser,
    traj: Trajectory,
    source: Tensor,
    null: Tensor,
    *,
    guidance_scale: float,
    callback: Callback | None = None,
) -> list[Tensor]:
    """Direct inversion: offsets[i] = inverted latent - CFG source step from the inverted latent,
    so ``ddim_sample(..., offsets=...)`` with the same CFG retraces the inversion exactly."""
    offsets: list[Tensor] = []
    for j, s, s_next, target in _reverse_steps(traj):
        x = traj.latents[traj.steps - j]
        x0_hat = cfg(denoise(x, sigma_batch(s, x), [null, source]), guidance_scale)
        offsets.append(target - ddim_step(x, s, s_next, x0_hat, traj.space))
        if callback is not None:
            callback(j, traj.steps, target, x0_hat)
    return offsets
