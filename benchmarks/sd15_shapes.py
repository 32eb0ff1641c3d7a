"""Random-weight SD1.5-shaped networks built from ComfyUI's own classes, for the benchmarks.

Why: cost ratios only mean something with the real architectures (a UNet call, a VAE decoder
backward and an LPIPS pass have very different shapes), and no weights may be downloaded. The
UNet is ``comfy.supported_models.SD15`` with SD1.5's detected config (or a narrower one for quick
runs), the VAE is ``comfy.sd.VAE`` with SD's AutoencoderKL config, TAESD is
``comfy.taesd.taesd.TAESD``; every parameter is set from a seeded generator.

Used by ``run.py`` (CPU) and ``gpu_edit.py`` (CUDA); nothing here imports the pack's nodes.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

TEXT_TOKENS = 77
# SD1.5's UNet config as comfy/model_detection.py detects it from a checkpoint.
SD15_UNET: dict[str, Any] = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# SD's AutoencoderKL (comfy/sd.py's default for SD1.x/SDXL VAEs).
SD_VAE: dict[str, Any] = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}
# Quick runs: the same topology (levels, blocks, attention placement, 768-d text) at 1/5 the
# UNet width and 1/4 the VAE width; cost RATIOS shift, so the table says which one ran.
NARROW_UNET = {"model_channels": 64, "num_heads": 4}
NARROW_VAE = {"ch": 32}


def comfy_import(cpu: bool) -> Path:
    """Make ComfyUI importable; CPU mode must be decided before comfy.model_management loads."""
    from psg_testing import host

    if cpu:
        return host.prepare_comfy_import()
    root = host.find_comfyui_root()
    if root is None:
        raise RuntimeError(host.no_host_message())
    if str(root) not in sys.path:  # the ComfyUI host itself (psg_testing.host does so for the CPU)
        sys.path.insert(0, str(root))
    import comfy.cli_args  # noqa: F401  (GPU: ComfyUI's default device selection)

    return root


def _init(module: torch.nn.Module, seed: int, component: str) -> None:
    from psg_testing.tiny_models import _generator, init_parameters

    init_parameters(module, _generator(seed, component))
    module.requires_grad_(False).eval()


@dataclass
class SD15Shapes:
    """The networks one edit needs, plus how they were configured (for the table's caption)."""

    unet: Any  # comfy.model_base.BaseModel (SD15, eps)
    vae: Any  # comfy.sd.VAE
    taesd: torch.nn.Module  # comfy.taesd.taesd.TAESD
    lpips: torch.nn.Module
    config: str
    device: torch.device
    dtype: torch.dtype  # the UNet's
    vae_dtype: torch.dtype  # VAE decoder, TAESD
    _blockwise: torch.nn.Module | None = None

    def denoiser(self) -> UNetDenoiser:
        return UNetDenoiser(self.unet)

    def decode(self, z: Tensor) -> Tensor:
        """Model-space latent -> [0, 1] image through the full VAE decoder, differentiable."""
        z = self.unet.process_latent_out(z).to(self.vae_dtype)
        return (self.vae.first_stage_model.decode(z).float() + 1.0) / 2.0

    def decode_taesd(self, z: Tensor) -> Tensor:
        """Same contract through TAESD (what a `taesd` guidance VAE would do)."""
        z = self.unet.process_latent_out(z).to(self.vae_dtype)
        return (self.taesd.decode(z).float() + 1.0) / 2.0

    def decode_blocks(self, z: Tensor) -> Tensor:
        """Full decoder with each ResnetBlock/AttnBlock checkpointed (a private copy of the VAE)."""
        if self._blockwise is None:
            import copy

            from comfy.ldm.modules.diffusionmodules.model import AttnBlock, ResnetBlock

            from psg_core.checkpointing import checkpoint_blocks

            with torch.inference_mode(False):
                self._blockwise = copy.deepcopy(self.vae.first_stage_model)
            checkpoint_blocks(self._blockwise.decoder, (ResnetBlock, AttnBlock))
        z = self.unet.process_latent_out(z).to(self.vae_dtype)
        return (self._blockwise.decode(z).float() + 1.0) / 2.0

    def decode_half(self, z: Tensor) -> Tensor:
        """Full decoder on the x0 estimate downscaled 2x (reduced-resolution guidance)."""
        small = torch.nn.functional.interpolate(z, scale_factor=0.5, mode="bilinear", align_corners=False,
                                                antialias=True)
        return self.decode(small)


class _NoMissingKeys(logging.Filter):
    """VAE(sd={}) lists every key as missing: expected here, and thousands of characters long."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Missing VAE keys")


class UNetDenoiser:
    """psg_core denoiser over ComfyUI's BaseModel: all conds in ONE ``apply_model`` batch."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.calls = 0

    def __call__(self, x: Tensor, sigma: Tensor, conds: Sequence[Tensor]) -> list[Tensor]:
        self.calls += 1
        k = len(conds)
        context = torch.cat([c.expand(x.shape[0], -1, -1) for c in conds])
        out = self.unet.apply_model(x.repeat(k, 1, 1, 1), sigma.repeat(k), c_crossattn=context)
        return list(out.chunk(k))


def build(*, narrow: bool, device: str = "cpu", dtype: torch.dtype = torch.float32,
          vae_dtype: torch.dtype | None = None, seed: int = 0) -> SD15Shapes:
    """All networks with seeded random weights, frozen, on ``device``; built outside inference mode.
    ``dtype`` is the UNet's, ``vae_dtype`` (default: the same) the VAE's and TAESD's."""
    vae_dtype = vae_dtype or dtype
    import comfy.sd
    import comfy.supported_models
    import comfy.taesd.taesd
    import lpips

    unet_cfg = {**SD15_UNET, **(NARROW_UNET if narrow else {})}
    vae_cfg = {**SD_VAE, **(NARROW_VAE if narrow else {})}
    with torch.inference_mode(False):
        model_config = comfy.supported_models.SD15(unet_cfg)
        model_config.set_inference_dtype(dtype, None)
        unet = model_config.get_model({}, device=None)
        _init(unet.diffusion_model, seed, "diffusion_model")
        root_logger, quiet = logging.getLogger(), _NoMissingKeys()
        root_logger.addFilter(quiet)
        try:
            vae = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": 4, "ddconfig": vae_cfg}})
        finally:
            root_logger.removeFilter(quiet)
        _init(vae.first_stage_model, seed, "vae")
        taesd = comfy.taesd.taesd.TAESD()
        _init(taesd, seed, "taesd")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            metric = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)
        dev = torch.device(device)
        unet.to(dev)
        vae.first_stage_model.to(dev, vae_dtype)
        taesd.to(dev, vae_dtype)
        metric.to(dev)
    config = (f"SD1.5 UNet {'narrow (64 ch)' if narrow else 'full (320 ch, 860M)'}, "
              f"VAE {'narrow (32 ch)' if narrow else 'full (128 ch)'}, TAESD, LPIPS-alex; random weights")
    logger.info("built %s on %s/%s", config, device, dtype)
    return SD15Shapes(unet, vae, taesd, metric, config, torch.device(device), dtype, vae_dtype)


def random_problem(size: int, device: torch.device, dtype: torch.dtype = torch.float32,
                   seed: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(latent, photo, null, source, edit) of a ``size``-px edit: text embeddings are random."""
    g = torch.Generator().manual_seed(seed)
    h = size // 8
    latent = torch.randn(1, 4, h, h, generator=g)
    photo = torch.rand(1, 3, size, size, generator=g)
    null, source, edit = (torch.randn(1, TEXT_TOKENS, 768, generator=g) for _ in range(3))
    return tuple(t.to(device, dtype if t is not photo else torch.float32)
                 for t in (latent, photo, null, source, edit))
