"""``edit-batch --ray`` on a local Ray cluster (this machine, 2 actors, tiny checkpoint, CPU).

Each actor boots its own in-process ComfyUI, so the module shares one cluster and one pair of
actors (booting is the slow part on 2 cores); the client-restart test drives the CLI itself in
a subprocess against the same cluster, and the actor-kill test runs last because it leaves one
actor dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray  # the optional "ray" extra, part of the dev dependencies
from psg_testing import host
from psg_testing.cli_support import (
    cli_command,
    cli_env,
    img2img_workflow,
    read_pixels,
    run_cli,
    write_json,
    write_photo,
)

from psg_cli.batch import BatchRun
from psg_cli.dataset import load_dataset
from psg_cli.edit import EditRequest
from psg_cli.journal import read_entries
from psg_cli.ray_backend import RaySettings, start_workers

N_ITEMS = 6
SEED = 3


def guided_workflow() -> dict:
    """img2img plus an unconnected 'Guidance VAE' loader naming a file this host lacks: only
    ``--guidance-vae none`` (which removes that node) lets an item run."""
    wf = img2img_workflow()
    wf["9"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}, "_meta": {"title": "Guidance VAE"}}
    return wf


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray_files")
    photos = [write_photo(root / f"{w}.png", which=w) for w in ("chelsea", "coffee", "astronaut")]
    records = [{"id": f"item-{i}", "image": photos[i % 3].name, "source": "a photo",
                "target": f"a painting number {i}"} for i in range(N_ITEMS)]
    base = root / "base"
    host.populate_custom_nodes(base / "custom_nodes")
    return {"root": root, "dataset": write_json(root / "edits.json", {"edits": records}),
            "workflow": write_json(root / "guided.json", guided_workflow()), "base": base}


@pytest.fixture(scope="module")
def cluster(comfy_root: Path, files: dict[str, Path]):
    """A local Ray (4 logical CPUs: 2 for these actors, 2 for a CLI client's) and 2 actors."""
    workers = start_workers(RaySettings(
        address=None, actors=2, gpus_per_actor=0, cpus_per_actor=1, comfy_root=str(comfy_root),
        base_directory=str(files["base"]), cpu=True, timeout=300,
        init_options={"num_cpus": 4, "include_dashboard": False}))
    try:
        yield {"workers": workers, "address": ray.get_runtime_context().gcs_address}
    finally:
        ray.shutdown()


def make_run(files: dict[str, Path], out: Path, *, sets: list[str] | None = None,
             dataset: Path | None = None) -> BatchRun:
    dataset = dataset or files["dataset"]
    items = load_dataset(dataset, out / "_inputs")
    template = json.loads(files["workflow"].read_text())
    request = EditRequest(image=Path(), source="", target="", seed=SEED, guidance_vae="none",
                          sets=list(sets or []), workflow=str(files["workflow"]))
    import io

    return BatchRun(items, out, out / "results.json", dataset, template, request, {"workflow": "guided"},
                    retries=1, recheck_s=1.0, backoff_s=0.1, stream=io.StringIO())


def ok_entries(journal: Path) -> list[dict]:
    return [e for e in read_entries(journal) if e["state"] == "ok"]


def test_host_batch_ray_matches_the_in_process_backend_bitwise(cluster, files, comfy_root, tmp_path):
    """Same dataset, seed and --guidance-vae none: the CLI in-process and two Ray actors give the
    same pixels, and the option reached every item (the unconnected loader is gone)."""
    inproc = tmp_path / "inproc"
    # Ray runs each 1-CPU actor with one thread; bitwise equality needs the same summation order
    proc = run_cli("edit-batch", files["dataset"], "--comfy-root", comfy_root, "--base-directory",
                   files["base"],
                   "--workflow", files["workflow"], "--out", inproc, "--seed", SEED, "--guidance-vae", "none",
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ray"
    results = make_run(files, out).run(cluster["workers"])
    assert results["summary"] == {"total": N_ITEMS, "ok": N_ITEMS, "failed": 0, "pending": 0}
    backends = {r["backend"].split(" (")[0] for r in results["items"]}
    assert backends == {"ray actor 0", "ray actor 1"}, backends
    for r in results["items"]:
        assert np.array_equal(read_pixels(out / r["output"]), read_pixels(inproc / r["output"])), r["id"]
        settings = json.loads((inproc / r["settings_file"]).read_text())
        assert "9" not in settings["prompt"], "--guidance-vae none did not reach the batch item"
        assert settings["guidance_vae"] is None


def test_host_batch_ray_changed_set_reruns_only_affected_items(cluster, files, tmp_path):
    out = tmp_path / "out"
    first = make_run(files, out)
    first.run(cluster["workers"])
    assert len(ok_entries(out / "journal.jsonl")) == N_ITEMS

    again = make_run(files, out)
    again.run(cluster["workers"])
    assert again.skipped == N_ITEMS and len(ok_entries(out / "journal.jsonl")) == N_ITEMS

    changed = make_run(files, out, sets=["Sampler.steps=3"])
    results = changed.run(cluster["workers"])
    assert changed.skipped == 0, "a changed --set must not reuse old results"
    assert results["summary"]["ok"] == N_ITEMS
    assert len(ok_entries(out / "journal.jsonl")) == 2 * N_ITEMS

    data = json.loads(files["dataset"].read_text())
    data["edits"][4]["target"] = "a watercolour"
    edited = write_json(files["root"] / "edited.json", data)  # image paths are relative to it
    one = make_run(files, out, sets=["Sampler.steps=3"], dataset=edited)
    one.run(cluster["workers"])
    assert one.skipped == N_ITEMS - 1
    rerun = [e["id"] for e in ok_entries(out / "journal.jsonl")[2 * N_ITEMS:]]
    assert rerun == ["item-4"]


def test_host_batch_ray_client_killed_and_restarted_resumes_from_the_journal(
        cluster, files, comfy_root, tmp_path):
    """The CLI (--ray ADDRESS) is SIGKILLed mid-batch; the rerun keeps what the journal holds,
    does the rest, and every item ends with exactly one result."""
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    args = ("edit-batch", files["dataset"], "--ray", cluster["address"], "--ray-actors", "2",
            "--ray-gpus-per-actor", "0", "--comfy-root", comfy_root, "--base-directory", files["base"],
            "--cpu",
            "--workflow", files["workflow"], "--out", out, "--seed", SEED, "--guidance-vae", "none",
            "--set", "Sampler.steps=12")
    first = subprocess.Popen(cli_command(*args), cwd=host.REPO_ROOT, env=cli_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and first.poll() is None and len(ok_entries(journal)) < 2:
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the first client ended before it could be killed mid-batch"
    done_before = {e["id"] for e in ok_entries(journal)}
    assert 2 <= len(done_before) < N_ITEMS

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert f"resuming: {len(done_before)} item(s) already done" in second.stderr, second.stderr
    counts = Counter(e["id"] for e in ok_entries(journal))
    assert set(counts) == {f"item-{i}" for i in range(N_ITEMS)}
    assert max(counts.values()) == 1, f"an item was edited twice: {counts}"


def test_host_batch_ray_actor_killed_mid_batch_loses_and_duplicates_nothing(cluster, files, tmp_path):
    """ray.kill (no restart) of an actor holding an item: its item goes to the other actor."""
    out = tmp_path / "out"
    run = make_run(files, out, sets=["Sampler.steps=12"])
    victim = cluster["workers"][0]
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run.run(cluster["workers"])), daemon=True)
    thread.start()
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(
            e["record"]["backend"].startswith(victim.label) for e in ok_entries(journal)):
        time.sleep(0.02)
    ray.kill(victim.actor, no_restart=True)
    thread.join(timeout=400)
    assert not thread.is_alive()
    assert outcome["summary"] == {"total": N_ITEMS, "ok": N_ITEMS, "failed": 0, "pending": 0}
    counts = Counter(e["id"] for e in ok_entries(journal))
    assert set(counts) == {f"item-{i}" for i in range(N_ITEMS)} and max(counts.values()) == 1, counts
    assert f"{victim.label} stopped answering" in run.stream.getvalue()
    for r in outcome["items"]:
        assert (out / r["output"]).is_file()
