"""The light headless client without a host: what it imports, how it reads any photo, how it
sizes the work, where the server and its credentials come from."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from psg_cli import connection, edit, photo, workflow
from psg_cli.errors import CliError
from psg_cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "tests" / "psg_testing" / "light_client.py"


def _light(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    log = tmp_path / "imports.txt"
    proc = subprocess.run([sys.executable, str(LAUNCHER), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PSG_IMPORT_LOG": str(log)})
    return proc, set(log.read_text().split()) if log.is_file() else set()


def _baseline(tmp_path: Path) -> set[str]:
    """What a bare interpreter has loaded before any client code (site hooks of this Python)."""
    proc, names = _light(tmp_path, "-c", "pass")
    assert proc.returncode == 0, proc.stderr
    return names


def test_core_cli_client_imports_only_stdlib_pillow_numpy(tmp_path):
    """Every client module (but the Ray engine, the optional extra behind --ray), the photo
    conversions and the CLI's own commands run in a Python that can import nothing but the
    standard library, Pillow and numpy."""
    code = f"""
import sys, pkgutil, importlib
sys.path.insert(0, {str(REPO)!r})
import psg_cli
for m in [m for m in pkgutil.iter_modules(psg_cli.__path__) if m.name not in ('__main__', 'ray_backend')]:
    importlib.import_module('psg_cli.' + m.name)
from pathlib import Path
import numpy as np
from PIL import Image
from psg_cli import photo
Image.fromarray((np.arange(128 * 96).reshape(96, 128) * 5).astype(np.uint16)).save('deep.png')
p = photo.prepare_photo(Path('deep.png'), Path('out'), 64)
print(p.upload_size, p.changes)
"""
    proc, names = _light(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "(64, 48)" in proc.stdout and "16-bit greyscale -> 8-bit RGB" in proc.stdout
    allowed = set(sys.stdlib_module_names) | {"PIL", "numpy", "psg_cli", "__main__"} | _baseline(tmp_path)
    assert names - allowed == set(), f"the client imported {sorted(names - allowed)}"
    assert {"PIL", "numpy", "psg_cli"} <= names  # the log is real: it saw the client's own imports

    for args in (["workflows"], ["edit", "--help"], ["edit-batch", "--help"]):
        proc, names = _light(tmp_path, str(REPO / "psg_cli"), *args)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
        assert names - allowed == set(), f"{args} imported {sorted(names - allowed)}"
    assert "psg_edit:" in _light(tmp_path, str(REPO / "psg_cli"), "workflows")[0].stdout


def test_core_cli_client_blocker_is_real(tmp_path):
    """The launcher does refuse other packages (else the test above could not fail)."""
    proc, _ = _light(tmp_path, "-c", "import torch")
    assert proc.returncode != 0 and "light client" in proc.stderr


def test_core_cli_client_runs_as_a_folder_from_any_directory(tmp_path):
    """``python /path/to/pack/psg_cli ...`` from another folder: the package imports and the
    caller's relative paths stay the caller's."""
    proc = subprocess.run([sys.executable, str(REPO / "psg_cli"), "edit", "missing.png", "--source", "a",
                           "--target", "b"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "image not found: missing.png" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "psg_cli", "workflows"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "psg_edit:" in proc.stdout


# --------------------------------------------------------------------------- photos


def _prepare(tmp_path: Path, img: Image.Image, name: str, max_side: int | None = 0,
             **save) -> photo.PreparedPhoto:
    path = tmp_path / name
    img.save(path, **save)
    return photo.prepare_photo(path, tmp_path / "prepared", max_side)


def _pixels(prepared: photo.PreparedPhoto) -> np.ndarray:
    with Image.open(prepared.path) as img:
        assert img.mode == "RGB"
        return np.asarray(img, dtype=np.int16)


def test_core_cli_client_16_bit_greyscale_keeps_its_tones(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]] * 8, dtype=np.uint16).repeat(2, axis=1)
    prepared = _prepare(tmp_path, Image.fromarray(values), "deep.png")
    assert prepared.changes == ["16-bit greyscale -> 8-bit RGB"]
    px = _pixels(prepared)
    assert px[0, ::2, 0].tolist() == [0, 64, 128, 255] and (px[..., 0] == px[..., 2]).all()


def test_core_cli_client_transparency_and_palettes_become_plain_rgb(tmp_path):
    rgba = np.zeros((8, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)  # opaque red | fully transparent
    px = _pixels(_prepare(tmp_path, Image.fromarray(rgba, "RGBA"), "alpha.png"))
    assert px[0, 0].tolist() == [255, 0, 0] and px[0, 12].tolist() == list(photo.BACKGROUND)

    grey = _prepare(tmp_path, Image.new("L", (16, 8), 90), "grey.png")
    assert grey.changes == ["L -> RGB"] and _pixels(grey)[0, 0].tolist() == [90, 90, 90]
    cmyk = _prepare(tmp_path, Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "cmyk.jpg")
    assert cmyk.changes == ["CMYK -> RGB"] and _pixels(cmyk)[0, 0, 0] > 200
    pal = Image.new("P", (16, 8), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert _pixels(_prepare(tmp_path, pal, "pal.png"))[0, 0].tolist() == [0, 0, 255]


def test_core_cli_client_animated_file_sends_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 8), c) for c in ((200, 0, 0), (0, 200, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    prepared = photo.prepare_photo(path, tmp_path / "p", 0)
    assert "first of 2 frames" in prepared.changes and _pixels(prepared)[0, 0, 0] > 150


def test_core_cli_client_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (32, 16), (10, 20, 30))
    exif = Image.Exif()
    exif[photo.EXIF_ORIENTATION] = 6  # rotated 90 degrees: shown 16 wide, 32 high
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    prepared = photo.prepare_photo(path, tmp_path / "p", 0)
    assert prepared.photo_size == (16, 32) == prepared.upload_size
    assert "EXIF orientation applied" in prepared.changes


def test_core_cli_client_plain_photo_is_uploaded_as_it_is(tmp_path):
    prepared = _prepare(tmp_path, Image.new("RGB", (64, 48)), "plain.png", max_side=512)
    assert prepared.path == tmp_path / "plain.png" and prepared.changes == []


@pytest.mark.parametrize(("size", "max_side", "expected"), [
    ((4032, 3024), 512, (512, 384)), ((3024, 4032), 1024, (768, 1024)), ((451, 300), 512, (448, 304)),
    ((640, 427), 512, (512, 344)), ((741, 500), 0, (744, 496)), ((128, 128), 512, (128, 128)),
    ((4, 3), 0, (8, 8)), ((4032, 200), 512, (648, 32)),
])
def test_core_cli_client_fit_size_scales_down_only_to_multiples_of_8(size, max_side, expected):
    assert photo.fit_size(size, max_side) == expected


def test_core_cli_client_huge_photo_is_scaled_down_and_the_mask_follows(tmp_path):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3024, 4032, 3), dtype=np.uint8))
    prepared = _prepare(tmp_path, big, "phone.jpg", max_side=512, quality=80)
    assert prepared.photo_size == (4032, 3024) and prepared.upload_size == (512, 384)
    assert prepared.changes == ["scaled 4032x3024 -> 512x384"]
    mask = edit.mask_from_box(prepared.path, [0.25, 0.0, 0.75, 1.0], tmp_path / "box.png")
    follows = photo.prepare_mask(mask, tmp_path / "m.png", prepared.upload_size)
    with Image.open(follows) as m:
        assert m.size == (512, 384) and m.mode == "L"
        row = np.asarray(m)[100]
    assert row[:120].max() == 0 and row[140:370].min() == 255 and row[400:].max() == 0


def test_core_cli_client_unreadable_file_is_refused_clearly(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(CliError, match="cannot read .*notes.png as an image"):
        photo.prepare_photo(bad, tmp_path, 0)


def test_core_cli_client_rescale_back_keeps_the_embedded_workflow(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"1": {}}')
    path = tmp_path / "edit.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path, pnginfo=info)
    photo.rescale_file(path, (403, 302))
    with Image.open(path) as img:
        assert img.size == (403, 302) and img.text["prompt"] == '{"1": {}}'


def test_core_cli_client_working_size_by_family_and_in_graph_resize():
    sd15, sdxl = workflow.load_workflow("psg_edit"), workflow.load_workflow("psg_edit_sdxl")
    assert photo.working_size_for(sd15, "psg_edit") == (512, "SD1.x/SD2.x")
    assert photo.working_size_for(sdxl, "psg_edit_sdxl")[0] == 1024
    flux = {"1": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": "flux1-dev-fp8.safetensors"}}}
    assert photo.working_size_for(flux, "mine.json") == (1024, "Flux")
    photo_ids = workflow.find_role(sd15, workflow.roles.PHOTO)
    # the shipped template sizes the photo itself: the client's flags become PSG Fit Image's inputs
    fit = photo.graph_resizes(sd15, photo_ids)
    assert fit is not None and sd15[fit]["class_type"] == "PSGFitImage"
    req = edit.EditRequest(image=Path("x.png"), source="a", target="b", working_size=768,
                           output_size="working")
    assert edit.client_side_size(req, sd15)[0] is None
    assert sd15[fit]["inputs"]["long_side"] == 768 and sd15[fit]["inputs"]["output_size"] == "working size"
    # a workflow of the user's with no resize node: the client sizes the photo
    bare = {"1": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Photo"}}}
    assert photo.graph_resizes(bare, ["2"]) is None
    req = edit.EditRequest(image=Path("x.png"), source="a", target="b")
    assert edit.client_side_size(req, bare)[0] == 512
    req.working_size = 768
    assert edit.client_side_size(req, bare)[0] == 768
    resized = json.loads(json.dumps(bare))
    resized["90"] = {"class_type": "ImageScaleToMaxDimension",
                     "inputs": {"image": ["2", 0], "upscale_method": "area", "largest_size": 512}}
    assert photo.graph_resizes(resized, ["2"]) == "90"
    with pytest.raises(CliError, match="resizes the photo itself .*--set '90"):
        edit.client_side_size(req, resized)
    req.working_size = None
    assert edit.client_side_size(req, resized)[0] is None


def test_core_cli_client_size_flags_parse():
    args = build_parser().parse_args(["edit", "p.png", "--source", "a", "--target", "b"])
    assert args.output_size == "original" and args.working_size is None
    args = build_parser().parse_args(["edit", "p.png", "--source", "a", "--target", "b", "--output-size",
                                      "working", "--working-size", "0"])
    assert args.output_size == "working" and args.working_size == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edit", "p.png", "--source", "a", "--target", "b", "--working-size", "16"])


# --------------------------------------------------------------------------- server and credentials


def test_core_cli_client_server_from_environment():
    assert connection.servers_from_env({"COMFYUI_URL": "http://gpu:8188"}) == ["http://gpu:8188"]
    env = {"PSG_SERVER": "http://a:1, http://b:2", "COMFYUI_URL": "http://c:3"}
    assert connection.servers_from_env(env) == ["http://a:1", "http://b:2"]
    assert connection.servers_from_env({}) == []


def test_core_cli_client_auth_headers():
    assert connection.auth_headers(environ={}) == {}
    assert connection.auth_headers(environ={"PSG_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    assert connection.auth_headers("flag", environ={"PSG_TOKEN": "env"}) == {"Authorization": "Bearer flag"}
    basic = connection.auth_headers(basic_auth="me:p:w", environ={})["Authorization"]
    assert base64.b64decode(basic.removeprefix("Basic ")) == b"me:p:w"
    assert connection.auth_headers(headers=["X-Api-Key: abc"], environ={}) == {"X-Api-Key": "abc"}
    with pytest.raises(CliError, match="not both"):
        connection.auth_headers("t", "u:p", environ={})
    with pytest.raises(CliError, match="USER:PASSWORD"):
        connection.auth_headers(basic_auth="nopassword", environ={})
    with pytest.raises(CliError, match="'Name: value'"):
        connection.auth_headers(headers=["no colon"], environ={})


def test_core_cli_client_credentials_in_the_url_never_show():
    from psg_cli.server_backend import ServerBackend

    backend = ServerBackend("http://me:s%40cret@proxy.example:8443/comfy")
    assert backend.url == backend.label == "http://proxy.example:8443/comfy"
    assert base64.b64decode(backend.headers["Authorization"].split()[1]) == b"me:s@cret"


def test_core_cli_client_sends_headers_on_http_and_websocket():
    """Against a real aiohttp server (what ComfyUI and most proxies speak) that records headers."""
    from aiohttp import web
    from psg_testing.aiohttp_server import serve_routes

    from psg_cli.server_backend import ServerBackend

    seen: list[tuple[str, str | None, str | None]] = []

    async def info(request):
        seen.append((request.path, request.headers.get("Authorization"), request.headers.get("X-Team")))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.Response(status=401)
        return web.json_response({"KSampler": {}})

    async def ws_handler(request):
        seen.append((request.path, request.headers.get("Authorization"), request.headers.get("X-Team")))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"a preview frame")
        await ws.send_str('{"type": "status", "data": {"sid": "abc"}}')
        await ws.close()
        return ws

    with serve_routes({"/object_info": info, "/ws": ws_handler}) as url:
        with pytest.raises(CliError, match="401 .*--token TOKEN or --basic-auth"):
            ServerBackend(url).object_info()
        with pytest.raises(CliError, match="credentials given were refused"):
            ServerBackend(url, headers={"Authorization": "Bearer wrong"}).object_info()
        backend = ServerBackend(url, headers={"Authorization": "Bearer s3cret", "X-Team": "vision"})
        assert backend.object_info() == {"KSampler": {}}
        with backend.events() as events:
            assert events.next_event(10.0) == ("status", {"sid": "abc"})
    assert seen[-2:] == [("/object_info", "Bearer s3cret", "vision"), ("/ws", "Bearer s3cret", "vision")]



def test_core_cli_client_prompt_calls_answer_as_comfyui_does():
    """post_prompt, wait and interrupt (what the host tests drive a server with) against a stand-in
    that answers as ComfyUI's routes do: 400 with node_errors, /history empty until done, no body."""
    from aiohttp import web
    from psg_testing.aiohttp_server import serve_routes

    from psg_cli.errors import PromptRejected
    from psg_cli.server_backend import ServerBackend

    polls: list[str] = []
    interrupts: list[dict] = []
    refusal = {"error": {"type": "prompt_outputs_failed_validation",
                         "message": "Prompt outputs failed validation"},
               "node_errors": {"1": {"class_type": "KSampler",
                                     "errors": [{"message": "Value smaller than min", "details": "steps"}]}}}

    async def prompt(request):
        body = await request.json()
        if body["prompt"]["1"]["inputs"]["steps"] < 1:
            return web.json_response(refusal, status=400)
        return web.json_response({"prompt_id": "p1", "number": 0, "node_errors": {}})

    async def history(request):
        polls.append(request.match_info["prompt_id"])
        if len(polls) < 3:
            return web.json_response({})
        return web.json_response({"p1": {"status": {"completed": True, "messages": []}, "outputs": {}}})

    async def interrupt(request):
        interrupts.append(await request.json())
        return web.Response(status=200)

    routes = {"/prompt": prompt, "/history/{prompt_id}": history, "/interrupt": interrupt}
    with serve_routes(routes) as url:
        backend = ServerBackend(url)
        assert backend.post_prompt({"1": {"class_type": "KSampler", "inputs": {"steps": 3}}}) == "p1"
        with pytest.raises(PromptRejected, match="Value smaller than min") as refused:
            backend.post_prompt({"1": {"class_type": "KSampler", "inputs": {"steps": 0}}})
        assert refused.value.error == refusal["error"] and refused.value.node_errors == refusal["node_errors"]
        assert backend.wait("p1", timeout_s=10)["status"]["completed"] is True
        assert polls == ["p1", "p1", "p1"]
        backend.interrupt()
        backend.interrupt("p1")
    assert interrupts == [{}, {"prompt_id": "p1"}]


def test_core_cli_client_repeated_validation_message_is_shown_once():
    """ComfyUI repeats a node's validate_inputs message for every input the hook declares."""
    p = {"10": {"class_type": "PSGEdit", "inputs": {}, "_meta": {"title": "PSG Edit"}}}
    message = "PSG Edit: 'scale' is nan, not a number it can use"
    answer = {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {"10": {"errors": [
        {"type": "custom_validation_failed", "message": "Custom validation failed for node",
         "details": f"{name} - {message}"} for name in ("w_source", "w_edit", "scale")]}}}
    text = workflow.describe_rejection(answer, p)
    assert text.count(message) == 1 and "node 10 'PSG Edit' (PSGEdit)" in text, text
