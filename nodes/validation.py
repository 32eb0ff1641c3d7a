"""Input checks shared by several PSG nodes: each failure is one short message naming the node,
the input and what to change (issue 9), instead of a crash deep inside torch."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

LATENT_MULTIPLE = 8
"""Image sides must be multiples of the VAE's downscale factor (8 for every supported family)."""


def check_finite(tensor: torch.Tensor, name: str, node: str) -> None:
    """Refuse NaN / infinite values (an overflowing fp16 VAE, a broken upstream node)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{node}: the '{name}' input contains NaN or inf values; fix the node that produced it "
            "(e.g. decode / encode the VAE in fp32 with --fp32-vae)."
        )


def check_image_size(image: torch.Tensor, node: str, multiple: int = LATENT_MULTIPLE) -> None:
    """IMAGE (B, H, W, C): both sides multiples of ``multiple``, else VAE Encode silently crops."""
    height, width = int(image.shape[1]), int(image.shape[2])
    if height % multiple or width % multiple:
        fit = (width // multiple * multiple, height // multiple * multiple)
        raise ValueError(
            f"{node}: the image is {width}x{height}; both sides must be a multiple of {multiple}. "
            f"Resize or crop it first (e.g. Upscale Image to {max(fit[0], multiple)}x{max(fit[1], multiple)})."
        )


def check_mask_batch(mask: torch.Tensor | None, batch: int, node: str) -> None:
    """A MASK ((H, W), (B, H, W) or (B, 1, H, W)) must have one entry or one per image."""
    if mask is None:
        return
    count = int(mask.shape[0]) if mask.ndim > 2 else 1
    if count not in (1, batch):
        raise ValueError(
            f"{node}: the mask has a batch of {count} but the image a batch of {batch}; "
            "use one mask, or one per image."
        )
