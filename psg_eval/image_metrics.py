"""Image-editing metrics: MSE, PSNR, SSIM and LPIPS, whole image and background only.

Images are ``(B, 3, H, W)`` float tensors in [0, 1] (data range 1). Every metric returns one
value per batch item, shape ``(B,)``.

Background-only variants follow PIE-Bench (Ju et al. 2023): ``mask`` is 1 on the edited
region (ComfyUI inpainting convention), both images are multiplied by ``(1 - mask)`` and the
metric is computed on the whole product, so the edited region counts as a perfect match and
any change outside it is seen.

SSIM is ``kornia.metrics.ssim`` (an 11-tap Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03) in
float64, averaged per image in one of two conventions:

* ``border="crop"`` (default): only the windows that fit inside the image, equal to
  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)`` (measured: within 3e-8 on
  photos; kornia's ``padding="valid"``);
* ``border="reflect"``: every pixel, the image reflect-padded by the window radius, equal to
  torchmetrics' ``structural_similarity_index_measure`` (PnPInversion's SSIM; kornia's
  ``padding="same"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import kornia.metrics
import torch

from .core import losses

PSNR_CAP = 100.0
"""PSNR of identical images is infinite; we report this cap so JSON/CSV and FLOAT sockets stay finite."""
SSIM_WINDOW = 11
SSIM_BORDERS = {"crop": "valid", "reflect": "same"}
"""SSIM border convention -> kornia's padding (see the module docstring)."""


# --------------------------------------------------------------------------- input checks
def check_images(a: torch.Tensor, b: torch.Tensor, what: str = "metrics") -> None:
    """One clear error for images the metrics cannot compare."""
    for name, t in (("a", a), ("b", b)):
        if not torch.is_tensor(t) or t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"{what}: image {name} must be a (batch, 3, height, width) tensor, got "
                             f"{tuple(getattr(t, 'shape', ()))}.")
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{what}: the images differ in size ({a.shape[-1]}x{a.shape[-2]} vs "
                         f"{b.shape[-1]}x{b.shape[-2]}); resize one to the other first.")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"{what}: batch sizes {a.shape[0]} and {b.shape[0]} do not match "
                         "(use equal batches or 1).")


def broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images at one batch size (a batch of 1 is repeated)."""
    n = max(a.shape[0], b.shape[0])
    return a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)


def _checked_mask(mask: torch.Tensor, batch: int, height: int, width: int, what: str) -> torch.Tensor:
    """The mask normalised by ``psg_core.losses.as_mask``, checked against the images' batch and size."""
    m = losses.as_mask(mask, what, clamp=True)
    if m.shape[-2:] != (height, width):
        raise ValueError(f"{what}: the mask is {m.shape[-1]}x{m.shape[-2]} but the images are "
                         f"{width}x{height}; resize the mask to the images.")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{what}: mask batch {m.shape[0]} does not match image batch {batch}.")
    return m.expand(batch, -1, -1, -1)


def background(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None,
               what: str = "metrics") -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as compared: broadcast to one batch and, given a mask, multiplied by (1 - mask)."""
    check_images(a, b, what)
    a, b = broadcast(a, b)
    if mask is None:
        return a, b
    keep = 1.0 - _checked_mask(mask, a.shape[0], a.shape[-2], a.shape[-1], what).to(a.device, a.dtype)
    return a * keep, b * keep


# --------------------------------------------------------------------------- pixel metrics
def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per image (over all pixels and channels)."""
    a, b = background(a, b, mask, "MSE")
    return (a.double() - b.to(a.device).double()).pow(2).flatten(1).mean(1).float()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (skimage's formula), capped at ``PSNR_CAP``.

    ``kornia.metrics.psnr`` gives one number for a whole batch, so the per-image value comes from
    the per-image MSE here (measured equal to kornia's and skimage's to 1e-5 dB)."""
    err = mse(a, b, mask).double()
    value = 10.0 * torch.log10(data_range**2 / err.clamp_min(1e-300))
    return value.clamp(max=PSNR_CAP).float()


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0, border: str = "crop") -> torch.Tensor:
    """Structural similarity per image: scikit-image's (``border="crop"``) or torchmetrics'
    (``border="reflect"``); see the module docstring."""
    if border not in SSIM_BORDERS:
        raise ValueError(f"SSIM: border must be one of {', '.join(SSIM_BORDERS)}, got {border!r}.")
    a, b = background(a, b, mask, "SSIM")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got "
                         f"{a.shape[-1]}x{a.shape[-2]}.")
    # eps=0: kornia's default 1e-12 in the denominator would take ~1e-5 off flat (e.g. masked-out)
    # regions, whose denominator is only C1 * C2 ~ 1e-7; C1 * C2 > 0 keeps it finite anyway.
    ssim_map = kornia.metrics.ssim(a.double(), b.to(a.device).double(), SSIM_WINDOW, max_val=data_range,
                                   eps=0.0, padding=SSIM_BORDERS[border])
    return ssim_map.flatten(1).mean(1).float()


# --------------------------------------------------------------------------- LPIPS
def lpips_distance(module: torch.nn.Module, a: torch.Tensor, b: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """LPIPS distance per image (the lpips package maps [0, 1] to [-1, 1] itself with normalize)."""
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"LPIPS: expected an lpips.LPIPS module, got {type(module).__name__}.")
    a, b = background(a, b, mask, "LPIPS")
    param = next(iter(module.parameters()), None)
    device = param.device if param is not None else a.device
    with torch.no_grad():
        d = module(a.float().to(device), b.float().to(device), normalize=True)
    return d.reshape(d.shape[0], -1).mean(1).float().cpu()


# --------------------------------------------------------------------------- everything at once
def image_metrics(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
                  lpips_module: torch.nn.Module | None = None) -> dict[str, float | None]:
    """Batch-mean metrics by name: mse, psnr, ssim, lpips and, given a mask, their ``bg_`` twins.

    Values that cannot be computed (no LPIPS module) are ``None``, never 0.
    """
    out: dict[str, float | None] = {}
    variants = [("", None)] + ([("bg_", mask)] if mask is not None else [])
    for prefix, m in variants:
        out[f"{prefix}mse"] = float(mse(a, b, m).mean())
        out[f"{prefix}psnr"] = float(psnr(a, b, m).mean())
        out[f"{prefix}ssim"] = float(ssim(a, b, m).mean())
        out[f"{prefix}lpips"] = (float(lpips_distance(lpips_module, a, b, m).mean())
                                 if lpips_module is not None else None)
    return out


def format_summary(values: dict[str, float | None]) -> str:
    """One line per metric, 'unavailable' for None."""
    lines = []
    for name, v in values.items():
        if v is None:
            lines.append(f"{name}: unavailable")
        elif isinstance(v, float) and not math.isfinite(v):
            lines.append(f"{name}: {v}")
        else:
            lines.append(f"{name}: {v:.4f}" if abs(v) < 1000 else f"{name}: {v:.1f}")
    return "\n".join(lines)


MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
PIXEL_METRICS: dict[str, MetricFn] = {"mse": mse, "psnr": psnr, "ssim": ssim}
