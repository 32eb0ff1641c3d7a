"""Block-wise activation checkpointing for a differentiable decoder.

Why: ``PerceptualGuidance(checkpoint=True)`` recomputes the whole ``decode`` in the backward,
which moves the decoder's activations from the forward to the backward but does not shrink
them: the recomputed forward still saves every activation of the full-resolution layers (measured
in benchmarks/RESULTS.md). Checkpointing each block instead keeps only the blocks' inputs and,
during the backward, one block's activations at a time: the peak drops several-fold for one
extra decoder forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

_MARK = "_psg_checkpointed"


def checkpoint_blocks(module: torch.nn.Module, block_types: tuple[type, ...]) -> int:
    """Make every outermost submodule of ``module`` that is an instance of ``block_types`` run
    under ``torch.utils.checkpoint`` whenever autograd records it; without grad (final decode,
    previews) it runs as before. Idempotent; returns how many blocks are now checkpointed.

    Modifies ``module`` in place (wrap a private copy if the module is shared)."""
    if not block_types:
        raise ValueError("checkpoint_blocks: give at least one block type")
    count = 0

    def visit(parent: torch.nn.Module) -> None:
        nonlocal count
        for child in parent.children():
            if isinstance(child, block_types):
                if not getattr(child, _MARK, False):
                    child.forward = _checkpointed(child.forward)
                    setattr(child, _MARK, True)
                count += 1
            else:
                visit(child)

    visit(module)
    logger.debug("checkpointing %d blocks of %s", count, type(module).__name__)
    return count


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and any(torch.is_tensor(a) and a.requires_grad for a in args):
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run
