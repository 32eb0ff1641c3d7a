"""The host adapter: turn ComfyUI objects (ModelPatcher, CONDITIONING, VAE, IMAGE, MASK) into the
plain tensors and callables ``psg_core`` works with, one idea per module. Node modules use the names
re-exported here (``from . import host``; ``host.run_on_host``)."""

from __future__ import annotations

from .autograd import frozen, grad_context, make_grad_safe, normal_tensor
from .conditioning import CondBank, embedding_of, swap_embedding
from .conversions import bchw_to_image, image_to_bchw, mask_to_b1hw
from .decoding import DifferentiableDecoder, downscale_latent, reduced_size
from .family import ModelFamily, detect_family
from .progress import StepReporter, k_callback_reporter
from .running import HostModel, run_on_host
from .schedules import DEFAULT_SCHEDULER, SCHEDULERS, closest_index, inversion_sigmas, sampling_sigmas

__all__ = [
    "DEFAULT_SCHEDULER", "SCHEDULERS", "CondBank", "DifferentiableDecoder", "HostModel", "ModelFamily",
    "StepReporter", "bchw_to_image", "closest_index", "detect_family", "downscale_latent", "embedding_of",
    "frozen", "grad_context", "image_to_bchw", "inversion_sigmas", "k_callback_reporter", "make_grad_safe",
    "mask_to_b1hw", "normal_tensor", "reduced_size", "run_on_host", "sampling_sigmas", "swap_embedding",
]
