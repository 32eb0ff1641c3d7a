"""What the evaluation nodes run: image metrics, CLIPScore, structure distance and pictures on
IMAGE / MASK inputs, with their models picked from ComfyUI's model folders. The measuring itself
is ``psg_eval``'s."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import comfy.model_management
import numpy as np
import torch

from ...psg_eval import clip_score, dino, image_metrics, plots
from .. import host
from ..host.folders import NO_MODEL, model_entries, register_model_folder, resolve_model_entry
from .lpips import LpipsHandle

logger = logging.getLogger(__name__)

CLIP_FOLDER = "clip_score"
DINO_FOLDER = "dino"
CLIP_HOME = "ComfyUI/models/clip_score/"
PAIRED = ("mse", "psnr", "ssim", "lpips")
"""The metrics that have a background-only ``bg_`` twin."""


def register_folders() -> None:
    """``models/clip_score`` and ``models/dino`` as ComfyUI model folders, so extra_model_paths.yaml
    can point them elsewhere."""
    for name in (CLIP_FOLDER, DINO_FOLDER):
        register_model_folder(name)


register_folders()


def clip_models() -> list[str]:
    """The CLIP transformers folders (holding a config.json) in models/clip_score."""
    return model_entries(CLIP_FOLDER, lambda p: (p / "config.json").is_file())


def dino_models() -> list[str]:
    """The DINO ViT checkpoints in models/dino: a checkpoint file, or a folder holding one."""
    return model_entries(DINO_FOLDER, lambda p: p.suffix in (".pth", ".safetensors") or
                         (p.is_dir() and dino.dino_file(p) is not None))


class _LastModel:
    """One model kept loaded (the last one used), since loading takes seconds."""

    def __init__(self, load: Callable[[Path, torch.device], Any]) -> None:
        self.load = load
        self.key: str | None = None
        self.model: Any = None

    def __call__(self, path: Path) -> Any:
        key = str(path.resolve())
        if key != self.key:
            self.key, self.model = None, None
            with torch.inference_mode(False):
                self.model = self.load(path, comfy.model_management.get_torch_device())
            self.key = key
        return self.model


_clip_scorer = _LastModel(clip_score.load_clip_scorer)
_dino_model = _LastModel(lambda path, device: dino.load_dino(path).to(device))


# --------------------------------------------------------------------------- image metrics
def image_pair(a: torch.Tensor, b: torch.Tensor, node: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two IMAGEs of one size as (B, 3, H, W) tensors."""
    a, b = host.image_to_bchw(a, node), host.image_to_bchw(b, node)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{node}: image a is {a.shape[-1]}x{a.shape[-2]} but image b is "
                         f"{b.shape[-1]}x{b.shape[-2]}; scale one to the other first "
                         "(e.g. Upscale Image with crop disabled).")
    return a, b


def lpips_network(value: Any, node: str) -> torch.nn.Module | None:
    """The LPIPS network inside a PSG_LPIPS value; None when the input is not connected."""
    if value is None:
        return None
    if not isinstance(value, LpipsHandle):
        raise ValueError(f"{node}: the 'lpips' input is not an LPIPS network (connect a PSG LPIPS Loader).")
    return value.module


def _uint8(image: torch.Tensor) -> np.ndarray:
    return np.asarray(plots.to_pil(image))


def structure_distance(model_path: Path | None, a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PnPInversion's DINO structure distance (``psg_eval.dino``), batch mean; None without a model."""
    if model_path is None:
        return None
    model = _dino_model(model_path)
    a, b = image_metrics.broadcast(a, b)
    return float(np.mean([dino.structure_distance(model, _uint8(b[i]), _uint8(a[i])) for i in range(len(a))]))


def measure(node: str, image_a: torch.Tensor, image_b: torch.Tensor, mask: torch.Tensor | None,
            lpips: Any, structure_model: str) -> tuple[dict[str, float | None], str]:
    """Every metric by name (None = unavailable) and a text summary of them."""
    a, b = image_pair(image_a, image_b, node)
    m = host.mask_to_b1hw(mask, a.shape[-2], a.shape[-1]) if mask is not None else None
    values = image_metrics.image_metrics(a, b, m, lpips_network(lpips, node))
    if m is None:  # no edited region: the background is the whole image
        values.update({f"bg_{k}": values[k] for k in PAIRED})
    model_path = resolve_model_entry(DINO_FOLDER, structure_model or NO_MODEL, node)
    values["structure_distance"] = structure_distance(model_path, a, b)
    summary = image_metrics.format_summary(values)
    if a.shape[0] > 1 or b.shape[0] > 1:
        summary += f"\n(mean over a batch of {max(a.shape[0], b.shape[0])})"
    logger.info("%s:\n%s", node, summary)
    return values, summary


# --------------------------------------------------------------------------- CLIPScore
def clip_scores(node: str, image: torch.Tensor, text: str, clip_model: str, folder_path: str) -> torch.Tensor:
    """CLIPScore of each image against ``text`` with the picked CLIP model."""
    if not text.strip():
        raise ValueError(f"{node}: the text is empty; connect or type the prompt to score against.")
    path = resolve_model_entry(CLIP_FOLDER, clip_model, node, folder_path or "")
    if path is None:
        raise ValueError(f"{node}: pick a CLIP model (none selected); put one into {CLIP_HOME}. "
                         f"{clip_score.OFFLINE_HINT}")
    try:
        scorer = _clip_scorer(path)
    except (FileNotFoundError, ImportError) as err:
        raise RuntimeError(f"{node}: {str(err).removeprefix('CLIPScore: ')}") from None
    return scorer.score(host.image_to_bchw(image, node), text)


# --------------------------------------------------------------------------- pictures
def comparison_grid(node: str, source: torch.Tensor, edit: torch.Tensor,
                    max_difference: float) -> torch.Tensor:
    """source | edit | difference heatmap as an IMAGE, one grid per batch item."""
    s, e = host.image_to_bchw(source, node), host.image_to_bchw(edit, node)
    if s.shape[0] != e.shape[0] and 1 not in (s.shape[0], e.shape[0]):
        raise ValueError(f"{node}: batch sizes {s.shape[0]} and {e.shape[0]} differ "
                         "(use equal batches or 1).")
    grid = plots.comparison_grid(s, e, vmax=max_difference if max_difference > 0 else None)
    return host.bchw_to_image(grid)


def loss_plot(node: str, losses: list, width: int, height: int, title: str, log_scale: bool) -> torch.Tensor:
    """Per-step losses (a FLOAT list) as a plot IMAGE."""
    try:
        image = plots.loss_plot(losses, width=width, height=height, title=title, log_y=log_scale)
    except ValueError as err:
        raise ValueError(f"{node}: {err}") from None
    return host.bchw_to_image(image)
