"""ComfyUI IMAGE / MASK layouts <-> the (B, C, H, W) tensors the core works with."""

from __future__ import annotations

import torch

from ...psg_core.losses import as_mask
from ..validation import check_finite
from .autograd import normal_tensor


def image_to_bchw(image: torch.Tensor, node: str, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> (B, 3, H, W) float32, normal tensor."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{node}: expected an IMAGE (batch, height, width, channels), "
                         f"got {getattr(image, 'shape', image)}.")
    check_finite(image, name, node)
    return normal_tensor(image[..., :3]).float().movedim(-1, 1)


def mask_to_b1hw(mask: torch.Tensor | None, height: int, width: int) -> torch.Tensor | None:
    """ComfyUI MASK (B, H, W) or (H, W) -> (B, 1, H, W) resized to the image, normal tensor."""
    if mask is None:
        return None
    m = as_mask(normal_tensor(mask), "mask", clamp=True)
    if m.shape[-2:] != (height, width):
        m = torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0)


def bchw_to_image(chw: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) in [0, 1] -> ComfyUI IMAGE (B, H, W, 3) float32."""
    t = chw if chw.ndim == 4 else chw[None]
    return t.movedim(1, -1).contiguous().float()
