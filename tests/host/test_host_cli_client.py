"""The README's main-job command as a user runs it, against a real ``--cpu`` server with tiny
models: ``bash /path/to/pack/scripts/edit.sh ...`` from the user's own folder with relative
paths, on a Python that can import only the standard library, Pillow and numpy; any photo
(a 4032x3024 phone JPEG, 16-bit, RGBA, the shipped examples); a server behind a proxy that
wants a token, over HTTP and the websocket.

The shipped ``psg_edit`` workflow does not resize the photo itself, so the CLI scales it to the
SD1.x working size (512 px long side) before upload and back to the photo's size afterwards.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psg_testing import host
from psg_testing.cli_support import (
    CLI_TIMEOUT_S,
    cli_env,
    img2img_workflow,
    swap_checkpoint_loader,
    write_json,
)
from psg_testing.metric_models import save_random_alexnet
from psg_testing.taesd_files import write_random_taesd

from psg_cli import roles, workflow

REPO = host.REPO_ROOT
EDIT_SH = REPO / "scripts" / "edit.sh"
LAUNCHER = REPO / "tests" / "psg_testing" / "light_client.py"
FAST = {"steps": 2, "inner_steps": 1}


@pytest.fixture(scope="module")
def server_models(comfy_server) -> None:
    """Random AlexNet (LPIPS) and TAESD where the server's loaders look: no download."""
    save_random_alexnet(comfy_server.base_dir / "models" / "lpips")
    write_random_taesd(comfy_server.base_dir / "models" / "vae_approx",
                       tuple(roles.TAESD_FOR_FAMILY.values()))


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable standing in for a bare Python with only Pillow and numpy (PSG_PYTHON)."""
    path = tmp_path_factory.mktemp("light") / "python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{LAUNCHER}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def tiny_edit_workflow(folder: Path) -> Path:
    """The shipped psg_edit API twin on the tiny SD1.5 checkpoint, 2 steps."""
    api = json.loads((workflow.api_dir() / "psg_edit.json").read_text())
    api = swap_checkpoint_loader(api)
    for node in api.values():
        for key, value in FAST.items():
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = value
    return write_json(folder / "psg_edit_tiny.json", api)


def run_main_job(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``bash /path/to/pack/scripts/edit.sh ARGS`` run from ``cwd``, as the README says."""
    return subprocess.run(["bash", str(EDIT_SH), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def user_env(comfy_server, light_python: Path, log: Path, **extra: str) -> dict[str, str]:
    env = {**cli_env(), "PSG_PYTHON": str(light_python), "PSG_SERVER": comfy_server.url,
           "PSG_IMPORT_LOG": str(log), "OMP_NUM_THREADS": "1", **extra}
    env.pop("PYTHONPATH", None)
    return env


def check_light_imports(log: Path) -> None:
    names = set(log.read_text().split())
    allowed = set(sys.stdlib_module_names) | {"PIL", "numpy", "psg_cli", "__main__", "_distutils_hack"}
    assert "psg_cli" in names and names - allowed == set(), sorted(names - allowed)


def phone_photo(path: Path) -> Path:
    """A 4032x3024 JPEG like a phone's: a real photo enlarged (smooth, so the file stays small)."""
    import skimage.data

    big = Image.fromarray(skimage.data.chelsea()).resize((4032, 3024), Image.Resampling.BICUBIC)
    big.save(path, quality=85)
    return path


# --------------------------------------------------------------------------- the main job


def test_host_cli_client_main_job_edits_a_phone_photo_from_the_users_folder(comfy_server, server_models,
                                                                             light_python, tmp_path):
    """4032x3024 JPEG, relative paths, run from the folder holding the photo: the model works at
    512x384 (said in the output), the edit is saved at the photo's size next to the user."""
    user = tmp_path / "user"
    user.mkdir()
    phone_photo(user / "IMG_0001.jpg")
    wf = tiny_edit_workflow(tmp_path)
    log = tmp_path / "imports.txt"
    proc = run_main_job(["edit", "IMG_0001.jpg", "--source", "a photo of a cat", "--target",
                         "a photo of a tiger",
                         "--workflow", str(wf), "--out", "edits", "--mask-box", "0.2,0.2,0.8,0.8"],
                        cwd=user, env=user_env(comfy_server, light_python, log))
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    assert proc.stdout.strip() == str(Path("edits") / "IMG_0001_edit.png")
    saved = user / "edits" / "IMG_0001_edit.png"
    assert Image.open(saved).size == (4032, 3024)
    # the shipped workflow sizes the photo itself (PSG Fit Image) and says so in its history
    assert "photo 4032x3024; model worked at 512x384 (resized in the workflow by" in proc.stderr, proc.stderr
    assert "'Fit to model' (PSGFitImage)); saved at 4032x3024" in proc.stderr
    record = json.loads((user / "edits" / "IMG_0001_edit.json").read_text())
    assert record["sizes"]["working"] == "512x384" and record["backend"] == comfy_server.url
    assert not (REPO / "edits").exists(), "the output landed inside the pack"
    check_light_imports(log)


def test_host_cli_client_output_size_working_keeps_the_models_size(comfy_server, server_models, light_python,
                                                                   tmp_path):
    photo = tmp_path / "wide.png"
    Image.new("RGB", (741, 500), (120, 90, 60)).save(photo)
    proc = run_main_job(["edit", str(photo), "--source", "a wall", "--target", "a red wall", "-q",
                         "--workflow", str(tiny_edit_workflow(tmp_path)), "--out", str(tmp_path / "o"),
                         "--output-size", "working", "--working-size", "256"],
                        cwd=tmp_path, env=user_env(comfy_server, light_python, tmp_path / "log"))
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    assert Image.open(tmp_path / "o" / "wide_edit.png").size == (256, 176)  # 741x500 -> 256x173 -> x8


@pytest.mark.parametrize("kind", ["16-bit", "RGBA", "greyscale"])
def test_host_cli_client_unusual_photos_are_converted_on_upload(kind, comfy_server, server_models,
                                                                light_python, tmp_path):
    """What ComfyUI's Load Image gets wrong by itself (16-bit clipped to white, alpha as a mask)
    arrives as plain 8-bit RGB; the edit keeps the photo's tones."""
    ramp = np.linspace(0.1, 0.9, 96)[None, :].repeat(64, axis=0)
    if kind == "16-bit":
        img = Image.fromarray((ramp * 65535).astype(np.uint16))
    elif kind == "RGBA":
        rgba = np.dstack([(ramp * 255).astype(np.uint8)] * 3 + [np.full_like(ramp, 255, dtype=np.uint8)])
        rgba[:8, :8, 3] = 0
        img = Image.fromarray(rgba, "RGBA")
    else:
        img = Image.fromarray((ramp * 255).astype(np.uint8), "L")
    path = tmp_path / f"{kind}.png"
    img.save(path)
    proc = run_main_job(["edit", path.name, "--source", "a grey ramp", "--target", "a grey ramp", "-q",
                         "--workflow", str(tiny_edit_workflow(tmp_path)), "--out", "o"],
                        cwd=tmp_path, env=user_env(comfy_server, light_python, tmp_path / "log"))
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    record = json.loads((tmp_path / "o" / f"{kind}_edit.json").read_text())
    assert record["sizes"]["photo"] == "96x64" and record["sizes"]["photo_changes"]
    uploaded = comfy_server.base_dir / "input" / record["prompt"][next(
        n for n, v in record["prompt"].items() if v["_meta"].get("title") == "Photo")]["inputs"]["image"]
    with Image.open(uploaded) as up:
        assert up.mode == "RGB"
        px = np.asarray(up, dtype=float)
    if kind == "RGBA":
        assert px[0, 0].tolist() == [255, 255, 255]  # transparent corner on white
    for channel in range(3):  # the ramp's tones, 16-bit ones included (Load Image alone clips them to white)
        assert abs(px[20:, 20:, channel] - ramp[20:, 20:] * 255).max() <= 1.0


EXAMPLES = REPO / "examples"
EXAMPLE_EDITS = json.loads((EXAMPLES / "edits.json").read_text())["edits"]


@pytest.mark.parametrize("record", EXAMPLE_EDITS, ids=[r["id"] for r in EXAMPLE_EDITS])
def test_host_cli_client_each_shipped_example_edits_through_the_main_job(record, comfy_server, server_models,
                                                                         light_python, tmp_path):
    """Every shipped example (odd sizes, greyscale, a mask file) through PSG Edit, run from the
    examples folder with its relative paths; at 128 px working size to keep the tiny run short."""
    mask = ["--mask", record["mask"]] if "mask" in record else ["--mask-box",
                                                                ",".join(map(str, record["mask_box"]))]
    proc = run_main_job(["edit", record["image"], "--source", record["source"], "--target", record["target"],
                         *mask, "--workflow", str(tiny_edit_workflow(tmp_path)), "--out", str(tmp_path / "o"),
                         "--name", record["id"], "--working-size", "128"],
                        cwd=EXAMPLES, env=user_env(comfy_server, light_python, tmp_path / "log"))
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    edited = tmp_path / "o" / f"{record['id']}.png"
    with Image.open(EXAMPLES / record["image"]) as src, Image.open(edited) as out:
        assert out.size == src.size and out.mode == "RGB"
    sizes = json.loads((tmp_path / "o" / f"{record['id']}.json").read_text())["sizes"]
    assert max(int(v) for v in sizes["working"].split("x")) <= 128
    check_light_imports(tmp_path / "log")


def test_host_cli_client_readme_batch_example_runs_on_the_shipped_dataset(
        comfy_server, server_models, light_python,
                                                                         tmp_path):
    """``edit-batch examples/edits.json`` (the README's batch example) from the pack folder, each
    photo at the SD1.x working size; the perceptual guidance and null-text optimization are off
    to keep six 512 px edits short on a CPU (the guided path is tested above)."""
    out = tmp_path / "batch"
    wf = tiny_edit_workflow(tmp_path)
    proc = run_main_job(["edit-batch", "examples/edits.json", "--workflow", str(wf), "--out", str(out),
                         "--set", "PSG Edit.scale=0", "--set", "PSG Edit.text_optimization=negative-prompt"],
                        cwd=REPO, env=user_env(comfy_server, light_python, tmp_path / "log"))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{comfy_server.log_tail()}"
    results = json.loads((out / "results.json").read_text())
    n = len(EXAMPLE_EDITS)
    assert results["summary"] == {"total": n, "ok": n, "failed": 0, "pending": 0}
    photos = {p.name for p in (EXAMPLES / "photos").glob("*.jpg")}
    assert {Path(r["image"]).name for r in EXAMPLE_EDITS} == photos
    for item, record in zip(results["items"], EXAMPLE_EDITS, strict=True):
        with Image.open(EXAMPLES / record["image"]) as src, Image.open(out / item["output"]) as edited:
            assert edited.size == src.size, item["id"]
        sizes = json.loads((out / item["settings_file"]).read_text())["sizes"]
        assert max(int(v) for v in sizes["working"].split("x")) <= 512, sizes


# --------------------------------------------------------------------------- bad photos


def _edit_tiny(size: tuple[int, int], comfy_server, tmp_path) -> subprocess.CompletedProcess:
    photo = tmp_path / f"tiny_{size[0]}x{size[1]}.png"
    Image.new("RGB", size, (10, 200, 10)).save(photo)
    return subprocess.run([sys.executable, str(REPO / "psg_cli"), "edit", str(photo), "--source", "a",
                           "--target", "b", "--workflow", str(tiny_edit_workflow(tmp_path)), "--out",
                           str(tmp_path / "out"),
                           "--server", comfy_server.url], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)


def test_host_cli_client_tiny_photo_is_brought_to_working_size_and_back(
        comfy_server, server_models, tmp_path):
    """8x8: PSG Fit Image enlarges it to the working size; the edit comes back at 8x8."""
    proc = _edit_tiny((8, 8), comfy_server, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "photo 8x8; model worked at 512x512" in proc.stderr and "saved at 8x8" in proc.stderr, proc.stderr
    assert Image.open(tmp_path / "out" / "tiny_8x8_edit.png").size == (8, 8)


def test_host_cli_client_sliver_photo_is_refused_by_the_node_with_the_fix(
        comfy_server, server_models, tmp_path):
    """256x8 has no sensible working size: one message naming the node and the fix, no torch trace."""
    proc = _edit_tiny((256, 8), comfy_server, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr[proc.stderr.index("psg: error:"):]
    assert "'Fit to model' (PSGFitImage)" in message and "the photo is 256x8" in message, message
    assert "Crop it" in message and "raise long_side" in message
    assert "Output size is too small" not in message


def test_host_cli_client_not_an_image_is_refused_before_upload(comfy_server, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    proc = subprocess.run([sys.executable, str(REPO / "psg_cli"), "edit", str(bad), "--source", "a",
                           "--target",
                           "b", "--workflow", str(write_json(tmp_path / "wf.json", img2img_workflow())),
                           "--server", comfy_server.url, "--out", str(tmp_path)], env=cli_env(),
                           capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "as an image" in proc.stderr, proc.stderr
    assert not (comfy_server.base_dir / "input" / "notes.png").exists()


# --------------------------------------------------------------------------- behind a proxy


class TokenProxy:
    """A reverse proxy in front of the real server that wants ``Authorization: Bearer TOKEN``
    on every request, the websocket included (aiohttp, like ComfyUI itself)."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream, self.token = upstream, token
        self.seen: list[tuple[str, bool]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _handle(self, request):
        from aiohttp import ClientSession, WSMsgType, web

        authorised = request.headers.get("Authorization") == f"Bearer {self.token}"
        self.seen.append((request.path, authorised))
        if not authorised:
            return web.Response(status=401, text="401: Unauthorized")
        async with ClientSession() as session:
            if request.path == "/ws":
                client = web.WebSocketResponse()
                await client.prepare(request)
                async with session.ws_connect("ws" + self.upstream[4:] + request.path_qs) as upstream:
                    async def pump() -> None:
                        async for msg in upstream:
                            if msg.type == WSMsgType.TEXT:
                                await client.send_str(msg.data)
                            elif msg.type == WSMsgType.BINARY:
                                await client.send_bytes(msg.data)
                    task = asyncio.ensure_future(pump())
                    async for _ in client:
                        pass
                    task.cancel()
                return client
            headers = {k: v for k, v in request.headers.items() if k.lower() == "content-type"}
            async with session.request(request.method, self.upstream + request.path_qs,
                                       data=await request.read(), headers=headers) as answer:
                body = await answer.read()
                content_type = answer.headers.get("Content-Type", "application/json")
                return web.Response(status=answer.status, body=body, headers={"Content-Type": content_type})

    def _serve(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.loop = loop
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxy(comfy_server):
    p = TokenProxy(comfy_server.url, "s3cret")
    try:
        yield p
    finally:
        p.close()


def test_host_cli_client_token_reaches_http_and_websocket_behind_a_proxy(proxy, light_python, comfy_server,
                                                                         tmp_path):
    photo = tmp_path / "cat.png"
    Image.new("RGB", (128, 96), (200, 150, 100)).save(photo)
    wf = write_json(tmp_path / "wf.json", img2img_workflow(steps=3))
    args = ["edit", "cat.png", "--source", "a cat", "--target", "a tiger", "--workflow", str(wf), "--out",
            "o", "--set", "Sampler.steps=3"]
    env = user_env(comfy_server, light_python, tmp_path / "log", PSG_SERVER=proxy.url)
    refused = run_main_job(args, cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "answered 401" in refused.stderr and "--token" in refused.stderr, \
        refused.stderr

    proxy.seen.clear()
    proc = run_main_job(args, cwd=tmp_path, env={**env, "PSG_TOKEN": "s3cret"})
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    assert (tmp_path / "o" / "cat_edit.png").is_file()
    paths = {path for path, ok in proxy.seen if ok}
    assert {"/object_info", "/upload/image", "/prompt", "/ws"} <= paths, proxy.seen
    assert all(ok for _, ok in proxy.seen), proxy.seen
    assert "Sampler 3/3" in proc.stderr, "no progress: the websocket did not get through the proxy"
    record = json.loads((tmp_path / "o" / "cat_edit.json").read_text())
    assert record["backend"] == proxy.url and "s3cret" not in json.dumps(record)

