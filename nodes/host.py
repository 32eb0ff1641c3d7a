"""Host glue: turn ComfyUI objects (ModelPatcher, CONDITIONING, VAE) into the plain tensors and
callables ``psg_core`` works with, and report progress / honour interrupts the ComfyUI way.

Everything model-related runs inside ComfyUI's own sampling machinery (a ``CFGGuider`` plus a
``Sampler``), so model patches, hooks, cond preprocessing (SDXL pooled output, width/height,
Flux guidance) and device placement are exactly what a KSampler would use.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import comfy.conds
import comfy.model_base
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import latent_preview
import torch

from .validation import check_finite

if TYPE_CHECKING:
    from ..psg_core.spaces import NoiseSpace

logger = logging.getLogger(__name__)

SCHEDULERS: list[str] = list(comfy.samplers.SCHEDULER_NAMES)
DEFAULT_SCHEDULER = "simple"
_EMBEDDING_KEY = "c_crossattn"


# --------------------------------------------------------------------------- model family
@dataclass(frozen=True)
class ModelFamily:
    """What the core needs to know about a model, plus an id that saved inversions are checked
    against (architecture / prediction type / latent format)."""

    space: NoiseSpace
    name: str


def detect_family(model: Any, node: str) -> ModelFamily:
    """Map the model's (possibly patched) ``model_sampling`` onto a core noise space.

    EPS and V_PREDICTION (SD1.x, SD2.x, SDXL) live in ComfyUI's VE space; CONST (SD3, Flux) is the
    flow space. Everything else is refused: inverting it with these formulas would be silently wrong.
    """
    from ..psg_core.spaces import NoiseSpace  # at use: the pack registers even without a full core
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(model, "get_model_object"):
        raise ValueError(f"{node}: the 'model' input is not a diffusion MODEL (got {type(model).__name__}).")
    model_type = getattr(inner, "model_type", None)
    type_name = getattr(model_type, "name", str(model_type))
    sampling = model.get_model_object("model_sampling")
    ms = comfy.model_sampling
    refused = tuple(
        getattr(ms, n) for n in ("X0", "EDM", "COSMOS_RFLOW", "StableCascadeSampling", "ModelSamplingContinuousEDM")
        if hasattr(ms, n)
    )
    if isinstance(sampling, ms.CONST):
        space = NoiseSpace.FLOW
    elif isinstance(sampling, (ms.EPS, ms.V_PREDICTION)) and not isinstance(sampling, refused):
        space = NoiseSpace.VE
    else:
        prediction = next((c.__name__ for c in type(sampling).__mro__
                           if c.__module__ == ms.__name__ and not c.__name__.startswith("ModelSampling")),
                          type(sampling).__name__)
        raise ValueError(
            f"{node}: model type {type_name} with {prediction} prediction (sampling {type(sampling).__name__}) "
            "is not supported. "
            "PSG works with EPS and V_PREDICTION models (SD1.x, SD2.x, SDXL) and flow models (SD3, Flux); "
            "load one of those, or remove a ModelSampling patch that switched the prediction type."
        )
    pred = "CONST" if space is NoiseSpace.FLOW else ("V" if isinstance(sampling, ms.V_PREDICTION) else "EPS")
    name = f"{type(inner).__name__}/{pred}/{type(inner.latent_format).__name__}"
    return ModelFamily(space=space, name=name)


# --------------------------------------------------------------------------- schedules
def sampling_sigmas(model: Any, scheduler: str, steps: int, node: str) -> torch.Tensor:
    """ComfyUI's own schedule (descending, ending at 0), float32 on the CPU."""
    if scheduler not in comfy.samplers.SCHEDULER_HANDLERS:
        raise ValueError(f"{node}: unknown scheduler {scheduler!r}; pick one of {', '.join(SCHEDULERS)}.")
    if steps < 1:
        raise ValueError(f"{node}: steps must be at least 1 (got {steps}).")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    sigmas = sigmas.detach().to("cpu", torch.float32).clone()
    if float(sigmas[-1]) != 0.0:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas


def inversion_sigmas(model: Any, scheduler: str, steps: int, node: str) -> torch.Tensor:
    """The sampling schedule flipped: ascending with ``sigmas[0] == 0`` exactly (not FlipSigmas' 1e-4)."""
    sigmas = sampling_sigmas(model, scheduler, steps, node).flip(0).clone()
    sigmas[0] = 0.0
    return sigmas


# --------------------------------------------------------------------------- gradients
def make_grad_safe(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers by equal normal tensors, in place.

    Checkpoint loaders run under ``torch.inference_mode()``; autograd refuses to save such
    tensors for backward. Values, dtypes, devices and ``requires_grad=False`` are unchanged,
    so other nodes see the same model; the swap is only done where it is needed, once.
    Returns how many tensors were swapped.
    """
    swapped = 0
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                    swapped += 1
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    swapped += 1
    if swapped:
        logger.debug("made %d inference tensors of %s usable by autograd", swapped, type(module).__name__)
    return swapped


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter for the duration, restored after.

    Loaded weights may have ``requires_grad=True``: autograd would then build graphs for (and
    an optimiser's ``backward`` accumulate ``.grad`` into) the shared model."""
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    module.requires_grad_(False)
    try:
        yield
    finally:
        params = dict(module.named_parameters())
        for name in names:
            if name in params:
                with torch.inference_mode(params[name].is_inference()):  # torch's rule for those
                    params[name].requires_grad_(True)


@contextlib.contextmanager
def grad_context() -> Iterator[None]:
    """Nodes run under ``torch.inference_mode()``; leave it so the core can use autograd where it
    needs it (its own ``enable_grad`` blocks). Plain model passes stay gradient-free."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def normal_tensor(t: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) detached copy; call inside ``grad_context``."""
    return t.detach().clone()


# --------------------------------------------------------------------------- progress
class StepReporter:
    """The core's ``callback(step, total, x, x0_hat)`` -> interrupt check, progress bar, x0 preview."""

    def __init__(self, model: Any, total: int, label: str = "") -> None:
        self._preview = latent_preview.prepare_callback(model, total)
        self.label = label
        self.calls = 0

    def __call__(self, step: int, total: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.calls += 1
        self._preview(min(int(step), int(total) - 1), x0_hat.detach(), x.detach(), int(total))


def k_callback_reporter(callback: Callable | None, total: int) -> Callable:
    """The core's callback -> the k-diffusion style callback SamplerCustomAdvanced hands a SAMPLER."""

    def report(step: int, _total: int, x: torch.Tensor, x0_hat: torch.Tensor) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback({"i": int(step), "denoised": x0_hat.detach(), "x": x.detach(), "sigma": None, "sigma_hat": None})

    return report


# --------------------------------------------------------------------------- conditioning
def embedding_of(conditioning: Sequence, name: str, node: str) -> torch.Tensor:
    """The text embedding tensor of a CONDITIONING (its first entry), as the core sees it."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise ValueError(f"{node}: the '{name}' CONDITIONING is empty; connect a CLIP Text Encode output.")
    first = conditioning[0]
    if not isinstance(first, (list, tuple)) or not torch.is_tensor(first[0]):
        raise ValueError(f"{node}: the '{name}' input is not a CONDITIONING (connect a CLIP Text Encode output).")
    return first[0]


def swap_embedding(processed: list[dict], embedding: torch.Tensor) -> list[dict]:
    """A processed cond list with the first entry's text embedding replaced (pooled output,
    sizes, guidance and area stay): how optimised null embeddings reach the model.

    The replacement keeps the model's own cond wrapper: SD's UNet cross-attention takes
    ``CONDCrossAttn`` (shorter prompts may be repeat-padded to a common length), while SD3/Flux
    take ``CONDRegular``, whose prompts of different lengths must never be padded that way."""
    out = []
    for i, entry in enumerate(processed):
        entry = entry.copy()
        if i == 0:
            model_conds = entry["model_conds"].copy()
            wrapper = type(model_conds.get(_EMBEDDING_KEY)) if _EMBEDDING_KEY in model_conds else None
            if wrapper is None or not issubclass(wrapper, comfy.conds.CONDRegular):
                wrapper = comfy.conds.CONDCrossAttn
            model_conds[_EMBEDDING_KEY] = wrapper(embedding)
            entry["model_conds"] = model_conds
        out.append(entry)
    return out


class CondBank:
    """Processed ComfyUI conds by name, and the embedding tensors handed to the core.

    The core passes embeddings back to the denoiser; a tensor that is (or equals) one of ours
    maps to its full processed cond, anything else (an optimised null) is swapped into the
    ``fallback`` cond.
    """

    def __init__(self, processed: dict[str, list[dict]], fallback: str, node: str) -> None:
        self.processed = processed
        self.fallback = fallback
        self.embeddings: dict[str, torch.Tensor] = {}
        for name, conds in processed.items():
            mc = conds[0].get("model_conds", {}) if conds else {}
            cross = mc.get(_EMBEDDING_KEY)
            if cross is None:
                raise ValueError(
                    f"{node}: the '{name}' conditioning has no text embedding for this model "
                    "(c_crossattn); PSG needs text-conditioned SD/SDXL/SD3/Flux models."
                )
            self.embeddings[name] = normal_tensor(cross.cond)

    def conds_for(self, embedding: torch.Tensor | None) -> list[dict] | None:
        if embedding is None:
            return None
        for name, own in self.embeddings.items():
            if embedding is own:
                return self.processed[name]
        for name, own in self.embeddings.items():
            if (
                not embedding.requires_grad
                and embedding.shape == own.shape
                and embedding.device == own.device
                and torch.equal(embedding, own)
            ):
                return self.processed[name]
        own = self.embeddings[self.fallback]
        return swap_embedding(self.processed[self.fallback], embedding.to(device=own.device))


# --------------------------------------------------------------------------- running on the host
@dataclass
class HostModel:
    """The loaded model inside ComfyUI's sampling context, as the core wants it."""

    patcher: Any
    guider: comfy.samplers.CFGGuider
    model_options: dict
    bank: CondBank
    family: ModelFamily
    latent: torch.Tensor  # process_latent_in'd input latent (model space)

    @property
    def inner(self) -> comfy.model_base.BaseModel:
        return self.guider.inner_model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, conds: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """psg_core denoiser: x0-hat per cond from ONE ``calc_cond_batch`` call."""
        cond_lists = [self.bank.conds_for(c) for c in conds]
        sigma = sigma.reshape(-1).to(x.device, x.dtype)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        return list(comfy.samplers.calc_cond_batch(self.inner, cond_lists, x, sigma, self.model_options))

    def enable_model_gradients(self) -> None:
        """Needed only when autograd goes through the UNet (null-text, DPS)."""
        make_grad_safe(self.inner.diffusion_model)

    def process_latent_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.process_latent_out(x)


class _HostGuider(comfy.samplers.CFGGuider):
    """A plain CFGGuider holding named conds; never used to predict, only to set up sampling."""

    def set_named_conds(self, conds: dict[str, Any]) -> None:
        self.inner_set_conds(conds)


class _BodySampler(comfy.samplers.Sampler):
    """A ComfyUI Sampler that hands the prepared model to a function instead of sampling."""

    def __init__(self, body: Callable[[HostModel], torch.Tensor], make_host: Callable[..., HostModel]) -> None:
        self.body = body
        self.make_host = make_host

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        host = self.make_host(model_wrap, extra_args["model_options"], latent_image)
        return self.body(host)


def run_on_host(
    model: Any,
    conds: dict[str, Any],
    latent: torch.Tensor,
    body: Callable[[HostModel], torch.Tensor],
    *,
    family: ModelFamily,
    fallback: str,
    sigmas: torch.Tensor,
    node: str,
    seed: int = 0,
) -> torch.Tensor:
    """Load ``model`` the way a sampler would and call ``body(host)`` inside a gradient context.

    ``latent`` is an outer-space LATENT sample tensor; ``body`` sees it process_latent_in'd and
    returns a model-space latent, which comes back process_latent_out'd (like any ComfyUI sampler).
    """
    guider = _HostGuider(model)
    guider.set_named_conds(conds)

    def make_host(model_wrap, model_options, latent_image):
        bank = CondBank(model_wrap.conds, fallback, node)
        inner_latent = normal_tensor(latent_image)
        if torch.count_nonzero(inner_latent) == 0:  # CFGGuider skips process_latent_in for zeros
            inner_latent = model_wrap.inner_model.process_latent_in(inner_latent)
        return HostModel(model, model_wrap, model_options, bank, family, inner_latent)

    sampler = _BodySampler(body, make_host)
    with grad_context(), frozen(model.model):
        latent = normal_tensor(latent)
        noise = torch.zeros_like(latent)
        out = guider.sample(noise, latent, sampler, normal_tensor(sigmas), seed=seed, disable_pbar=True)
    return out.detach()


# --------------------------------------------------------------------------- VAE
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

    from ..psg_core.checkpointing import checkpoint_blocks

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, vae_blocks.Decoder):
        return 0
    return checkpoint_blocks(decoder, (vae_blocks.ResnetBlock, vae_blocks.AttnBlock, vae_blocks.Upsample))


def image_to_bchw(image: torch.Tensor, node: str, name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> (B, 3, H, W) float32, normal tensor."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"{node}: expected an IMAGE (batch, height, width, channels), got {getattr(image, 'shape', image)}.")
    check_finite(image, name, node)
    return normal_tensor(image[..., :3]).float().movedim(-1, 1)


def mask_to_b1hw(mask: torch.Tensor | None, height: int, width: int) -> torch.Tensor | None:
    """ComfyUI MASK (B, H, W) or (H, W) -> (B, 1, H, W) resized to the image, normal tensor."""
    if mask is None:
        return None
    m = normal_tensor(mask).float()
    if m.ndim == 2:
        m = m[None]
    m = m[:, None]
    if m.shape[-2:] != (height, width):
        m = torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
    return m.clamp(0.0, 1.0)


def closest_index(sigmas: torch.Tensor, sigma: float) -> int | None:
    """Index of ``sigma`` in ``sigmas`` (relative tolerance 1e-3), None when absent."""
    diffs = (sigmas - sigma).abs()
    i = int(torch.argmin(diffs))
    if math.isclose(float(sigmas[i]), sigma, rel_tol=1e-3, abs_tol=1e-6):
        return i
    return None
