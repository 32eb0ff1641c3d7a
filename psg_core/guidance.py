"""Triple-prompt text guidance: the one place the three predictions are combined."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


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
        x0_null, rest = predictions[0], list(predictions[1:])
        x0 = x0_null
        if self.w_source != 0:
            x0 = x0 + self.w_source * (rest.pop(0) - x0_null)
        if self.w_edit != 0:
            x0 = x0 + self.w_edit * (rest.pop(0) - x0_null)
        return x0
