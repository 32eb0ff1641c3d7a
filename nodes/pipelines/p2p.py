"""Prompt-to-prompt editing on the host: two-branch sampling (``psg_core.two_branch_sample``) on a
clone of the model whose attention is patched (``attention_patches``)."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from .. import host, validation
from ..psg_types import PSGInversion, TextMode, check_matches
from .attention_patches import (
    AttentionController,
    P2PSettings,
    branch_denoiser,
    check_unet,
    make_plan,
    patched_clone,
)
from .inversion import trajectory_on
from .perceptual import PerceptualSettings, build_perceptual

SETTINGS_NODE = "PSG Prompt-to-Prompt"
NODE = "PSG P2P Sampler"
LATENT_TO_PIXELS = 8
"""SD1.x / SD2.x / SDXL VAEs: one latent pixel is 8x8 image pixels (the MASK output's size)."""


class MaskUse(str, Enum):
    """What the perceptual guidance pulls back to the photo."""

    ATTENTION_MASK = "attention mask"  # outside the blend words' region and the painted mask
    PAINTED_MASK = "painted mask"  # outside the painted mask only
    WHOLE_IMAGE = "whole image"  # everywhere


def perceptual_mask_fn(mask_use: str, attention: Any, painted: torch.Tensor | None, node: str) -> Any:
    """``step -> mask`` (1 = free to change) for the edit branch's perceptual guidance, or None for
    the whole image: the attention mask of the blend words, widened by what the user painted."""
    if mask_use == MaskUse.WHOLE_IMAGE:
        return None
    if mask_use == MaskUse.PAINTED_MASK or attention is None:
        if painted is None:
            raise ValueError(f"{node}: perceptual_mask '{mask_use}' needs "
                             + ("a painted mask (connect mask)" if mask_use == MaskUse.PAINTED_MASK else
                                f"blend_words in {SETTINGS_NODE} or a painted mask")
                             + "; or set perceptual_mask to 'whole image'.")
        return lambda step: painted
    if painted is None:
        return attention

    def union(step: int) -> torch.Tensor:
        mask = attention(step)
        wide = torch.nn.functional.interpolate(mask.float(), size=painted.shape[-2:], mode="nearest")
        return torch.maximum(wide.to(painted), painted)

    return union


def run_p2p(model: Any, clip: Any, inversion: PSGInversion, source_text: str, edit_text: str,
            settings: P2PSettings, w_source: float, w_edit: float, *, perceptual: Any = None,
            mask_use: str = MaskUse.ATTENTION_MASK, painted_mask: torch.Tensor | None = None,
            observers: list | None = None, node: str = NODE
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-branch prompt-to-prompt sampling from ``inversion`` on a patched clone of ``model``.

    Returns the edit LATENT samples, the source-branch LATENT samples and the edited-region mask
    (latent size, [B, H, W]; zeros when no blend words are given)."""
    from ...psg_core.guidance import TextGuidance
    from ...psg_core.null_text import negative_prompt_nulls
    from ...psg_core.two_branch import two_branch_sample

    settings.validate(node)
    family = host.detect_family(model, node)
    blocks = check_unet(model, family, node)
    check_matches(inversion, family.name, node)
    if w_edit == 0:
        raise ValueError(f"{node}: w_edit is 0, so there is nothing to edit; set w_edit (e.g. 7.5).")
    plan = make_plan(clip, source_text, edit_text, settings, node)  # logs a word swap's fallback to refine
    latent_hw = tuple(int(s) for s in inversion.latent_shape[-2:])
    controller = AttentionController(plan, latent_hw, observers=list(observers or []))
    patched = patched_clone(model, controller, blocks)
    conds = {name: clip.encode_from_tokens_scheduled(clip.tokenize(text))
             for name, text in (("null", ""), ("source", source_text), ("edit", edit_text))}
    source_scale = inversion.guidance_scale if inversion.guidance_scale is not None else w_source + w_edit
    sigmas = inversion.sigmas.flip(0).clone()
    result: dict[str, Any] = {}

    def body(h: host.HostModel) -> torch.Tensor:
        bank = h.bank.embeddings
        guidance = TextGuidance(bank["null"], bank["source"], bank["edit"], float(w_source), float(w_edit))
        nulls = offsets = None
        if inversion.mode == TextMode.NEGATIVE_PROMPT:
            nulls = negative_prompt_nulls(trajectory_on(inversion, h.device), bank["source"])
        elif inversion.nulls is not None:
            nulls = [n.to(h.device) for n in inversion.nulls]
        if inversion.offsets is not None:
            offsets = [o.to(h.device) for o in inversion.offsets]
        blend = controller.blend_mask if controller.blending else None
        mask_fn = None
        if perceptual is not None:
            painted = None
            if painted_mask is not None and bool((painted_mask > 0).any()):  # Fit Image gives zeros unpainted
                painted = host.mask_to_b1hw(painted_mask, *painted_mask.shape[-2:]).to(h.device)
            attention = controller.blend_mask if controller.blending else None
            mask_fn = perceptual_mask_fn(mask_use, attention, painted, node)
        out = two_branch_sample(
            branch_denoiser(h, controller), inversion.noise.to(h.device), sigmas.to(h.device), guidance,
            source_scale=float(source_scale), space=family.space, nulls=nulls, offsets=offsets,
            on_step=controller.begin_step, blend=blend, blend_start=settings.blend_start,
            perceptual=perceptual, perceptual_mask=mask_fn,
            callback=host.StepReporter(model, inversion.steps),
        )
        result["source"] = h.process_latent_out(out.source).detach()
        mask = controller.blend_mask() if controller.blending else None
        if mask is None:
            mask = torch.zeros(out.edit.shape[0], 1, *latent_hw)
        result["mask"] = mask[:, 0].cpu()
        return out.edit

    zeros = torch.zeros(inversion.latent_shape)
    edit = host.run_on_host(patched, conds, zeros, body, family=family, fallback="null",
                            sigmas=inversion.sigmas, node=node)
    return edit, result["source"].cpu(), result["mask"]


def make_perceptual(model, vae, reference, lpips, scale, guidance_vae, inversion, node: str = NODE) -> Any:
    """The edit branch's PerceptualGuidance, or None when its inputs are not all connected."""
    parts = {"vae": vae, "reference": reference, "lpips": lpips}
    if all(p is None for p in parts.values()) or not scale:
        return None
    missing = [name for name, p in parts.items() if p is None]
    if missing:
        raise ValueError(f"{node}: perceptual guidance needs vae, reference and lpips; "
                         f"connect {', '.join(missing)} "
                         "(or none of them, or set scale to 0).")
    settings = PerceptualSettings(scale=scale, start=0.0, end=1.0, every=1, through_model=False)
    validation.check_guidance_vae(guidance_vae, model, node)
    latent_hw = tuple(int(s) for s in inversion.latent_shape[-2:])
    return build_perceptual(vae, reference, lpips, settings, None, model.model.process_latent_out, latent_hw,
                            node, guidance_vae)


def image_sized(mask: torch.Tensor) -> torch.Tensor:
    """The latent-sized [B, H, W] edited-region mask as an image-sized MASK."""
    scaled = torch.nn.functional.interpolate(mask[:, None].float(), scale_factor=LATENT_TO_PIXELS,
                                             mode="nearest")
    return scaled[:, 0]
