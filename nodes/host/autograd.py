"""Autograd safety: ComfyUI loads and runs under inference mode and shares model weights between
nodes; these helpers let the core differentiate without touching what other nodes see."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)


def make_grad_safe(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers by equal normal tensors, in place.

    Checkpoint loaders run under ``torch.inference_mode()``; autograd refuses to save such
    tensors for backward. Values, dtypes, devices and ``requires_grad=False`` are unchanged,
    so other nodes see the same model; the swap is only done where it is needed, once.
    Returns how many tensors were swapped.
    """
    swapped = 0
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    swapped += 1
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    swapped += 1
    if swapped:
        logger.debug("made %d inference tensors of %s usable by autograd", swapped, type(module).__name__)
    return swapped


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter for the duration, restored after.

    Loaded weights may have ``requires_grad=True``: autograd would then build graphs for (and
    an optimizer's ``backward`` accumulate ``.grad`` into) the shared model."""
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    module.requires_grad_(False)
    try:
        yield
    finally:
        params = dict(module.named_parameters())
        for name in names:
            if name in params:
                with torch.inference_mode(params[name].is_inference()):  # torch's rule for those
                    params[name].requires_grad_(True)


@contextlib.contextmanager
def grad_context() -> Iterator[None]:
    """Nodes run under ``torch.inference_mode()``; leave it so the core can use autograd where it
    needs it (its own ``enable_grad`` blocks). Plain model passes stay gradient-free."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def normal_tensor(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) detached copy; call inside ``grad_context``."""
    return t.detach().clone()
