"""Bring any photo to a size a model family works at, and back.

A diffusion model is trained near one resolution (about 512 px for SD1.x, 768 for SD2.x-v,
1024 for SDXL / SD3 / Flux) and its VAE needs both sides to be a multiple of its downscale factor
(times the transformer's patch size for SD3 / Flux). A phone photo (4032x3024) at full size asks
for hundreds of GB in attention; a 451x300 scan is refused by the VAE. ``working_size`` keeps the
aspect ratio, scales the long side to the family's size and rounds each side to the multiple;
``resize`` is the one resampling used for photos, masks and the way back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_SIDE = 64
"""Smallest working side: 8 latent pixels, and LPIPS still sees 32 px at 1/2 guidance resolution."""


def working_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(width, height) with the long side scaled to ``long_side`` (0 keeps the photo's scale) and
    each side rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    if width < 1 or height < 1:
        raise ValueError(f"the image is {width}x{height}: it has no pixels")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    scale = 1.0 if long_side <= 0 else long_side / max(width, height)

    def fit(side: int) -> int:
        return max(multiple, int(side * scale / multiple + 0.5) * multiple)  # halves round up

    return fit(width), fit(height)


def resize(images: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resample (B, C, H, W) values in [0, 1] to ``height`` x ``width``: antialiased bilinear, so a
    large downscale averages (no aliasing) and an upscale stays smooth; values stay in [0, 1]."""
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp(0.0, 1.0).to(images.dtype)
