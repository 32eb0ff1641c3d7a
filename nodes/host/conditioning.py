"""CONDITIONING -> the text embeddings the core sees, and back: optimized embeddings are swapped
into ComfyUI's processed conds so pooled output, sizes and guidance stay."""

from __future__ import annotations

from collections.abc import Sequence

import comfy.conds
import torch

from .autograd import normal_tensor

_EMBEDDING_KEY = "c_crossattn"


def embedding_of(conditioning: Sequence, name: str, node: str) -> torch.Tensor:
    """The text embedding tensor of a CONDITIONING (its first entry), as the core sees it."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{node}: the '{name}' CONDITIONING is empty; connect a CLIP Text Encode output.")
    first = conditioning[0]
    if not isinstance(first, (list, tuple)) or not torch.is_tensor(first[0]):
        raise ValueError(f"{node}: the '{name}' input is not a CONDITIONING "
                         "(connect a CLIP Text Encode output).")
    return first[0]


def swap_embedding(processed: list[dict], embedding: torch.Tensor) -> list[dict]:
    """A processed cond list with the first entry's text embedding replaced (pooled output,
    sizes, guidance and area stay): how optimized null embeddings reach the model.

    The replacement keeps the model's own cond wrapper: SD's UNet cross-attention takes
    ``CONDCrossAttn`` (shorter prompts may be repeat-padded to a common length), while SD3/Flux
    take ``CONDRegular``, whose prompts of different lengths must never be padded that way."""
    out = []
    for i, entry in enumerate(processed):
        entry = entry.copy()
        if i == 0:
            model_conds = entry["model_conds"].copy()
            wrapper = type(model_conds.get(_EMBEDDING_KEY)) if _EMBEDDING_KEY in model_conds else None
            if wrapper is None or not issubclass(wrapper, comfy.conds.CONDRegular):
                wrapper = comfy.conds.CONDCrossAttn
            model_conds[_EMBEDDING_KEY] = wrapper(embedding)
            entry["model_conds"] = model_conds
        out.append(entry)
    return out


class CondBank:
    """Processed ComfyUI conds by name, and the embedding tensors handed to the core.

    The core passes embeddings back to the denoiser; a tensor that is (or equals) one of ours
    maps to its full processed cond, anything else (an optimized null) is swapped into the
    ``fallback`` cond.
    """

    def __init__(self, processed: dict[str, list[dict]], fallback: str, node: str) -> None:
        self.processed = processed
        self.fallback = fallback
        self.embeddings: dict[str, torch.Tensor] = {}
        for name, conds in processed.items():
            mc = conds[0].get("model_conds", {}) if conds else {}
            cross = mc.get(_EMBEDDING_KEY)
            if cross is None:
                raise ValueError(
                    f"{node}: the '{name}' conditioning has no text embedding for this model "
                    "(c_crossattn); PSG needs text-conditioned SD/SDXL/SD3/Flux models."
                )
            self.embeddings[name] = normal_tensor(cross.cond)

    def conds_for(self, embedding: torch.Tensor | None) -> list[dict] | None:
        if embedding is None:
            return None
        for name, own in self.embeddings.items():
            if embedding is own:
                return self.processed[name]
        for name, own in self.embeddings.items():
            if (
                not embedding.requires_grad
                and embedding.shape == own.shape
                and embedding.device == own.device
                and torch.equal(embedding, own)
            ):
                return self.processed[name]
        own = self.embeddings[self.fallback]
        return swap_embedding(self.processed[self.fallback], embedding.to(device=own.device))
