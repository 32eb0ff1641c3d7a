"""PSG Image Metrics: how close an edit stays to the photo (``nodes/pipelines/metrics.py``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from comfy_api.latest import io

from .host.folders import NO_MODEL
from .pipelines.metrics import dino_models, measure
from .psg_types import PSGLpipsType


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


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
                io.Image.Input(
                    "image_b",
                    tooltip="Usually the edited image; same size as image_a (batch 1 is broadcast).",
                ),
                io.Mask.Input(
                    "mask", optional=True,
                    tooltip="Optional edit mask, 1 = edited region; the bg_ metrics ignore it. "
                            "Resized to the images.",
                ),
                PSGLpipsType.Input(
                    "lpips", optional=True,
                    tooltip="Optional LPIPS network (PSG LPIPS Loader); without it the LPIPS outputs are NaN "
                            "and the summary says 'unavailable'.",
                ),
                io.Combo.Input(
                    "structure_model", options=[NO_MODEL, *dino_models()], default=NO_MODEL, optional=True,
                    tooltip="Optional DINO ViT in models/dino (dino_vitbase8_pretrain.pth, or a transformers "
                            "folder of facebook/dino-vitb8) for PIE-Bench's structure distance on square "
                            "images; 'none' reports it unavailable (never 0).",
                ),
            ],
            outputs=[
                io.Float.Output(
                    display_name="psnr",
                    tooltip="PSNR in dB over the whole image (capped at 100 for identical images).",
                ),
                io.Float.Output(display_name="ssim", tooltip="SSIM over the whole image (1 = identical)."),
                io.Float.Output(display_name="lpips",
                                tooltip="LPIPS distance over the whole image (NaN without an LPIPS input)."),
                io.Float.Output(
                    display_name="bg_psnr",
                    tooltip="PSNR of the background (outside the mask); equals psnr without a mask.",
                ),
                io.Float.Output(
                    display_name="bg_ssim",
                    tooltip="SSIM of the background (outside the mask); equals ssim without a mask.",
                ),
                io.Float.Output(
                    display_name="bg_lpips",
                    tooltip="LPIPS of the background (outside the mask); NaN without an LPIPS input.",
                ),
                io.Float.Output(display_name="mse",
                                tooltip="Mean squared error over the whole image ([0, 1] pixels)."),
                io.String.Output(
                    display_name="summary",
                    tooltip="Every metric as text, one per line ('unavailable' where it could not be "
                            "computed).",
                ),
            ],
        )

    @classmethod
    def execute(cls, image_a: torch.Tensor, image_b: torch.Tensor, mask: torch.Tensor | None = None,
                lpips: Any = None, structure_model: str = NO_MODEL) -> io.NodeOutput:
        v, summary = measure(cls.NODE, image_a, image_b, mask, lpips, structure_model)
        return io.NodeOutput(
            v["psnr"], v["ssim"], _float_or_nan(v["lpips"]), v["bg_psnr"], v["bg_ssim"],
            _float_or_nan(v["bg_lpips"]), v["mse"], summary,
            ui={"text": [summary], "psg_metrics": [v]},
        )
