"""The image-space loss that perceptual guidance minimises: LPIPS (and/or pixel MSE), optionally
masked and computed at reduced resolution.

Mask convention (ComfyUI inpainting, PIE-Bench): 1 = the edited region, free to change; the loss
only pulls where mask = 0. Two things make that hold: the edited region of the image is replaced
by the reference before the loss (so the loss has exactly zero gradient there, for any metric),
and LPIPS' spatial map is averaged with weight (1 - mask) so differences seen through the
receptive fields near the border do not count inside the edited region.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # imported at use: masks and metrics need this module without lpips
    import lpips

logger = logging.getLogger(__name__)

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MIN_LOSS_SIDE = 16  # LPIPS' backbones need a few pixels left after their strided layers


class ImageLoss:
    """``loss(image, reference) -> scalar`` (batch mean) on [0, 1] images of shape (B, 3, H, W).

    ``metric``: an ``lpips.LPIPS`` (spatially weighted by the mask), any callable
    ``metric(image, reference) -> scalar`` (masked by compositing only), or None for MSE only.
    ``mse_weight`` adds weighted pixel MSE; ``loss_scale`` < 1 resizes both images first.
    """

    def __init__(self, metric: lpips.LPIPS | Metric | None = None, *, mask: torch.Tensor | None = None,
                 mse_weight: float = 0.0, loss_scale: float = 1.0) -> None:
        if metric is None and mse_weight <= 0:
            raise ValueError("ImageLoss: nothing to minimise; give an LPIPS/metric or mse_weight > 0.")
        if mse_weight < 0:
            raise ValueError(f"ImageLoss: mse_weight must be >= 0 (got {mse_weight}).")
        if not 0 < loss_scale <= 1:
            raise ValueError(f"ImageLoss: loss_scale must be in (0, 1] (got {loss_scale}).")
        import lpips

        self.metric = metric
        self.is_lpips = isinstance(metric, lpips.LPIPS)
        self.mask = None if mask is None else as_mask(mask)
        self.mse_weight = float(mse_weight)
        self.loss_scale = float(loss_scale)

    def __call__(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        image, reference = self._resize(image), self._resize(reference)
        keep = None if self.mask is None else self._keep(image)
        if keep is not None:
            image = image * keep + reference * (1 - keep)
        total = image.new_zeros(())
        if self.is_lpips:
            with _spatial(self.metric, keep is not None):
                dist = self.metric(2 * image - 1, 2 * reference - 1)
            total = total + _weighted_mean(dist, keep)
        elif self.metric is not None:
            total = total + self.metric(image, reference)
        if self.mse_weight > 0:
            squared = (image - reference).pow(2).mean(1, keepdim=True)
            total = total + self.mse_weight * _weighted_mean(squared, keep)
        return total

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.loss_scale == 1:
            return x
        size = tuple(max(1, round(s * self.loss_scale)) for s in x.shape[-2:])
        if min(size) < MIN_LOSS_SIDE:
            raise ValueError(f"ImageLoss: loss_scale {self.loss_scale} shrinks {tuple(x.shape[-2:])} to "
                             f"{size}; keep at least {MIN_LOSS_SIDE} px per side.")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _keep(self, image: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(image.device, image.dtype)
        if mask.shape[-2:] != image.shape[-2:]:
            mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return (1 - mask).clamp(0, 1)


def as_mask(mask: torch.Tensor, what: str = "mask", *, clamp: bool = False) -> torch.Tensor:
    """(H, W), (B, H, W) or (B, 1, H, W) with values in [0, 1] -> (B, 1, H, W) float: the one place
    masks are normalised. ``clamp`` clips stray values (resampled host masks) instead of refusing them."""
    if not torch.is_tensor(mask) or mask.dim() not in (2, 3, 4):
        raise ValueError(f"{what}: the mask must be (H, W), (B, H, W) or (B, 1, H, W), got "
                         f"{tuple(getattr(mask, 'shape', ()))}.")
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.shape[1] != 1:
        raise ValueError(f"{what}: the mask must have one channel, got {mask.shape[1]}.")
    mask = mask.float()
    if clamp:
        return mask.clamp(0.0, 1.0)
    if mask.numel() and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"{what}: mask values must lie in [0, 1] (1 = edited region, free to change).")
    return mask


def _weighted_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Batch mean of per-image means of a (B, 1, h, w) map, weighted by ``keep``."""
    if keep is None:
        return values.mean()
    if values.shape[-2:] != keep.shape[-2:]:
        keep = F.interpolate(keep, size=values.shape[-2:], mode="bilinear", align_corners=False)
    keep = keep.expand_as(values)
    per_image = (values * keep).sum((1, 2, 3)) / keep.sum((1, 2, 3)).clamp_min(1e-8)
    return per_image.mean()


@contextlib.contextmanager
def _spatial(model: lpips.LPIPS, on: bool) -> Iterator[None]:
    """LPIPS reads ``spatial`` at call time; switch it for one call and restore it."""
    old = model.spatial
    model.spatial = on
    try:
        yield
    finally:
        model.spatial = old
