"""PSG CLIPScore: how well an image matches a text (``nodes/pipelines/metrics.py``)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .host.folders import NO_MODEL
from .pipelines.metrics import clip_models, clip_scores


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
                "CLIPScore = 100 * max(cosine(image embedding, text embedding), 0), as torchmetrics computes "
                "it; 0-100, higher = the image matches the text better (about 30 is typical for a good match "
                "with ViT-L/14). The CLIP model is a transformers folder in models/clip_score, read offline."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The image(s) to score; a batch gives the mean."),
                io.String.Input(
                    "text", multiline=True, default="",
                    tooltip="The text to match, usually the edit prompt; CLIP reads at most 77 tokens.",
                ),
                io.Combo.Input(
                    "clip_model", options=[NO_MODEL, *clip_models()], default=NO_MODEL,
                    tooltip="A CLIP model folder (config.json + weights + tokenizer + preprocessor) in "
                            "models/clip_score.",
                ),
                io.String.Input(
                    "folder_path", default="", optional=True,
                    tooltip="Optional: a CLIP model directory anywhere on disk; overrides clip_model "
                            "when set.",
                ),
            ],
            outputs=[
                io.Float.Output(display_name="clip_score", tooltip="CLIPScore in [0, 100] (batch mean)."),
                io.String.Output(display_name="summary",
                                 tooltip="The score as text: connect Preview Any to read it on the canvas."),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, text: str, clip_model: str, folder_path: str = "") -> io.NodeOutput:
        scores = clip_scores(cls.NODE, image, text, clip_model, folder_path)
        value = float(scores.mean())
        summary = f"CLIPScore: {value:.2f}" + (f" (mean of {scores.numel()})" if scores.numel() > 1 else "")
        return io.NodeOutput(value, summary, ui={"text": [summary], "psg_metrics": [{"clip_score": value}]})
