"""Save / load inversion nodes: safetensors files, so re-edits skip the inversion."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io

from . import host
from .pipelines.inversion import latent_samples
from .pipelines.storage import FOLDER, SAVE_NODE, from_file, output_folder, register_folder, to_file
from .psg_types import PSGInversion, PSGInversionType, check_matches

logger = logging.getLogger(__name__)

LOAD_NODE = "PSG Load Inversion"


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
                "shape and step count, so later edits of the same photo can skip inversion and optimization."
            ),
            inputs=[
                PSGInversionType.Input("inversion", tooltip="The inversion to save (optimized or not)."),
                io.String.Input("filename_prefix", default="psg_inversion",
                                tooltip="File name prefix inside output/psg_inversions/; a counter is "
                                        "appended. Sub-folders allowed, leaving the folder is not."),
            ],
            outputs=[io.String.Output(display_name="file",
                                      tooltip="The saved file's name as PSG Load Inversion lists it.")],
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
                io.Model.Input("model", tooltip="The model you will edit with; must be the same family as "
                                                "the one that made the inversion."),
                io.Int.Input("steps", default=0, min=0, max=1000,
                             tooltip="Expected step count; 0 accepts any."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: the image's latent (VAE Encode); its shape must match the "
                                        "inversion's."),
            ],
            outputs=[
                PSGInversionType.Output(display_name="inversion",
                                        tooltip="The loaded inversion (with its nulls / offsets)."),
                io.Latent.Output(display_name="noise", tooltip="The inverted noise latent."),
            ],
        )

    @classmethod
    def execute(cls, file, model, steps, latent=None) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, file)
        if path is None:
            raise ValueError(f"{LOAD_NODE}: {file!r} was not found in the psg_inversions folders; refresh "
                             "the list.")
        inv = from_file(path, LOAD_NODE)
        family = host.detect_family(model, LOAD_NODE)
        shape = None
        if latent is not None:
            shape = tuple(latent_samples(latent, LOAD_NODE).shape)
        check_matches(inv, family.name, LOAD_NODE, latent_shape=shape)
        if steps and steps != inv.steps:
            raise ValueError(f"{LOAD_NODE}: {file} has {inv.steps} steps, expected {steps}; set steps to "
                             f"{inv.steps} or 0.")
        noise = model.model.process_latent_out(inv.noise.clone())
        return io.NodeOutput(inv, {"samples": noise})

