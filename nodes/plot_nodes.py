"""Pictures for people: PSG Compare Grid and PSG Loss Plot (``nodes/pipelines/metrics.py``)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from . import validation
from .pipelines.metrics import comparison_grid, loss_plot


class PSGCompareGrid(io.ComfyNode):
    """source | edit | difference heatmap with a colour bar, to see where an edit changed the photo."""

    NODE = "PSG Compare Grid"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGCompareGrid",
            display_name=cls.NODE,
            category="PSG/metrics",
            description="Side by side: the source, the edit and a heatmap of their absolute difference "
                        "(mean over RGB) with a colour bar.",
            inputs=[
                io.Image.Input("source", tooltip="The original photo."),
                io.Image.Input("edit",
                               tooltip="The edited image; resized to the source if the sizes differ."),
                io.Float.Input(
                    "max_difference", default=0.0, min=0.0, max=1.0, step=0.01,
                    tooltip="Difference shown as the brightest colour; 0 = the largest difference in each "
                            "image (auto). Fix it (e.g. 0.5) to compare grids with each other.",
                ),
            ],
            outputs=[io.Image.Output(
                display_name="grid",
                tooltip="One grid image per batch item: height + caption strip, three panels wide plus the "
                        "colour bar.",
            )],
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
        return io.NodeOutput(comparison_grid(cls.NODE, source, edit, max_difference))


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
            description="Plots per-step losses (e.g. PSG Edit's 'losses' output: the LPIPS loss at each "
                        "guided step).",
            inputs=[
                io.Float.Input("losses", force_input=True,
                               tooltip="Per-step losses: a FLOAT list, e.g. PSG Edit's losses output."),
                io.Int.Input("width", default=512, min=160, max=4096, step=8,
                             tooltip="Plot width in pixels."),
                io.Int.Input("height", default=320, min=120, max=4096, step=8,
                             tooltip="Plot height in pixels."),
                io.String.Input("title", default="perceptual guidance loss per step",
                                tooltip="Title drawn above the plot."),
                io.Boolean.Input(
                    "log_scale", default=False,
                    tooltip="Logarithmic loss axis (needs positive losses; falls back to linear).",
                ),
            ],
            outputs=[io.Image.Output(display_name="plot", tooltip="The plot as an IMAGE of width x height.")],
        )

    @classmethod
    def execute(cls, losses: list, width: list[int], height: list[int], title: list[str],
                log_scale: list[bool]) -> io.NodeOutput:
        return io.NodeOutput(loss_plot(cls.NODE, losses, int(width[0]), int(height[0]), str(title[0]),
                                       bool(log_scale[0])))
