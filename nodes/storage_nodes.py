"""Save / load inversions as safetensors (issue 5, Deliver 7), so re-edits skip the inversion."""

from __future__ import annotations

import json
import logging
import os

import folder_paths
import torch
from comfy_api.latest import io
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import host
from .psg_types import PSGInversion, PSGInversionType, check_matches

logger = logging.getLogger(__name__)

FOLDER = "psg_inversions"
FORMAT = "psg_inversion"
VERSION = "1"
SAVE_NODE = "PSG Save Inversion"
LOAD_NODE = "PSG Load Inversion"


def output_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), FOLDER)


def register_folder() -> None:
    """``models/psg_inversions`` and ``output/psg_inversions`` (where the save node writes)."""
    for path in (os.path.join(folder_paths.models_dir, FOLDER), output_folder()):
        folder_paths.add_model_folder_path(FOLDER, path)
    paths, exts = folder_paths.folder_names_and_paths[FOLDER]
    exts.add(".safetensors")


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
        "space": inv.space,
        "scheduler": inv.scheduler,
        "steps": str(inv.steps),
        "latent_shape": json.dumps(list(inv.latent_shape)),
        "inversion_cfg": repr(inv.inversion_cfg),
        "mode": inv.mode or "",
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
        raise ValueError(f"{node}: {name} is not a readable safetensors file ({exc}); pick another file or save the inversion again.") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{node}: {name} is not a PSG inversion (no '{FORMAT}' metadata); save one with {SAVE_NODE}.")
    if meta.get("version") != VERSION:
        raise ValueError(f"{node}: {name} has format version {meta.get('version')!r}; this PSG reads version {VERSION}.")
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
            space=meta["space"],
            scheduler=meta["scheduler"],
            sigmas=sigmas.float(),
            latents=latents.float(),
            inversion_cfg=float(meta.get("inversion_cfg", "1.0")),
            mode=meta.get("mode") or None,
            guidance_scale=float(guidance) if guidance is not None else None,
            nulls=tuple(tensors["nulls"]) if "nulls" in tensors else None,
            offsets=tuple(tensors["offsets"]) if "offsets" in tensors else None,
        )
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"{node}: {name} is damaged or inconsistent ({exc}); save the inversion again.") from None


class PSGSaveInversion(io.ComfyNode):
    """Writes an inversion (with its nulls/offsets) to output/psg_inversions/*.safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGSaveInversion",
            display_name=SAVE_NODE,
            category="PSG/inversion",
            description=(
                "Saves an inversion to output/psg_inversions/ as safetensors, with the model family, latent "
                "shape and step count, so later edits of the same photo can skip inversion and optimisation."
            ),
            inputs=[
                PSGInversionType.Input("inversion", tooltip="The inversion to save (optimised or not)."),
                io.String.Input("filename_prefix", default="psg_inversion", tooltip="File name prefix inside output/psg_inversions/; a counter is appended. Sub-folders allowed, leaving the folder is not."),
            ],
            outputs=[io.String.Output(display_name="file", tooltip="The saved file's name as PSG Load Inversion lists it.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix) -> io.NodeOutput:
        if not isinstance(inversion, PSGInversion):
            raise ValueError(f"{SAVE_NODE}: the 'inversion' input is not a PSG_INVERSION.")
        base = output_folder()
        os.makedirs(base, exist_ok=True)
        register_folder()  # the output directory may have changed since import
        try:
            folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, base)
        except Exception as exc:  # ComfyUI raises a bare Exception for paths outside the folder
            raise ValueError(f"{SAVE_NODE}: invalid filename_prefix {filename_prefix!r}: {exc}") from None
        os.makedirs(folder, exist_ok=True)
        file = f"{filename}_{counter:05}_.safetensors"
        to_file(inversion, os.path.join(folder, file))
        rel = os.path.join(subfolder, file) if subfolder else file
        logger.info("%s: wrote %s (%s)", SAVE_NODE, rel, inversion.describe())
        return io.NodeOutput(rel, ui={"text": [rel]})


def _choices() -> list[str]:
    register_folder()
    return folder_paths.get_filename_list(FOLDER)


class PSGLoadInversion(io.ComfyNode):
    """Reads a saved inversion and checks it fits the connected model (and latent)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGLoadInversion",
            display_name=LOAD_NODE,
            category="PSG/inversion",
            description=(
                "Loads an inversion saved by PSG Save Inversion (from output/psg_inversions or "
                "models/psg_inversions) and refuses it, with the reason, when the model family, latent "
                "shape or step count differ."
            ),
            inputs=[
                io.Combo.Input("file", options=_choices(), tooltip="A saved inversion (.safetensors)."),
                io.Model.Input("model", tooltip="The model you will edit with; must be the same family as the one that made the inversion."),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip="Expected step count; 0 accepts any."),
                io.Latent.Input("latent", optional=True, tooltip="Optional: the image's latent (VAE Encode); its shape must match the inversion's."),
            ],
            outputs=[
                PSGInversionType.Output(display_name="inversion", tooltip="The loaded inversion (with its nulls / offsets)."),
                io.Latent.Output(display_name="noise", tooltip="The inverted noise latent."),
            ],
        )

    @classmethod
    def execute(cls, file, model, steps, latent=None) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, file)
        if path is None:
            raise ValueError(f"{LOAD_NODE}: {file!r} was not found in the psg_inversions folders; refresh the list.")
        inv = from_file(path, LOAD_NODE)
        family = host.detect_family(model, LOAD_NODE)
        shape = None
        if latent is not None:
            from .inversion_nodes import latent_samples

            shape = tuple(latent_samples(latent, LOAD_NODE).shape)
        check_matches(inv, family.name, LOAD_NODE, latent_shape=shape)
        if steps and steps != inv.steps:
            raise ValueError(f"{LOAD_NODE}: {file} has {inv.steps} steps, expected {steps}; set steps to {inv.steps} or 0.")
        noise = model.model.process_latent_out(inv.noise.clone())
        return io.NodeOutput(inv, {"samples": noise})

