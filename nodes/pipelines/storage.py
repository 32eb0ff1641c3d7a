"""Save / load inversions as safetensors, so re-edits skip the inversion."""

from __future__ import annotations

import json
import os

import folder_paths
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ...psg_core.ddim import Trajectory
from ...psg_core.spaces import NoiseSpace
from ..host.folders import register_model_folder
from ..psg_types import PSGInversion, TextMode

FOLDER = "psg_inversions"
FORMAT = "psg_inversion"
VERSION = "1"
SAVE_NODE = "PSG Save Inversion"


def output_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), FOLDER)


def register_folder() -> None:
    """``models/psg_inversions`` and ``output/psg_inversions`` (where the save node writes)."""
    register_model_folder(FOLDER, (".safetensors",), extra_paths=(output_folder(),))


register_folder()


def to_file(inv: PSGInversion, path: str) -> None:
    tensors = {"sigmas": inv.sigmas.contiguous(), "latents": inv.latents.contiguous()}
    if inv.nulls is not None:
        tensors["nulls"] = torch.stack([n.float() for n in inv.nulls]).contiguous()
    if inv.offsets is not None:
        tensors["offsets"] = torch.stack([o.float() for o in inv.offsets]).contiguous()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": inv.family,
        "space": inv.trajectory.space.name,
        "scheduler": inv.scheduler,
        "steps": str(inv.steps),
        "latent_shape": json.dumps(list(inv.latent_shape)),
        "inversion_cfg": repr(inv.inversion_cfg),
        "mode": inv.mode.value if inv.mode else "",
        "guidance_scale": "" if inv.guidance_scale is None else repr(inv.guidance_scale),
    }
    # write a temp name (not *.safetensors, so never listed) and rename: no half-written inversions
    part = f"{path}.part"
    try:
        save_file({k: v.detach().to("cpu") for k, v in tensors.items()}, part, metadata=meta)
        os.replace(part, path)
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise


def from_file(path: str, node: str) -> PSGInversion:
    """Read and validate a saved inversion; any inconsistency is one clear error."""
    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{node}: {name} is not a readable safetensors file ({exc}); pick another file or "
                         "save the inversion again.") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{node}: {name} is not a PSG inversion (no '{FORMAT}' metadata); "
                         f"save one with {SAVE_NODE}.")
    if meta.get("version") != VERSION:
        raise ValueError(f"{node}: {name} has format version {meta.get('version')!r}; "
                         f"this PSG reads version {VERSION}.")
    try:
        steps = int(meta["steps"])
        shape = tuple(int(s) for s in json.loads(meta["latent_shape"]))
        sigmas, latents = tensors["sigmas"], tensors["latents"]
        problems = []
        if tuple(sigmas.shape) != (steps + 1,):
            problems.append(f"sigmas {list(sigmas.shape)}")
        if tuple(latents.shape) != (steps + 1, *shape):
            problems.append(f"latents {list(latents.shape)}")
        for key in ("nulls", "offsets"):
            if key in tensors and tensors[key].shape[0] != steps:
                problems.append(f"{key} {list(tensors[key].shape)}")
        if problems:
            raise ValueError(", ".join(problems))
        guidance = meta.get("guidance_scale") or None
        return PSGInversion(
            family=meta["family"],
            scheduler=meta["scheduler"],
            trajectory=Trajectory(sigmas=sigmas.float(), latents=latents.float(),
                                  space=NoiseSpace[meta["space"]]),
            inversion_cfg=float(meta.get("inversion_cfg", "1.0")),
            mode=TextMode(meta["mode"]) if meta.get("mode") else None,
            guidance_scale=float(guidance) if guidance is not None else None,
            nulls=tuple(tensors["nulls"]) if "nulls" in tensors else None,
            offsets=tuple(tensors["offsets"]) if "offsets" in tensors else None,
        )
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{node}: {name} is damaged or inconsistent ({exc}); "
                         "save the inversion again.") from None

