"""The differentiable VAE decoder perceptual guidance backpropagates through."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import comfy.model_management
import torch

from .autograd import make_grad_safe


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """Latent size after downscaling by ``factor`` (at least 1 per side)."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def downscale_latent(z: torch.Tensor, factor: int) -> torch.Tensor:
    """Antialiased bilinear downscale of a (B, C, H, W) latent, differentiable: decoding the
    smaller latent gives a smaller image for a fraction of the decoder's and LPIPS' cost."""
    if factor <= 1:
        return z
    size = reduced_size(int(z.shape[-2]), int(z.shape[-1]), factor)
    return torch.nn.functional.interpolate(z, size=size, mode="bilinear", align_corners=False, antialias=True)


class DifferentiableDecoder:
    """Model-space latent -> image in [0, 1] (B, 3, H, W), differentiable, in a gradient-safe dtype.

    ``comfy.sd.VAE.decode`` copies into a preallocated buffer (no autograd) and may run fp16, so
    we decode through a private fp32 (bf16 if the VAE is bf16) copy of the decoder on the VAE's
    device; the shared VAE object is not touched. Works for full VAEs and TAESD alike: both
    ``first_stage_model.decode`` take the process_latent_out'd latent and return [-1, 1] (TAESD
    applies its own vae_scale / vae_shift). ``downscale`` > 1 decodes a downscaled latent
    (reduced-resolution guidance). ``checkpoint``: recompute each block of a full VAE decoder in
    the backward (``psg_core.checkpointing``), which cuts the activation peak several-fold for one
    extra decoder forward; worth it for large images only (TAESD is left as is: it is small).
    """

    def __init__(self, vae: Any, process_latent_out: Callable[[torch.Tensor], torch.Tensor], node: str, *,
                 downscale: int = 1, name: str = "vae", checkpoint: bool = False) -> None:
        fsm = getattr(vae, "first_stage_model", None)
        if fsm is None or not hasattr(fsm, "decode"):
            raise ValueError(f"{node}: the '{name}' input is not an image VAE with a decoder.")
        comfy.model_management.load_models_gpu([vae.patcher])
        self.device = vae.device
        self.dtype = torch.bfloat16 if getattr(vae, "vae_dtype", None) == torch.bfloat16 else torch.float32
        self.downscale = max(1, int(downscale))
        self.kind = type(fsm).__name__
        with torch.inference_mode(False), torch.no_grad():
            encoders = [getattr(fsm, a, None) for a in ("encoder", "taesd_encoder")]
            memo = {id(e): None for e in encoders if e is not None}
            self.model = copy.deepcopy(fsm, memo).to(self.device, self.dtype).eval()
        make_grad_safe(self.model)
        self.model.requires_grad_(False)
        self.process_latent_out = process_latent_out
        self.checkpointed = _checkpoint_decoder_blocks(self.model) if checkpoint else 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        z = downscale_latent(z.float(), self.downscale)
        z = self.process_latent_out(z).to(self.device, self.dtype)
        image = self.model.decode(z)
        return ((image.float() + 1.0) / 2.0)


def _checkpoint_decoder_blocks(model: torch.nn.Module) -> int:
    """Block-wise activation checkpointing on a private copy of a ComfyUI ``Decoder`` (SD/SDXL/SD3/
    Flux VAEs); returns how many blocks, 0 for other decoders."""
    from comfy.ldm.modules.diffusionmodules import model as vae_blocks

    from ...psg_core.checkpointing import checkpoint_blocks

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, vae_blocks.Decoder):
        return 0
    return checkpoint_blocks(decoder, (vae_blocks.ResnetBlock, vae_blocks.AttnBlock, vae_blocks.Upsample))
