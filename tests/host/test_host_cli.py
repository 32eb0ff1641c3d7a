"""``python -m psg_cli`` end to end, as a subprocess, against real ComfyUI: a ``--cpu`` server
on 127.0.0.1 (HTTP + websocket) and the in-process executor (``--comfy-root``).

The workflow here is a plain img2img graph on the tiny test checkpoint, titled with the CLI's
roles: it checks the CLI's mechanics independently of the PSG nodes (the shipped PSG
workflows go through the CLI in test_host_workflows.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from psg_testing import host
from psg_testing.cli_support import (
    cli_command,
    cli_env,
    img2img_workflow,
    read_pixels,
    run_cli,
    swap_checkpoint_loader,
    write_json,
    write_photo,
)
from psg_testing.host_server import ComfyServer, free_port

from psg_cli.workflow import load_workflow


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_files")
    return {
        "photo": write_photo(root / "cat.png"),
        "workflow": write_json(root / "img2img.json", img2img_workflow()),
        "root": root,
    }


@pytest.fixture(scope="module")
def second_server(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Another real server (its own base dir): 'one ComfyUI per GPU'."""
    with ComfyServer.running(tmp_path_factory.mktemp("comfy_server_b"), comfy_root) as server:
        yield server


def edit_args(files: dict[str, Path], out: Path, *extra: str | Path) -> list[str | Path]:
    return ["edit", files["photo"], "--source", "a photo of a cat", "--target", "a photo of a tiger",
            "--workflow", files["workflow"], "--out", out, *extra]


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def assert_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """One clear message on stderr, exit code 2, no traceback."""
    assert proc.returncode == 2, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr[proc.stderr.index("psg: error:"):]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return message


# --------------------------------------------------------------------------- edit


def test_host_cli_edit_over_server_writes_image_settings_and_progress(comfy_server, files, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(*edit_args(files, out, "--server", comfy_server.url, "--seed", "7",
                              "--set", "Sampler.steps=3", "--name", "tiger"))
    assert_ok(proc)
    image = out / "tiger.png"
    assert proc.stdout.strip() == str(image)
    edited, photo = read_pixels(image), read_pixels(files["photo"])
    assert edited.shape == photo.shape
    assert np.abs(edited - photo).mean() > 1.0  # the sampler changed the photo

    settings = json.loads((out / "tiger.json").read_text())
    assert settings["source"] == "a photo of a cat" and settings["target"] == "a photo of a tiger"
    assert settings["seed"] == 7 and settings["overrides"] == {"6.steps": 3}
    assert settings["prompt"]["6"]["inputs"]["seed"] == 7
    assert settings["prompt"]["3"]["inputs"]["text"] == "a photo of a cat"
    assert settings["prompt"]["4"]["inputs"]["text"] == "a photo of a tiger"
    assert settings["prompt"]["1"]["inputs"]["seed"] == 0, "--seed must not reseed the checkpoint loader"
    assert settings["output"] == "tiger.png" and settings["backend"] == comfy_server.url
    # progress came over the websocket: the sampler's steps, by node title
    assert "Sampler 3/3" in proc.stderr, proc.stderr


def test_host_cli_seed_reaches_the_sampler_and_is_deterministic(comfy_server, files, tmp_path):
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert_ok(run_cli(*edit_args(files, tmp_path, "--server", comfy_server.url, "--seed", seed,
                                     "--name", name, "-q")))
        runs[name] = read_pixels(tmp_path / f"{name}.png")
    assert np.array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


def test_host_cli_in_process_matches_the_server(comfy_server, files, tmp_path):
    """--comfy-root runs ComfyUI's executor in the CLI's process: same graph, same pixels."""
    base = tmp_path / "base"
    host.populate_custom_nodes(base / "custom_nodes")
    args = ("--seed", "5", "--name", "same", "-q")
    assert_ok(run_cli(*edit_args(files, tmp_path / "server"), "--server", comfy_server.url, *args))
    proc = run_cli(*edit_args(files, tmp_path / "inproc"), "--comfy-root", host.find_comfyui_root(),
                   "--base-directory", base, *args)
    assert_ok(proc)
    assert "Traceback" not in proc.stderr
    assert np.array_equal(read_pixels(tmp_path / "server" / "same.png"),
                          read_pixels(tmp_path / "inproc" / "same.png"))
    settings = json.loads((tmp_path / "inproc" / "same.json").read_text())
    assert settings["backend"].startswith("in-process ComfyUI")


# --------------------------------------------------------------------------- errors


def test_host_cli_error_server_unreachable(files, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    assert_error(run_cli(*edit_args(files, tmp_path, "--server", url)), "cannot reach ComfyUI at " + url)


def test_host_cli_error_pack_not_installed(comfy_server, files, tmp_path):
    """A node of this pack missing from /object_info: say how to install, not a 400 dump."""
    wf = img2img_workflow()
    wf["6"]["class_type"] = "PSGEditFromAFutureVersion"
    path = write_json(tmp_path / "wf.json", wf)
    msg = assert_error(run_cli("edit", files["photo"], "--source", "a", "--target", "b", "--workflow", path,
                               "--server", comfy_server.url, "--out", tmp_path),
                       "ComfyUI-PSG nodes are not installed", "PSGEditFromAFutureVersion", "custom_nodes")
    assert comfy_server.url in msg


def test_host_cli_error_checkpoint_not_found_lists_available(comfy_server, files, tmp_path):
    checkpoints = comfy_server.base_dir / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / "my-tiny-model.safetensors").write_bytes(b"placeholder, never loaded")
    wf = img2img_workflow()
    wf["1"] = {"class_type": "CheckpointLoaderSimple",
               "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "_meta": {"title": "Checkpoint"}}
    path = write_json(tmp_path / "wf.json", wf)
    assert_error(run_cli("edit", files["photo"], "--source", "a", "--target", "b", "--workflow", path,
                         "--server", comfy_server.url, "--out", tmp_path, "--ckpt", "nope.safetensors"),
                 "checkpoint 'nope.safetensors' not found", "my-tiny-model.safetensors", "--ckpt")


def test_host_cli_error_guidance_vae_not_found_says_where_the_files_go(comfy_server, files, tmp_path):
    """The shipped workflows load a TAESD guidance VAE: a user without those files is told where
    they go and how to run without them, before anything is queued."""
    wf = swap_checkpoint_loader(load_workflow("psg_edit"))
    path = write_json(tmp_path / "wf.json", wf)
    msg = assert_error(run_cli("edit", files["photo"], "--source", "a", "--target", "b", "--workflow", path,
                               "--server", comfy_server.url, "--out", tmp_path,
                               "--guidance-vae", "taesd_nope"),
                       "guidance VAE 'taesd_nope'", "'Guidance VAE' (VAELoader)", "models/vae_approx",
                       "--guidance-vae none")
    assert "taesd_nope_decoder.safetensors" in msg
    assert not comfy_server.queue().get("queue_pending")


def test_host_cli_error_guidance_vae_option_needs_the_node(comfy_server, files, tmp_path):
    assert_error(run_cli(*edit_args(files, tmp_path, "--server", comfy_server.url,
                                    "--guidance-vae", "taesd")),
                 "no node titled 'Guidance VAE'")


def test_host_cli_error_prompt_rejected_shows_node_errors(comfy_server, files, tmp_path):
    msg = assert_error(run_cli(*edit_args(files, tmp_path, "--server", comfy_server.url,
                                          "--set", "Sampler.denoise=1.5")),
                       "ComfyUI rejected the workflow", "node 6 'Sampler' (KSampler)", "denoise")
    assert "1.5" in msg


def test_host_cli_error_bad_set_is_refused_before_queueing(comfy_server, files, tmp_path):
    assert_error(run_cli(*edit_args(files, tmp_path, "--server", comfy_server.url,
                                    "--set", "Sampler.stepz=3")),
                 "has no input 'stepz'", "steps")
    assert_error(run_cli(*edit_args(files, tmp_path, "--server", comfy_server.url,
                                    "--set", "Sampler.sampler_name=warp")), "'warp' is not one of", "euler")


def test_host_cli_error_node_failure_names_the_node(comfy_server, files, tmp_path):
    """A node ComfyUI refuses (a CLIP wired where the VAE belongs) is named by id and class; a node
    failing at run time is named the same way (test_host_cli_client.py, too-small photo)."""
    wf = img2img_workflow()
    wf["5"]["inputs"]["vae"] = ["1", 1]  # a CLIP where the VAE belongs: the host refuses the link
    path = write_json(tmp_path / "wf.json", wf)
    assert_error(run_cli("edit", files["photo"], "--source", "a", "--target", "b", "--workflow", path,
                         "--server", comfy_server.url, "--out", tmp_path),
                 "node 5 (VAEEncode)")


def test_host_cli_error_in_process_bad_root(files, tmp_path):
    assert_error(run_cli(*edit_args(files, tmp_path, "--comfy-root", tmp_path)), "is not a ComfyUI folder")


# --------------------------------------------------------------------------- batch


def dataset(root: Path, n: int) -> Path:
    photos = [write_photo(root / f"{which}.png", which=which) for which in ("chelsea", "coffee", "astronaut")]
    records = [{"id": f"item-{i}", "image": photos[i % len(photos)].name, "source": "a photo",
                "target": f"a [painting] number {i}", "type": "change style" if i % 2 else "change object"}
               for i in range(n)]
    return write_json(root / "edits.json", {"edits": records})


def test_host_cli_batch_shares_work_across_two_servers(comfy_server, second_server, files, tmp_path):
    data = dataset(tmp_path, 4)
    out = tmp_path / "out"
    proc = run_cli("edit-batch", data, "--server", comfy_server.url, "--server", second_server.url,
                   "--workflow", files["workflow"], "--out", out, "--seed", "3")
    assert_ok(proc)
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "psg-edit-batch/1"
    assert results["summary"] == {"total": 4, "ok": 4, "failed": 0, "pending": 0}
    items = results["items"]
    assert [r["id"] for r in items] == [f"item-{i}" for i in range(4)]
    assert {r["backend"] for r in items} == {comfy_server.url, second_server.url}
    for r in items:
        assert (out / r["output"]).is_file() and (out / r["settings_file"]).is_file()
        assert r["target"].startswith("a painting number")  # PIE-Bench blend brackets removed
        assert read_pixels(out / r["output"]).shape == (128, 128, 3)


def test_host_cli_batch_fails_over_from_a_dead_server(comfy_server, files, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    data = dataset(tmp_path, 3)
    out = tmp_path / "out"
    proc = run_cli("edit-batch", data, "--server", dead, "--server", comfy_server.url,
                   "--workflow", files["workflow"], "--out", out)
    assert_ok(proc)
    assert f"cannot reach ComfyUI at {dead}" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["ok"] == 3
    assert {r["backend"] for r in results["items"]} == {comfy_server.url}


def test_host_cli_batch_with_no_reachable_server_fails_clearly(files, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    assert_error(run_cli("edit-batch", dataset(tmp_path, 1), "--server", dead,
                         "--workflow", files["workflow"], "--out", tmp_path / "out"),
                         "cannot reach ComfyUI at " + dead)


def test_host_cli_batch_resumes_after_a_killed_run(comfy_server, files, tmp_path):
    data = dataset(tmp_path, 8)
    out = tmp_path / "out"
    results_path = out / "results.json"
    args = ("edit-batch", data, "--server", comfy_server.url, "--workflow", files["workflow"], "--out", out,
            "--set", "Sampler.steps=12")
    first = subprocess.Popen(cli_command(*args), cwd=host.REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        done: list[dict] = []
        while time.monotonic() < deadline and first.poll() is None:
            if results_path.is_file():
                items = json.loads(results_path.read_text())["items"]  # replaced atomically
                done = [r for r in items if r["status"] == "ok"]
                if len(done) >= 2:
                    break
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert len(done) >= 2, "the first run finished too few items before the deadline"
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed mid-batch"
    before = {r["id"]: r for r in json.loads(results_path.read_text())["items"] if r["status"] == "ok"}

    second = run_cli(*args)
    assert_ok(second)
    assert f"resuming: {len(before)} item(s) already done" in second.stderr, second.stderr
    after = json.loads(results_path.read_text())
    assert after["summary"]["ok"] == 8
    for item_id, record in before.items():  # finished items were skipped, not redone
        assert next(r for r in after["items"] if r["id"] == item_id) == record
