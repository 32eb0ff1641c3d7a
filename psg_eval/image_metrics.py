"""Image-editing metrics: MSE, PSNR, SSIM, LPIPS (whole image and background only), plus
DINO structure distance when its weights are present.

Images are ``(B, 3, H, W)`` float tensors in [0, 1] (data range 1). Every metric returns one
value per batch item, shape ``(B,)``.

Background-only variants follow PIE-Bench (Ju et al. 2023): ``mask`` is 1 on the edited
region (ComfyUI inpainting convention), both images are multiplied by ``(1 - mask)`` and the
metric is computed on the whole product, so the edited region counts as a perfect match and
any change outside it is seen.

SSIM reproduces ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)``: an 11-tap Gaussian
window (sigma 1.5, truncate 3.5), K1 = 0.01, K2 = 0.03, the mean taken over the map cropped by
the window radius and over channels. Because of that crop the border padding never matters,
so a valid convolution gives the same numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .losses import as_mask

logger = logging.getLogger(__name__)

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_CAP = 100.0
"""PSNR of identical images is infinite; we report this cap so JSON/CSV and FLOAT sockets stay finite."""


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
        raise ValueError(f"{what}: batch sizes {a.shape[0]} and {b.shape[0]} do not match (use equal batches or 1).")


def _broadcast(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(a.shape[0], b.shape[0])
    return a.expand(n, -1, -1, -1), b.expand(n, -1, -1, -1)


def normalize_mask(mask: torch.Tensor, batch: int, height: int, width: int, what: str = "metrics") -> torch.Tensor:
    """A mask of shape (H, W), (B, H, W) or (B, 1, H, W) -> (B, 1, H, W) float in [0, 1], checked
    against the images' batch and size."""
    m = as_mask(mask, what, clamp=True)
    if m.shape[-2:] != (height, width):
        raise ValueError(f"{what}: the mask is {m.shape[-1]}x{m.shape[-2]} but the images are {width}x{height}; "
                         "resize the mask to the images.")
    if m.shape[0] not in (1, batch):
        raise ValueError(f"{what}: mask batch {m.shape[0]} does not match image batch {batch}.")
    return m.expand(batch, -1, -1, -1)


def background(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None,
               what: str = "metrics") -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as compared: broadcast to one batch and, given a mask, multiplied by (1 - mask)."""
    check_images(a, b, what)
    a, b = _broadcast(a, b)
    if mask is None:
        return a, b
    keep = 1.0 - normalize_mask(mask, a.shape[0], a.shape[-2], a.shape[-1], what).to(a.device, a.dtype)
    return a * keep, b * keep


# --------------------------------------------------------------------------- pixel metrics
def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per image (over all pixels and channels)."""
    a, b = background(a, b, mask, "MSE")
    return (a.double() - b.to(a.device).double()).pow(2).flatten(1).mean(1).float()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (skimage's formula), capped at ``PSNR_CAP``."""
    a, b = background(a, b, mask, "PSNR")
    err = (a.double() - b.to(a.device).double()).pow(2).flatten(1).mean(1)
    value = 10.0 * torch.log10(data_range**2 / err.clamp_min(1e-300))
    return value.clamp(max=PSNR_CAP).float()


def _gaussian_taps(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, equal to skimage's Gaussian SSIM (see module docstring)."""
    a, b = background(a, b, mask, "SSIM")
    taps = _gaussian_taps(SSIM_SIGMA, SSIM_TRUNCATE, a.device)
    k = taps.numel()
    if min(a.shape[-2:]) < k:
        raise ValueError(f"SSIM: images must be at least {k}x{k} pixels, got {a.shape[-1]}x{a.shape[-2]}.")
    channels = a.shape[1]
    kh = taps.view(1, 1, 1, k).repeat(channels, 1, 1, 1)
    kv = taps.view(1, 1, k, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=channels), kv, groups=channels)

    x = a.double()
    y = b.to(a.device).double()
    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


# --------------------------------------------------------------------------- LPIPS
def lpips_module_of(obj: object) -> torch.nn.Module:
    """The ``lpips.LPIPS`` module inside a PSG_LPIPS value (the module itself or a wrapper holding it)."""
    if isinstance(obj, torch.nn.Module):
        return obj
    for attr in ("module", "model", "net", "lpips"):
        inner = getattr(obj, attr, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    raise ValueError(f"LPIPS: expected an lpips.LPIPS module (connect a PSG LPIPS loader), got {type(obj).__name__}.")


def lpips_distance(module: object, a: torch.Tensor, b: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """LPIPS distance per image (the lpips package maps [0, 1] to [-1, 1] itself with normalize)."""
    net = lpips_module_of(module)
    a, b = background(a, b, mask, "LPIPS")
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else a.device
    with torch.no_grad():
        d = net(a.float().to(device), b.float().to(device), normalize=True)
    return d.reshape(d.shape[0], -1).mean(1).float().cpu()


# --------------------------------------------------------------------------- everything at once
def image_metrics(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
                  lpips_module: object | None = None) -> dict[str, float | None]:
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


# --------------------------------------------------------------------------- DINO structure distance
def load_dino(path: str | Path | None) -> tuple[torch.nn.Module, object] | None:
    """A transformers DINO/ViT model and its image processor from a local folder, or None when absent.

    Nothing is downloaded (``local_files_only``); a missing folder means "unavailable".
    """
    if path is None or not Path(path).is_dir():
        return None
    try:
        from transformers import AutoImageProcessor, AutoModel
    except ImportError:
        logger.warning("DINO structure distance unavailable: transformers is not installed")
        return None
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    return model, processor


def _self_similarity(model: torch.nn.Module, processor: object, images: torch.Tensor) -> torch.Tensor:
    pixels = processor(images=list(images.float().cpu()), return_tensors="pt", do_rescale=False)["pixel_values"]
    param = next(model.parameters())
    with torch.no_grad():
        tokens = model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state[:, 1:]
    tokens = F.normalize(tokens.float(), dim=-1)
    return tokens @ tokens.transpose(1, 2)


def structure_distance(dino: tuple[torch.nn.Module, object] | None, a: torch.Tensor,
                       b: torch.Tensor) -> torch.Tensor | None:
    """DINO self-similarity structure distance per image, or None when no DINO model is loaded.

    Tumanyan et al. (Splice) / PIE-Bench compare the self-similarity of DINO-ViT keys; this
    minimal version uses the last layer's patch tokens instead of keys: the mean squared
    difference between the two images' token cosine self-similarity matrices. Lower = the
    same layout.
    """
    if dino is None:
        return None
    check_images(a, b, "structure distance")
    a, b = _broadcast(a, b)
    model, processor = dino
    return (_self_similarity(model, processor, a) - _self_similarity(model, processor, b)).pow(2).flatten(1).mean(1)


MetricFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
PIXEL_METRICS: dict[str, MetricFn] = {"mse": mse, "psnr": psnr, "ssim": ssim}
