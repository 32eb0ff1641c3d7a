"""Text guidance: the one place predictions for several prompts are combined (plain CFG and the
triple-prompt form). The host's GUIDER and the core's sampler both call these functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


def cfg(predictions: Sequence[Tensor], guidance_scale: float) -> Tensor:
    """Classifier-free guidance on ``[x0_null, x0_cond]``: x0_null + g (x0_cond - x0_null)."""
    return predictions[0] + guidance_scale * (predictions[1] - predictions[0])


def triple_combine(x0_null: Tensor, x0_source: Tensor | None, x0_edit: Tensor | None, w_source: float,
                   w_edit: float) -> Tensor:
    """x0_null + w_source (x0_source - x0_null) + w_edit (x0_edit - x0_null), summed in that order.

    A prediction whose weight is 0 is not read (it may be None: it was never evaluated)."""
    x0 = x0_null
    if w_source != 0:
        x0 = x0 + w_source * (x0_source - x0_null)
    if w_edit != 0:
        x0 = x0 + w_edit * (x0_edit - x0_null)
    return x0


@dataclass(frozen=True)
class TextGuidance:
    """x0_hat = x0_null + w_edit * (x0_edit - x0_null) + w_source * (x0_source - x0_null).

    ``w_source = 0`` is plain CFG on the edit prompt (scale ``w_edit``); ``w_edit = 0`` reconstructs
    with the source prompt (CFG scale ``w_source``). A cond whose weight is 0 is not evaluated at
    all (x + 0 * y == x, so the result is unchanged and the step is cheaper); the others always go
    to the denoiser in ONE batched call.
    """

    null: Tensor
    source: Tensor
    edit: Tensor
    w_source: float
    w_edit: float

    def conds(self, null: Tensor | None = None) -> list[Tensor]:
        """The conds to evaluate, null first; ``null`` overrides the stored one (per-step nulls)."""
        out = [self.null if null is None else null]
        if self.w_source != 0:
            out.append(self.source)
        if self.w_edit != 0:
            out.append(self.edit)
        return out

    def combine(self, predictions: Sequence[Tensor]) -> Tensor:
        """Mix the denoiser's outputs for ``conds()`` (same order) into one x0 estimate."""
        rest = list(predictions[1:])
        x0_source = rest.pop(0) if self.w_source != 0 else None
        x0_edit = rest.pop(0) if self.w_edit != 0 else None
        return triple_combine(predictions[0], x0_source, x0_edit, self.w_source, self.w_edit)

    @property
    def total_scale(self) -> float:
        """w_source + w_edit: the CFG scale at which this guidance reproduces the source when the
        edit prompt equals it (what null-text / offsets must be fitted at to retrace the inversion)."""
        return self.w_source + self.w_edit
