"""The one-node edit: inversion -> text optimization -> the triple-prompt guider and perceptual
sampler of the advanced graph -> decode. Inversion and text optimization are taken from memory when
only sampling knobs change."""

from __future__ import annotations

import logging
from typing import Any

import comfy.model_management
import latent_preview
import torch

from .. import host, validation
from ..inversion_cache import INVERSIONS, fingerprint
from ..psg_types import TEXT_MODE_NAMES, PSGInversion, TextMode
from .guider import make_guider
from .inversion import invert, optimize_text
from .perceptual import PerceptualSettings, make_sampler

logger = logging.getLogger(__name__)

NO_OPTIMIZATION = "none"


def needs_scale(text_mode: str) -> bool:
    """Whether the text optimization depends on w_source + w_edit (then a new scale means refitting)."""
    return text_mode in TEXT_MODE_NAMES and TextMode(text_mode).needs_scale


def show_phase(node: str, node_id: str | None, text: str) -> None:
    """The phase a long run is in, as text on the node (the progress bar restarts per phase)."""
    logger.info("%s: %s", node, text)
    if not node_id:
        return
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except (ImportError, AttributeError):  # no server (scripts, some tests): the log line is enough
        pass


def encode(vae: Any, image: torch.Tensor, node: str) -> torch.Tensor:
    """Like VAEEncode: IMAGE (B, H, W, C) -> LATENT samples."""
    host.image_to_bchw(image, node)
    validation.check_image_size(image, node)
    return vae.encode(image[:, :, :, :3])


def edit(model: Any, vae: Any, image: torch.Tensor, null: Any, source: Any, edit_prompt: Any, lpips: Any, *,
         steps: int, scheduler: str, w_source: float, w_edit: float, text_mode: str, inner_steps: int,
         settings: PerceptualSettings, mask: torch.Tensor | None, guidance_vae: Any, node: str,
         node_id: str | None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The full edit; returns the decoded IMAGE, the edited LATENT samples and the LPIPS losses."""
    samples = encode(vae, image, node)
    inv = cached_inversion(model, samples, source, null, steps, scheduler, w_source + w_edit,
                           text_mode, inner_steps, node, node_id)
    guider = make_guider(model, null, source, edit_prompt, w_source, w_edit, inv, node=node)
    sampler = make_sampler(vae, image, lpips, settings, mask, inv, guidance_vae, node=node)
    sigmas = inv.sigmas.flip(0).clone()
    start_latent = model.model.process_latent_out(inv.noise.clone())
    show_phase(node, node_id, f"sampling ({steps} steps)")
    callback = latent_preview.prepare_callback(model, steps)
    out = guider.sample(torch.zeros_like(start_latent), start_latent, sampler, sigmas,
                        callback=callback, disable_pbar=True, seed=0)  # no noise is added
    losses = list(sampler.sampler_function.losses)
    out = out.to(comfy.model_management.intermediate_device())
    show_phase(node, node_id, "decoding")
    decoded = vae.decode(out)
    comfy.model_management.throw_exception_if_processing_interrupted()  # cancelled while decoding
    if decoded.ndim == 5:  # video VAEs return (B, T, H, W, C)
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    show_phase(node, node_id, "done")
    return decoded, out, losses


def cached_inversion(model: Any, samples: torch.Tensor, source: Any, null: Any, steps: int, scheduler: str,
                     guidance_scale: float, text_mode: str, inner_steps: int, node: str,
                     node_id: str | None) -> PSGInversion:
    """Inversion and text optimization, each taken from memory when its inputs are unchanged."""
    owner = model.model
    model_key = fingerprint(getattr(model, "patches_uuid", None), model.model_options)
    inv_key = fingerprint("inversion", model_key, samples, source, steps, scheduler)
    text_key = fingerprint("text", inv_key, null, text_mode, inner_steps,
                           guidance_scale if needs_scale(text_mode) else None)
    final = INVERSIONS.get(text_key, owner)
    if final is not None:
        show_phase(node, node_id, "reusing the inversion and text optimization from the last run")
        return final
    inv = INVERSIONS.get(inv_key, owner)
    if inv is None:
        show_phase(node, node_id, f"DDIM inversion ({steps} steps)")
        inv, _ = invert(model, samples, source, steps=steps, scheduler=scheduler, cfg=1.0, null=None,
                        node=node)
        INVERSIONS.put(inv_key, owner, inv)
    else:
        show_phase(node, node_id, "reusing the DDIM inversion from the last run")
    if text_mode != NO_OPTIMIZATION:
        show_phase(node, node_id, f"text optimization: {text_mode} ({steps} steps)")
        inv = optimize_text(model, inv, source, null, mode=text_mode, guidance_scale=guidance_scale,
                            inner_steps=inner_steps, tolerance=None, node=node)
    INVERSIONS.put(text_key, owner, inv)
    return inv
