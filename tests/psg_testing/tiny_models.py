"""Tiny, seeded MODEL / CLIP / VAE triples built in-process from ComfyUI's own classes.

Host tests need real ComfyUI model objects (ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)
without downloading weights. These models have the real architectures of each family,
shrunk until a sampling step at 128x128 px (16x16 latent) takes tens of milliseconds,
with every parameter initialised explicitly from a seeded generator (comfy.ops layers
leave their weights ``torch.empty``), so two builds with the same seed are identical.

Only import this module after the host is importable (``psg_testing.host`` does that);
it never downloads anything.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from psg_testing import host

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("sd15", "sd2v", "sdxl", "flow")
"""sd15: eps; sd2v: v-prediction; sdxl: eps with pooled output; flow: SD3-shaped CONST."""

LATENT_CHANNELS: dict[str, int] = {"sd15": 4, "sd2v": 4, "sdxl": 4, "flow": 16}
IMAGE_SIZE = 128
"""Pixel size the tiny models are meant for (16x16 latent); any multiple of 8 works."""

_TEXT_HIDDEN = 64
_DTYPE = torch.float32
_TINY_CLIP_CONFIG: dict[str, Any] = {
    "hidden_size": _TEXT_HIDDEN,
    "intermediate_size": 2 * _TEXT_HIDDEN,
    "num_attention_heads": 2,
    # 3 layers: SD2, SDXL and SD3 read the penultimate one.
    "num_hidden_layers": 3,
    "projection_dim": _TEXT_HIDDEN,
}


@dataclass(frozen=True)
class TinyModels:
    """What a checkpoint loader would return, plus the family name."""

    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP
    vae: Any  # comfy.sd.VAE
    family: str

    @property
    def latent_channels(self) -> int:
        return LATENT_CHANNELS[self.family]


def build_tiny(family: str, seed: int = 0, *, cached: bool = True) -> TinyModels:
    """Tiny MODEL/CLIP/VAE of ``family`` (one of FAMILIES), identical for equal seeds.

    Cached per (family, seed) by default, like ComfyUI caches a checkpoint loader's
    outputs across prompts: callers must not modify the returned objects in place
    (clone the patcher, as every ComfyUI node does). ``cached=False`` builds a fresh copy.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; expected one of {FAMILIES}")
    if cached:
        return _build_cached(family, seed)
    return _build(family, seed)


@functools.cache
def _build_cached(family: str, seed: int) -> TinyModels:
    return _build(family, seed)


def _build(family: str, seed: int) -> TinyModels:
    host.prepare_comfy_import()
    # Nodes run under torch.inference_mode(): weights built there would be inference
    # tensors that autograd refuses to save, so build outside it.
    with torch.inference_mode(False):
        builder = _FAMILY_BUILDERS[family]
        model, clip, vae = builder(seed)
    logger.info("built tiny %s models (seed %d)", family, seed)
    return TinyModels(model=model, clip=clip, vae=vae, family=family)


# --------------------------------------------------------------------------- init


def _generator(seed: int, component: str) -> torch.Generator:
    """Independent stream per component so changing one part never shifts another."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(component.encode()))


def _is_norm(module: torch.nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def init_parameters(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Overwrite every parameter: fan-in scaled normals for matrices and kernels, ones
    for norm scales, small normals for biases and other vectors, zero-dim kept."""
    for owner_name, owner in module.named_modules():
        for name, param in owner.named_parameters(recurse=False):
            full_name = f"{owner_name}.{name}" if owner_name else name
            if param.ndim == 0:
                continue  # scalars such as CLIP's logit_scale are set by their constructor
            if param.ndim >= 2:
                fan_in = param[0].numel()
                values = torch.randn(param.shape, generator=generator) / math.sqrt(fan_in)
            elif _is_norm(owner) or name == "scale" or full_name.endswith(("norm.weight", "ln.weight")):
                values = torch.ones(param.shape) if name in ("weight", "scale") else torch.zeros(param.shape)
            else:
                values = 0.02 * torch.randn(param.shape, generator=generator)
            param.copy_(values.to(param.dtype))
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point() and not torch.isfinite(buffer).all():
            raise RuntimeError(f"buffer {name} is not finite after building the tiny model")


# --------------------------------------------------------------------------- pieces


@contextlib.contextmanager
def _without_log_records(startswith: str) -> Iterator[None]:
    """Drop the host's expected-but-huge log records (e.g. every VAE key listed as missing)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(startswith)

    root_logger = logging.getLogger()
    root_logger.addFilter(keep)
    try:
        yield
    finally:
        root_logger.removeFilter(keep)


def _unet_config(context_dim: int, **overrides: Any) -> dict[str, Any]:
    """Two-level UNet, 32 base channels, attention only at the half-resolution level."""
    config: dict[str, Any] = {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1],
        "transformer_depth_middle": 1,
        "context_dim": context_dim,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "num_classes": None,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }
    config.update(overrides)
    return config


def _wrap_model(model: torch.nn.Module, seed: int) -> Any:
    import comfy.model_management
    import comfy.model_patcher

    init_parameters(model.diffusion_model, _generator(seed, "diffusion_model"))
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _make_config(config_class: type, unet_config: dict[str, Any]) -> Any:
    model_config = config_class(unet_config)
    model_config.set_inference_dtype(_DTYPE, None)
    return model_config


def _make_clip(clip_target: Any, encoder_names: tuple[str, ...], seed: int) -> Any:
    """comfy.sd.CLIP over the family's own text-encoder classes, each one shrunk."""
    import comfy.sd

    model_options: dict[str, Any] = {"dtype": _DTYPE}
    for encoder_name in encoder_names:
        model_options[f"{encoder_name}_model_config"] = dict(_TINY_CLIP_CONFIG)
    clip = comfy.sd.CLIP(clip_target, model_options=model_options)
    init_parameters(clip.cond_stage_model, _generator(seed, "text_encoder"))
    return clip


def _make_vae(latent_channels: int, seed: int) -> Any:
    """AutoencoderKL with the real 8x down/up-sampling (4 levels) at 32 channels."""
    import comfy.sd

    ddconfig = {
        "double_z": True,
        "z_channels": latent_channels,
        "resolution": IMAGE_SIZE,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    with _without_log_records(startswith="Missing VAE keys"):  # sd={} is the point
        vae = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": latent_channels, "ddconfig": ddconfig}})
    # VAE(config=...) always assumes 4 latent channels.
    vae.latent_channels = latent_channels
    init_parameters(vae.first_stage_model, _generator(seed, "vae"))
    return vae


# --------------------------------------------------------------------------- families


def _build_sd15(seed: int) -> tuple[Any, Any, Any]:
    import comfy.supported_models

    model_config = _make_config(comfy.supported_models.SD15, _unet_config(_TEXT_HIDDEN))
    model = _wrap_model(model_config.get_model({}), seed)
    return model, _make_clip(model_config.clip_target(), ("clip_l",), seed), _make_vae(4, seed)


def _build_sd2v(seed: int) -> tuple[Any, Any, Any]:
    import comfy.model_base
    import comfy.supported_models

    model_config = _make_config(
        comfy.supported_models.SD20, _unet_config(_TEXT_HIDDEN, use_linear_in_transformer=True)
    )
    # SD20 guesses eps/v from a weight statistic; a tiny model must say it explicitly.
    base_model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    model = _wrap_model(base_model, seed)
    return model, _make_clip(model_config.clip_target(), ("clip_h",), seed), _make_vae(4, seed)


def _build_sdxl(seed: int) -> tuple[Any, Any, Any]:
    import comfy.supported_models

    pooled_dim = _TEXT_HIDDEN  # clip_g projection
    unet_config = _unet_config(
        2 * _TEXT_HIDDEN,  # clip_l and clip_g hidden states side by side
        use_linear_in_transformer=True,
        num_classes="sequential",
        adm_in_channels=pooled_dim + 6 * 256,  # pooled + 6 Fourier size/crop embeddings
    )
    model_config = _make_config(comfy.supported_models.SDXL, unet_config)
    model = _wrap_model(model_config.get_model({}), seed)
    return model, _make_clip(model_config.clip_target(), ("clip_l", "clip_g"), seed), _make_vae(4, seed)


def _build_flow(seed: int) -> tuple[Any, Any, Any]:
    """SD3-shaped MMDiT (CONST / rectified flow, shift 3) with clip_l + clip_g, no T5."""
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.text_encoders.sd3_clip

    depth = 2  # hidden size is 64 * depth in MMDiT
    hidden = 64 * depth
    unet_config = {
        "in_channels": 16,
        "out_channels": 16,
        "patch_size": 2,
        "depth": depth,
        "input_size": None,
        "adm_in_channels": 2 * _TEXT_HIDDEN,  # clip_l pooled + clip_g pooled
        # SD3's text encoder pads the clip hidden states to T5's 4096 features.
        "context_embedder_config": {
            "target": "torch.nn.Linear",
            "params": {"in_features": 4096, "out_features": hidden},
        },
        "num_patches": None,
        "pos_embed_max_size": None,
        "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": [],
    }
    model_config = _make_config(comfy.supported_models.SD3, unet_config)
    model = _wrap_model(model_config.get_model({}), seed)
    # SD3.clip_target() picks encoders from checkpoint keys; there are none here.
    clip_target = comfy.supported_models_base.ClipTarget(
        comfy.text_encoders.sd3_clip.SD3Tokenizer,
        comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False),
    )
    clip = _make_clip(clip_target, ("clip_l", "clip_g"), seed)
    return model, clip, _make_vae(16, seed)


_FAMILY_BUILDERS = {
    "sd15": _build_sd15,
    "sd2v": _build_sd2v,
    "sdxl": _build_sdxl,
    "flow": _build_flow,
}
