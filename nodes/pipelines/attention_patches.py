"""Prompt-to-prompt on the host's model: attention replace patches on a ``model.clone()``, the
prompts' tokens from the host's CLIP tokenizer, and the two-branch sampling run.

The patches (``ModelPatcher.set_model_attn1_replace`` / ``set_model_attn2_replace`` on every
transformer block of a UNet) compute the attention themselves; while a window is open, or while
LocalBlend needs maps, they compute the probabilities explicitly and hand them to
``psg_core.attention_control``; otherwise they call ComfyUI's own attention. Both branches' rows
go to the model in ONE ``calc_cond_batch`` call: each cond is evaluated at its own branch's latent
(the rows are swapped in by a ``model_function_wrapper`` that reads ``cond_or_uncond``). If ComfyUI
splits the batch (low memory), the source branch's rows run first and their probabilities are kept
per layer for the edit rows of the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import torch

from ...psg_core.attention_control import (
    DEFAULT_BLEND_START,
    DEFAULT_BLEND_THRESHOLD,
    DEFAULT_CROSS_WINDOW,
    DEFAULT_SELF_WINDOW,
    P2PMode,
    TokenMap,
    attend,
    attention_probabilities,
    blend_mask,
    cross_window_steps,
    edit_cross_attention,
    edit_self_attention,
    find_word,
    map_side,
    parse_word_weights,
    self_window_steps,
    token_map,
    token_weights,
    word_map,
)
from ...psg_core.two_branch import BranchLayout
from .. import host

logger = logging.getLogger(__name__)

SELF_LAYERS: dict[str, float] = {"1/4": 0.25, "1/2": 0.5, "all": 1.0}
"""``self_layers`` option -> largest layer side, as a fraction of the latent side, whose
self-attention is replaced (prompt-to-prompt: 16x16 maps on a 64x64 latent, i.e. 1/4)."""
BLEND_SIDE = 0.25
"""LocalBlend reads the cross-attention maps whose side is closest to this fraction of the latent's."""


@dataclass(frozen=True)
class P2PSettings:
    """What the PSG Prompt-to-Prompt node configures (travels as a PSG_P2P value)."""

    mode: P2PMode = P2PMode.REPLACE
    cross_window: float = DEFAULT_CROSS_WINDOW
    self_window: float = DEFAULT_SELF_WINDOW
    self_layers: str = "1/4"
    reweight_words: str = ""
    reweight_factor: float = 2.0
    blend_words: str = ""
    blend_threshold: float = DEFAULT_BLEND_THRESHOLD
    blend_start: float = DEFAULT_BLEND_START

    def validate(self, node: str) -> None:
        for name in ("cross_window", "self_window", "blend_threshold", "blend_start"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{node}: {name} must lie in [0, 1] (got {value}).")
        if self.self_layers not in SELF_LAYERS:
            raise ValueError(f"{node}: self_layers must be one of {', '.join(SELF_LAYERS)} "
                             f"(got {self.self_layers!r}).")
        if self.mode is P2PMode.REWEIGHT and not self.reweight_words.strip():
            raise ValueError(f"{node}: mode reweight needs reweight_words (e.g. 'tiger:2, striped').")


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class PromptTokens:
    """One prompt's token ids as the cross-attention sees them (all 77-token chunks, flattened)."""

    ids: list[int]
    meaningful: list[int]  # BOS, the words, EOS (what alignment compares)

    @property
    def length(self) -> int:
        return len(self.ids)


def _encoder_tokens(clip: Any, text: str) -> list[tuple]:
    tokens = clip.tokenize(text, return_word_ids=True)
    if not isinstance(tokens, dict) or not tokens:
        raise ValueError("the CLIP tokenizer returned no tokens")
    key = "l" if "l" in tokens else next(iter(tokens))  # CLIP-L (SD1, SDXL), else the model's one (SD2: h)
    return [t for chunk in tokens[key] for t in chunk]


def prompt_tokens(clip: Any, text: str, node: str) -> PromptTokens:
    flat = _encoder_tokens(clip, text)
    ids = [int(t[0]) for t in flat]
    words = [i for i, t in enumerate(flat) if len(t) > 2 and t[2] > 0]
    end = (words[-1] + 2) if words else 2
    return PromptTokens(ids=ids, meaningful=ids[:min(end, len(ids))])


def word_positions(clip: Any, prompt: PromptTokens, word: str) -> list[int]:
    """Token positions of ``word`` (one or several tokens, every occurrence) in ``prompt``."""
    flat = _encoder_tokens(clip, word)
    pieces = [int(t[0]) for t in flat if len(t) > 2 and t[2] > 0]
    return find_word(prompt.meaningful, pieces)


@dataclass(frozen=True)
class P2PPlan:
    """Everything the attention patches need, resolved against the actual prompts."""

    settings: P2PSettings
    mapping: TokenMap
    mode: P2PMode
    weights: torch.Tensor | None
    blend_source: list[int]
    blend_edit: list[int]


def make_plan(clip: Any, source_text: str, edit_text: str, settings: P2PSettings, node: str) -> P2PPlan:
    src, edit = prompt_tokens(clip, source_text, node), prompt_tokens(clip, edit_text, node)
    if src.length != edit.length:
        raise ValueError(
            f"{node}: the source prompt uses {src.length // 77} chunk(s) of 77 tokens and the edit prompt "
            f"{edit.length // 77}; shorten or lengthen one of them so both use the same number."
        )
    mapping, mode = token_map(settings.mode, src.meaningful, edit.meaningful, edit.length)
    weights = None
    if settings.reweight_words.strip():
        positions = []
        for word, factor in parse_word_weights(settings.reweight_words, settings.reweight_factor):
            found = word_positions(clip, edit, word)
            if not found:
                raise ValueError(f"{node}: reweight word '{word}' is not in the edit prompt '{edit_text}'.")
            positions.append((found, factor))
        weights = token_weights(edit.length, positions)
    blend_src: list[int] = []
    blend_edit: list[int] = []
    for word, _ in parse_word_weights(settings.blend_words, 1.0):
        in_src, in_edit = word_positions(clip, src, word), word_positions(clip, edit, word)
        if not in_src and not in_edit:
            raise ValueError(f"{node}: blend word '{word}' is in neither prompt; use words of the source "
                             "or the edit prompt (e.g. 'cat, tiger').")
        blend_src += in_src
        blend_edit += in_edit
    return P2PPlan(settings, mapping, mode, weights, sorted(set(blend_src)), sorted(set(blend_edit)))


# --------------------------------------------------------------------------- the controller
Observer = Callable[[dict[str, Any]], None]


@dataclass
class AttentionController:
    """The state the attention patches share during one two-branch run."""

    plan: P2PPlan
    latent_hw: tuple[int, int]
    step: int = 0
    total: int = 1
    layout: BranchLayout | None = None
    inputs: Sequence[torch.Tensor] | None = None
    observers: list[Observer] = field(default_factory=list)
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict)
    _maps_source: dict[int, torch.Tensor] = field(default_factory=dict)
    _maps_edit: dict[int, torch.Tensor] = field(default_factory=dict)

    # -- per step
    def begin_step(self, step: int, total: int, layout: BranchLayout) -> None:
        self.step, self.total, self.layout = step, total, layout
        self._cache.clear()

    def in_cross_window(self) -> bool:
        return self.step < cross_window_steps(self.total, self.plan.settings.cross_window)

    def in_self_window(self) -> bool:
        return self.step < self_window_steps(self.total, self.plan.settings.self_window)

    @property
    def blending(self) -> bool:
        return bool(self.plan.blend_source or self.plan.blend_edit)

    def _self_layer(self, queries: int) -> bool:
        h, w = map_side(queries, self.latent_hw)
        return h <= SELF_LAYERS[self.plan.settings.self_layers] * self.latent_hw[0] + 1e-6

    # -- the patch
    def attention(self, kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  extra: dict) -> torch.Tensor:
        heads = extra["n_heads"]
        cross = kind == "attn2"
        layer = (kind, tuple(extra.get("block") or ()), extra.get("block_index", 0))
        edit_now = self.layout is not None and (
            self.in_cross_window() if cross else (self.in_self_window() and self._self_layer(q.shape[1])))
        capture = cross and self.blending and self.layout is not None
        if not (edit_now or capture):
            return comfy_attention.optimized_attention(q, k, v, heads,
                                                       attn_precision=extra.get("attn_precision"))
        chunks = list(extra.get("cond_or_uncond") or [])
        rows = q.shape[0] // max(1, len(chunks))
        probs = attention_probabilities(q, k, heads)

        def rows_of(cond_index: int) -> slice | None:
            if cond_index not in chunks:
                return None
            c = chunks.index(cond_index)
            return slice(c * rows, (c + 1) * rows)

        src_rows, edit_rows = rows_of(self.layout.source_row), rows_of(self.layout.edit_row)
        source = probs[src_rows] if src_rows is not None else self._cache.get(layer)
        if src_rows is not None and edit_rows is None:
            self._cache[layer] = source  # the edit rows come in a later call of this step
        if capture:
            self._capture(q.shape[1], probs, src_rows, edit_rows)
        if edit_now and edit_rows is not None:
            if source is None:
                raise RuntimeError("prompt-to-prompt: the edit branch ran before the source branch "
                                   "in this step")
            edit = probs[edit_rows]
            if cross:
                new = edit_cross_attention(source, edit, self.plan.mapping, self.plan.weights)
            else:
                new = edit_self_attention(source, edit)
            probs = probs.clone()
            probs[edit_rows] = new
        for observe in self.observers:
            observe({"kind": kind, "layer": layer, "step": self.step, "probs": probs, "source_rows": src_rows,
                     "edit_rows": edit_rows, "edited": edit_now and edit_rows is not None})
        return attend(probs, v)

    def _capture(self, queries: int, probs: torch.Tensor, src_rows: slice | None,
                 edit_rows: slice | None) -> None:
        """Accumulate (over layers of one resolution and over steps) the chosen words' maps."""
        for rows, positions, store in ((src_rows, self.plan.blend_source, self._maps_source),
                                       (edit_rows, self.plan.blend_edit, self._maps_edit)):
            if rows is None or not positions:
                continue
            m = word_map(probs[rows], positions).float()
            store[queries] = store[queries] + m if queries in store else m

    def blend_mask(self, step: int | None = None) -> torch.Tensor | None:
        """The LocalBlend mask [B, 1, H, W] from the maps accumulated up to now (None before any);
        ``step`` is accepted for ``two_branch_sample``'s ``blend(i)``: the maps already are that step's."""
        sizes = set(self._maps_source) | set(self._maps_edit)
        if not sizes:
            return None
        target = (BLEND_SIDE * self.latent_hw[0]) * (BLEND_SIDE * self.latent_hw[1])
        queries = min(sizes, key=lambda s: (abs(s - target), -s))
        side = map_side(queries, self.latent_hw)

        def as_maps(store: dict[int, torch.Tensor]) -> torch.Tensor | None:
            m = store.get(queries)
            return None if m is None else m.reshape(m.shape[0], *side)

        return blend_mask(as_maps(self._maps_source), as_maps(self._maps_edit), self.latent_hw,
                          self.plan.settings.blend_threshold)

    # -- rows of each branch in one model call
    def swap_rows(self, apply_model: Callable, args: dict, previous: Callable | None) -> torch.Tensor:
        x = args["input"]
        if self.inputs is not None:
            chunks = list(args["cond_or_uncond"])
            rows = x.shape[0] // max(1, len(chunks))
            x = torch.cat([self.inputs[c].to(x) if self.inputs[c].shape[0] == rows
                           else x[i * rows:(i + 1) * rows]
                           for i, c in enumerate(chunks)])
        if previous is not None:
            return previous(apply_model, {**args, "input": x})
        return apply_model(x, args["timestep"], **args["c"])


def transformer_blocks(model: Any) -> list[tuple[str, int]]:
    """(block name, number) of every UNet block holding a transformer, as ComfyUI keys them."""
    dm = model.model.diffusion_model
    found: list[tuple[str, int]] = []
    for name in ("input", "output"):
        blocks = getattr(dm, f"{name}_blocks", None)
        for number, block in enumerate(blocks or []):
            if any(isinstance(m, comfy_attention.SpatialTransformer) for m in block.modules()):
                found.append((name, number))
    middle = getattr(dm, "middle_block", None)
    if middle is not None and any(isinstance(m, comfy_attention.SpatialTransformer)
                                  for m in middle.modules()):
        found.append(("middle", 0))
    return found


def check_unet(model: Any, family: host.ModelFamily, node: str) -> list[tuple[str, int]]:
    """Refuse flow transformers (SD3/Flux) and anything without UNet transformer blocks."""
    if family.space.name == "FLOW":
        raise ValueError(
            f"{node}: prompt-to-prompt works on UNet models (SD1.x, SD2.x, SDXL); this is a flow model "
            f"({family.name}). Use PSG Edit / the triple-prompt guider for SD3 and Flux."
        )
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"{node}: the model has no UNet attention blocks ({family.name}); "
                         "prompt-to-prompt needs an SD1.x, SD2.x or SDXL model.")
    return blocks


def patched_clone(model: Any, controller: AttentionController, blocks: list[tuple[str, int]]) -> Any:
    """A clone of ``model`` whose attention runs through ``controller``; ``model`` is not touched."""
    patched = model.clone()
    for name, number in blocks:
        patched.set_model_attn1_replace(lambda q, k, v, extra: controller.attention("attn1", q, k, v, extra),
                                        name, number)
        patched.set_model_attn2_replace(lambda q, k, v, extra: controller.attention("attn2", q, k, v, extra),
                                        name, number)
    previous = patched.model_options.get("model_function_wrapper")
    patched.set_model_unet_function_wrapper(
        lambda apply_model, args: controller.swap_rows(apply_model, args, previous))
    return patched


def branch_denoiser(h: host.HostModel, controller: AttentionController) -> Callable:
    """psg_core's ``BranchDenoiser`` on the host: every cond at its own latent, one calc_cond_batch."""

    def denoise(xs: Sequence[torch.Tensor], sigma: torch.Tensor, conds: Sequence[Any]) -> list[torch.Tensor]:
        controller.inputs = list(xs)
        try:
            return h.denoise(xs[0], sigma, conds)
        finally:
            controller.inputs = None

    return denoise
