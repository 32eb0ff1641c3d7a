"""Random-weight TAESD files in a ``models/vae_approx`` folder, so ComfyUI's own ``VAELoader``
offers and loads ``taesd`` / ``taesdxl`` / ``taesd3`` / ``taef1`` in tests and stand-in benchmarks
(the real files cannot be downloaded here). The architecture is ComfyUI's ``comfy.taesd.taesd``;
only the weights are random (seeded, so runs repeat)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .tiny_models import init_parameters

logger = logging.getLogger(__name__)

LATENT_CHANNELS = {"taesd": 4, "taesdxl": 4, "taesd3": 16, "taef1": 16}
"""``VAELoader`` name -> latent channels of the model family it belongs to."""


def write_random_taesd(vae_approx: Path, names: tuple[str, ...] = ("taesd", "taesdxl"),
                       seed: int = 0) -> list[Path]:
    """Write ``<name>_encoder.safetensors`` and ``<name>_decoder.safetensors`` (idempotent);
    returns the paths. Needs ComfyUI importable (``comfy.taesd.taesd``)."""
    from comfy.taesd.taesd import Decoder, Encoder

    vae_approx.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        channels = LATENT_CHANNELS[name]
        for part, make in (("encoder", Encoder), ("decoder", Decoder)):
            path = vae_approx / f"{name}_{part}.safetensors"
            written.append(path)
            if path.is_file() and _finite(path):
                continue
            module = make(latent_channels=channels)
            # comfy.ops.disable_weight_init leaves the weights uninitialised (garbage / NaN): set them
            file_seed = seed * 1_000_003 + zlib.crc32(path.name.encode())
            init_parameters(module, torch.Generator().manual_seed(file_seed))
            state = {k: v.contiguous() for k, v in module.state_dict().items()}
            tmp = path.with_suffix(".part")
            save_file(state, str(tmp))
            tmp.replace(path)
            logger.info("wrote random-weight %s", path)
    return written


def _finite(path: Path) -> bool:
    """False for a file written before the weights were initialised (NaN), so it is rewritten."""
    try:
        return all(bool(torch.isfinite(v).all()) for v in load_file(str(path)).values())
    except Exception:  # unreadable: rewrite it
        return False
