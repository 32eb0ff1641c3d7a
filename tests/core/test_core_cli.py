"""psg_cli without a host: workflow filling, --set, masks, datasets, the websocket client."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psg_cli import dataset, edit, workflow
from psg_cli.errors import CliError
from psg_cli.ws import OP_BINARY, OP_TEXT, WebSocket, WebSocketClosed

OBJECT_INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL"], "seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}],
        "cfg": ["FLOAT", {"default": 8.0}], "sampler_name": [["euler", "ddim"]],
        "positive": ["CONDITIONING"]}}},
    "PSGEdit": {"input": {"required": {"image": ["IMAGE"], "fast": ["BOOLEAN", {}],
                                       "mode": ["COMBO", {"options": ["a", "b"]}]},
                          "optional": {"mask": ["MASK"]}}},
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["one.safetensors", "two.safetensors"]]}}},
    "LoadImage": {"input": {"required": {"image": [["x.png"], {"image_upload": True}]}}},
    "CLIPTextEncode": {"input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}}},
}


def prompt() -> workflow.Prompt:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "one.safetensors"},
              "_meta": {"title": "Checkpoint"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Photo"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "Source prompt"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]},
              "_meta": {"title": "Target prompt"}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 7.0,
                                                   "sampler_name": "euler", "positive": ["4", 0]},
              "_meta": {"title": "Sampler"}},
        "6": {"class_type": "PSGEdit", "inputs": {"image": ["2", 0], "fast": True, "mode": "a"}},
    }


def test_core_cli_fill_sets_roles_and_seed_but_not_the_original():
    original = prompt()
    filled = workflow.fill(original, image="up.png", source="a cat", target="a tiger", ckpt="two.safetensors",
                           seed=9)
    assert filled["2"]["inputs"]["image"] == "up.png"
    assert filled["3"]["inputs"]["text"] == "a cat" and filled["4"]["inputs"]["text"] == "a tiger"
    assert filled["1"]["inputs"]["ckpt_name"] == "two.safetensors"
    assert filled["5"]["inputs"]["seed"] == 9
    assert original["5"]["inputs"]["seed"] == 1 and original["3"]["inputs"]["text"] == ""


def test_core_cli_missing_role_is_a_clear_error():
    p = prompt()
    del p["4"]
    with pytest.raises(CliError, match="no node titled 'Target prompt'"):
        workflow.fill(p, image="a", source="b", target="c", ckpt=None, seed=None)


def test_core_cli_set_coerces_by_declared_type_and_finds_nodes_by_title_or_id():
    p = prompt()
    applied = workflow.apply_sets(p, OBJECT_INFO, ["Sampler.steps=30", "5.cfg=4", "sampler.sampler_name=ddim",
                                                   "6.fast=false", "6.mode=b", "Source prompt.text=1.5"])
    assert applied == {"5.steps": 30, "5.cfg": 4.0, "5.sampler_name": "ddim", "6.fast": False, "6.mode": "b",
                       "3.text": "1.5"}
    assert isinstance(p["5"]["inputs"]["cfg"], float) and p["3"]["inputs"]["text"] == "1.5"


@pytest.mark.parametrize(("assignment", "message"), [
    ("Sampler.steps", "expected NODE.INPUT=VALUE"),
    ("Nope.steps=1", "no node with id or title 'Nope'"),
    ("Sampler.stepz=1", "has no input 'stepz'"),
    ("Sampler.steps=many", "not a valid INT"),
    ("Sampler.sampler_name=warp", "'warp' is not one of: euler, ddim"),
    ("Sampler.model=1", "connected to another node"),
    ("6.fast=maybe", "not a valid BOOLEAN"),
])
def test_core_cli_bad_set_is_refused(assignment, message):
    with pytest.raises(CliError, match=message):
        workflow.apply_sets(prompt(), OBJECT_INFO, [assignment])


def test_core_cli_checks_checkpoint_and_installed_nodes():
    p = workflow.fill(prompt(), image="a", source="b", target="c", ckpt="three.safetensors", seed=None)
    with pytest.raises(CliError, match=r"checkpoint 'three.safetensors' not found on S\. Available: one"):
        workflow.check_values(p, OBJECT_INFO, "S")
    info = {k: v for k, v in OBJECT_INFO.items() if k != "PSGEdit"}
    with pytest.raises(CliError, match="ComfyUI-PSG nodes are not installed on S .missing: PSGEdit"):
        workflow.check_nodes_installed(p, info, "S")


def test_core_cli_mask_is_wired_into_free_mask_inputs():
    p = prompt()
    ids = workflow.add_mask(p, OBJECT_INFO, "mask.png")
    (mask_id,) = ids
    assert p[mask_id]["class_type"] == "LoadImageMask" and p[mask_id]["inputs"]["image"] == "mask.png"
    assert p["6"]["inputs"]["mask"] == [mask_id, 0]
    no_consumer = {k: v for k, v in prompt().items() if k != "6"}
    with pytest.raises(CliError, match="no node that takes a mask"):
        workflow.add_mask(no_consumer, OBJECT_INFO, "mask.png")


def test_core_cli_rejection_and_failure_messages_name_the_node():
    p = prompt()
    text = workflow.describe_rejection({"error": {"message": "Prompt outputs failed validation"},
                                        "node_errors": {"5": {"errors": [{"message": "Value 0 smaller than "
                                                                                     "min of 1",
                                                                          "details": "steps"}]}}}, p)
    assert "node 5 'Sampler' (KSampler): Value 0 smaller than min of 1: steps" in text
    text = workflow.describe_execution_error({"node_id": "6", "exception_type": "RuntimeError",
                                              "exception_message": "boom\n"}, p)
    assert text == "ComfyUI failed while running node 6 (PSGEdit): RuntimeError: boom"


def test_core_cli_ui_format_workflow_is_refused(tmp_path):
    path = tmp_path / "ui.json"
    path.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(CliError, match="UI-format workflow"):
        workflow.load_workflow(str(path))


def test_core_cli_mask_from_box_marks_the_box_white(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "p.png")
    mask = np.asarray(Image.open(edit.mask_from_box(tmp_path / "p.png", [0.25, 0.5, 0.75, 1.0],
                                                    tmp_path / "m.png")))
    assert mask.shape == (20, 40)
    assert mask[10:, 10:30].min() == 255 and mask.sum() == 255 * 10 * 20
    with pytest.raises(CliError, match="mask_box"):
        edit.mask_from_box(tmp_path / "p.png", [0.5, 0, 0.2, 1], tmp_path / "m.png")


def test_core_cli_dataset_formats(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"edits": [{"id": "x", "image": "a.png", "source": "s", "target": "t",
                                           "mask_box": [0, 0, 1, 1], "type": "change color"}]}))
    (item,) = dataset.load_dataset(ours, tmp_path / "in")
    assert item.id == "x" and item.type == "change color" and item.request.mask_box == [0, 0, 1, 1]
    assert item.request.image == (tmp_path / "a.png").resolve()

    pie = tmp_path / "mapping_file.json"  # PIE-Bench: {id: record}, bracketed blend words, RLE mask
    pie.write_text(json.dumps({"000": {"image_path": "a.png", "original_prompt": "a [cat] sitting",
                                       "editing_prompt": "a [tiger] sitting", "editing_type_id": "1",
                                       "mask": [512 * 10, 512 * 2]}}))
    (item,) = dataset.load_dataset(pie, tmp_path / "in")
    assert (item.id, item.type, item.request.source, item.request.target) == ("000", "1", "a cat sitting",
                                                                              "a tiger sitting")
    mask = np.asarray(Image.open(item.request.mask))
    assert mask.shape == (512, 512) and mask[10:12].min() == 255
    # PIE-Bench's border rule: first/last rows and columns count as edited (rows 10-11 already hold 4 of them)
    assert mask[[0, -1]].min() == 255 and mask[:, [0, -1]].min() == 255
    assert mask.sum() == 255 * (512 * 2 + (4 * 512 - 4) - 4)

    pie.write_text(json.dumps({"000": {"image_path": "a.png", "original_prompt": "a", "editing_prompt": "b",
                                       "mask": [512 * 10]}}))
    with pytest.raises(CliError, match="record '000'.*start, length"):
        dataset.load_dataset(pie, tmp_path / "in")

    for bad, message in (([{"id": "y"}], "needs image, source and target"),
                         ([{"id": "y", "image": "nope.png", "source": "s", "target": "t"}],
                          "image not found"),
                         ([{"id": "y", "image": "a.png", "source": "s", "target": "t"}] * 2, "duplicate id"),
                         (["no"], "expected a list of edit records")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(CliError, match=message):
            dataset.load_dataset(path, tmp_path / "in")


def test_core_cli_dataset_loader_is_parsed_never_evaluated(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"image": "x", "loader": "__import__('os').system('true')", "source": "s",
                                 "target": "t"}]))
    with pytest.raises(CliError, match="must look like name"):
        dataset.load_dataset(path, tmp_path / "in")


def test_core_cli_websocket_client_reads_text_binary_and_close():
    """Against a real aiohttp websocket server (what ComfyUI uses) on 127.0.0.1."""
    from aiohttp import web
    from psg_testing.aiohttp_server import serve_routes

    big = bytes(range(256)) * 300  # > 65535 bytes: the 64-bit length form

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "status", "data": {"sid": request.rel_url.query["clientId"]}}))
        await ws.send_bytes(big)
        await ws.send_str("x" * 300)  # 16-bit length form
        await ws.close()
        return ws

    with serve_routes({"/ws": handler}) as url:
        ws = WebSocket(f"{url.replace('http', 'ws', 1)}/ws?clientId=abc", timeout=10)
        assert ws.recv() == (OP_TEXT, json.dumps({"type": "status", "data": {"sid": "abc"}}).encode())
        assert ws.recv() == (OP_BINARY, big)
        assert ws.recv() == (OP_TEXT, b"x" * 300)
        with pytest.raises(WebSocketClosed):
            ws.recv()
        ws.close()


def test_core_cli_websocket_refused_handshake_is_clear():
    import http.server

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(WebSocketClosed, match="handshake"):
            WebSocket(f"ws://127.0.0.1:{server.server_address[1]}/nothing", timeout=5)
    finally:
        server.shutdown()


def test_core_cli_settings_stem_is_safe():
    assert dataset.safe_stem("../a b/c") == "a_b_c"
    assert Path(dataset.safe_stem("..")).name == "item"
