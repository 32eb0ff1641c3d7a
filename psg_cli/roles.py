"""Node roles: how the CLI finds "the photo", "the source prompt"... in an API workflow.

The shipped workflows title their nodes with these names (``_meta.title`` in API format, the
node title in the UI), so a user's own exported workflow works with the CLI as soon as its
nodes carry the same titles. A role falls back to a node class when the title is absent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    title: str
    input: str
    fallback_classes: tuple[str, ...] = ()
    required: bool = True


PHOTO = Role("Photo", "image", ("LoadImage",))
SOURCE = Role("Source prompt", "text")
TARGET = Role("Target prompt", "text")
CHECKPOINT = Role("Checkpoint", "ckpt_name", ("CheckpointLoaderSimple",), required=False)
MASK = Role("Mask", "image", ("LoadImageMask",), required=False)
FIT = Role("Fit to model", "long_side", ("PSGFitImage",), required=False)
"""PSG Fit Image: brings the photo (and its mask) to the model's working size."""
EDITED = Role("Edited image", "filename_prefix", ("SaveImage",), required=False)
GUIDANCE_VAE = Role("Guidance VAE", "vae_name", required=False)
"""The VAELoader feeding ``guidance_vae`` (TAESD: cheap LPIPS gradient); by title only, since a
workflow's other VAELoader may be the main VAE."""

P2P_SETTINGS = Role("Prompt-to-Prompt", "mode", ("PSGPromptToPrompt",), required=False)
"""The PSG Prompt-to-Prompt node that ``--p2p`` / ``--reweight`` / ``--blend`` set."""
P2P_MODES = ("replace", "refine", "reweight")
P2P_WORKFLOW = "psg_p2p"
"""The workflow ``--p2p`` runs when no other --workflow is given."""

FILLED_ROLES = (PHOTO, SOURCE, TARGET, CHECKPOINT, MASK, GUIDANCE_VAE)
SEED_INPUTS = ("seed", "noise_seed")
MASK_LOADER = "LoadImageMask"
MASK_CHANNEL = "red"  # masks are stored as grey images: white (1) = region allowed to change
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
TAESD_FOR_FAMILY = {"sd15": "taesd", "sd2": "taesd", "sdxl": "taesdxl", "sd3": "taesd3", "flux": "taef1"}
"""Guidance VAE (VAELoader name, files in models/vae_approx) the shipped workflows load per family."""
WORKING_SIZE_BY_FAMILY = {
    "SDXL": (("taesdxl", "sdxl", "sd_xl"), 1024),
    "SD3": (("taesd3", "sd3"), 1024),
    "Flux": (("taef1", "flux"), 1024),
}
"""Long side (px) the CLI scales a photo down to, by family, when the workflow does not resize it
itself; a family is recognised by these name fragments in the workflow, checkpoint or guidance VAE."""
DEFAULT_FAMILY = "SD1.x/SD2.x"
DEFAULT_WORKING_SIZE = 512
NO_GUIDANCE_VAE = "none"
"""``--guidance-vae none``: drop the guidance VAE loader; LPIPS then decodes through the full VAE."""
TAESD_URL = "https://github.com/madebyollin/taesd"
PACK_NODE_PREFIX = "PSG"
