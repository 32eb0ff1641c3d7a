"""Text-guidance optimisation: make CFG sampling retrace a DDIM inversion.

Plain inversion + CFG sampling drifts: the inversion followed D(x, source), the sampler follows
D_null + g (D_source - D_null). Three remedies, each giving per-step inputs for ``ddim_sample``:

- ``optimize_null_text`` (Mokady et al. 2023): one optimised null embedding per reverse step.
  Most faithful and keeps CFG's editing strength; costs up to ``inner_steps`` extra denoiser
  passes per step. Preferable when quality matters and the edit relies on the null branch.
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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .ddim import Callback, Trajectory, cfg, ddim_step, sigma_batch

Denoiser = Callable[[Tensor, Tensor, Sequence[Any]], list[Tensor]]


def _reverse_steps(traj: Trajectory) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """(step index, sigma, sigma_next, target latent) from the noisiest level down to 0."""
    n = traj.steps
    return [(j, traj.sigmas[n - j], traj.sigmas[n - j - 1], traj.latents[n - j - 1]) for j in range(n)]


def optimize_null_text(
    denoise: Denoiser,
    traj: Trajectory,
    source: Tensor,
    null: Tensor,
    *,
    guidance_scale: float = 7.5,
    inner_steps: int = 10,
    tol: float = 1e-5,
    callback: Callback | None = None,
) -> list[Tensor]:
    """Null-text optimisation: per reverse step i, Adam (lr 1e-2 (1 - i/100)) on that step's null so
    that ``ddim_step(x, CFG(null_i, source))`` lands on the inverted latent; early stop once the MSE
    is below ``tol + i * 2e-5``; warm start from the previous step's null. Only the embedding gets
    gradients (the denoiser's weights are not touched)."""
    if inner_steps < 0:
        raise ValueError(f"optimize_null_text: inner_steps must be >= 0, got {inner_steps}")
    # Clones: host tensors may be inference tensors, which autograd cannot save for backward.
    traj = Trajectory(sigmas=traj.sigmas.clone(), latents=traj.latents.clone(), space=traj.space)
    source = source.clone()
    space, x = traj.space, traj.noise
    current = null.detach().clone()
    nulls: list[Tensor] = []
    for j, s, s_next, target in _reverse_steps(traj):
        sig = sigma_batch(s, x)
        with torch.no_grad():
            x0_source = denoise(x, sig, [source])[0]
        current = current.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam([current], lr=1e-2 * (1.0 - j / 100.0))
        for _ in range(inner_steps):
            with torch.enable_grad():
                x0_null = denoise(x, sig, [current])[0]
                x0_hat = cfg([x0_null, x0_source], guidance_scale)
                loss = torch.nn.functional.mse_loss(ddim_step(x, s, s_next, x0_hat, space), target)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
            optimiser.step()
            if callback is not None:
                callback(j, traj.steps, x, x0_hat.detach())
            if loss.item() < tol + j * 2e-5:
                break
        current = current.detach()
        nulls.append(current)
        with torch.no_grad():
            x0_hat = cfg([denoise(x, sig, [current])[0], x0_source], guidance_scale)
            x = ddim_step(x, s, s_next, x0_hat, space)
        if callback is not None:
            callback(j, traj.steps, x, x0_hat)
    return nulls


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
