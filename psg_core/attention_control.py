"""Prompt-to-prompt attention control (Hertz et al. 2022) as plain tensor maths.

Two branches are sampled side by side: the *source* branch reconstructs the photo, the *edit*
branch follows the edited prompt. During a window of steps the edit branch's attention
probabilities are built from the source branch's, so layout and identity stay while the words
change. Everything here works on probability tensors ``[..., N, M]`` (N queries = latent pixels of
one layer, M keys = text tokens for cross-attention, pixels for self-attention) and on token id
lists; the host decides where the tensors come from.

Token maps (``TokenMap``): for every edit token position j, the source position ``index[j]`` whose
attention column it takes and ``alpha[j]`` (1 = aligned, 0 = a new word that keeps its own column):

- replace (word swap): the prompts have the same number of tokens; ``index[j] = j``, ``alpha = 1``;
- refine (new words): global alignment of the two token sequences (match +1, mismatch -1, gap 0),
  aligned equal tokens map, the rest keep their own attention; trailing padding maps position-wise.

Cross-attention during the window (``edit_cross_attention``)::

    A_edit' = w * (alpha * A_src[..., index] + (1 - alpha) * A_edit)

with ``w`` the per-token re-weighting factors (1 except chosen words), outside the window
``A_edit' = A_edit``. Self-attention in its window: ``A_edit' = A_src``. LocalBlend (``blend_mask``)
turns the accumulated cross-attention maps of chosen words into a binary mask of the edited region:
max-pool 3x3, resize to the latent, divide by the maximum, threshold, union of the source words'
region (source branch) and the edit words' region (edit branch); ``local_blend`` then keeps the
source branch outside it: ``x_edit' = x_src + mask * (x_edit - x_src)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_CROSS_WINDOW = 0.8
DEFAULT_SELF_WINDOW = 0.4
DEFAULT_BLEND_THRESHOLD = 0.3
DEFAULT_BLEND_START = 0.2
_MATCH, _MISMATCH, _GAP = 1, -1, 0


class P2PMode(str, Enum):
    """How the edit prompt relates to the source prompt."""

    REPLACE = "replace"
    REFINE = "refine"
    REWEIGHT = "reweight"


@dataclass(frozen=True)
class TokenMap:
    """Edit token j takes the attention column ``index[j]`` of the source, blended by ``alpha[j]``."""

    index: Tensor  # long [M]
    alpha: Tensor  # float [M]

    @property
    def length(self) -> int:
        return int(self.index.shape[0])


def replacement_map(source_count: int, edit_count: int, length: int) -> TokenMap:
    """Word swap: the identity map; needs the same number of meaningful tokens in both prompts."""
    if source_count != edit_count:
        raise ValueError(f"word swap needs prompts with the same number of tokens (source {source_count}, "
                         f"edit {edit_count}); use refine")
    return TokenMap(index=torch.arange(length), alpha=torch.ones(length))


def refinement_map(source: Sequence[int], edit: Sequence[int], length: int) -> TokenMap:
    """Align the meaningful tokens of two prompts (``source``/``edit``: BOS .. EOS ids); positions past
    the edit's tokens (padding) map position-wise, as in prompt-to-prompt's refinement mapper."""
    n, m = len(source), len(edit)
    if m > length or n > length:
        raise ValueError(f"token sequences ({n}, {m}) longer than the attention's {length} keys")
    score = torch.zeros(n + 1, m + 1, dtype=torch.long)
    score[:, 0] = torch.arange(n + 1) * _GAP
    score[0, :] = torch.arange(m + 1) * _GAP
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1, j - 1] + (_MATCH if source[i - 1] == edit[j - 1] else _MISMATCH)
            score[i, j] = max(diag, score[i - 1, j] + _GAP, score[i, j - 1] + _GAP)
    index = torch.arange(length)
    alpha = torch.ones(length)
    index[:m] = 0
    alpha[:m] = 0.0
    i, j = n, m
    while i > 0 and j > 0:
        equal = source[i - 1] == edit[j - 1]
        if equal and score[i, j] == score[i - 1, j - 1] + _MATCH:
            index[j - 1], alpha[j - 1] = i - 1, 1.0
            i, j = i - 1, j - 1
        elif score[i, j] == score[i, j - 1] + _GAP:
            j -= 1  # edit token j-1 is new: keeps its own attention
        else:
            i -= 1
    return TokenMap(index=index, alpha=alpha)


def token_map(mode: P2PMode, source: Sequence[int], edit: Sequence[int],
              length: int) -> tuple[TokenMap, P2PMode]:
    """The map for ``mode``; a word swap whose token counts differ falls back to refinement (logged).
    Re-weighting edits the aligned attention, so it maps like refinement."""
    if mode is P2PMode.REPLACE:
        if len(source) == len(edit):
            return replacement_map(len(source), len(edit), length), mode
        logger.info("prompt-to-prompt: word swap with different token counts (source %d, edit %d): "
                    "falling back to refinement (aligned tokens)", len(source), len(edit))
        return refinement_map(source, edit, length), P2PMode.REFINE
    return refinement_map(source, edit, length), mode


def find_word(tokens: Sequence[int], word: Sequence[int]) -> list[int]:
    """Positions of every occurrence of the token sequence ``word`` in ``tokens`` (multi-token words)."""
    k = len(word)
    if k == 0:
        return []
    found: list[int] = []
    for start in range(len(tokens) - k + 1):
        if list(tokens[start:start + k]) == list(word):
            found.extend(range(start, start + k))
    return found


def parse_word_weights(text: str, default: float) -> list[tuple[str, float]]:
    """``"tiger:2, striped"`` -> [("tiger", 2.0), ("striped", default)] (comma-separated words or
    phrases, each with an optional ``:factor``)."""
    out: list[tuple[str, float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        word, sep, factor = item.rpartition(":")
        if not sep:
            out.append((item, float(default)))
            continue
        try:
            out.append((word.strip(), float(factor)))
        except ValueError as err:
            raise ValueError(f"'{item}': the factor after ':' must be a number") from err
    return out


def cross_window_steps(total: int, fraction: float) -> int:
    """Steps 0 .. k-1 take the source's cross-attention (prompt-to-prompt: int(f * (steps + 1)))."""
    return int(fraction * (total + 1))


def self_window_steps(total: int, fraction: float) -> int:
    """Steps 0 .. k-1 take the source's self-attention (prompt-to-prompt: int(f * steps))."""
    return int(fraction * total)


def attention_probabilities(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) per head: q [R, N, H*d], k [R, M, H*d] -> [R, H, N, M] (float32+)."""
    r, n, inner = q.shape
    d = inner // heads
    dtype = torch.promote_types(q.dtype, torch.float32)
    qh = q.reshape(r, n, heads, d).transpose(1, 2).to(dtype)
    kh = k.reshape(r, k.shape[1], heads, d).transpose(1, 2).to(dtype)
    return torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, dim=-1)


def attend(probs: Tensor, v: Tensor) -> Tensor:
    """probs [R, H, N, M] @ v [R, M, H*d] -> [R, N, H*d] in v's dtype."""
    r, heads = probs.shape[:2]
    d = v.shape[-1] // heads
    vh = v.reshape(r, v.shape[1], heads, d).transpose(1, 2).to(probs.dtype)
    return (probs @ vh).transpose(1, 2).reshape(r, probs.shape[2], heads * d).to(v.dtype)


def edit_cross_attention(source: Tensor, edit: Tensor, mapping: TokenMap,
                         weights: Tensor | None = None) -> Tensor:
    """The edit branch's cross-attention inside the window (module docstring)."""
    if source.shape[-1] != mapping.length or edit.shape[-1] != mapping.length:
        raise ValueError(f"attention has {edit.shape[-1]} text keys but the token map has {mapping.length}")
    alpha = mapping.alpha.to(edit)
    out = source[..., mapping.index.to(source.device)] * alpha + edit * (1 - alpha)
    if weights is not None:
        out = out * weights.to(out)
    return out


def edit_self_attention(source: Tensor, edit: Tensor) -> Tensor:
    """The edit branch's self-attention inside its window: the source's."""
    return source.expand_as(edit)


def token_weights(length: int, positions: Sequence[tuple[Sequence[int], float]]) -> Tensor:
    """Per-token factors: 1 everywhere except the chosen words' positions."""
    w = torch.ones(length)
    for idx, factor in positions:
        w[list(idx)] = float(factor)
    return w


def word_map(probs: Tensor, positions: Sequence[int]) -> Tensor:
    """Attention of every query to the chosen tokens, summed over them, mean over heads:
    [R, H, N, M] -> [R, N]."""
    if not positions:
        return probs.new_zeros(probs.shape[0], probs.shape[2])
    return probs[..., list(positions)].sum(-1).mean(1)


def map_side(queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a layer with ``queries`` pixels on a latent of ``latent_hw`` (same aspect ratio)."""
    h, w = latent_hw
    scale = (queries / (h * w)) ** 0.5
    hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
    if hh * ww != queries:
        raise ValueError(f"an attention layer with {queries} queries does not fit a {h}x{w} latent")
    return hh, ww


def region_mask(maps: Tensor, latent_hw: tuple[int, int], threshold: float, pool: int = 1) -> Tensor:
    """[B, h, w] accumulated word maps -> [B, 1, H, W] float mask in {0, 1} (LocalBlend's recipe)."""
    m = maps[:, None].float()
    if pool > 0:
        m = F.max_pool2d(m, 2 * pool + 1, stride=1, padding=pool)
    m = F.interpolate(m, size=latent_hw, mode="nearest")
    peak = m.amax(dim=(-2, -1), keepdim=True)
    m = m / peak.clamp_min(torch.finfo(m.dtype).tiny)
    return (m > threshold).float()


def blend_mask(source_maps: Tensor | None, edit_maps: Tensor | None, latent_hw: tuple[int, int],
               threshold: float = DEFAULT_BLEND_THRESHOLD) -> Tensor:
    """Union of the source words' region (source maps) and the edit words' region (edit maps)."""
    masks = [region_mask(m, latent_hw, threshold) for m in (source_maps, edit_maps) if m is not None]
    if not masks:
        raise ValueError("LocalBlend needs the attention maps of at least one word")
    out = masks[0]
    for m in masks[1:]:
        out = torch.maximum(out, m)
    return out


def local_blend(x_source: Tensor, x_edit: Tensor, mask: Tensor) -> Tensor:
    """Outside the mask the edit branch becomes the source branch exactly."""
    return x_source + mask.to(x_edit) * (x_edit - x_source)
