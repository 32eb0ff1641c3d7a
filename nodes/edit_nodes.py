"""One-node edit: inversion -> text optimisation -> the guider + sampler of the advanced graph -> decode;
the first two are reused from memory when only sampling knobs change."""

from __future__ import annotations

import logging

import comfy.model_management
import latent_preview
import torch
from comfy_api.latest import io

from ..psg_core.perceptual import DEFAULT_SCALE
from . import host, validation
from .guider_nodes import make_guider
from .inversion_cache import INVERSIONS, fingerprint
from .inversion_nodes import invert, optimise_text
from .psg_types import TEXT_MODES, PSGLpipsType
from .sampler_nodes import (
    GUIDANCE_RESOLUTION_TOOLTIP,
    GUIDANCE_RESOLUTIONS,
    GUIDANCE_VAE_TOOLTIP,
    PerceptualSettings,
    make_sampler,
)

logger = logging.getLogger(__name__)

NODE = "PSG Edit"
NO_OPTIMISATION = "none"
NEEDS_SCALE = (TEXT_MODES[0], TEXT_MODES[2])
"""Text modes fitted at a guidance scale (null-text optimisation, direct offsets): a new
w_source + w_edit means fitting again; negative-prompt nulls do not depend on it."""


def show_phase(node_id: str | None, text: str) -> None:
    """The phase a long run is in, as text on the node (the progress bar restarts per phase)."""
    logger.info("%s: %s", NODE, text)
    if not node_id:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except (ImportError, AttributeError):  # no server (scripts, some tests): the log line is enough
        pass


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """Like VAEEncode: IMAGE (B, H, W, C) -> LATENT samples."""
    host.image_to_bchw(image, NODE)
    validation.check_image_size(image, NODE)
    return vae.encode(image[:, :, :, :3])


class PSGEdit(io.ComfyNode):
    """Everything in one box: the full PSG edit of a real image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGEdit",
            display_name=NODE,
            category="PSG",
            description=(
                "Edits a real photo with a text prompt: DDIM inversion under the source caption, text-guidance "
                "optimisation, triple-prompt guidance (null / source / edit) and LPIPS perceptual-similarity "
                "guidance towards the photo. Same inputs, same output. A guidance_vae (Load VAE -> taesd) and/or "
                "guidance_resolution 1/2 make the perceptual steps much cheaper; the result is always decoded "
                "with the main vae."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x, SDXL, SD3 or Flux)."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the photo and decodes the result (and the x0 estimates for LPIPS unless a guidance_vae is connected)."),
                io.Image.Input("image", tooltip="The real photo to edit; sides a multiple of 8 (64 for best results)."),
                io.Conditioning.Input("null", tooltip="The null (empty) prompt."),
                io.Conditioning.Input("source", tooltip="A caption of the photo (source prompt)."),
                io.Conditioning.Input("edit", tooltip="The caption of the wanted result (edit prompt), e.g. the source with one word changed."),
                PSGLpipsType.Input("lpips", tooltip="The LPIPS network, from PSG LPIPS Loader."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="DDIM steps for inversion and sampling; 50 as in the paper, 20-30 faster."),
                io.Combo.Input("scheduler", options=host.SCHEDULERS, default=host.DEFAULT_SCHEDULER, tooltip="Sigma schedule for inversion and sampling; 'simple' matches DDIM."),
                io.Float.Input("w_source", default=0.0, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Weight of (source - null). 0 = plain CFG on the edit prompt."),
                io.Float.Input("w_edit", default=7.5, min=-30.0, max=30.0, step=0.1, round=0.01, tooltip="Weight of (edit - null), the CFG scale; 0 reconstructs the photo. 5-10 typical."),
                io.Combo.Input("text_optimisation", options=[*TEXT_MODES, NO_OPTIMISATION], default=TEXT_MODES[0], tooltip="How to keep the unedited content: null-text optimisation (best, slow), negative-prompt (free), direct offsets (fast), none. Fitted at scale w_source + w_edit."),
                io.Int.Input("inner_steps", default=10, min=1, max=100, tooltip="Null-text: the budget per step, as in prompt-to-prompt: 10 = at most 12 model calls (the default schedule usually stops after 3-4)."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.05, round=0.001, tooltip="Perceptual (LPIPS) guidance strength; 0 turns it off. 0.5-2 typical; higher keeps more of the photo."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the run where perceptual guidance starts."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Fraction of the run where perceptual guidance stops."),
                io.Mask.Input("mask", optional=True, tooltip="Optional: 1 = region to edit freely, 0 = region kept close to the photo by LPIPS."),
                io.Vae.Input("guidance_vae", optional=True, tooltip=GUIDANCE_VAE_TOOLTIP),
                io.Combo.Input("guidance_resolution", options=list(GUIDANCE_RESOLUTIONS), default="full", optional=True, tooltip=GUIDANCE_RESOLUTION_TOOLTIP),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The edited photo."),
                io.Latent.Output(display_name="latent", tooltip="The edited latent."),
                io.Float.Output(display_name="losses", is_output_list=True, tooltip="The LPIPS loss at each guided step (a list), to plot or inspect."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls,
        w_source: float | None = None,
        w_edit: float | None = None,
        scale: float | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, vae, image, null, source, edit, lpips, steps, scheduler, w_source, w_edit,
                text_optimisation, inner_steps, scale, start, end, mask=None, guidance_vae=None,
                guidance_resolution="full") -> io.NodeOutput:
        for name, cond in (("null", null), ("source", source), ("edit", edit)):
            host.embedding_of(cond, name, NODE)
        settings = PerceptualSettings(scale=scale, start=start, end=end, every=1, through_model=False,
                                      resolution=guidance_resolution or "full")
        settings.validate(NODE)
        validation.check_guidance_vae(guidance_vae, model, NODE)  # before the slow inversion
        validation.check_mask_batch(mask, image.shape[0], NODE)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        samples = encode(vae, image)
        inv = cls.inversion(model, samples, source, null, steps, scheduler, w_source + w_edit,
                            text_optimisation, inner_steps, node_id)
        guider = make_guider(model, null, source, edit, w_source, w_edit, inv, node=NODE)
        sampler = make_sampler(vae, image, lpips, settings, mask, inv, guidance_vae, node=NODE)
        sigmas = inv.sigmas.flip(0).clone()
        start_latent = model.model.process_latent_out(inv.noise.clone())
        show_phase(node_id, f"sampling ({steps} steps)")
        callback = latent_preview.prepare_callback(model, steps)
        out = guider.sample(torch.zeros_like(start_latent), start_latent, sampler, sigmas,
                            callback=callback, disable_pbar=True, seed=0)  # no noise is added
        losses = list(sampler.sampler_function.losses)
        out = out.to(comfy.model_management.intermediate_device())
        show_phase(node_id, "decoding")
        decoded = vae.decode(out)
        comfy.model_management.throw_exception_if_processing_interrupted()  # cancelled while decoding
        if decoded.ndim == 5:  # video VAEs return (B, T, H, W, C)
            decoded = decoded.reshape(-1, *decoded.shape[-3:])
        show_phase(node_id, "done")
        return io.NodeOutput(decoded, {"samples": out}, losses or [0.0])

    @staticmethod
    def inversion(model, samples, source, null, steps, scheduler, guidance_scale, text_optimisation,
                  inner_steps, node_id):
        """Inversion and text optimisation, each taken from memory when its inputs are unchanged."""
        owner = model.model
        model_key = fingerprint(getattr(model, "patches_uuid", None), model.model_options)
        inv_key = fingerprint("inversion", model_key, samples, source, steps, scheduler)
        text_key = fingerprint("text", inv_key, null, text_optimisation, inner_steps,
                               guidance_scale if text_optimisation in NEEDS_SCALE else None)
        final = INVERSIONS.get(text_key, owner)
        if final is not None:
            show_phase(node_id, "reusing the inversion and text optimisation from the last run")
            return final
        inv = INVERSIONS.get(inv_key, owner)
        if inv is None:
            show_phase(node_id, f"DDIM inversion ({steps} steps)")
            inv, _ = invert(model, samples, source, steps=steps, scheduler=scheduler, cfg=1.0, null=None,
                            node=NODE)
            INVERSIONS.put(inv_key, owner, inv)
        else:
            show_phase(node_id, "reusing the DDIM inversion from the last run")
        if text_optimisation != NO_OPTIMISATION:
            show_phase(node_id, f"text optimisation: {text_optimisation} ({steps} steps)")
            inv = optimise_text(model, inv, source, null, mode=text_optimisation,
                                guidance_scale=guidance_scale, inner_steps=inner_steps, tolerance=None,
                                node=NODE)
        INVERSIONS.put(text_key, owner, inv)
        return inv
