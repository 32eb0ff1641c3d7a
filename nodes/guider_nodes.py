"""Triple-prompt GUIDER (issue 5, Deliver 4): null / source / edit in one model call."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import comfy.samplers
import node_helpers
import torch
from comfy_api.latest import io

from . import host, validation
from .psg_types import TEXT_MODES, PSGInversion, PSGInversionType, check_matches

if TYPE_CHECKING:
    from ..psg_core.spaces import NoiseSpace

logger = logging.getLogger(__name__)

NODE = "PSG Triple-Prompt Guider"


def combine(x0_null: torch.Tensor, x0_source: torch.Tensor, x0_edit: torch.Tensor, w_source: float,
            w_edit: float) -> torch.Tensor:
    """x0 = x0_null + w_edit (x0_edit - x0_null) + w_source (x0_source - x0_null) (DESIGN.md §2)."""
    out = x0_null
    if w_edit != 0.0:
        out = out + w_edit * (x0_edit - x0_null)
    if w_source != 0.0:
        out = out + w_source * (x0_source - x0_null)
    return out


class PSGTripleGuider(comfy.samplers.CFGGuider):
    """CFGGuider over three prompts; with an inversion it also swaps in the per-step optimised
    null embedding (picked from the sigma) and folds direct-inversion offsets into x0 so that a
    DDIM (euler) step lands exactly where the offset says."""

    def set_triple(self, null: Any, source: Any, edit: Any, w_source: float, w_edit: float,
                   inversion: PSGInversion | None, space: NoiseSpace) -> None:
        # same cond keys and prompt types as core's Guider_DualCFG, so both process conds alike
        middle = node_helpers.conditioning_set_values(source, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": edit, "middle": middle, "negative": null})
        self.w_source = float(w_source)
        self.w_edit = float(w_edit)
        self.inversion = inversion
        self.space = space
        self.fold_offsets = True

    def _step_index(self, sigma: float) -> int:
        inv = self.inversion
        m = host.closest_index(inv.sigmas, sigma)
        if m is None or m == 0:
            raise ValueError(
                f"{NODE}: the sampler's sigma {sigma:.4g} is not on the inversion's schedule "
                f"({inv.steps} steps, {inv.scheduler}). Use BasicScheduler with the same scheduler and "
                "steps (denoise 1.0) as the inversion, or the PSG Perceptual Sampler."
            )
        return inv.steps - m

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI signature)
        null_c = self.conds.get("negative")
        source_c = self.conds.get("middle")
        edit_c = self.conds.get("positive")
        inv = self.inversion
        step = None
        if inv is not None and (inv.nulls is not None or inv.offsets is not None):
            if tuple(x.shape[1:]) != inv.latent_shape[1:]:
                raise ValueError(f"{NODE}: the latent {list(x.shape)} does not match the inversion {list(inv.latent_shape)}.")
            step = self._step_index(float(timestep.reshape(-1)[0]))
            if inv.mode == TEXT_MODES[1]:  # negative-prompt: the whole source cond (pooled output too)
                null_c = source_c
            elif inv.nulls is not None:
                null_c = host.swap_embedding(null_c, inv.nulls[step].to(x.device))
        conds = [null_c, source_c if self.w_source != 0.0 else None, edit_c if self.w_edit != 0.0 else None]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        x0 = combine(out[0], out[1], out[2], self.w_source, self.w_edit)
        if step is not None and inv.offsets is not None and self.fold_offsets:
            x0 = x0 + self._offset_as_x0(step, timestep, x)
        return x0

    def _offset_as_x0(self, step: int, timestep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """DDIM: x_next = a_n x0 + b_n (x - a x0) / b, so adding d to x0 moves x_next by
        d (a_n - b_n a / b); pick d so that move equals the stored offset."""
        from ..psg_core.spaces import coefficients

        inv = self.inversion
        m = inv.steps - step
        sigma, sigma_next = inv.sigmas[m], inv.sigmas[m - 1]
        a, b = coefficients(self.space, sigma)
        a_n, b_n = coefficients(self.space, sigma_next)
        gain = float(a_n) - float(b_n) * float(a) / float(b)
        return inv.offsets[step].to(x.device, x.dtype) / gain


def make_guider(model: Any, null: Any, source: Any, edit: Any, w_source: float, w_edit: float,
                inversion: PSGInversion | None, node: str = NODE) -> PSGTripleGuider:
    family = host.detect_family(model, node)
    for name, cond in (("null", null), ("source", source), ("edit", edit)):
        host.embedding_of(cond, name, node)
    if inversion is not None:
        check_matches(inversion, family.name, node)
    guider = PSGTripleGuider(model)
    guider.set_triple(null, source, edit, w_source, w_edit, inversion, family.space)
    return guider


class PSGTriplePromptGuider(io.ComfyNode):
    """GUIDER node for SamplerCustomAdvanced: null / source / edit prompts, one batched call."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGTriplePromptGuider",
            display_name=NODE,
            category="PSG/sampling",
            description=(
                "Text guidance over three prompts: x0 = null + w_edit (edit - null) + w_source (source - null). "
                "w_source = 0 is plain CFG on the edit prompt; w_edit = 0 rebuilds the source image. With an "
                "optimised inversion it uses the per-step null embeddings / offsets so the unedited parts stay."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (the one used for the inversion)."),
                io.Conditioning.Input("null", tooltip="The null (empty) prompt; replaced per step by the optimised nulls when an inversion carries them."),
                io.Conditioning.Input("source", tooltip="The caption of the real image (source prompt)."),
                io.Conditioning.Input("edit", tooltip="The edited caption (target prompt)."),
                io.Float.Input("w_source", default=0.0, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Weight of (source - null). 0 = plain CFG on the edit prompt; small negative values push away from the source, positive values keep more of it."),
                io.Float.Input("w_edit", default=7.5, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Weight of (edit - null), the usual CFG scale; 0 reconstructs the source. 5-10 typical."),
                PSGInversionType.Input("inversion", optional=True, tooltip="Optional: an inversion from PSG Text Guidance Optimisation, for its per-step nulls or offsets. Sample with the same steps and scheduler."),
            ],
            outputs=[io.Guider.Output(tooltip="A GUIDER for SamplerCustomAdvanced (with the PSG Perceptual Sampler or any sampler).")],
        )

    @classmethod
    def validate_inputs(
        cls,
        w_source: float | None = None,
        w_edit: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, null, source, edit, w_source, w_edit, inversion=None) -> io.NodeOutput:
        return io.NodeOutput(make_guider(model, null, source, edit, w_source, w_edit, inversion))
