"""Per-edit metrics: PnPInversion's set (their names and conventions) and this pack's own set.

PnPInversion (``evaluation/evaluate.py`` + ``matrics_calculator.py`` of cure-lab/PnPInversion):

* images are uint8 RGB scaled to [0, 1]; the mask is PIE-Bench's decoded mask (1 = edited,
  border forced to 1). ``*_unedit_part`` multiplies **both** images by ``1 - mask`` and scores
  the whole 512x512 product (edited pixels count as a perfect match); ``*_edit_part`` uses
  ``mask``; the plain names use no mask. A part with no pixels gives NaN.
* PSNR and SSIM with data range 1 (torchmetrics' definitions: SSIM with an 11-tap Gaussian
  window, sigma 1.5, K1 0.01, K2 0.03, reflect padding and the map averaged over the whole
  image: ``image_metrics.ssim(..., border="reflect")``), MSE the mean over pixels and channels;
  LPIPS is
  **SqueezeNet** LPIPS v0.1 on [-1, 1] images; structure distance: :mod:`psg_eval.dino`.
* CLIP similarity: CLIPScore = 100 * max(cos, 0) of CLIP ViT-L/14 image and text embeddings,
  prompts without ``[`` ``]``; ``*_edit_part`` scores ``uint8(image * mask)``.

PSNR, MSE, SSIM, LPIPS and CLIPScore are this package's (:mod:`psg_eval.image_metrics`,
:mod:`psg_eval.clip_score`), which equal torchmetrics' to float rounding (tested); PSNR of
identical parts is reported as ``image_metrics.PSNR_CAP`` where torchmetrics gives inf.

This pack's set (``pack_*``): :func:`psg_eval.image_metrics.image_metrics` with AlexNet LPIPS, whole
image and background (``bg_``: both images times ``1 - mask``, as above), plus the stricter
background averages ``bgavg_mse`` / ``bgavg_psnr``: the squared error averaged over the
unedited pixels only, so a small background is not diluted by the edited pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import dino
from . import image_metrics as im

PNP_DEFAULT = (
    "structure_distance",
    "psnr_unedit_part",
    "lpips_unedit_part",
    "mse_unedit_part",
    "ssim_unedit_part",
    "clip_similarity_source_image",
    "clip_similarity_target_image",
    "clip_similarity_target_image_edit_part",
)
PAIR_METRICS = ("psnr", "lpips", "mse", "ssim", "structure_distance")
PARTS = ("", "_unedit_part", "_edit_part")
PNP_ALL = tuple(f"{m}{p}" for p in PARTS for m in PAIR_METRICS) + PNP_DEFAULT[-3:]
PACK_METRICS = ("pack_mse", "pack_psnr", "pack_ssim", "pack_lpips_alex", "pack_bg_mse", "pack_bg_psnr",
                "pack_bg_ssim", "pack_bg_lpips_alex", "pack_bgavg_mse", "pack_bgavg_psnr")
METRIC_SETS = {"pnp": PNP_DEFAULT, "pnp-all": PNP_ALL, "pack": PACK_METRICS}


@dataclass
class MetricModels:
    """What the selected metrics need; ``None`` where no selected metric needs it."""

    lpips_squeeze: object | None = None
    lpips_alex: object | None = None
    dino: dino.DinoViT | None = None
    clip: object | None = None  # clip_score.ClipScorer
    dino_antialias: bool = False


@dataclass
class EditPair:
    """One scored pair: the photo, the (cropped) edit, PIE-Bench's mask and the bracket-free prompts."""

    photo: np.ndarray  # (512, 512, 3) uint8
    edit: np.ndarray  # (512, 512, 3) uint8
    mask: np.ndarray  # (512, 512) float32, 1 = edited
    source_prompt: str
    target_prompt: str


def needs(metric_names: list[str] | tuple[str, ...]) -> set[str]:
    """Which models the metrics need: 'lpips_squeeze', 'lpips_alex', 'dino', 'clip'."""
    out = set()
    for name in metric_names:
        if name.startswith("lpips"):
            out.add("lpips_squeeze")
        elif name.startswith("structure_distance"):
            out.add("dino")
        elif name.startswith("clip_similarity"):
            out.add("clip")
        elif name.startswith("pack_") and name.endswith("lpips_alex"):
            out.add("lpips_alex")
        elif name not in PNP_ALL and name not in PACK_METRICS:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(PNP_ALL + PACK_METRICS)} "
                             f"(or a set: {', '.join(METRIC_SETS)}).")
    return out


def _tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1] (PnPInversion's /255 in float32)."""
    x = image.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def _mask_of_kept(keep: np.ndarray | None) -> torch.Tensor | None:
    """The metrics multiply by ``1 - mask``: hand them ``1 - keep`` so the product keeps ``keep``."""
    return None if keep is None else torch.from_numpy(1.0 - keep.astype(np.float32))[None, None]


def _pair_metric(kind: str, pair: EditPair, keep: np.ndarray | None, models: MetricModels) -> float:
    if kind == "structure_distance":
        return dino.structure_distance(models.dino, pair.edit, pair.photo, keep, models.dino_antialias)
    edit, photo, m = _tensor(pair.edit), _tensor(pair.photo), _mask_of_kept(keep)
    if kind == "ssim":
        return float(im.ssim(edit, photo, m, border="reflect")[0])
    if kind == "lpips":
        return float(im.lpips_distance(models.lpips_squeeze, edit, photo, m)[0])
    fn: Callable[..., torch.Tensor] = im.PIXEL_METRICS[kind]
    return float(fn(edit, photo, m)[0])


def _clip(pair: EditPair, models: MetricModels, image: np.ndarray, text: str,
          keep: np.ndarray | None) -> float:
    if keep is not None:
        image = (image * keep[..., None]).astype(np.uint8)
    return float(models.clip.score(_tensor(image), text)[0])


def pnp_metric(name: str, pair: EditPair, models: MetricModels) -> float:
    """One PnPInversion metric by its name in their evaluate.py; NaN where the part is empty."""
    if name == "clip_similarity_source_image":
        return _clip(pair, models, pair.photo, pair.source_prompt, None)
    if name == "clip_similarity_target_image":
        return _clip(pair, models, pair.edit, pair.target_prompt, None)
    if name == "clip_similarity_target_image_edit_part":
        if pair.mask.sum() == 0:
            return math.nan
        return _clip(pair, models, pair.edit, pair.target_prompt, pair.mask)
    for part in PARTS[1:]:
        if name.endswith(part):
            kind = name.removesuffix(part)
            keep = 1.0 - pair.mask if part == "_unedit_part" else pair.mask
            return math.nan if keep.sum() == 0 else _pair_metric(kind, pair, keep, models)
    if name in PAIR_METRICS:
        return _pair_metric(name, pair, None, models)
    raise ValueError(f"unknown PnPInversion metric {name!r}; known: {', '.join(PNP_ALL)}.")


def pack_metrics(pair: EditPair, models: MetricModels, names: list[str]) -> dict[str, float]:
    """This pack's metrics (``image_metrics.image_metrics``) under ``pack_`` names."""
    edit, photo = _tensor(pair.edit), _tensor(pair.photo)
    mask = torch.from_numpy(pair.mask.astype(np.float32))[None, None]
    values = im.image_metrics(edit, photo, mask, models.lpips_alex)
    out = {f"pack_{k}" + ("_alex" if k.endswith("lpips") else ""): (math.nan if v is None else float(v))
           for k, v in values.items()}
    background = float((1.0 - pair.mask).mean())
    out["pack_bgavg_mse"] = out["pack_bg_mse"] / background if background > 0 else math.nan
    bgavg = out["pack_bgavg_mse"]
    out["pack_bgavg_psnr"] = (math.nan if math.isnan(bgavg) else im.PSNR_CAP if bgavg <= 0
                              else min(10.0 * math.log10(1.0 / bgavg), im.PSNR_CAP))
    return {k: out[k] for k in names}


def score(pair: EditPair, models: MetricModels, names: list[str]) -> dict[str, float]:
    """Every requested metric of one pair, by name."""
    pack = [n for n in names if n in PACK_METRICS]
    out = {n: pnp_metric(n, pair, models) for n in names if n not in PACK_METRICS}
    if pack:
        out.update(pack_metrics(pair, models, pack))
    return {n: out[n] for n in names}
