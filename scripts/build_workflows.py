"""Generate the example workflows from ONE description: UI-format JSON (drag and drop, template
browser), its API-format twin in example_workflows/api/, and a rendered .jpg thumbnail.

Node definitions (socket types, widget order, defaults) come from the real host's node registry
(``/object_info`` of a server, or ComfyUI booted in-process), so the files match the host.

    .venv/bin/python -m scripts.build_workflows                 # ComfyUI at $COMFYUI_ROOT or ~/ComfyUI
    .venv/bin/python -m scripts.build_workflows --server http://127.0.0.1:8188
    .venv/bin/python -m scripts.build_workflows --check         # exit 1 if files are stale
    .venv/bin/python -m scripts.build_workflows --frontend-thumbnails   # thumbnails = screenshots of
        ComfyUI's own frontend (headless chromium, see scripts/setup_browser.sh; a temporary --cpu
        server unless --server is given; uploads input/example.png there if it is missing)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psg_cli import roles

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("build_workflows")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_WIDTH = 460
COLUMN_GAP = 60
ROW_GAP = 36
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
FRONTEND_INPUTS = {"PreviewAny": {"preview": ""}}
"""Inputs the frontend's own widgets add when it queues a node (Preview Any's text box, which it
fills after a run); the server ignores them, but the API twin is what the frontend sends."""
NOTE = "Note"
"""Frontend-only node class: in the UI file, never in the API twin."""


# ------------------------------------------------------------------------------ description
@dataclass
class Node:
    """One node: ``values`` are widget values by input name, ``links`` map an input name (a socket,
    or a widget fed by another node) to (source node key, output index); ``models`` is the
    frontend's download metadata (name, url, directory) for the files a loader's widgets name."""

    key: str
    cls: str
    title: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    models: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node]


@dataclass(frozen=True)
class Family:
    """What a template needs to know about one model family."""

    key: str  # roles.TAESD_FOR_FAMILY key
    label: str
    checkpoint: str
    url: str
    long_side: int
    multiple: int
    w_edit: float = 7.5
    text_optimization: str = "null-text optimization"
    flux_guidance: float | None = None
    advice: str = ""


HF = "https://huggingface.co"
FAMILIES = {
    "sd15": Family("sd15", "SD1.5", roles.DEFAULT_CHECKPOINT,
                   f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{roles.DEFAULT_CHECKPOINT}",
                   512, 8),
    "sd2": Family("sd2", "SD2.1 768 (v-prediction)", "v2-1_768-ema-pruned.safetensors",
                  f"{HF}/stabilityai/stable-diffusion-2-1/resolve/main/v2-1_768-ema-pruned.safetensors",
                  768, 8,
                  advice="SD2.x-v predicts velocity; ComfyUI detects it from the checkpoint, nothing to set. "
                         "Its latent space is SD1's, so the guidance VAE is taesd. For the 512 px SD2 base "
                         "model set long_side 512."),
    "sdxl": Family("sdxl", "SDXL", SDXL_CHECKPOINT,
                   f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{SDXL_CHECKPOINT}", 1024, 8),
    "sd3": Family("sd3", "SD3.5", "sd3.5_large_fp8_scaled.safetensors",
                  f"{HF}/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/sd3.5_large_fp8_scaled.safetensors",
                  1024, 16, w_edit=4.5,
                  advice="SD3 is a flow model: inversion and sampling run in its own sigma space. w_edit "
                         "4-5 as for plain SD3 sampling; null-text optimization backpropagates through the "
                         "text conditioning of a large model: 'negative-prompt' is the fast choice."),
    "flux": Family("flux", "Flux.1-dev", "flux1-dev-fp8.safetensors",
                   f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors", 1024, 16,
                   w_edit=1.0, text_optimization="none", flux_guidance=3.5,
                   advice="Flux.1-dev is guidance-distilled: the guidance strength is the Flux Guidance "
                          "value (3.5) inside the conditioning, and classifier-free guidance stays OFF "
                          "(w_edit 1, w_source 0: one prompt, no null branch). Null-text optimization "
                          "needs CFG, so text_optimization is 'none'; the LPIPS guidance (scale) keeps the "
                          "photo. Raise Flux Guidance for stronger edits."),
}


def _checkpoint(family: Family) -> Node:
    return Node("ckpt", "CheckpointLoaderSimple", roles.CHECKPOINT.title, {"ckpt_name": family.checkpoint},
                models=[{"name": family.checkpoint, "url": family.url, "directory": "checkpoints"}])


def _prompts(family: Family) -> list[Node]:
    """Null / source / target encoders (Flux: the source and target go through Flux Guidance)."""
    nodes = [
        Node("null", "CLIPTextEncode", "Null prompt", {"text": ""}, {"clip": ("ckpt", 1)}),
        Node("source_text", "CLIPTextEncode", roles.SOURCE.title, {"text": "a photo of a tabby cat"},
             {"clip": ("ckpt", 1)}),
        Node("target_text", "CLIPTextEncode", roles.TARGET.title, {"text": "a photo of a tiger"},
             {"clip": ("ckpt", 1)}),
    ]
    if family.flux_guidance is None:
        nodes[1].key, nodes[2].key = "source", "target"
        return nodes
    return nodes + [
        Node("source", "FluxGuidance", "Flux guidance (source)", {"guidance": family.flux_guidance},
             {"conditioning": ("source_text", 0)}),
        Node("target", "FluxGuidance", "Flux guidance (target)", {"guidance": family.flux_guidance},
             {"conditioning": ("target_text", 0)}),
    ]


def _photo(family: Family) -> list[Node]:
    """Load Image (its mask output = the mask editor's painting) -> PSG Fit Image."""
    return [
        Node("photo", "LoadImage", roles.PHOTO.title, {"image": "example.png"}),
        Node("fit", "PSGFitImage", roles.FIT.title,
             {"long_side": family.long_side, "multiple": family.multiple, "output_size": "photo size"},
             {"image": ("photo", 0), "mask": ("photo", 1)}),
    ]


def _loader(family: Family) -> list[Node]:
    return [_checkpoint(family), *_photo(family), *_prompts(family),
            Node("lpips", "PSGLPIPSLoader", "LPIPS", {"net": "alex"})]


def _guidance_vae(family: Family) -> list[Node]:
    """The TAESD loader for ``guidance_vae`` (a cheap LPIPS gradient) and the note explaining it."""
    name = roles.TAESD_FOR_FAMILY[family.key]
    note = f"""Guidance VAE: Load VAE -> {name} (TAESD, a tiny decoder) is used ONLY for the LPIPS gradient, \
so a guided step costs about 1.1x a plain step instead of 2-3x. The edited image is always decoded with the \
checkpoint's own VAE.
Files: {name}_encoder.safetensors and {name}_decoder.safetensors from {roles.TAESD_URL} go in \
ComfyUI/models/vae_approx/ (then press R to refresh).
Without them: delete this Load VAE node (guidance_vae unconnected = the full VAE decodes the guidance: \
slower) or run the CLI with --guidance-vae none."""
    return [Node("gvae", "VAELoader", roles.GUIDANCE_VAE.title, {"vae_name": name}),
            Node("gvae_note", NOTE, "About the guidance VAE", {"text": note})]


def _outputs(image: tuple[str, int]) -> list[Node]:
    """Scale the result back (or not: PSG Fit Image's output_size), save it, preview before | after."""
    return [
        Node("restore", "ImageScale", "Output size",
             {"upscale_method": "lanczos", "width": 0, "height": 0, "crop": "disabled"},
             {"image": image, "width": ("fit", 2), "height": ("fit", 3)}),
        Node("save", "SaveImage", roles.EDITED.title, {"filename_prefix": "psg/edit"},
             {"images": ("restore", 0)}),
        Node("grid", "ImageStitch", "Before | after", {"direction": "right", "match_image_size": True,
                                                        "spacing_width": 8, "spacing_color": "white"},
             {"image1": ("fit", 0), "image2": image}),
        Node("preview", "PreviewImage", "Grid preview", {}, {"images": ("grid", 0)}),
    ]


PHOTO_STEPS = """Photo: any size. PSG Fit Image ('Fit to model') scales it so the long side is {long_side} \
px ({label}) with sides a multiple of {multiple}, and resizes the mask the same way; output_size 'photo \
size' scales the result back to the photo's size ('Output size' node), 'working size' keeps it at \
{long_side} px.
Mask: right-click the Photo node -> Open in MaskEditor and paint the region allowed to change (painted = \
free; the rest is kept close to the photo by LPIPS). No painting = the whole photo is guided."""

CLI_LINE = "Headless: python -m psg_cli edit photo.jpg --source \"...\" --target \"...\" --workflow {name}"


def _edit_note(name: str, family: Family) -> str:
    note = f"""PSG one-node edit, {family.label} (arXiv 2312.06680): invert the photo, optimize the text \
guidance, then sample the edit with perceptual-similarity (LPIPS) guidance.

1. Checkpoint: {family.checkpoint} (the Checkpoint node offers to download it when missing).
2. {PHOTO_STEPS.format(long_side=family.long_side, label=family.label, multiple=family.multiple)}
3. Source prompt = a caption of the photo as it is; Target prompt = the same caption with the change (e.g. \
cat -> tiger). Null prompt stays empty.
4. PSG Edit knobs:
 - steps / scheduler: DDIM steps (50 in the paper; 20-30 is faster), 'simple' matches DDIM.
 - w_edit: CFG strength of the edit ({family.w_edit} here). 0 reconstructs the photo.
 - w_source: weight of the source prompt (0 = plain CFG on the target; small negative values push away from \
the source).
 - text_optimization: 'null-text optimization' (best, slow), 'negative-prompt' (free), 'direct offsets' \
(fast), 'none'.
 - inner_steps: null-text: at most this many model calls per step (10; it usually stops after 2-3).
 - scale / start / end: LPIPS guidance strength (0 = off, 0.5-2 typical) and when it acts; higher keeps more \
of the photo.
 - guidance_vae (Guidance VAE, see its note) / guidance_resolution: what decodes the x0 estimates for LPIPS.
 PSG Edit remembers its inversion: after changing only scale / start / end / the mask / the Target prompt \
the next run goes straight to sampling; a new w_edit or w_source re-fits the null-text but keeps the \
inversion.
5. Edited image is saved to output/psg/; 'Before | after' previews the photo next to the edit at working \
size."""
    if family.advice:
        note += f"\n{family.label}: {family.advice}"
    return note + "\n" + CLI_LINE.format(name=name) + (
        "" if family.key == "sd15" else f" --ckpt YOUR_{family.key.upper()}.safetensors")


def one_node_edit(name: str, family: Family, steps: int = 50) -> Workflow:
    values = {"steps": steps, "w_edit": family.w_edit, "w_source": 0.0, "scale": 1.0,
              "text_optimization": family.text_optimization}
    return Workflow(name, _edit_note(name, family), [
        *_loader(family),
        *_guidance_vae(family),
        Node("edit", "PSGEdit", "PSG Edit", values,
             {"model": ("ckpt", 0), "vae": ("ckpt", 2), "image": ("fit", 0), "null": ("null", 0),
              "source": ("source", 0), "edit": ("target", 0), "lpips": ("lpips", 0), "mask": ("fit", 1),
              "guidance_vae": ("gvae", 0)}),
        *_outputs(("edit", 0)),
    ])


def _stages(steps: int, scheduler: str, w_edit: float, w_source: float, scale: float, *,
            inversion: str = "optimize", noise: tuple[str, int] = ("invert", 1),
            guided: bool = True) -> list[Node]:
    """Triple-prompt guider + perceptual sampler -> SamplerCustomAdvanced -> VAE Decode."""
    return [
        Node("guider", "PSGTriplePromptGuider", "Triple-Prompt Guider",
             {"w_source": w_source, "w_edit": w_edit},
             {"model": ("ckpt", 0), "null": ("null", 0), "source": ("source", 0), "edit": ("target", 0),
              "inversion": (inversion, 0)}),
        Node("sampler", "PSGPerceptualSampler", "Perceptual Sampler", {"scale": scale},
             {"vae": ("ckpt", 2), "reference": ("fit", 0), "lpips": ("lpips", 0), "inversion": (inversion, 0),
              "mask": ("fit", 1), **({"guidance_vae": ("gvae", 0)} if guided else {})}),
        Node("sigmas", "BasicScheduler", None, {"scheduler": scheduler, "steps": steps, "denoise": 1.0},
             {"model": ("ckpt", 0)}),
        Node("noise", "DisableNoise", None),
        Node("sample", "SamplerCustomAdvanced", None, {},
             {"noise": ("noise", 0), "guider": ("guider", 0), "sampler": ("sampler", 0),
              "sigmas": ("sigmas", 0), "latent_image": noise}),
        Node("decode", "VAEDecode", None, {}, {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
    ]


def _inversion(steps: int, scheduler: str) -> list[Node]:
    return [
        Node("encode", "VAEEncode", None, {}, {"pixels": ("fit", 0), "vae": ("ckpt", 2)}),
        Node("invert", "PSGDDIMInversion", "DDIM Inversion",
             {"steps": steps, "scheduler": scheduler, "cfg": 1.0},
             {"model": ("ckpt", 0), "latent": ("encode", 0), "source": ("source", 0)}),
        Node("optimize", "PSGTextGuidanceOptimize", "Text Guidance Optimization",
             {"guidance_scale": 7.5, "inner_steps": 10},
             {"model": ("ckpt", 0), "inversion": ("invert", 0), "source": ("source", 0),
              "null": ("null", 0)}),
    ]


def advanced(name: str, reconstruct: bool) -> Workflow:
    steps, scheduler = 50, "simple"
    family = FAMILIES["sd15"]
    w_edit, w_source, scale = (0.0, 7.5, 0.0) if reconstruct else (7.5, 0.0, 1.0)
    photo = PHOTO_STEPS.format(long_side=family.long_side, label=family.label, multiple=family.multiple)
    if reconstruct:
        note = f"""PSG reconstruction check: does my inversion reproduce the photo?

DDIM inversion -> null-text optimization -> sample back with w_edit = 0 (only the source prompt, at the \
optimization's guidance scale w_source = 7.5) and LPIPS guidance off (scale 0). 'Before | after' should look \
identical; if it does not, raise inner_steps or steps before editing.
- Inversion and BasicScheduler must use the same steps and scheduler (here 50, simple).
- Text Guidance Optimization: guidance_scale must equal w_source here (7.5); mode 'null-text optimization' \
reconstructs best, 'negative-prompt' is free but looser.
- The Target prompt is unused at w_edit = 0 (kept so the CLI can fill it).
{photo}
""" + CLI_LINE.format(name=name)
    else:
        note = f"""PSG advanced edit: every stage as its own node.

Photo -> Fit to model -> VAE Encode -> PSG DDIM Inversion (source prompt, steps, scheduler) -> PSG Text \
Guidance Optimization (per-step null embeddings) -> PSG Triple-Prompt Guider (null / source / target) + PSG \
Perceptual Sampler (LPIPS to the photo) -> SamplerCustomAdvanced (noise disabled: it starts from the \
inverted noise) -> VAE Decode -> Output size.
Knobs:
- steps / scheduler: identical in DDIM Inversion and BasicScheduler (denoise 1.0).
- Text Guidance Optimization: mode ('null-text optimization' best / 'negative-prompt' free / 'direct \
offsets' fast), guidance_scale = the w_edit you sample with (7.5), inner_steps 10 (at most; usually 2-3 \
calls per step are used).
- Guider: w_edit = edit strength (5-10; 0 reconstructs), w_source = weight of the source prompt (0 = plain \
CFG).
- Perceptual Sampler: scale (0 = off, 0.5-2 typical), start / end window, every n-th step, gradient path x0 \
(fast) or through model (DPS); mask from Fit to model; guidance_vae (Guidance VAE, see its note) and \
guidance_resolution choose what decodes the x0 estimates for LPIPS.
{photo}
""" + CLI_LINE.format(name=name)
    # reconstruction runs with LPIPS guidance off (scale 0): a guidance VAE would load for nothing
    return Workflow(name, note, [
        *_loader(family),
        *([] if reconstruct else _guidance_vae(family)),
        *_inversion(steps, scheduler),
        *_stages(steps, scheduler, w_edit, w_source, scale, guided=not reconstruct),
        *_outputs(("decode", 0)),
    ])


def invert_once(name: str) -> Workflow:
    """Invert and optimize once, save the inversion, make a first edit from it."""
    family, steps, scheduler = FAMILIES["sd15"], 50, "simple"
    note = f"""PSG invert once, edit many (1/2): the slow part (DDIM inversion + null-text optimization) \
runs once and is saved.

Photo -> Fit to model -> VAE Encode -> DDIM Inversion -> Text Guidance Optimization -> PSG Save Inversion \
(output/psg_inversions/; the 'Saved inversion' box shows the file name) and a first edit with the Target \
prompt.
Next: open psg_edit_many, pick the saved file in PSG Load Inversion and the same Photo and Source prompt, \
and try as many Target prompts / guidance settings as you like: each run only samples.
Within this workflow ComfyUI also caches the inversion: changing only the Target prompt or the guider / \
sampler knobs re-runs sampling alone.
{PHOTO_STEPS.format(long_side=family.long_side, label=family.label, multiple=family.multiple)}
""" + CLI_LINE.format(name=name)
    return Workflow(name, note, [
        *_loader(family), *_guidance_vae(family), *_inversion(steps, scheduler),
        Node("save_inv", "PSGSaveInversion", "Save inversion", {"filename_prefix": "psg_inversion"},
             {"inversion": ("optimize", 0)}),
        Node("show_file", "PreviewAny", "Saved inversion", {}, {"source": ("save_inv", 0)}),
        *_stages(steps, scheduler, 7.5, 0.0, 1.0),
        *_outputs(("decode", 0)),
    ])


SAVED_INVERSION = "psg_inversion_00001_.safetensors"
"""What psg_invert_once writes first (prefix psg_inversion, ComfyUI's counter)."""


def edit_many(name: str) -> Workflow:
    """Edit from a saved inversion: no inversion, no optimization, only guided sampling."""
    family, steps, scheduler = FAMILIES["sd15"], 50, "simple"
    note = f"""PSG invert once, edit many (2/2): edit from an inversion saved by psg_invert_once; every run \
only samples.

1. PSG Load Inversion: pick the file psg_invert_once saved (output/psg_inversions/, press R to refresh the \
list). It refuses an inversion of another model family, latent size or step count, with the reason.
2. Same Checkpoint, Photo (with the same Fit to model settings) and Source prompt as when it was saved: the \
photo is the LPIPS reference, the source prompt one of the three guidance prompts.
3. Change the Target prompt, w_edit / w_source (Triple-Prompt Guider) and scale (Perceptual Sampler) freely. \
BasicScheduler's steps and scheduler must be those of the inversion (50, simple).
Headless: python -m psg_cli edit photo.jpg --source "..." --target "..." --workflow {name} --set "Load \
inversion.file=NAME.safetensors\""""
    return Workflow(name, note, [
        *_loader(family), *_guidance_vae(family),
        Node("encode", "VAEEncode", None, {}, {"pixels": ("fit", 0), "vae": ("ckpt", 2)}),
        Node("load_inv", "PSGLoadInversion", "Load inversion", {"file": SAVED_INVERSION, "steps": steps},
             {"model": ("ckpt", 0), "latent": ("encode", 0)}),
        *_stages(steps, scheduler, 7.5, 0.0, 1.0, inversion="load_inv", noise=("load_inv", 1)),
        *_outputs(("decode", 0)),
    ])


def compare(name: str) -> Workflow:
    """The one-node edit plus what a user needs to judge it: metrics, a difference grid, the loss curve."""
    base = one_node_edit(name, FAMILIES["sd15"])
    note = """PSG compare: edit, then measure and look.

- PSG Edit: as in psg_edit (w_edit = edit strength, scale = LPIPS guidance, mask painted on the Photo: free \
to change; Guidance VAE: see its note).
- PSG Image Metrics (photo vs edit, at working size): PSNR / SSIM / LPIPS over the whole image and bg_* \
outside the mask (PIE-Bench convention); the 'Metrics' box (Preview Any) shows the summary after a run.
- PSG Compare Grid: photo | edit | absolute-difference heatmap with a colour bar (max_difference 0 = auto; \
fix it to compare runs).
- PSG Loss Plot: the LPIPS loss at each guided step; it should fall as guidance pulls the unedited content \
back to the photo.
""" + CLI_LINE.format(name=name)
    extra = [
        Node("metrics", "PSGImageMetrics", "Image metrics", {},
             {"image_a": ("fit", 0), "image_b": ("edit", 0), "mask": ("fit", 1), "lpips": ("lpips", 0)}),
        Node("show_metrics", "PreviewAny", "Metrics", {}, {"source": ("metrics", 7)}),
        Node("diffgrid", "PSGCompareGrid", "Photo | edit | difference", {"max_difference": 0.0},
             {"source": ("fit", 0), "edit": ("edit", 0)}),
        Node("diffpreview", "PreviewImage", "Difference grid", {}, {"images": ("diffgrid", 0)}),
        Node("lossplot", "PSGLossPlot", "Loss per step", {}, {"losses": ("edit", 2)}),
        Node("losspreview", "PreviewImage", "Loss plot", {}, {"images": ("lossplot", 0)}),
    ]
    return Workflow(name, note, [n for n in base.nodes if n.key not in ("grid", "preview")] + extra)


def p2p(name: str) -> Workflow:
    """Prompt-to-prompt on a real photo: source and edit branches in one batch, attention control,
    LocalBlend and LPIPS guidance outside the attention mask."""
    steps = 50
    note = """PSG prompt-to-prompt: the edit keeps the photo's layout because the edit branch borrows the \
source branch's attention maps.

Photo -> PSG Fit Image (Fit to model: long side 512, the mask follows) -> VAE Encode -> PSG DDIM Inversion \
-> PSG Text Guidance Optimization -> PSG P2P Sampler -> VAE Decode -> Output size (back to the photo's size).
- Source prompt / Target prompt are PSG Text Encode nodes: their conditioning feeds the inversion, their \
text feeds the P2P sampler (which aligns the two prompts' tokens with the same CLIP).
- PSG Prompt-to-Prompt: mode replace (swap words, same token count) / refine (added or changed words) / \
reweight (reweight_words such as 'tiger:2'); cross_window 0.8 and self_window 0.4 = fraction of the steps \
with the source's cross- / self-attention; blend_words name the edited object in either prompt (e.g. 'cat, \
tiger'): outside their attention region the result is the photo's reconstruction (LocalBlend).
- PSG P2P Sampler: w_edit = edit strength (5-10), w_source = weight of the source prompt in the edit branch; \
LPIPS guidance (scale) pulls the region outside the attention mask back to the photo (perceptual_mask); what \
you paint in the Photo's mask editor is left free too. Its mask output is the edited region: previewed here, \
usable as a MASK elsewhere.
- UNet models only (SD1.x, SD2.x, SDXL).
Headless: python -m psg_cli edit photo.jpg --source "..." --target "..." --workflow """ + name + """ (or \
--p2p refine on any workflow name)"""
    family = FAMILIES["sd15"]
    loader = [n for n in _loader(family) if n.key not in ("source", "target")]
    return Workflow(name, note, [
        *loader,
        Node("source", "PSGTextEncode", roles.SOURCE.title, {"text": "a photo of a tabby cat"},
             {"clip": ("ckpt", 1)}),
        Node("target", "PSGTextEncode", roles.TARGET.title, {"text": "a photo of a tiger"},
             {"clip": ("ckpt", 1)}),
        *_guidance_vae(family),
        *_inversion(steps, "simple"),
        Node("p2p", "PSGPromptToPrompt", "Prompt-to-Prompt", {"mode": "refine", "blend_words": "cat, tiger"}),
        Node("sampler", "PSGP2PSampler", "P2P Sampler", {"w_source": 0.0, "w_edit": 7.5, "scale": 1.0},
             {"model": ("ckpt", 0), "clip": ("ckpt", 1), "inversion": ("optimize", 0),
              "source_text": ("source", 1), "edit_text": ("target", 1), "p2p": ("p2p", 0), "vae": ("ckpt", 2),
              "reference": ("fit", 0), "lpips": ("lpips", 0), "mask": ("fit", 1),
              "guidance_vae": ("gvae", 0)}),
        Node("decode", "VAEDecode", None, {}, {"samples": ("sampler", 0), "vae": ("ckpt", 2)}),
        Node("maskimage", "MaskToImage", None, {}, {"mask": ("sampler", 1)}),
        Node("maskpreview", "PreviewImage", "Edited region", {}, {"images": ("maskimage", 0)}),
        *_outputs(("decode", 0)),
    ])


def all_workflows() -> list[Workflow]:
    return [
        one_node_edit("psg_edit", FAMILIES["sd15"]),
        one_node_edit("psg_edit_sd2", FAMILIES["sd2"]),
        one_node_edit("psg_edit_sdxl", FAMILIES["sdxl"]),
        one_node_edit("psg_edit_sd3", FAMILIES["sd3"], steps=30),
        one_node_edit("psg_edit_flux", FAMILIES["flux"], steps=28),
        advanced("psg_advanced", reconstruct=False),
        advanced("psg_reconstruction", reconstruct=True),
        invert_once("psg_invert_once"),
        edit_many("psg_edit_many"),
        compare("psg_compare"),
        p2p("psg_p2p"),
    ]


# ------------------------------------------------------------------------------ node registry
def spec_of(info: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    for section in ("required", "optional"):
        spec = (info["input"].get(section) or {}).get(name)
        if spec is not None:
            return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    raise KeyError(name)


def input_names(info: dict[str, Any]) -> list[str]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    return [n for section in ("required", "optional") for n in order.get(section, [])]


def is_widget(kind: Any, opts: dict[str, Any]) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def default_value(kind: Any, opts: dict[str, Any]) -> Any:
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options")
    if options is not None:
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def socket_type(kind: Any) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


# ------------------------------------------------------------------------------ builders
def _check(wf: Workflow, registry: dict[str, Any]) -> None:
    keys = {n.key for n in wf.nodes}
    for n in wf.nodes:
        if n.cls == NOTE:
            continue
        if n.cls not in registry:
            raise SystemExit(f"{wf.name}: node type {n.cls} is not registered on the host")
        names = input_names(registry[n.cls])
        for name in [*n.values, *n.links]:
            if name not in names:
                raise SystemExit(f"{wf.name}: {n.cls} has no input {name!r} (inputs: {names})")
        for name, (src, slot) in n.links.items():
            if src not in keys:
                raise SystemExit(f"{wf.name}: {n.key}.{name} links to unknown node {src}")
            out_type = registry[next(m.cls for m in wf.nodes if m.key == src)]["output"][slot]
            want = socket_type(spec_of(registry[n.cls], name)[0])
            if out_type not in want.split(",") and "*" not in (out_type, want):  # "A,B" takes either
                raise SystemExit(f"{wf.name}: {src}[{slot}] gives {out_type} but {n.key}.{name} takes {want}")


def _columns(wf: Workflow) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(key: str) -> int:
        if key not in depth:
            node = next(n for n in wf.nodes if n.key == key)
            depth[key] = 1 + max((visit(src) for src, _ in node.links.values()), default=-1)
        return depth[key]

    for n in wf.nodes:
        visit(n.key)
    return depth


def _note_height(text: str) -> int:
    return 40 + 17 * sum(1 + len(line) // 62 for line in text.splitlines())


def _size(info: dict[str, Any], n: Node) -> tuple[int, int]:
    if n.cls == NOTE:
        return NOTE_WIDTH, _note_height(n.values["text"])
    sockets = widgets = extra = 0
    for name in input_names(info):
        kind, opts = spec_of(info, name)
        if is_widget(kind, opts):
            widgets += 1
            if kind == "STRING" and opts.get("multiline"):
                extra += 60
            if opts.get("image_upload"):
                extra += 300
        else:
            sockets += 1
    rows = max(sockets, len(info["output"]))
    width = 400 if n.cls == "CLIPTextEncode" else 320
    return width, 30 + 22 * rows + 26 * widgets + extra


def build(wf: Workflow, registry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(UI-format workflow, API-format prompt) for one description."""
    _check(wf, registry)
    ids = {n.key: i + 2 for i, n in enumerate(wf.nodes)}  # id 1 is the note
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    in_link: dict[tuple[str, str], int] = {}
    for n in wf.nodes:
        info = registry.get(n.cls, {"input": {}})
        for name in input_names(info):
            if name in n.links:
                src, slot = n.links[name]
                link_id = len(links) + 1
                links.append([link_id, ids[src], slot, ids[n.key], _slots(info, n).index(name), registry[
                    next(m.cls for m in wf.nodes if m.key == src)]["output"][slot]])
                out_links.setdefault((src, slot), []).append(link_id)
                in_link[(n.key, name)] = link_id

    depth = _columns(wf)
    sizes = {n.key: _size(registry.get(n.cls, {}), n) for n in wf.nodes}
    note_h = _note_height(wf.note)
    col_x, x = {}, 30
    for col in range(max(depth.values()) + 1):
        col_x[col] = x
        width = max((sizes[k][0] for k in depth if depth[k] == col), default=320)
        x += (max(width, NOTE_WIDTH) if col == 0 else width) + COLUMN_GAP
    col_y = {col: 30 for col in col_x}
    col_y[0] = 30 + note_h + ROW_GAP

    ui_nodes: list[dict[str, Any]] = [_note_node(1, [30, 30], note_h, "How to use this workflow", wf.note, 0)]
    api: dict[str, Any] = {}
    order = sorted(wf.nodes, key=lambda n: (depth[n.key], ids[n.key]))
    for position, n in enumerate(order, start=1):
        if n.cls == NOTE:
            col = depth[n.key]
            ui_nodes.append(_note_node(ids[n.key], [col_x[col], col_y[col]], sizes[n.key][1], n.title or NOTE,
                                       n.values["text"], position))
            col_y[col] += sizes[n.key][1] + ROW_GAP
            continue
        info = registry[n.cls]
        widgets_values, api_inputs = [], {}
        for name in input_names(info):
            kind, opts = spec_of(info, name)
            if is_widget(kind, opts):
                value = n.values.get(name, default_value(kind, opts))
                widgets_values.append(value)
                if opts.get("control_after_generate"):
                    widgets_values.append("fixed")
                if opts.get("image_upload"):
                    widgets_values.append("image")
                api_inputs[name] = value
            if name in n.links:
                api_inputs[name] = [str(ids[n.links[name][0]]), n.links[name][1]]
        api_inputs.update(FRONTEND_INPUTS.get(n.cls, {}))
        inputs = []
        for name in _slots(info, n):
            kind, opts = spec_of(info, name)
            socket = {"name": name, "type": socket_type(kind), "link": in_link.get((n.key, name))}
            if is_widget(kind, opts):
                socket = {"name": name, "type": socket_type(kind), "widget": {"name": name},
                          "link": in_link.get((n.key, name))}
            inputs.append(socket)
        output_names = info.get("output_name") or info["output"]
        outputs = [{"name": oname, "type": otype, "links": out_links.get((n.key, slot), []),
                    "slot_index": slot}
                   for slot, (otype, oname) in enumerate(zip(info["output"], output_names, strict=True))]
        w, h = sizes[n.key]
        col = depth[n.key]
        node = {"id": ids[n.key], "type": n.cls, "pos": [col_x[col], col_y[col]], "size": [w, h], "flags": {},
                "order": position, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.cls, **({"models": n.models} if n.models else {})},
                "widgets_values": widgets_values}
        col_y[col] += h + ROW_GAP
        if n.title:
            node["title"] = n.title
        ui_nodes.append(node)
        api[str(ids[n.key])] = {"inputs": api_inputs, "class_type": n.cls,
                                "_meta": {"title": n.title or info.get("display_name") or n.cls}}
    ui = {"id": _uuid(wf.name), "revision": 0, "last_node_id": max(ids.values()), "last_link_id": len(links),
          "nodes": ui_nodes, "links": links, "groups": [], "config": {},
          "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
    return ui, dict(sorted(api.items(), key=lambda kv: int(kv[0])))


def _slots(info: dict[str, Any], n: Node) -> list[str]:
    """Input slots as the frontend (1.27) numbers them: the sockets, then, on a node where a link
    feeds a widget, every widget input (each widget has a slot there)."""
    names = input_names(info)
    sockets = [m for m in names if not is_widget(*spec_of(info, m))]
    widgets = [m for m in names if m not in sockets]
    return sockets + (widgets if any(m in n.links for m in widgets) else [])


def _note_node(node_id: int, pos: list[int], height: int, title: str, text: str,
               order: int) -> dict[str, Any]:
    return {"id": node_id, "type": NOTE, "pos": pos, "size": [NOTE_WIDTH, height], "flags": {},
            "order": order, "mode": 0, "inputs": [], "outputs": [], "title": title, "properties": {},
            "widgets_values": [text], "color": "#432", "bgcolor": "#653"}


def _uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/psg-edit/ComfyUI-PSG/workflows/{name}"))


# ------------------------------------------------------------------------------ thumbnail
KEY_NODES = ("LoadImage", "PSGFitImage", "CheckpointLoaderSimple", "FluxGuidance", "PSGLoadInversion",
             "PSGDDIMInversion", "PSGTextGuidanceOptimize", "PSGSaveInversion", "PSGTriplePromptGuider",
             "PSGPerceptualSampler", "PSGEdit", "PSGImageMetrics", "PSGCompareGrid", "ImageScale",
             "SaveImage")
"""What a thumbnail shows, in this order: the photo's path through the method to the saved edit."""
BOX_COLOURS = {"PSG": ("#1f3d2e", "#5fbf8f"), "": ("#2b2b2b", "#8a8a8a")}
PER_ROW = 4


def _facts(n: Node) -> list[str]:
    """One or two short lines of the node's settings that matter to a reader."""
    v = n.values
    facts = {
        "CheckpointLoaderSimple": [str(v.get("ckpt_name", ""))[:30]],
        "LoadImage": ["any size", "mask: paint in editor"],
        "PSGFitImage": [f"long side {v.get('long_side')} px", f"sides x{v.get('multiple')}"],
        "FluxGuidance": [f"guidance {v.get('guidance')} (distilled)"],
        "PSGLoadInversion": ["a saved inversion", "no inversion, no optimization"],
        "PSGDDIMInversion": [f"{v.get('steps')} steps", "under the source prompt"],
        "PSGTextGuidanceOptimize": ["null-text optimization", "per-step nulls"],
        "PSGSaveInversion": ["psg_inversions/", "file name on the canvas"],
        "PSGTriplePromptGuider": [f"w_edit {v.get('w_edit')}", f"w_source {v.get('w_source')}"],
        "PSGPerceptualSampler": [f"LPIPS scale {v.get('scale')}", "keeps the rest"],
        "PSGEdit": [f"{v.get('steps')} steps, w_edit {v.get('w_edit')}", f"LPIPS scale {v.get('scale')}"],
        "PSGImageMetrics": ["PSNR / SSIM / LPIPS", "shown on the canvas"],
        "PSGCompareGrid": ["photo | edit | difference"],
        "ImageScale": ["back to photo size", "or keep working size"],
        "SaveImage": ["output/psg/"],
    }
    return facts.get(n.cls, [])


def key_node_picture(wf: Workflow, width: int = 768, title: str | None = None) -> Any:
    """The workflow's key nodes as a readable chain of boxes (titles and the settings that matter),
    not the whole graph: what a person needs to recognise the template at thumbnail size."""
    from PIL import Image, ImageDraw

    from psg_eval.plots import font

    chain = sorted((n for n in wf.nodes if n.cls in KEY_NODES and n.key != "target"),
                   key=lambda n: KEY_NODES.index(n.cls))
    rows = [chain[i:i + PER_ROW] for i in range(0, len(chain), PER_ROW)]
    unit = width / 768
    gap, pad, box_h, head = round(34 * unit), round(16 * unit), round(104 * unit), round(52 * unit)
    box_w = (width - 2 * pad - (PER_ROW - 1) * gap) // PER_ROW
    height = head + len(rows) * (box_h + gap) - gap + 2 * pad
    img = Image.new("RGB", (width, height), "#161616")
    draw = ImageDraw.Draw(img)
    big, mid, small = font(round(24 * unit)), font(round(16 * unit)), font(round(13 * unit))
    draw.text((pad, pad), title or wf.name, fill="#ffffff", font=big)
    centres = []
    for r, row in enumerate(rows):
        y = head + pad + r * (box_h + gap)
        for c, n in enumerate(row):
            x = pad + c * (box_w + gap)
            fill, edge = BOX_COLOURS["PSG" if n.cls.startswith("PSG") else ""]
            draw.rounded_rectangle([x, y, x + box_w, y + box_h], radius=round(8 * unit), fill=fill,
                                   outline=edge, width=max(1, round(2 * unit)))
            room = box_w - round(14 * unit)

            def fit(text: str, f: Any, room: int = room) -> str:
                """The text, shortened with an ellipsis until it fits the box."""
                while text and draw.textlength(text, font=f) > room:
                    text = text[:-2] + "\u2026"
                return text

            name = n.title or n.cls
            draw.text((x + round(8 * unit), y + round(6 * unit)), fit(name, mid), fill="#ffffff", font=mid)
            for i, line in enumerate(_facts(n)[:2]):
                draw.text((x + round(8 * unit), y + round((36 + 22 * i) * unit)), fit(line, small),
                          fill="#c8c8c8",
                          font=small)
            centres.append((x, y, box_w, box_h))
    for (x0, y0, w0, h0), (x1, y1, _, h1) in zip(centres, centres[1:], strict=False):
        colour, thick = "#e0b050", max(2, round(3 * unit))
        if y1 == y0:  # same row: straight arrow
            a, b = (x0 + w0, y0 + h0 // 2), (x1, y1 + h1 // 2)
            draw.line([a, b], fill=colour, width=thick)
        else:  # next row: down from the last box, left, into the first box's top
            mid_y = y0 + h0 + gap // 2
            a, b = (x0 + w0 // 2, y0 + h0), (x1 + w0 // 2, y1)
            draw.line([a, (a[0], mid_y), (b[0], mid_y), b], fill=colour, width=thick)
        tip = b
        s = round(7 * unit)
        head_pts = ([tip, (tip[0] - s, tip[1] - s), (tip[0] - s, tip[1] + s)] if y1 == y0
                    else [tip, (tip[0] - s, tip[1] - s), (tip[0] + s, tip[1] - s)])
        draw.polygon(head_pts, fill=colour)
    return img


def thumbnail(wf: Workflow, dest: Path) -> None:
    key_node_picture(wf).save(dest, "JPEG", quality=90)


# ------------------------------------------------------------------------------ registry source
def load_registry(server: str | None, comfy_root: Path | None) -> dict[str, Any]:
    if server:
        from psg_cli.server_backend import ServerBackend

        return ServerBackend(server).object_info()
    from psg_cli.inprocess_backend import InProcessBackend

    root = comfy_root or Path(os.environ.get("COMFYUI_ROOT", "~/ComfyUI")).expanduser()
    return InProcessBackend(root, cpu=True).object_info()


def render_all(registry: dict[str, Any]) -> dict[Path, bytes]:
    """Every generated file's path and JSON bytes (thumbnails are written separately)."""
    files: dict[Path, bytes] = {}
    for wf in all_workflows():
        ui, api = build(wf, registry)
        files[REPO / "example_workflows" / f"{wf.name}.json"] = (json.dumps(ui, indent=2) + "\n").encode()
        api_path = REPO / "example_workflows" / "api" / f"{wf.name}.json"
        files[api_path] = (json.dumps(api, indent=2) + "\n").encode()
    return files


def frontend_thumbnails(url: str, names: list[str]) -> None:
    """Thumbnails as ComfyUI's frontend draws each workflow dropped on its canvas (the same page
    driver as tests/host/test_host_frontend.py); refuses a workflow that does not load cleanly."""
    from psg_testing import browser
    from psg_testing.cli_support import write_photo

    with tempfile.TemporaryDirectory() as tmp:
        browser.ensure_input_image(url, "example.png", write_photo(Path(tmp) / "example.png", size=512))
    with browser.ComfyFrontend.open(url) as frontend:
        for name in names:
            path = REPO / "example_workflows" / f"{name}.json"
            problems = frontend.drop_workflow(path.name, path.read_text(encoding="utf-8")).problems()
            if problems:
                raise RuntimeError(f"{path.name} does not load cleanly in the frontend: {problems}")
            print(frontend.graph_thumbnail(path.with_suffix(".jpg")).relative_to(REPO))


def _temporary_server(stack: ExitStack, comfy_root: Path | None) -> str:
    """A ``main.py --cpu`` with this pack (the test harness's server), stopped when ``stack`` closes."""
    from psg_testing.host_server import ComfyServer

    base = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    return stack.enter_context(ComfyServer.running(base, comfy_root)).url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="read node definitions from this ComfyUI server")
    parser.add_argument("--comfy-root", type=Path, help="ComfyUI folder to boot in-process (default "
                                                        "$COMFYUI_ROOT or ~/ComfyUI)")
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    parser.add_argument("--frontend-thumbnails", action="store_true",
                        help="thumbnails = screenshots of ComfyUI's frontend instead of drawn diagrams")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with ExitStack() as stack:
        if args.frontend_thumbnails and not args.check and not args.server:
            args.server = _temporary_server(stack, args.comfy_root)
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    files = render_all(load_registry(args.server, args.comfy_root))
    stale = [p for p, data in files.items() if not p.is_file() or p.read_bytes() != data]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(REPO)}")
        return 1 if stale else 0
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if path.parent.name == "example_workflows" and not args.frontend_thumbnails:
            thumbnail(next(wf for wf in all_workflows() if wf.name == path.stem), path.with_suffix(".jpg"))
        print(path.relative_to(REPO))
    if args.frontend_thumbnails:
        frontend_thumbnails(args.server, [wf.name for wf in all_workflows()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
