"""Metric and picture nodes: image metrics, CLIPScore, comparison grid, loss plot.

The math lives in ``psg_core.metrics`` / ``clip_score`` / ``plots``; here are schemas, model
folders and the IMAGE/MASK layout conversions.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..psg_core import metrics as M
from ..psg_core import plots
from . import host, validation
from .host.folders import register_model_folder
from .psg_types import PSGLossesType, PSGLpipsType

logger = logging.getLogger(__name__)

CLIP_FOLDER = "clip_score"
DINO_FOLDER = "dino"
NO_MODEL = "none"


def register_folders() -> None:
    """``models/clip_score`` and ``models/dino`` (transformers model directories) as ComfyUI model
    folders, so extra_model_paths.yaml can point them elsewhere."""
    for name in (CLIP_FOLDER, DINO_FOLDER):
        register_model_folder(name)


register_folders()


def model_dirs(folder: str) -> list[str]:
    """Names of the model directories (holding a config.json) in a registered folder."""
    found: dict[str, None] = {}
    for base in folder_paths.get_folder_paths(folder):
        if os.path.isdir(base):
            for entry in sorted(os.listdir(base)):
                if os.path.isfile(os.path.join(base, entry, "config.json")):
                    found.setdefault(entry, None)
    return list(found)


def resolve_model_dir(folder: str, name: str, path: str, node: str) -> Path | None:
    """An explicit directory path wins; else a name from the folder list; ``none`` -> None."""
    if path.strip():
        p = Path(path.strip()).expanduser()
        if not p.is_dir():
            raise ValueError(f"{node}: the folder path {p} does not exist.")
        return p
    if name in ("", NO_MODEL):
        return None
    for base in folder_paths.get_folder_paths(folder):
        candidate = Path(base) / name
        if candidate.is_dir():
            return candidate
    raise ValueError(f"{node}: no model folder '{name}' in models/{folder} "
                     f"({', '.join(folder_paths.get_folder_paths(folder))}).")


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _bchw_pair(a: torch.Tensor, b: torch.Tensor, node: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = host.image_to_bchw(a, node), host.image_to_bchw(b, node)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"{node}: image a is {a.shape[-1]}x{a.shape[-2]} but image b is {b.shape[-1]}x{b.shape[-2]}; "
                         "scale one to the other first (e.g. Upscale Image with crop disabled).")
    return a, b


# --------------------------------------------------------------------------- image metrics
class PSGImageMetrics(io.ComfyNode):
    """PSNR / SSIM / LPIPS / MSE, whole image and background only (PIE-Bench), plus structure distance."""

    NODE = "PSG Image Metrics"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGImageMetrics",
            display_name=cls.NODE,
            category="PSG/metrics",
            is_output_node=True,
            description=(
                "How close the edit stays to the photo. PSNR (dB, higher = closer), SSIM (1 = identical; "
                "scikit-image's Gaussian SSIM), LPIPS (0 = identical) and MSE on [0, 1] images. With a mask "
                "(1 = edited region) the bg_ values compare only the background: both images are multiplied "
                "by (1 - mask) as in PIE-Bench. Batches give the batch mean."
            ),
            inputs=[
                io.Image.Input("image_a", tooltip="Usually the source photo."),
                io.Image.Input("image_b", tooltip="Usually the edited image; same size as image_a (batch 1 is broadcast)."),
                io.Mask.Input("mask", optional=True, tooltip="Optional edit mask, 1 = edited region; the bg_ metrics ignore it. Resized to the images."),
                PSGLpipsType.Input("lpips", optional=True, tooltip="Optional LPIPS network (PSG LPIPS Loader); without it the LPIPS outputs are NaN and the summary says 'unavailable'."),
                io.Combo.Input("structure_model", options=[NO_MODEL, *model_dirs(DINO_FOLDER)], default=NO_MODEL, optional=True, tooltip="Optional DINO/ViT transformers folder in models/dino for the structure distance; 'none' reports it unavailable (never 0)."),
            ],
            outputs=[
                io.Float.Output(display_name="psnr", tooltip="PSNR in dB over the whole image (capped at 100 for identical images)."),
                io.Float.Output(display_name="ssim", tooltip="SSIM over the whole image (1 = identical)."),
                io.Float.Output(display_name="lpips", tooltip="LPIPS distance over the whole image (NaN without an LPIPS input)."),
                io.Float.Output(display_name="bg_psnr", tooltip="PSNR of the background (outside the mask); equals psnr without a mask."),
                io.Float.Output(display_name="bg_ssim", tooltip="SSIM of the background (outside the mask); equals ssim without a mask."),
                io.Float.Output(display_name="bg_lpips", tooltip="LPIPS of the background (outside the mask); NaN without an LPIPS input."),
                io.Float.Output(display_name="mse", tooltip="Mean squared error over the whole image ([0, 1] pixels)."),
                io.String.Output(display_name="summary", tooltip="Every metric as text, one per line ('unavailable' where it could not be computed)."),
            ],
        )

    @classmethod
    def execute(cls, image_a: torch.Tensor, image_b: torch.Tensor, mask: torch.Tensor | None = None,
                lpips: Any = None, structure_model: str = NO_MODEL) -> io.NodeOutput:
        a, b = _bchw_pair(image_a, image_b, cls.NODE)
        m = host.mask_to_b1hw(mask, a.shape[-2], a.shape[-1]) if mask is not None else None
        module = M.lpips_module_of(lpips) if lpips is not None else None
        values = M.image_metrics(a, b, m, module)
        if m is None:  # no edited region: the background is the whole image
            values.update({f"bg_{k}": values[k] for k in ("mse", "psnr", "ssim", "lpips")})
        dino = M.load_dino(resolve_model_dir(DINO_FOLDER, structure_model or NO_MODEL, "", cls.NODE))
        dist = M.structure_distance(dino, a, b)
        values["structure_distance"] = None if dist is None else float(dist.mean())
        summary = M.format_summary(values)
        if a.shape[0] > 1 or b.shape[0] > 1:
            summary += f"\n(mean over a batch of {max(a.shape[0], b.shape[0])})"
        logger.info("%s:\n%s", cls.NODE, summary)
        v = values
        return io.NodeOutput(
            v["psnr"], v["ssim"], _float_or_nan(v["lpips"]), v["bg_psnr"], v["bg_ssim"], _float_or_nan(v["bg_lpips"]),
            v["mse"], summary,
            ui={"text": [summary], "psg_metrics": [values]},
        )


# --------------------------------------------------------------------------- CLIPScore
_SCORER_CACHE: dict[str, Any] = {}


def _scorer(path: Path) -> Any:
    """One CLIP model kept loaded (the last one used); loading takes seconds."""
    from ..psg_core.clip_score import load_clip_scorer

    key = str(path.resolve())
    if key not in _SCORER_CACHE:
        _SCORER_CACHE.clear()
        with torch.inference_mode(False):
            _SCORER_CACHE[key] = load_clip_scorer(path, comfy.model_management.get_torch_device())
    return _SCORER_CACHE[key]


class PSGCLIPScore(io.ComfyNode):
    """How well an image matches a text: CLIPScore = 100 * max(cos, 0) (torchmetrics convention)."""

    NODE = "PSG CLIPScore"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGCLIPScore",
            display_name=cls.NODE,
            category="PSG/metrics",
            is_output_node=True,
            description=(
                "CLIPScore = 100 * max(cosine(image embedding, text embedding), 0), as torchmetrics computes it; "
                "0-100, higher = the image matches the text better (about 30 is typical for a good match with "
                "ViT-L/14). The CLIP model is a transformers folder in models/clip_score, read offline."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to score; a batch gives the mean."),
                io.String.Input("text", multiline=True, default="", tooltip="The text to match, usually the edit prompt; CLIP reads at most 77 tokens."),
                io.Combo.Input("clip_model", options=[NO_MODEL, *model_dirs(CLIP_FOLDER)], default=NO_MODEL, tooltip="A CLIP model folder (config.json + weights + tokenizer + preprocessor) in models/clip_score."),
                io.String.Input("folder_path", default="", optional=True, tooltip="Optional: a CLIP model directory anywhere on disk; overrides clip_model when set."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_score", tooltip="CLIPScore in [0, 100] (batch mean)."),
                io.String.Output(display_name="summary", tooltip="The score as text: connect Preview Any to read it on the canvas."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, text: str, clip_model: str, folder_path: str = "") -> io.NodeOutput:
        from ..psg_core.clip_score import OFFLINE_HINT

        if not text.strip():
            raise ValueError(f"{cls.NODE}: the text is empty; connect or type the prompt to score against.")
        path = resolve_model_dir(CLIP_FOLDER, clip_model, folder_path or "", cls.NODE)
        if path is None:
            raise ValueError(f"{cls.NODE}: pick a CLIP model (none selected). {OFFLINE_HINT}")
        try:
            scorer = _scorer(path)
        except (FileNotFoundError, ImportError) as err:
            raise RuntimeError(f"{cls.NODE}: {str(err).removeprefix('CLIPScore: ')}") from None
        scores = scorer.score(host.image_to_bchw(image, cls.NODE), text)
        value = float(scores.mean())
        summary = f"CLIPScore: {value:.2f}" + (f" (mean of {scores.numel()})" if scores.numel() > 1 else "")
        return io.NodeOutput(value, summary, ui={"text": [summary], "psg_metrics": [{"clip_score": value}]})


# --------------------------------------------------------------------------- pictures
class PSGCompareGrid(io.ComfyNode):
    """source | edit | difference heatmap with a colour bar, to see where an edit changed the photo."""

    NODE = "PSG Compare Grid"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGCompareGrid",
            display_name=cls.NODE,
            category="PSG/metrics",
            description="Side by side: the source, the edit and a heatmap of their absolute difference (mean over RGB) with a colour bar.",
            inputs=[
                io.Image.Input("source", tooltip="The original photo."),
                io.Image.Input("edit", tooltip="The edited image; resized to the source if the sizes differ."),
                io.Float.Input("max_difference", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Difference shown as the brightest colour; 0 = the largest difference in each image (auto). Fix it (e.g. 0.5) to compare grids with each other."),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="One grid image per batch item: height + caption strip, three panels wide plus the colour bar.")],
        )

    @classmethod
    def validate_inputs(
        cls,
        max_difference: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, source: torch.Tensor, edit: torch.Tensor, max_difference: float = 0.0) -> io.NodeOutput:
        s = host.image_to_bchw(source, cls.NODE)
        e = host.image_to_bchw(edit, cls.NODE)
        if s.shape[0] != e.shape[0] and 1 not in (s.shape[0], e.shape[0]):
            raise ValueError(f"{cls.NODE}: batch sizes {s.shape[0]} and {e.shape[0]} differ (use equal batches or 1).")
        grid = plots.comparison_grid(s, e, vmax=max_difference if max_difference > 0 else None)
        return io.NodeOutput(plots.to_comfy_image(grid))


class PSGLossPlot(io.ComfyNode):
    """The guidance loss at every sampling step as a line plot, to see whether guidance converges."""

    NODE = "PSG Loss Plot"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGLossPlot",
            display_name=cls.NODE,
            category="PSG/metrics",
            is_input_list=True,
            description="Plots per-step losses (e.g. PSG Edit's 'losses' output: the LPIPS loss at each guided step).",
            inputs=[
                io.MultiType.Input("losses", types=[io.Float, PSGLossesType], tooltip="Per-step losses: a FLOAT list (PSG Edit's losses output) or a PSG_LOSSES object."),
                io.Int.Input("width", default=512, min=160, max=4096, step=8, tooltip="Plot width in pixels."),
                io.Int.Input("height", default=320, min=120, max=4096, step=8, tooltip="Plot height in pixels."),
                io.String.Input("title", default="perceptual guidance loss per step", tooltip="Title drawn above the plot."),
                io.Boolean.Input("log_scale", default=False, tooltip="Logarithmic loss axis (needs positive losses; falls back to linear)."),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The plot as an IMAGE of width x height.")],
        )

    @classmethod
    def execute(cls, losses: list, width: list[int], height: list[int], title: list[str],
                log_scale: list[bool]) -> io.NodeOutput:
        values: Any = losses
        if len(losses) == 1 and not isinstance(losses[0], (int, float)):
            values = losses[0]  # one PSG_LOSSES object (or a list inside)
        try:
            image = plots.loss_plot(values, width=int(width[0]), height=int(height[0]), title=str(title[0]),
                                    log_y=bool(log_scale[0]))
        except ValueError as err:
            raise ValueError(f"{cls.NODE}: {err}") from None
        return io.NodeOutput(plots.to_comfy_image(image))


NODES: list[type[io.ComfyNode]] = [PSGImageMetrics, PSGCLIPScore, PSGCompareGrid, PSGLossPlot]
