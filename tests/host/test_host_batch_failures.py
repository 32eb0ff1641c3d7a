"""``edit-batch`` against real ComfyUI servers when things go wrong: a server that stops and
comes back, an item that can never succeed, an edit past ``--timeout``, Ctrl-C, and a client
killed while its prompts are still queued.

The CLI runs as a subprocess, as a user would; the workflow is the plain img2img graph on the
tiny checkpoint (``psg_testing.cli_support``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from psg_testing import host
from psg_testing.cli_support import (
    cli_command,
    cli_env,
    img2img_workflow,
    run_cli,
    swap_checkpoint_loader,
    write_json,
    write_photo,
)
from psg_testing.host_server import ComfyServer, free_port

from psg_cli.journal import read_entries
from psg_cli.workflow import load_workflow

STEPS_SLOW = "Sampler.steps=12"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("failure_files")
    photos = [write_photo(root / f"{w}.png", which=w) for w in ("chelsea", "coffee", "astronaut")]
    return {"root": root, "photos": photos, "workflow": write_json(root / "img2img.json", img2img_workflow())}


def dataset(files: dict[str, Path], path: Path, n: int, bad: int | None = None) -> Path:
    records = [{"id": f"item-{i}", "image": str(files["photos"][i % 3]), "source": "a photo",
                "target": f"a painting number {i}"} for i in range(n)]
    if bad is not None:
        broken = path.parent / "not_a_photo.png"
        broken.write_text("this is not an image")
        records[bad]["image"] = str(broken)
    return write_json(path, {"edits": records})


def entries(journal: Path, state: str | None = None) -> list[dict]:
    return [e for e in read_entries(journal) if state is None or e["state"] == state]


@contextlib.contextmanager
def cli_running(*args: str | Path) -> Iterator[subprocess.Popen]:
    """The CLI as a background process for the block; killed with its children if it still runs
    after it (a failed assertion must not leave a client queueing prompts)."""
    proc = subprocess.Popen(cli_command(*args), cwd=host.REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def queue_is_empty(server: ComfyServer) -> bool:
    queue = server.queue()
    return not queue.get("queue_running") and not queue.get("queue_pending")


def test_host_batch_server_stopped_mid_batch_and_restarted_is_readmitted(comfy_root, files, tmp_path):
    base, port = tmp_path / "server", free_port()
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    with (ComfyServer.running(base, comfy_root, port=port) as server,
          cli_running("edit-batch", dataset(files, tmp_path / "edits.json", 6), "--server", server.url,
                      "--workflow", files["workflow"], "--out", out, "--set", STEPS_SLOW,
                      "--recheck", "1") as proc):
        wait_for(lambda: len(entries(journal, "ok")) >= 1 or proc.poll() is not None, 300, "a first item")
        server.stop()
        time.sleep(2)
        with ComfyServer.running(base, comfy_root, port=port):
            stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"{server.url} stopped answering" in stderr, stderr
    assert f"{server.url} answers again: re-admitted" in stderr, stderr
    counts = Counter(e["id"] for e in entries(journal, "ok"))
    assert set(counts) == {f"item-{i}" for i in range(6)} and max(counts.values()) == 1, counts
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["ok"] == 6


def test_host_batch_deterministic_failure_is_tried_once(comfy_server, files, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("edit-batch", dataset(files, tmp_path / "edits.json", 3, bad=1),
                   "--server", comfy_server.url, "--workflow", files["workflow"], "--out", out,
                   "--retries", "3", "--backoff", "0.1")
    assert proc.returncode == 1, proc.stderr
    items = {r["id"]: r for r in json.loads((out / "results.json").read_text())["items"]}
    bad = items["item-1"]
    assert bad["status"] == "failed" and bad["kind"] == "deterministic" and bad["attempts"] == 1, bad
    assert "as an image" in bad["error"] and "give a PNG, JPEG, WebP or TIFF photo" in bad["error"], bad
    # refused by the client before anything reached the server: recorded once, never queued
    assert [e["state"] for e in entries(out / "journal.jsonl") if e["id"] == "item-1"] == ["failed"]
    assert items["item-0"]["status"] == items["item-2"]["status"] == "ok"


def test_host_batch_timeout_interrupts_the_prompt_and_empties_the_queue(comfy_server, files, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("edit-batch", dataset(files, tmp_path / "edits.json", 1), "--server", comfy_server.url,
                   "--workflow", files["workflow"], "--out", out, "--set", "Sampler.steps=5000",
                   "--timeout", "6", "--retries", "0")
    assert proc.returncode == 1, proc.stderr
    item = json.loads((out / "results.json").read_text())["items"][0]
    assert item["status"] == "failed" and "interrupted it and took it off the queue" in item["error"], item
    wait_for(lambda: queue_is_empty(comfy_server), 20, "the server's queue to empty after the timeout")


def test_host_batch_ctrl_c_interrupts_the_running_prompt(comfy_server, files, tmp_path):
    out = tmp_path / "out"
    with cli_running("edit-batch", dataset(files, tmp_path / "edits.json", 2), "--server", comfy_server.url,
                     "--workflow", files["workflow"], "--out", out, "--set", "Sampler.steps=5000") as proc:
        wait_for(lambda: bool(entries(out / "journal.jsonl", "submitted")), 120, "a queued prompt")
        wait_for(lambda: not queue_is_empty(comfy_server), 30, "the prompt to run")
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 130
    wait_for(lambda: queue_is_empty(comfy_server), 20, "the server's queue to empty after Ctrl-C")


def test_host_batch_restarted_client_collects_queued_prompts_from_history(comfy_server, files, tmp_path):
    """The client dies right after queueing; the server finishes the prompt; the next client takes
    the result from /history instead of queueing the edit again."""
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    args = ("edit-batch", dataset(files, tmp_path / "edits.json", 2), "--server", comfy_server.url,
            "--workflow", files["workflow"], "--out", out, "--set", STEPS_SLOW)
    with cli_running(*args) as first:
        wait_for(lambda: bool(entries(journal, "submitted")) or first.poll() is not None, 120,
                 "a queued prompt")
    submitted = entries(journal, "submitted")
    assert first.returncode == -signal.SIGKILL and len(submitted) == 1 and not entries(journal, "ok")
    prompt_id = submitted[0]["prompt_id"]
    wait_for(lambda: comfy_server.history(prompt_id) is not None, 120, "the orphaned prompt to finish")

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "collected 1 edit(s) an earlier run had queued" in second.stderr, second.stderr
    states = [(e["id"], e["state"]) for e in entries(journal)]
    assert states.count((submitted[0]["id"], "submitted")) == 1, states  # not queued a second time
    assert Counter(e["id"] for e in entries(journal, "ok")) == Counter({"item-0": 1, "item-1": 1})
    assert comfy_server.history(prompt_id) is None, "a collected prompt is dropped from /history"


def test_host_batch_missing_lpips_file_stops_the_worker_once_before_any_item(comfy_root, files, tmp_path):
    """The shipped edit workflow on a ComfyUI without the LPIPS backbone file: one message from
    the worker's preflight, no item tried (in-process, an empty torch hub cache)."""
    base = tmp_path / "base"
    host.populate_custom_nodes(base / "custom_nodes")
    wf = write_json(tmp_path / "wf.json", swap_checkpoint_loader(load_workflow("psg_edit")))
    out = tmp_path / "out"
    proc = subprocess.run(
        cli_command("edit-batch", dataset(files, tmp_path / "edits.json", 3), "--comfy-root", comfy_root,
                    "--base-directory", base, "--workflow", wf, "--guidance-vae", "none", "--out", out),
        cwd=host.REPO_ROOT, env={**cli_env(), "TORCH_HOME": str(tmp_path / "torch")}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("the workflow's models do not load") == 1, proc.stderr
    assert "PSG LPIPS Loader" in proc.stderr and "alexnet-owt-7be5be79.pth" in proc.stderr
    assert not (out / "journal.jsonl").exists() or not entries(out / "journal.jsonl"), "an item was tried"


def test_host_batch_shards_split_the_list_and_report_together(comfy_server, files, tmp_path):
    """--shard I/N on two 'machines' (two clients): disjoint items, one report from both journals."""
    data = dataset(files, tmp_path / "edits.json", 3)
    out = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        proc = run_cli("edit-batch", data, "--server", comfy_server.url, "--workflow", files["workflow"],
                       "--out", out, "--shard", shard)
        assert proc.returncode == 0, proc.stderr
    journals = [out / "journal-shard-1-of-2.jsonl", out / "journal-shard-2-of-2.jsonl"]
    assert [sorted(e["id"] for e in entries(j, "ok")) for j in journals] == [["item-0", "item-2"], ["item-1"]]
    assert json.loads((out / "results-shard-2-of-2.json").read_text())["summary"]["total"] == 1
    report = subprocess.run([*cli_command()[:2], "psg_cli.report", *map(str, journals),
                             "--out", str(tmp_path / "r")],
                            cwd=host.REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    items = json.loads((tmp_path / "r" / "report.json").read_text())["items"]
    assert sorted(it["id"] for it in items) == ["item-0", "item-1", "item-2"]
    assert all(it["status"] == "ok" and it["metrics"]["psnr"] is not None for it in items)
    assert len(list((tmp_path / "r" / "thumbs").glob("*.jpg"))) == 9


def test_host_batch_transient_failure_is_retried_on_the_other_server(comfy_server, comfy_root, files,
                                                                     tmp_path):
    """A run interrupted on one server (transient) goes back after the backoff and runs on the other."""
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    with (ComfyServer.running(tmp_path / "other_server", comfy_root) as other,
          cli_running("edit-batch", dataset(files, tmp_path / "edits.json", 1), "--server", comfy_server.url,
                      "--server", other.url, "--workflow", files["workflow"], "--out", out,
                      "--set", "Sampler.steps=300", "--retries", "2", "--backoff", "0.5") as proc):
        servers = {comfy_server.url: comfy_server, other.url: other}
        wait_for(lambda: bool(entries(journal, "submitted")) or proc.poll() is not None, 300,
                 "a queued prompt")
        first = entries(journal, "submitted")[0]["worker"]
        wait_for(lambda: bool(servers[first].queue().get("queue_running")), 60, "the prompt to run")
        servers[first].interrupt()
        stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    states = [(e["state"], e.get("worker") or e.get("record", {}).get("backend")) for e in entries(journal)]
    second = next(url for url in servers if url != first)
    assert states == [("submitted", first), ("retry", first), ("submitted", second), ("ok", second)], states
    retry = entries(journal, "retry")[0]
    assert retry["kind"] == "transient" and "interrupted" in retry["error"]
    assert "retrying in 0.5 s" in stderr
    assert json.loads((out / "results.json").read_text())["items"][0]["attempts"] == 2
