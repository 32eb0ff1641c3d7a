"""The shipped workflows against a real host: every UI workflow matches the real node registry
(types, link sockets, widget counts), its API twin is the same graph, the files are what the
generator makes from today's node definitions, and every API workflow runs headless (checkpoint
loader swapped for the tiny test model) through the CLI on a real ``--cpu`` server, its guidance
VAE loaded by ComfyUI's own VAELoader from random-weight TAESD files in the server's
models/vae_approx."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from psg_testing import host
from psg_testing.cli_support import read_pixels, run_cli, swap_checkpoint_loader, write_json, write_photo
from psg_testing.taesd_files import write_random_taesd

from psg_cli import roles, workflow

WORKFLOWS = host.REPO_ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FAST = {"steps": 3, "inner_steps": 2}
NO_PERCEPTUAL_GUIDANCE = {"psg_reconstruction"}  # LPIPS scale 0: no guidance VAE to load


def family_of(name: str) -> str:
    return "sdxl" if "sdxl" in name else "sd15"


def test_host_workflows_are_shipped_in_pairs():
    assert {"psg_edit", "psg_edit_sdxl", "psg_advanced", "psg_reconstruction", "psg_compare"} <= set(NAMES)
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
                out.append((name, 1 + bool(opts.get("control_after_generate")) + bool(opts.get("image_upload"))))
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
    assert any(n["type"] == "Note" and n["widgets_values"][0].strip() for n in ui["nodes"]), "no explaining note"
    missing = sorted({n["type"] for n in graph_nodes} - set(registry))
    assert not missing, f"node types not registered on the host: {missing}"

    for link_id, src, src_slot, dst, dst_slot, kind in links.values():
        out = nodes[src]["outputs"][src_slot]
        assert registry[nodes[src]["type"]]["output"][src_slot] == kind == out["type"]
        assert link_id in out["links"]
        socket = nodes[dst]["inputs"][dst_slot]
        # a multi-type socket is declared as "A,B" and accepts either
        assert socket["link"] == link_id and kind in socket["type"].split(",")
        declared = _spec(registry[nodes[dst]["type"]], socket["name"])[0]
        assert declared == "*" or kind in declared.split(","), \
            f"{name}: link {link_id} carries {kind} into {socket['name']} ({declared})"

    assert set(api) == {str(n["id"]) for n in graph_nodes}, "API twin has other nodes"
    for node in graph_nodes:
        info = registry[node["type"]]
        twin = api[str(node["id"])]
        assert twin["class_type"] == node["type"]
        widgets = _widgets(info)
        assert len(node["widgets_values"]) == sum(n for _, n in widgets), f"{name}: {node['type']} widget count"
        values, i = {}, 0
        for widget, count in widgets:
            values[widget] = node["widgets_values"][i]
            i += count
        expected = dict(values)
        for socket in node["inputs"]:
            if socket["link"] is not None:
                _, src, src_slot, *_ = links[socket["link"]]
                expected[socket["name"]] = [str(src), src_slot]
        assert twin["inputs"] == expected, f"{name}: API twin of node {node['id']} differs"
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
        assert api[gvae]["inputs"]["vae_name"] == roles.TAESD_FOR_FAMILY[family_of(name)]
        consumers = [n["class_type"] for n in api.values() if n["inputs"].get("guidance_vae") == [gvae, 0]]
        assert consumers and all(c.startswith("PSG") for c in consumers), f"{name}: guidance VAE feeds {consumers}"
        notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
        assert any("models/vae_approx" in text and roles.TAESD_FOR_FAMILY[family_of(name)] in text
                   for text in notes), f"{name}: no note explaining the guidance VAE files"
    assert "sdxl" in name or api[workflow.find_role(api, roles.CHECKPOINT)[0]]["inputs"]["ckpt_name"] == \
        roles.DEFAULT_CHECKPOINT


def test_host_workflows_files_are_what_the_generator_makes_from_the_registry(registry):
    spec = importlib.util.spec_from_file_location("build_workflows", host.REPO_ROOT / "scripts" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    stale = [str(p.relative_to(host.REPO_ROOT)) for p, data in module.render_all(registry).items()
             if not p.is_file() or p.read_bytes() != data]
    assert not stale, f"regenerate with `.venv/bin/python scripts/build_workflows.py`: {stale}"


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


def fast_tiny_twin(name: str, tmp_path: Path) -> Path:
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    api = swap_checkpoint_loader(api, family=family_of(name))
    for node in api.values():
        for key, value in FAST.items():
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = value
    return write_json(tmp_path / f"{name}_tiny.json", api)


@pytest.mark.parametrize("name", NAMES)
def test_host_workflows_api_twin_runs_headless_through_the_cli(name, comfy_server, random_lpips, random_taesd,
                                                               tmp_path):
    photo = write_photo(tmp_path / "cat.png")
    proc = run_cli("edit", photo, "--source", "a photo of a cat", "--target", "a photo of a tiger",
                   "--workflow", fast_tiny_twin(name, tmp_path), "--server", comfy_server.url,
                   "--out", tmp_path / "out", "--name", "result", "-q")
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    edited = read_pixels(tmp_path / "out" / "result.png")
    assert edited.shape == (128, 128, 3)
    settings = json.loads((tmp_path / "out" / "result.json").read_text())
    if name == "psg_compare":
        assert {"Difference grid", "Loss plot"} <= set(settings["outputs"]), settings["outputs"]
        assert "psnr" in json.dumps(settings.get("metrics")), f"no metrics in the settings: {settings.get('metrics')}"
    else:
        assert "Grid preview" in settings["outputs"], "the before|after preview was not produced"
    loaders = {n["inputs"].get("vae_name") for n in settings["prompt"].values() if n["class_type"] == "VAELoader"}
    expected = None if name in NO_PERCEPTUAL_GUIDANCE else roles.TAESD_FOR_FAMILY[family_of(name)]
    assert settings["guidance_vae"] == expected and loaders == ({expected} if expected else set())


def test_host_workflows_guidance_vae_none_decodes_guidance_with_the_main_vae(comfy_server, random_lpips, tmp_path):
    """``--guidance-vae none`` (no TAESD files on a user's machine): the loader is dropped and the
    edit still runs, the LPIPS gradient then going through the checkpoint's own VAE."""
    photo = write_photo(tmp_path / "cat.png")
    proc = run_cli("edit", photo, "--source", "a photo of a cat", "--target", "a photo of a tiger",
                   "--guidance-vae", "none", "--workflow", fast_tiny_twin("psg_edit", tmp_path),
                   "--server", comfy_server.url, "--out", tmp_path / "out", "--name", "plain", "-q")
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    settings = json.loads((tmp_path / "out" / "plain.json").read_text())
    assert settings["guidance_vae"] is None
    assert not [n for n in settings["prompt"].values() if n["class_type"] == "VAELoader"]
    (edit,) = [n for n in settings["prompt"].values() if n["class_type"] == "PSGEdit"]
    assert "guidance_vae" not in edit["inputs"]


def test_host_workflows_one_node_edit_takes_a_mask_from_the_cli(comfy_server, random_lpips, tmp_path):
    photo = write_photo(tmp_path / "cat.png")
    proc = run_cli("edit", photo, "--source", "a photo of a cat", "--target", "a photo of a tiger",
                   "--mask-box", "0.25,0.25,0.75,0.75", "--workflow", fast_tiny_twin("psg_edit", tmp_path),
                   "--server", comfy_server.url, "--out", tmp_path / "out", "--name", "masked", "-q")
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    prompt = json.loads((tmp_path / "out" / "masked.json").read_text())["prompt"]
    (edit_id,) = [k for k, n in prompt.items() if n["class_type"] == "PSGEdit"]
    mask_id = prompt[edit_id]["inputs"]["mask"][0]
    assert prompt[mask_id]["class_type"] == "LoadImageMask"
