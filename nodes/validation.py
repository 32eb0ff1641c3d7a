"""Input checks shared by several PSG nodes: each failure is one short message naming the node,
the input and what to change, instead of a crash deep inside torch."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)

LATENT_MULTIPLE = 8
"""Image sides must be multiples of the VAE's downscale factor (8 for every supported family)."""
MIN_IMAGE_SIDE = 32
"""LPIPS-AlexNet's stride-4 stem and two 3x3 max-pools need about 31 px per side (VGG 16, SqueezeNet
about as many); smaller photos fail deep inside the backbone with 'Output size is too small'."""


def check_number_inputs(node_cls: Any, values: dict[str, Any]) -> bool | str:
    """Body of a node's ``validate_inputs(cls, <its number inputs>=None)``, called with ``locals()``:
    True, or one message naming the node, the input and the fix.

    JSON (so ComfyUI's HTTP API) accepts NaN and Infinity, and ComfyUI's own min/max test lets
    NaN through (every comparison with NaN is false); a NaN weight then "succeeds" with a garbage
    image. Naming an input in ``validate_inputs`` also switches ComfyUI's min/max test off for
    it, so the declared range is checked here too. Linked inputs arrive as None (their values
    are not known before the graph runs) and are skipped.
    """
    schema = node_cls.define_schema()  # not GET_SCHEMA: that caches on the class, locked while validating
    label = schema.display_name or schema.node_id
    specs = {spec.id: spec for spec in schema.inputs}
    for name, value in values.items():
        if name == "cls" or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        spec = specs.get(name)
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        default = getattr(spec, "default", None)
        if low is not None and high is not None:
            allowed = f" between {low:g} and {high:g}"
        else:
            allowed = f" of at least {low:g}" if low is not None else ""
            allowed = f" of at most {high:g}" if high is not None else allowed
        hint = f" (default {default:g})" if isinstance(default, (int, float)) else ""
        if not math.isfinite(value):
            return (f"{label}: '{name}' is {value}, not a number it can use; set a finite number{allowed}"
                    f"{hint} in the node or the workflow file.")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{label}: '{name}' is {value:g}; set a number{allowed}{hint}."
    return True


def check_finite(tensor: torch.Tensor, name: str, node: str) -> None:
    """Refuse NaN / infinite values (an overflowing fp16 VAE, a broken upstream node)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{node}: the '{name}' input contains NaN or inf values; fix the node that produced it "
            "(e.g. decode / encode the VAE in fp32 with --fp32-vae)."
        )


def check_min_side(width: int, height: int, node: str, what: str = "the image",
                   multiple: int = LATENT_MULTIPLE, min_side: int = MIN_IMAGE_SIDE) -> None:
    """Both sides at least ``min_side`` px (LPIPS), else one message with the size to enlarge to."""
    if min(height, width) >= min_side:
        return
    scale = min_side / min(height, width)
    up = (math.ceil(width * scale / multiple) * multiple, math.ceil(height * scale / multiple) * multiple)
    raise ValueError(
        f"{node}: {what} is {width}x{height}; each side must be at least {min_side} px for the "
        f"perceptual (LPIPS) guidance. Use a larger photo or enlarge it first (e.g. Upscale Image "
        f"to {up[0]}x{up[1]})."
    )


def check_image_size(image: torch.Tensor, node: str, multiple: int = LATENT_MULTIPLE,
                     min_side: int = MIN_IMAGE_SIDE) -> None:
    """IMAGE (B, H, W, C): both sides at least ``min_side`` (LPIPS) and multiples of ``multiple``
    (else VAE Encode silently crops)."""
    height, width = int(image.shape[1]), int(image.shape[2])
    check_min_side(width, height, node, "the image", multiple, min_side)
    if height % multiple or width % multiple:
        fit = (width // multiple * multiple, height // multiple * multiple)
        raise ValueError(
            f"{node}: the image is {width}x{height}; both sides must be a multiple of {multiple}. "
            "Resize or crop it first (e.g. Upscale Image to "
            f"{max(fit[0], multiple)}x{max(fit[1], multiple)})."
        )


def check_mask_batch(mask: torch.Tensor | None, batch: int, node: str) -> None:
    """A MASK ((H, W), (B, H, W) or (B, 1, H, W)) must have one entry or one per image."""
    if mask is None:
        return
    count = int(mask.shape[0]) if mask.ndim > 2 else 1
    if count not in (1, batch):
        raise ValueError(
            f"{node}: the mask has a batch of {count} but the image a batch of {batch}; "
            "use one mask, or one per image."
        )


# --------------------------------------------------------------------------- guidance VAE
TAESD_FAMILIES: tuple[tuple[str, float, float, str], ...] = (
    ("taesd", 0.18215, 0.0, "SD1.x/SD2.x"),
    ("taesdxl", 0.13025, 0.0, "SDXL"),
    ("taesd3", 1.5305, 0.0609, "SD3"),
    ("taef1", 0.3611, 0.1159, "Flux"),
)
"""ComfyUI's ``VAELoader`` TAESD names with the ``vae_scale`` / ``vae_shift`` it gives each (the
model family's latent ``scale_factor`` / ``shift_factor``) and the family they belong to."""

_LATENT_FORMAT_LABELS = {"SD15": "SD1.x/SD2.x", "SDXL": "SDXL", "SD3": "SD3", "Flux": "Flux"}


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-3 * max(1.0, abs(b))


def _taesd_by_scale(scale: float, shift: float) -> tuple[str, float, float, str] | None:
    return next((row for row in TAESD_FAMILIES if _same(scale, row[1]) and _same(shift, row[2])), None)


def is_taesd(vae: object) -> bool:
    """Whether a ComfyUI VAE is a TAESD (``VAELoader`` -> taesd / taesdxl / taesd3 / taef1)."""
    import comfy.taesd.taesd

    return isinstance(getattr(vae, "first_stage_model", None), comfy.taesd.taesd.TAESD)


def _taesd_scale_shift(first_stage_model: object) -> tuple[float, float] | None:
    """``(vae_scale, vae_shift)`` of a TAESD (``comfy.taesd.taesd.TAESD``), None for other VAEs."""
    import comfy.taesd.taesd

    if not isinstance(first_stage_model, comfy.taesd.taesd.TAESD):
        return None
    return float(first_stage_model.vae_scale), float(first_stage_model.vae_shift)


def check_guidance_vae(guidance_vae: object | None, model: object, node: str) -> None:
    """Refuse a guidance VAE that cannot decode this model's latents: other latent channels, or a
    TAESD of another family (its scale/shift would turn the x0 estimate into a wrong image and the
    LPIPS gradient would pull towards noise). One message naming what to plug instead."""
    if guidance_vae is None:
        return
    fsm = getattr(guidance_vae, "first_stage_model", None)
    if fsm is None or not hasattr(fsm, "decode"):
        raise ValueError(
            f"{node}: the 'guidance_vae' input is not an image VAE with a decoder; connect a Load VAE "
            "(VAELoader) output such as taesd, or leave it unconnected."
        )
    latent_format = getattr(getattr(model, "model", None), "latent_format", None)
    if latent_format is None:
        return  # not a diffusion model: detect_family reports that
    model_channels = int(getattr(latent_format, "latent_channels", 4))
    model_scale = float(getattr(latent_format, "scale_factor", 1.0))
    model_shift = float(getattr(latent_format, "shift_factor", 0.0) or 0.0)
    wanted = _taesd_by_scale(model_scale, model_shift)
    fmt = type(latent_format).__name__
    model_label = wanted[3] if wanted else _LATENT_FORMAT_LABELS.get(fmt, f"{fmt} latents")
    fix = (f"load {wanted[0]} with VAELoader (Load VAE) or leave guidance_vae unconnected" if wanted
           else "use the model's own VAE or leave guidance_vae unconnected")
    taesd = _taesd_scale_shift(fsm)
    known = _taesd_by_scale(*taesd) if taesd else None
    if known:
        label = f"{known[0]} ({known[3]})"
    elif taesd:
        label = f"a TAESD with scale {taesd[0]:g} / shift {taesd[1]:g}"
    else:
        label = f"a {type(fsm).__name__} VAE"
    channels = getattr(guidance_vae, "latent_channels", None)
    if isinstance(channels, int) and channels != model_channels:
        raise ValueError(
            f"{node}: guidance_vae is {label} with {channels} latent channels but the model ({model_label}) "
            f"has {model_channels}; {fix}."
        )
    if taesd is not None and not (_same(taesd[0], model_scale) and _same(taesd[1], model_shift)):
        raise ValueError(f"{node}: guidance_vae is {label} but the model is {model_label}; {fix}.")
