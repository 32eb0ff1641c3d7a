"""PSG Edit's memory of its last inversions, so changing only sampling knobs (perceptual scale,
start / end, the edit prompt, w_edit for modes that need no fitting, mask, guidance VAE) goes
straight to sampling instead of re-running DDIM inversion and null-text optimization.

ComfyUI's own cache re-runs a node whenever any of its inputs changes, so PSG Edit keeps its
intermediate results itself: the inversion keyed by model, photo, source prompt, steps and
scheduler; the text optimization additionally by null prompt, mode, guidance scale and inner
steps. A fingerprint is a hash of the tensors' bytes, so equal inputs from different runs match.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import torch

logger = logging.getLogger(__name__)

MAX_ENTRIES = 8
"""Results kept (an inversion and its text optimization count two): a few photos' worth of CPU tensors."""


def fingerprint(*parts: Any) -> str:
    """A hash of tensors (shape, dtype, bytes), numbers, strings and nested lists / tuples / dicts.
    Anything else (a hook object in a conditioning) counts by identity: never a false match."""
    digest = hashlib.blake2b(digest_size=16)

    def feed(value: Any) -> None:
        if torch.is_tensor(value):
            t = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"T{tuple(value.shape)}{t.dtype}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, (str, int, float, bool)) or value is None:
            digest.update(f"{type(value).__name__}:{value!r};".encode())
        elif isinstance(value, (list, tuple)):
            digest.update(f"[{len(value)}".encode())
            for item in value:
                feed(item)
            digest.update(b"]")
        elif isinstance(value, dict):
            digest.update(f"{{{len(value)}".encode())
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
            digest.update(b"}")
        else:
            digest.update(f"id:{type(value).__name__}:{id(value)};".encode())

    for part in parts:
        feed(part)
    return digest.hexdigest()


class InversionCache:
    """A small LRU map from fingerprint to a finished result. The model object is kept with each
    entry and compared by identity, so a new model that happens to reuse an id never matches."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def get(self, key: str, model: Any) -> Any | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] is not model:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, model: Any, value: Any) -> None:
        self._entries[key] = (model, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


INVERSIONS = InversionCache()
"""Shared by every PSG Edit node of the process (one ComfyUI server)."""
