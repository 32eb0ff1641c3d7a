"""Two branches, one batch: the source branch reconstructs the photo while the edit branch follows
the edited prompt, both in ONE model call per step (prompt-to-prompt on a real image).

Per reverse step i (sigma s -> s'), with the edit guidance ``g`` (``TextGuidance``) and the source
guidance ``g_src`` = ``TextGuidance(w_source=source_scale, w_edit=0)`` (CFG on the source prompt)::

    x0_edit = g.combine(D([null_i, (source), edit] at x_edit))
    x0_src  = g_src.combine(D([null_i, source] at x_src))
    x_edit  = ddim_step(x_edit, s, s', x0_edit)          (perceptual step on x0_edit first, if any)
    x_src   = ddim_step(x_src,  s, s', x0_src) + offset_i (direct inversion: source branch only)
    x_edit  = local_blend(x_src, x_edit, mask_i)         (from the blend start on, if a mask is given)

``null_i`` is the inversion's per-step null (null-text optimization; the source prompt for
negative-prompt inversion), so the source branch retraces the inversion; the attention control
(``attention_control``) happens inside the model call, between the rows of the two branches.
The formulas are the ones of ``guidance``, ``ddim`` and ``attention_control``; none is repeated here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attention_control import DEFAULT_BLEND_START, local_blend
from .ddim import Callback, PerceptualHook, _check_sigmas, ddim_step, sigma_batch
from .guidance import TextGuidance
from .spaces import NoiseSpace, eps_from_x0, noisy

BranchDenoiser = Callable[[Sequence[Tensor], Tensor, Sequence[Any]], list[Tensor]]
"""``denoise(xs, sigma, conds)``: x0 estimates for ``conds[k]`` evaluated at ``xs[k]``, one batch."""


@dataclass(frozen=True)
class BranchLayout:
    """Where each branch's conds sit in the step's cond list: the edit branch first (so that a host
    splitting the batch runs the source rows first), then the source branch."""

    edit_count: int
    source_count: int

    @property
    def edit_row(self) -> int:
        """The cond index of the edit prompt in the edit branch (the one attention control edits)."""
        return self.edit_count - 1

    @property
    def source_row(self) -> int:
        """The cond index of the source prompt in the source branch (the one it copies from)."""
        return self.edit_count + self.source_count - 1


StepHook = Callable[[int, int, BranchLayout], None]
MaskFn = Callable[[int], Tensor | None]


@dataclass
class TwoBranchResult:
    source: Tensor
    edit: Tensor
    mask: Tensor | None = None


def source_guidance(guidance: TextGuidance, source_scale: float) -> TextGuidance:
    """CFG with scale ``source_scale`` on the source prompt, as a triple-prompt guidance."""
    return dataclasses.replace(guidance, w_source=float(source_scale), w_edit=0.0)


@torch.no_grad()
def two_branch_sample(
    denoise: BranchDenoiser,
    x_T: Tensor,
    sigmas: Tensor,
    guidance: TextGuidance,
    *,
    source_scale: float,
    space: NoiseSpace = NoiseSpace.VE,
    nulls: Sequence[Tensor] | None = None,
    offsets: Sequence[Tensor] | None = None,
    on_step: StepHook | None = None,
    blend: MaskFn | None = None,
    blend_start: float = DEFAULT_BLEND_START,
    perceptual: PerceptualHook | None = None,
    perceptual_mask: MaskFn | None = None,
    callback: Callback | None = None,
) -> TwoBranchResult:
    """Sample both branches from the inverted noise ``x_T`` along descending ``sigmas``.

    ``guidance.w_edit`` must be non-zero (the edit row is what attention control edits).
    ``on_step(i, n, layout)`` runs before each model call (the host's attention controller);
    ``blend(i)`` returns the LocalBlend mask [B, 1, H, W] for step i (applied from
    ``int(blend_start * n)`` on); ``perceptual`` corrects the edit branch's x0 (MPGD), with
    ``perceptual_mask(i)`` (1 = free) handed to it first when given.
    """
    _check_sigmas(sigmas, ascending=False, what="two_branch_sample")
    if guidance.w_edit == 0:
        raise ValueError("two_branch_sample: w_edit is 0, so there is no edit branch; use ddim_sample to "
                         "reconstruct")
    n = len(sigmas) - 1
    for name, seq in (("nulls", nulls), ("offsets", offsets)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"two_branch_sample: {len(seq)} {name} for {n} steps; they must come from an "
                             "inversion with the same number of steps")
    src_guidance = source_guidance(guidance, source_scale)
    first_blend = int(blend_start * n)
    x_src, x_edit, mask = x_T, x_T, None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        sig = sigma_batch(s, x_T)
        null = None if nulls is None else nulls[i]
        edit_conds, src_conds = guidance.conds(null), src_guidance.conds(null)
        layout = BranchLayout(len(edit_conds), len(src_conds))
        if on_step is not None:
            on_step(i, n, layout)
        rows = [x_edit] * layout.edit_count + [x_src] * layout.source_count
        outs = denoise(rows, sig, edit_conds + src_conds)
        x0_edit = guidance.combine(outs[:layout.edit_count])
        x0_src = src_guidance.combine(outs[layout.edit_count:])
        eps_edit = eps_from_x0(x_edit, s, x0_edit, space)
        if perceptual is not None:
            if perceptual_mask is not None:
                perceptual.loss.mask = perceptual_mask(i)

            def predict(x_in: Tensor, _sig: Tensor = sig, _conds: list[Any] = edit_conds) -> Tensor:
                return guidance.combine(denoise([x_in] * len(_conds), _sig, _conds))

            x0_edit, eps_edit = perceptual(step=i, total=n, x=x_edit, sigma=s, sigma_next=s_next,
                                           x0_hat=x0_edit, eps_hat=eps_edit, predict=predict, space=space)
        x_edit = noisy(x0_edit, eps_edit, s_next, space)
        x_src = ddim_step(x_src, s, s_next, x0_src, space)
        if offsets is not None:
            x_src = x_src + offsets[i]
        if blend is not None and i >= first_blend:
            mask = blend(i)
            if mask is not None:
                x_edit = local_blend(x_src, x_edit, mask)
        if callback is not None:
            callback(i, n, x_edit, x0_edit)
    return TwoBranchResult(source=x_src, edit=x_edit, mask=mask)
