"""Generate the example workflows from ONE description: UI-format JSON (drag and drop, template
browser), its API-format twin in workflows/api/, and a rendered .jpg thumbnail.

Node definitions (socket types, widget order, defaults) come from the real host's node registry
(``/object_info`` of a server, or ComfyUI booted in-process), so the files match the host.

    .venv/bin/python scripts/build_workflows.py                 # ComfyUI at $COMFYUI_ROOT or ~/ComfyUI
    .venv/bin/python scripts/build_workflows.py --server http://127.0.0.1:8188
    .venv/bin/python scripts/build_workflows.py --check         # exit 1 if files are stale
    .venv/bin/python scripts/build_workflows.py --frontend-thumbnails   # thumbnails = screenshots of
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from psg_cli import roles  # noqa: E402

logger = logging.getLogger("build_workflows")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_WIDTH = 460
COLUMN_GAP = 60
ROW_GAP = 36
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
NOTE = "Note"
"""Frontend-only node class: in the UI file, never in the API twin."""


# ------------------------------------------------------------------------------ description
@dataclass
class Node:
    """One node: ``values`` are widget values by input name, ``links`` map an input name to
    (source node key, output index)."""

    key: str
    cls: str
    title: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node]


def _loader(ckpt: str) -> list[Node]:
    return [
        Node("ckpt", "CheckpointLoaderSimple", roles.CHECKPOINT.title, {"ckpt_name": ckpt}),
        Node("photo", "LoadImage", roles.PHOTO.title, {"image": "example.png"}),
        Node("null", "CLIPTextEncode", "Null prompt", {"text": ""}, {"clip": ("ckpt", 1)}),
        Node("source", "CLIPTextEncode", roles.SOURCE.title, {"text": "a photo of a tabby cat"}, {"clip": ("ckpt", 1)}),
        Node("target", "CLIPTextEncode", roles.TARGET.title, {"text": "a photo of a tiger"}, {"clip": ("ckpt", 1)}),
        Node("lpips", "PSGLPIPSLoader", "LPIPS", {"net": "alex"}),
    ]


def _guidance_vae(family: str) -> list[Node]:
    """The TAESD loader for ``guidance_vae`` (a cheap LPIPS gradient) and the note explaining it."""
    name = roles.TAESD_FOR_FAMILY[family]
    note = f"""Guidance VAE: Load VAE -> {name} (TAESD, a tiny decoder) is used ONLY for the LPIPS gradient, so a guided step costs about 1.1x a plain step instead of 2-3x. The edited image is always decoded with the checkpoint's own VAE.
Files: {name}_encoder.safetensors and {name}_decoder.safetensors from {roles.TAESD_URL} go in ComfyUI/models/vae_approx/ (then press R to refresh).
Without them: delete this Load VAE node (guidance_vae unconnected = the full VAE decodes the guidance: slower) or run the CLI with --guidance-vae none."""
    return [Node("gvae", "VAELoader", roles.GUIDANCE_VAE.title, {"vae_name": name}),
            Node("gvae_note", NOTE, "About the guidance VAE", {"text": note})]


def _outputs(image: tuple[str, int]) -> list[Node]:
    return [
        Node("save", "SaveImage", roles.EDITED.title, {"filename_prefix": "psg/edit"}, {"images": image}),
        Node("grid", "ImageStitch", "Before | after", {"direction": "right", "match_image_size": True,
                                                        "spacing_width": 8, "spacing_color": "white"},
             {"image1": ("photo", 0), "image2": image}),
        Node("preview", "PreviewImage", "Grid preview", {}, {"images": ("grid", 0)}),
    ]


def one_node_edit(name: str, ckpt: str, steps: int, extra_note: str = "", family: str = "sd15") -> Workflow:
    note = f"""PSG one-node edit (arXiv 2312.06680): invert the photo, optimise the text guidance, then sample the edit with perceptual-similarity (LPIPS) guidance.

1. Checkpoint: {ckpt}. Photo: load your image (sides a multiple of 64 work best).
2. Source prompt = a caption of the photo as it is; Target prompt = the same caption with the change (e.g. cat -> tiger). Null prompt stays empty.
3. PSG Edit knobs:
 - steps / scheduler: DDIM steps (50 in the paper; 20-30 is faster), 'simple' matches DDIM.
 - w_edit: CFG strength of the edit (5-10). 0 reconstructs the photo.
 - w_source: weight of the source prompt (0 = plain CFG on the target; small negative values push away from the source).
 - text_optimisation: null-text optimisation (best, slow), negative-prompt (free), direct offsets (fast).
 - inner_steps: null-text: at most this many model calls per step (10; it usually stops after 2-3).
 - scale / start / end: LPIPS guidance strength (0 = off, 0.5-2 typical) and when it acts; higher keeps more of the photo.
 - guidance_vae (Guidance VAE, see its note) / guidance_resolution: what decodes the x0 estimates for LPIPS, at full, 1/2 or 1/4 size.
 - mask (optional input): white = region allowed to change; LPIPS keeps the rest close to the photo.
4. Edited image is saved to output/psg/; 'Before | after' previews the photo next to the edit.
Headless: python -m psg_cli edit photo.jpg --source "..." --target "..." --workflow {name}{extra_note}"""
    return Workflow(name, note, [
        *_loader(ckpt),
        *_guidance_vae(family),
        Node("edit", "PSGEdit", "PSG Edit", {"steps": steps, "w_edit": 7.5, "w_source": 0.0, "scale": 1.0},
             {"model": ("ckpt", 0), "vae": ("ckpt", 2), "image": ("photo", 0), "null": ("null", 0),
              "source": ("source", 0), "edit": ("target", 0), "lpips": ("lpips", 0),
              "guidance_vae": ("gvae", 0)}),
        *_outputs(("edit", 0)),
    ])


def advanced(name: str, reconstruct: bool) -> Workflow:
    steps, scheduler = 50, "simple"
    w_edit, w_source, scale = (0.0, 7.5, 0.0) if reconstruct else (7.5, 0.0, 1.0)
    if reconstruct:
        note = """PSG reconstruction check: does my inversion reproduce the photo?

DDIM inversion -> null-text optimisation -> sample back with w_edit = 0 (only the source prompt, at the optimisation's guidance scale w_source = 7.5) and LPIPS guidance off (scale 0). 'Before | after' should look identical; if it does not, raise inner_steps or steps before editing.
- Inversion and BasicScheduler must use the same steps and scheduler (here 50, simple).
- Text Guidance Optimisation: guidance_scale must equal w_source here (7.5); mode 'null-text optimisation' reconstructs best, 'negative-prompt' is free but looser.
- The Target prompt is unused at w_edit = 0 (kept so the CLI can fill it)."""
    else:
        note = """PSG advanced edit: every stage as its own node.

Photo -> VAE Encode -> PSG DDIM Inversion (source prompt, steps, scheduler) -> PSG Text Guidance Optimisation (per-step null embeddings) -> PSG Triple-Prompt Guider (null / source / target) + PSG Perceptual Sampler (LPIPS to the photo) -> SamplerCustomAdvanced (noise disabled: it starts from the inverted noise) -> VAE Decode.
Knobs:
- steps / scheduler: identical in DDIM Inversion and BasicScheduler (denoise 1.0).
- Text Guidance Optimisation: mode (null-text optimisation best / negative-prompt free / direct offsets fast), guidance_scale = the w_edit you sample with (7.5), inner_steps 10 (at most; usually 2-3 calls per step are used).
- Guider: w_edit = edit strength (5-10; 0 reconstructs), w_source = weight of the source prompt (0 = plain CFG).
- Perceptual Sampler: scale (0 = off, 0.5-2 typical), start / end window, every n-th step, gradient path x0 (fast) or through model (DPS); optional mask input (white = free to change); guidance_vae (Guidance VAE, see its note) and guidance_resolution choose what decodes the x0 estimates for LPIPS.
Headless: python -m psg_cli edit photo.jpg --source "..." --target "..." --workflow """ + name
    # reconstruction runs with LPIPS guidance off (scale 0): a guidance VAE would load for nothing
    return Workflow(name, note, [
        *_loader(roles.DEFAULT_CHECKPOINT),
        *([] if reconstruct else _guidance_vae("sd15")),
        Node("encode", "VAEEncode", None, {}, {"pixels": ("photo", 0), "vae": ("ckpt", 2)}),
        Node("invert", "PSGDDIMInversion", "DDIM Inversion", {"steps": steps, "scheduler": scheduler, "cfg": 1.0},
             {"model": ("ckpt", 0), "latent": ("encode", 0), "source": ("source", 0)}),
        Node("optimise", "PSGTextGuidanceOptimize", "Text Guidance Optimisation",
             {"guidance_scale": 7.5, "inner_steps": 10},
             {"model": ("ckpt", 0), "inversion": ("invert", 0), "source": ("source", 0), "null": ("null", 0)}),
        Node("guider", "PSGTriplePromptGuider", "Triple-Prompt Guider", {"w_source": w_source, "w_edit": w_edit},
             {"model": ("ckpt", 0), "null": ("null", 0), "source": ("source", 0), "edit": ("target", 0),
              "inversion": ("optimise", 0)}),
        Node("sampler", "PSGPerceptualSampler", "Perceptual Sampler", {"scale": scale},
             {"vae": ("ckpt", 2), "reference": ("photo", 0), "lpips": ("lpips", 0), "inversion": ("optimise", 0),
              **({} if reconstruct else {"guidance_vae": ("gvae", 0)})}),
        Node("sigmas", "BasicScheduler", None, {"scheduler": scheduler, "steps": steps, "denoise": 1.0},
             {"model": ("ckpt", 0)}),
        Node("noise", "DisableNoise", None),
        Node("sample", "SamplerCustomAdvanced", None, {},
             {"noise": ("noise", 0), "guider": ("guider", 0), "sampler": ("sampler", 0), "sigmas": ("sigmas", 0),
              "latent_image": ("invert", 1)}),
        Node("decode", "VAEDecode", None, {}, {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
        *_outputs(("decode", 0)),
    ])


def compare(name: str) -> Workflow:
    """The one-node edit plus what a user needs to judge it: metrics, a difference grid, the loss curve."""
    base = one_node_edit(name, roles.DEFAULT_CHECKPOINT, 50)
    note = """PSG compare: edit, then measure and look.

- PSG Edit: as in psg_edit (w_edit = edit strength, scale = LPIPS guidance, optional mask input: white = free to change; Guidance VAE: see its note).
- PSG Image Metrics (photo vs edit): PSNR / SSIM / LPIPS over the whole image and bg_* outside the mask (PIE-Bench convention); the summary text shows in the node.
- PSG Compare Grid: photo | edit | absolute-difference heatmap with a colour bar (max_difference 0 = auto; fix it to compare runs).
- PSG Loss Plot: the LPIPS loss at each guided step; it should fall as guidance pulls the unedited content back to the photo.
Headless: python -m psg_cli edit photo.jpg --source "..." --target "..." --workflow """ + name
    extra = [
        Node("metrics", "PSGImageMetrics", "Metrics", {}, {"image_a": ("photo", 0), "image_b": ("edit", 0),
                                                          "lpips": ("lpips", 0)}),
        Node("diffgrid", "PSGCompareGrid", "Photo | edit | difference", {"max_difference": 0.0},
             {"source": ("photo", 0), "edit": ("edit", 0)}),
        Node("diffpreview", "PreviewImage", "Difference grid", {}, {"images": ("diffgrid", 0)}),
        Node("lossplot", "PSGLossPlot", "Loss per step", {}, {"losses": ("edit", 2)}),
        Node("losspreview", "PreviewImage", "Loss plot", {}, {"images": ("lossplot", 0)}),
    ]
    return Workflow(name, note, [n for n in base.nodes if n.key not in ("grid", "preview")] + extra)


def all_workflows() -> list[Workflow]:
    return [
        one_node_edit("psg_edit", roles.DEFAULT_CHECKPOINT, 50),
        one_node_edit("psg_edit_sdxl", SDXL_CHECKPOINT, 50,
                      "_sdxl --ckpt YOUR_SDXL.safetensors\nSDXL: use photos around 1024 px.", family="sdxl"),
        advanced("psg_advanced", reconstruct=False),
        advanced("psg_reconstruction", reconstruct=True),
        compare("psg_compare"),
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
                sockets = [m for m in input_names(info) if not is_widget(*spec_of(info, m))]
                links.append([link_id, ids[src], slot, ids[n.key], sockets.index(name), registry[
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
        inputs, widgets_values, api_inputs = [], [], {}
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
            else:
                inputs.append({"name": name, "type": socket_type(kind), "link": in_link.get((n.key, name))})
                if name in n.links:
                    api_inputs[name] = [str(ids[n.links[name][0]]), n.links[name][1]]
        outputs = [{"name": oname, "type": otype, "links": out_links.get((n.key, slot), []), "slot_index": slot}
                   for slot, (otype, oname) in enumerate(zip(info["output"], info.get("output_name") or info["output"],
                                                             strict=True))]
        w, h = sizes[n.key]
        col = depth[n.key]
        node = {"id": ids[n.key], "type": n.cls, "pos": [col_x[col], col_y[col]], "size": [w, h], "flags": {},
                "order": position, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.cls}, "widgets_values": widgets_values}
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


def _note_node(node_id: int, pos: list[int], height: int, title: str, text: str, order: int) -> dict[str, Any]:
    return {"id": node_id, "type": NOTE, "pos": pos, "size": [NOTE_WIDTH, height], "flags": {}, "order": order,
            "mode": 0, "inputs": [], "outputs": [], "title": title, "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653"}


def _uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/psg-edit/ComfyUI-PSG/workflows/{name}"))


# ------------------------------------------------------------------------------ thumbnail
TYPE_COLOURS = {"MODEL": "#b39ddb", "CLIP": "#ffd54f", "VAE": "#ef9a9a", "CONDITIONING": "#ffa726",
                "LATENT": "#ff80ab", "IMAGE": "#64b5f6", "MASK": "#81c784"}


def thumbnail(ui: dict[str, Any], dest: Path) -> None:
    """A rendered overview of the graph (boxes, titles, coloured links) as a small JPEG."""
    from PIL import Image, ImageDraw, ImageFont

    x1 = max(n["pos"][0] + n["size"][0] for n in ui["nodes"]) + 30
    y1 = max(n["pos"][1] + n["size"][1] for n in ui["nodes"]) + 30
    scale = min(768 / x1, 512 / y1)
    img = Image.new("RGB", (round(x1 * scale), round(y1 * scale)), "#202020")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(9, round(26 * scale)))
    by_id = {n["id"]: n for n in ui["nodes"]}
    for _, src, _, dst, _, kind in ui["links"]:
        a, b = by_id[src], by_id[dst]
        p = ((a["pos"][0] + a["size"][0]) * scale, (a["pos"][1] + 20) * scale)
        q = (b["pos"][0] * scale, (b["pos"][1] + 20) * scale)
        draw.line([p, q], fill=TYPE_COLOURS.get(kind, "#9e9e9e"), width=max(1, round(3 * scale)))
    for n in ui["nodes"]:
        x, y = n["pos"][0] * scale, n["pos"][1] * scale
        w, h = n["size"][0] * scale, n["size"][1] * scale
        fill = "#653" if n["type"] == "Note" else ("#2e4a3a" if n["type"].startswith("PSG") else "#353535")
        draw.rounded_rectangle([x, y, x + w, y + h], radius=4, fill=fill, outline="#777")
        draw.text((x + 4, y + 2), n.get("title", n["type"]), fill="#eeeeee", font=font)
    img.save(dest, "JPEG", quality=88)


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
        files[REPO / "workflows" / f"{wf.name}.json"] = (json.dumps(ui, indent=2) + "\n").encode()
        files[REPO / "workflows" / "api" / f"{wf.name}.json"] = (json.dumps(api, indent=2) + "\n").encode()
    return files


def frontend_thumbnails(url: str, names: list[str]) -> None:
    """Thumbnails as ComfyUI's frontend draws each workflow dropped on its canvas (the same page
    driver as tests/host/test_host_frontend.py); refuses a workflow that does not load cleanly."""
    sys.path.insert(0, str(REPO / "tests"))
    from psg_testing import browser
    from psg_testing.cli_support import write_photo

    with tempfile.TemporaryDirectory() as tmp:
        browser.ensure_input_image(url, "example.png", write_photo(Path(tmp) / "example.png", size=512))
    with browser.ComfyFrontend.open(url) as frontend:
        for name in names:
            path = REPO / "workflows" / f"{name}.json"
            problems = frontend.drop_workflow(path.name, path.read_text(encoding="utf-8")).problems()
            if problems:
                raise RuntimeError(f"{path.name} does not load cleanly in the frontend: {problems}")
            print(frontend.graph_thumbnail(path.with_suffix(".jpg")).relative_to(REPO))


def _temporary_server(stack: ExitStack, comfy_root: Path | None) -> str:
    """A ``main.py --cpu`` with this pack (the test harness's server), stopped when ``stack`` closes."""
    sys.path.insert(0, str(REPO / "tests"))
    from psg_testing.host_server import ComfyServer

    server = ComfyServer.start(Path(stack.enter_context(tempfile.TemporaryDirectory())), comfy_root)
    stack.callback(server.stop)
    return server.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="read node definitions from this ComfyUI server")
    parser.add_argument("--comfy-root", type=Path, help="ComfyUI folder to boot in-process (default $COMFYUI_ROOT or ~/ComfyUI)")
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
        if path.parent.name == "workflows" and not args.frontend_thumbnails:
            thumbnail(json.loads(data), path.with_suffix(".jpg"))
        print(path.relative_to(REPO))
    if args.frontend_thumbnails:
        frontend_thumbnails(args.server, [wf.name for wf in all_workflows()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
