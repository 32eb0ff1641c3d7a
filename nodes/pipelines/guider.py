"""The triple-prompt GUIDER: null / source / edit predictions from one batched model call, combined by
the core's formula (``psg_core.guidance.triple_combine``), with an inversion's per-step nulls or
offsets."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import comfy.samplers
import node_helpers
import torch

from ...psg_core.ddim import offset_as_x0
from ...psg_core.guidance import triple_combine
from .. import host
from ..psg_types import PSGInversion, TextMode, check_matches

if TYPE_CHECKING:
    from ...psg_core.spaces import NoiseSpace

logger = logging.getLogger(__name__)

NODE = "PSG Triple-Prompt Guider"
SCALE_MISMATCH = (
    "%s: the inversion's %s was fitted at guidance scale %.4g but w_source + w_edit = %.4g; the unedited "
    "parts will not be reproduced faithfully. Set w_source + w_edit to %.4g, or refit at the new scale."
)


class PSGTripleGuider(comfy.samplers.CFGGuider):
    """CFGGuider over three prompts (``psg_core.guidance.triple_combine``). With an inversion it
    swaps in the per-step optimized null embedding (picked from the sigma). Direct-inversion offsets
    belong to the latent after each step: the PSG sampler adds them there itself (``fold_offsets``
    off); for any other sampler they are folded into x0 (``psg_core.ddim.offset_as_x0``), which a
    DDIM (euler) step turns back into the same latent move. The model's CFG patches (RescaleCFG,
    CFGNorm, ...) act on the combined x0 (``_post_cfg``)."""

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

    @property
    def offsets(self) -> tuple[torch.Tensor, ...] | None:
        return None if self.inversion is None else self.inversion.offsets

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

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
               disable_pbar=False, seed=None):
        from ...psg_core.spaces import NoiseSpace

        # A stock sampler starts a flow model at (1 - sigma) * latent + sigma * noise: with Disable Noise
        # and sigma 1 that is exactly 0, whatever inverted latent was connected.
        starts_at_zero = (self.space is NoiseSpace.FLOW and len(sigmas) > 0 and float(sigmas[0]) >= 1.0 - 1e-6
                          and not torch.any(noise))
        sampler_function = getattr(sampler, "sampler_function", None)
        if starts_at_zero and not getattr(sampler_function, "starts_from_latent", False):
            raise ValueError(
                f"{NODE}: on a flow model (SD3/Flux) a stock sampler with Disable Noise starts from "
                "(1 - sigma) * latent = 0, not from the inverted noise. Use the PSG Perceptual Sampler "
                "(scale 0 for plain DDIM), which starts from the inverted latent."
            )
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask,
                              callback=callback, disable_pbar=disable_pbar, seed=seed)

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI signature)
        null_c = self.conds.get("negative")
        source_c = self.conds.get("middle")
        edit_c = self.conds.get("positive")
        inv = self.inversion
        step = None
        if inv is not None and (inv.nulls is not None or inv.offsets is not None):
            if tuple(x.shape[1:]) != inv.latent_shape[1:]:
                raise ValueError(f"{NODE}: the latent {list(x.shape)} does not match the inversion "
                                 f"{list(inv.latent_shape)}.")
            step = self._step_index(float(timestep.reshape(-1)[0]))
            if inv.mode == TextMode.NEGATIVE_PROMPT:  # the whole source cond (pooled output too)
                null_c = source_c
            elif inv.nulls is not None:
                null_c = host.swap_embedding(null_c, inv.nulls[step].to(x.device))
        conds = [null_c, source_c if self.w_source != 0.0 else None, edit_c if self.w_edit != 0.0 else None]
        out = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        x0 = triple_combine(out[0], out[1], out[2], self.w_source, self.w_edit)
        x0 = self._post_cfg(x0, out[0], null_c, edit_c, x, timestep, model_options)
        if step is not None and inv.offsets is not None and self.fold_offsets:
            m = inv.steps - step
            offset = inv.offsets[step].to(x.device, x.dtype)
            x0 = x0 + offset_as_x0(offset, float(inv.sigmas[m]), float(inv.sigmas[m - 1]), self.space)
        return x0

    def _post_cfg(self, x0: torch.Tensor, x0_null: torch.Tensor, null_c: Any, edit_c: Any, x: torch.Tensor,
                  timestep: torch.Tensor, model_options: dict) -> torch.Tensor:
        """ComfyUI's CFG patches (``sampler_cfg_function`` such as RescaleCFG, ``sampler_post_cfg_function``
        such as CFGNorm / CFGZeroStar), through ComfyUI's own ``cfg_function``: the triple mix is CFG at
        scale g = w_source + w_edit with the effective cond prediction x0_null + (x0 - x0_null) / g,
        so with w_source = 0 a patch sees exactly what it sees under the stock CFGGuider."""
        if "sampler_cfg_function" not in model_options and not model_options.get("sampler_post_cfg_function"):
            return x0
        scale = self.w_source + self.w_edit
        if scale == 0.0:
            logger.warning("%s: w_source + w_edit = 0, so the model's CFG patches (e.g. RescaleCFG, CFGNorm) "
                           "have no CFG to act on and are not applied.", NODE)
            return x0
        cond_pred = x0_null + (x0 - x0_null) / scale
        return comfy.samplers.cfg_function(self.inner_model, cond_pred, x0_null, scale, x, timestep,
                                           model_options=model_options, cond=edit_c, uncond=null_c)


def check_fitted_scale(inversion: PSGInversion | None, w_source: float, w_edit: float, node: str) -> bool:
    """Warn when the nulls / offsets were fitted at another CFG scale than w_source + w_edit: they make
    sampling retrace the inversion only at the scale they were fitted at. Returns whether they agree."""
    if inversion is None or inversion.mode is None or inversion.guidance_scale is None:
        return True
    if inversion.mode == TextMode.NEGATIVE_PROMPT:  # negative-prompt inversion does not depend on the scale
        return True
    total = float(w_source) + float(w_edit)
    if math.isclose(total, inversion.guidance_scale, rel_tol=1e-3, abs_tol=1e-3):
        return True
    fitted = inversion.guidance_scale
    logger.warning(SCALE_MISMATCH, node, inversion.mode.value, fitted, total, fitted)
    return False


def make_guider(model: Any, null: Any, source: Any, edit: Any, w_source: float, w_edit: float,
                inversion: PSGInversion | None, node: str = NODE) -> PSGTripleGuider:
    family = host.detect_family(model, node)
    for name, cond in (("null", null), ("source", source), ("edit", edit)):
        host.embedding_of(cond, name, node)
    if inversion is not None:
        check_matches(inversion, family.name, node)
        check_fitted_scale(inversion, w_source, w_edit, node)
    guider = PSGTripleGuider(model)
    guider.set_triple(null, source, edit, w_source, w_edit, inversion, family.space)
    return guider

