"""The shipped workflows against a real host: every UI workflow matches the real node registry
(types, link sockets, widget counts), its API twin is the same graph, the files are what the
generator makes from today's node definitions, and every API workflow runs headless (checkpoint
loader swapped for the tiny test model) through the CLI on a real ``--cpu`` server, its guidance
VAE loaded by ComfyUI's own VAELoader from random-weight TAESD files in the server's
models/vae_approx."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from psg_testing import host
from psg_testing.cli_support import read_pixels, run_cli, swap_checkpoint_loader, write_json, write_photo
from psg_testing.taesd_files import write_random_taesd

from psg_cli import roles, workflow

WORKFLOWS = host.REPO_ROOT / "example_workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_INPUTS = {"PreviewAny": ("preview",)}
"""Inputs the frontend's own widgets add to a queued prompt (Preview Any's text box)."""
FAST = {"steps": 3, "inner_steps": 2, "long_side": 128}
NO_PERCEPTUAL_GUIDANCE = {"psg_reconstruction"}  # LPIPS scale 0: no guidance VAE to load
TEMPLATE_FAMILIES = ("sd2", "sdxl", "sd3", "flux")
TINY_FAMILY = {"sd15": "sd15", "sd2": "sd2v", "sdxl": "sdxl", "sd3": "flow", "flux": "flow"}
"""Template family -> the tiny model its API twin runs on (the tiny flow model is SD3-shaped)."""
TINY_GUIDANCE_VAE = {"flux": "taesd3"}
"""A Flux TAESD is refused on the SD3-shaped tiny model: the Flux twin runs with taesd3."""
EXPECTED = {"psg_edit", "psg_edit_sd2", "psg_edit_sdxl", "psg_edit_sd3", "psg_edit_flux", "psg_advanced",
            "psg_reconstruction", "psg_invert_once", "psg_edit_many", "psg_compare"}


def template_family(name: str) -> str:
    return next((f for f in TEMPLATE_FAMILIES if name.endswith(f"_{f}")), "sd15")


def family_of(name: str) -> str:
    return TINY_FAMILY[template_family(name)]


def test_host_workflows_are_shipped_in_pairs():
    assert EXPECTED <= set(NAMES)
    for name in NAMES:
        assert (WORKFLOWS / "api" / f"{name}.json").is_file(), f"{name}: no API twin"
        with Image.open(WORKFLOWS / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and min(thumb.size) >= 128


@pytest.fixture(scope="module")
def registry(comfy_server) -> dict[str, Any]:
    return comfy_server.object_info()


def _spec(info: dict[str, Any], name: str) -> tuple[Any, dict[str, Any]]:
    for section in ("required", "optional"):
        spec = (info["input"].get(section) or {}).get(name)
        if spec is not None:
            return spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    raise AssertionError(f"{info.get('name')} has no input {name!r}")


def _widgets(info: dict[str, Any]) -> list[tuple[str, int]]:
    """(input name, number of widget values it stores) in the order the frontend saves them."""
    out = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            kind, opts = _spec(info, name)
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput"):
                out.append((name,
                            1 + bool(opts.get("control_after_generate")) + bool(opts.get("image_upload"))))
    return out


def _load(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    return ui, api


@pytest.mark.parametrize("name", NAMES)
def test_host_workflows_ui_matches_the_real_registry_and_its_api_twin(name, registry):
    ui, api = _load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    graph_nodes = [n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY]
    assert any(n["type"] == "Note" and n["widgets_values"][0].strip() for n in ui["nodes"]), (
        "no explaining note"
    )
    missing = sorted({n["type"] for n in graph_nodes} - set(registry))
    assert not missing, f"node types not registered on the host: {missing}"

    for link_id, src, src_slot, dst, dst_slot, kind in links.values():
        out = nodes[src]["outputs"][src_slot]
        assert registry[nodes[src]["type"]]["output"][src_slot] == kind == out["type"]
        assert link_id in out["links"]
        socket = nodes[dst]["inputs"][dst_slot]
        # a multi-type socket is declared as "A,B" and accepts either
        assert socket["link"] == link_id and (socket["type"] == "*" or kind in socket["type"].split(","))
        declared = _spec(registry[nodes[dst]["type"]], socket["name"])[0]
        assert declared == "*" or kind in declared.split(","), \
            f"{name}: link {link_id} carries {kind} into {socket['name']} ({declared})"

    assert set(api) == {str(n["id"]) for n in graph_nodes}, "API twin has other nodes"
    for node in graph_nodes:
        info = registry[node["type"]]
        twin = api[str(node["id"])]
        assert twin["class_type"] == node["type"]
        widgets = _widgets(info)
        assert len(node["widgets_values"]) == sum(n for _, n in widgets), (
            f"{name}: {node['type']} widget count"
        )
        values, i = {}, 0
        for widget, count in widgets:
            values[widget] = node["widgets_values"][i]
            i += count
        expected = dict(values)
        for socket in node["inputs"]:
            if socket["link"] is not None:
                _, src, src_slot, *_ = links[socket["link"]]
                expected[socket["name"]] = [str(src), src_slot]
        frontend_added = {k: v for k,
                          v in twin["inputs"].items() if k in FRONTEND_INPUTS.get(node["type"], ())}
        assert {k: v for k, v in twin["inputs"].items() if k not in frontend_added} == expected, \
            f"{name}: API twin of node {node['id']} differs"
        assert twin["_meta"]["title"] == node.get("title", info["display_name"])
        required = set(info["input"].get("required", {}))
        assert required <= set(expected), f"{name}: node {node['id']} lacks {required - set(expected)}"

    for role in (roles.PHOTO, roles.SOURCE, roles.TARGET, roles.CHECKPOINT):
        assert workflow.find_role(api, role), f"{name}: the CLI cannot find '{role.title}'"
    guidance_vaes = workflow.find_role(api, roles.GUIDANCE_VAE)
    if name in NO_PERCEPTUAL_GUIDANCE:
        assert not guidance_vaes
    else:
        (gvae,) = guidance_vaes
        assert api[gvae]["class_type"] == "VAELoader"
        assert api[gvae]["inputs"]["vae_name"] == roles.TAESD_FOR_FAMILY[template_family(name)]
        consumers = [n["class_type"] for n in api.values() if n["inputs"].get("guidance_vae") == [gvae, 0]]
        assert consumers and all(c.startswith("PSG") for c in consumers), (
            f"{name}: guidance VAE feeds {consumers}"
        )
        notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
        assert any("models/vae_approx" in text and roles.TAESD_FOR_FAMILY[template_family(name)] in text
                   for text in notes), f"{name}: no note explaining the guidance VAE files"
    assert template_family(name) != "sd15" or api[workflow.find_role(api, roles.CHECKPOINT)[0]]["inputs"][
        "ckpt_name"] == roles.DEFAULT_CHECKPOINT
    _check_first_edit_wiring(name, ui, api)


def _check_first_edit_wiring(name: str, ui: dict[str, Any], api: dict[str, Any]) -> None:
    """The photo goes through PSG Fit Image with the mask editor's mask; the edited image is scaled by
    core's Image Scale to Fit's size; every checkpoint loader carries download metadata the frontend
    reads (a name equal to its widget value, an https url, a model folder)."""
    (photo,) = workflow.find_role(api, roles.PHOTO)
    (fit,) = workflow.find_role(api, roles.FIT)
    assert api[fit]["inputs"]["image"] == [photo, 0] and api[fit]["inputs"]["mask"] == [photo, 1]
    masked = [n for n in api.values() if n["inputs"].get("mask") == [fit, 1]]
    assert masked and all(n["class_type"].startswith("PSG") for n in masked), f"{name}: mask not wired"
    (saved,) = workflow.find_role(api, roles.EDITED)
    restore = api[api[saved]["inputs"]["images"][0]]
    assert restore["class_type"] == "ImageScale"
    assert restore["inputs"]["width"] == [fit, 2] and restore["inputs"]["height"] == [fit, 3]
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            (model,) = node["properties"]["models"]
            assert model["name"] == node["widgets_values"][0] and model["directory"] == "checkpoints"
            assert model["url"].startswith("https://") and model["url"].split("?")[0].endswith(model["name"])
    notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note")
    for other in re.findall(r"\bpsg_[a-z0-9_]+\b", notes):
        assert other in NAMES or other in ("psg_inversions", "psg_cli"), f"{name}: a note names {other}"


def test_host_workflows_files_are_what_the_generator_makes_from_the_registry(registry):
    module = importlib.import_module("scripts.build_workflows")
    stale = [str(p.relative_to(host.REPO_ROOT)) for p, data in module.render_all(registry).items()
             if not p.is_file() or p.read_bytes() != data]
    assert not stale, f"regenerate with `.venv/bin/python -m scripts.build_workflows`: {stale}"


# --------------------------------------------------------------------------- headless runs


@pytest.fixture(scope="module")
def random_lpips(comfy_server) -> Path:
    """A seeded random AlexNet backbone where the LPIPS loader looks (models/lpips): no download."""
    import torchvision

    folder = comfy_server.base_dir / "models" / "lpips"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "alexnet-owt-7be5be79.pth"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_taesd(comfy_server) -> Path:
    """Random-weight taesd / taesdxl where the server's VAELoader looks (its models/vae_approx),
    so the shipped Guidance VAE nodes load for real (the server rescans the folder on change)."""
    folder = comfy_server.base_dir / "models" / "vae_approx"
    write_random_taesd(folder, tuple(roles.TAESD_FOR_FAMILY.values()))
    offered = comfy_server.object_info("VAELoader")["VAELoader"]["input"]["required"]["vae_name"][0]
    assert set(roles.TAESD_FOR_FAMILY.values()) <= set(offered), offered
    return folder


def fast_tiny_twin(name: str, tmp_path: Path, **values: Any) -> Path:
    """The API twin on the tiny model of its family, with few steps and a 128 px working size."""
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    api = swap_checkpoint_loader(api, family=family_of(name))
    for node in api.values():
        for key, value in {**FAST, **values}.items():
            if key in node["inputs"] and not workflow.is_link(node["inputs"][key]):
                node["inputs"][key] = value
    return write_json(tmp_path / f"{name}_tiny.json", api)


def _edit(name: str, server, tmp_path: Path, photo: Path, *extra: str | Path, out_name: str = "result",
          **values: Any) -> dict[str, Any]:
    gvae = TINY_GUIDANCE_VAE.get(template_family(name))
    proc = run_cli("edit", photo, "--source", "a photo of a cat", "--target", "a photo of a tiger",
                   "--workflow", fast_tiny_twin(name, tmp_path, **values), "--server", server.url,
                   "--out", tmp_path / "out", "--name", out_name, "-q",
                   *(("--guidance-vae", gvae) if gvae else ()), *extra)
    assert proc.returncode == 0, f"{proc.stderr}\n{server.log_tail()}"
    return json.loads((tmp_path / "out" / f"{out_name}.json").read_text())


def _saved_inversion(server, tmp_path: Path) -> str:
    """Run psg_invert_once; the file its PSG Save Inversion wrote, as Load Inversion lists it."""
    folder = server.base_dir / "output" / "psg_inversions"
    before = set(folder.rglob("*.safetensors")) if folder.is_dir() else set()
    _edit("psg_invert_once", server, tmp_path, write_photo(tmp_path / "cat.png"), out_name="first")
    (new,) = set(folder.rglob("*.safetensors")) - before  # the CLI gives every saved file a run prefix
    return new.relative_to(folder).as_posix()


@pytest.mark.parametrize("name", NAMES)
def test_host_workflows_api_twin_runs_headless_through_the_cli(name, comfy_server, random_lpips, random_taesd,
                                                               tmp_path):
    photo = write_photo(tmp_path / "cat.png")
    extra: tuple[str, ...] = ()
    if name == "psg_edit_many":
        extra = ("--set", f"Load inversion.file={_saved_inversion(comfy_server, tmp_path)}")
    settings = _edit(name, comfy_server, tmp_path, photo, *extra)
    edited = read_pixels(tmp_path / "out" / "result.png")
    assert edited.shape == (128, 128, 3)
    if name == "psg_compare":
        assert {"Difference grid", "Loss plot"} <= set(settings["outputs"]), settings["outputs"]
        assert "psnr" in json.dumps(settings.get("metrics")), (
            f"no metrics in the settings: {settings.get('metrics')}"
        )
    else:
        assert "Grid preview" in settings["outputs"], "the before|after preview was not produced"
    loaders = {n["inputs"].get("vae_name") for n in settings["prompt"].values()
               if n["class_type"] == "VAELoader"}
    family = template_family(name)
    expected = (None if name in NO_PERCEPTUAL_GUIDANCE
                else TINY_GUIDANCE_VAE.get(family, roles.TAESD_FOR_FAMILY[family]))
    assert settings["guidance_vae"] == expected and loaders == ({expected} if expected else set())


def test_host_workflows_guidance_vae_none_decodes_guidance_with_the_main_vae(
        comfy_server, random_lpips, tmp_path):
    """``--guidance-vae none`` (no TAESD files on a user's machine): the loader is dropped and the
    edit still runs, the LPIPS gradient then going through the checkpoint's own VAE."""
    settings = _edit("psg_edit", comfy_server, tmp_path, write_photo(tmp_path / "cat.png"),
                     "--guidance-vae", "none", out_name="plain")
    assert settings["guidance_vae"] is None
    assert not [n for n in settings["prompt"].values() if n["class_type"] == "VAELoader"]
    (edit,) = [n for n in settings["prompt"].values() if n["class_type"] == "PSGEdit"]
    assert "guidance_vae" not in edit["inputs"]


def test_host_workflows_one_node_edit_takes_a_mask_from_the_cli(comfy_server, random_lpips, random_taesd,
                                                                tmp_path):
    """--mask-box replaces the Photo loader's own (mask editor) mask: it reaches PSG Edit through
    PSG Fit Image, resized with the photo."""
    settings = _edit("psg_edit", comfy_server, tmp_path, write_photo(tmp_path / "cat.png"),
                     "--mask-box", "0.25,0.25,0.75,0.75", out_name="masked")
    prompt = settings["prompt"]
    (edit_id,) = [k for k, n in prompt.items() if n["class_type"] == "PSGEdit"]
    fit_id = prompt[edit_id]["inputs"]["mask"][0]
    assert prompt[fit_id]["class_type"] == "PSGFitImage"
    assert prompt[prompt[fit_id]["inputs"]["mask"][0]]["class_type"] == "LoadImageMask"


def test_host_workflows_phone_photo_runs_at_working_size_and_comes_back_full_size(
        comfy_server, random_lpips, random_taesd, tmp_path):
    """A 4032x3024 JPEG goes through the SD1.5 template as it is: PSG Fit Image brings it to
    512x384 for the model, core's Image Scale brings the edit back to 4032x3024."""
    photo = tmp_path / "phone.jpg"
    with Image.open(write_photo(tmp_path / "square.png", size=1024)) as square:
        square.resize((4032, 3024)).save(photo, quality=90)
    settings = _edit("psg_edit", comfy_server, tmp_path, photo, out_name="phone", long_side=512)
    with Image.open(tmp_path / "out" / "phone.png") as edited:
        assert edited.size == (4032, 3024)
    (fit,) = [n for n in settings["prompt"].values() if n["class_type"] == "PSGFitImage"]
    assert fit["inputs"]["long_side"] == 512


def test_host_workflows_odd_photo_kept_at_working_size(comfy_server, random_lpips, random_taesd, tmp_path):
    """A 451x300 photo (sides not multiples of 8) is edited at 128x88 and, with output_size
    'working size', saved at that size."""
    photo = tmp_path / "odd.png"
    with Image.open(write_photo(tmp_path / "square.png", size=512)) as square:
        square.resize((451, 300)).convert("L").save(photo)  # grey on purpose
    _edit("psg_edit", comfy_server, tmp_path, photo, "--set", "Fit to model.output_size=working size",
          out_name="odd")
    assert read_pixels(tmp_path / "out" / "odd.png").shape == (88, 128, 3)
