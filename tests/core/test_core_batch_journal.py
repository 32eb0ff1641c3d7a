"""The batch journal (append-only, keyed), failure kinds, and the report streamed from a journal
with thumbnails as files. Pure Python: no ComfyUI needed."""

from __future__ import annotations

import json
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from psg_cli import journal as J
from psg_cli import report
from psg_cli.errors import CliError, EditTimeout, ExecutionFailed, RetryableError, UnreachableError
from psg_cli.failures import FailureKind, backoff_s, classify


def _photo(path: Path, which: str = "chelsea", size: int = 48) -> Path:
    Image.fromarray(getattr(skimage.data, which)()[:size, :size]).convert("RGB").save(path)
    return path


def _key(photo: Path, **change: object) -> str:
    fields = dict(photo=photo, mask=None, mask_box=None, source="a cat", target="a tiger",
                  template={"1": {"class_type": "KSampler", "inputs": {"steps": 20}}}, ckpt="v15.safetensors",
                  seed=1, guidance_vae="taesd", sets=["PSG Edit.scale=2"], version="0.1.0")
    fields.update(change)
    return J.item_key(**fields)


def test_core_journal_key_changes_with_everything_that_changes_the_result(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "a.png")
    same_bytes = tmp_path / "copy.png"
    same_bytes.write_bytes(photo.read_bytes())
    other = _photo(tmp_path / "b.png", "coffee")
    base = _key(photo)
    assert _key(same_bytes) == base, "the key follows the photo's bytes, not its path"
    variants = {
        "photo bytes": _key(other), "mask": _key(photo, mask=other),
        "mask_box": _key(photo, mask_box=[0, 0, 1, 1]),
        "source": _key(photo, source="a dog"), "target": _key(photo, target="a lion"),
        "workflow": _key(photo, template={"1": {"class_type": "KSampler", "inputs": {"steps": 21}}}),
        "checkpoint": _key(photo, ckpt="sdxl.safetensors"), "seed": _key(photo, seed=2),
        "guidance vae": _key(photo, guidance_vae="none"), "--set": _key(photo, sets=["PSG Edit.scale=3"]),
        "--set order": _key(photo, sets=["PSG Edit.scale=2", "Sampler.steps=3"]),
        "pack version": _key(photo, version="0.2.0"),
    }
    changed = {name for name, key in variants.items() if key != base}
    assert changed == set(variants)
    assert len(set(variants.values())) == len(variants)


def test_core_journal_appends_from_threads_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    jr = J.Journal(path, fsync=False)

    def write(worker: int) -> None:
        for n in range(50):
            jr.append(f"item-{worker}-{n}", "k", "ok", record={"id": f"item-{worker}-{n}", "blob": "x" * 500})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jr.close()
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"id": "torn", "state": "o')  # a writer killed mid-line
    entries = list(J.read_entries(path))
    assert len(entries) == 200 and len({e["id"] for e in entries}) == 200

    again = J.Journal(path, fsync=False)  # appending after a torn line starts on a fresh line
    again.append("item-after", "k2", "failed")
    again.close()
    latest = J.latest_by_key(path)
    assert latest[("item-after", "k2")]["state"] == "failed"
    assert ("torn", "None") not in latest


def test_core_journal_latest_entry_per_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    jr = J.Journal(path, fsync=False)
    jr.append("a", "k1", "submitted", prompt_id="p1")
    jr.append("a", "k1", "ok", record={"id": "a"})
    jr.append("a", "k2", "retry")
    jr.close()
    latest = J.latest_by_key(path)
    assert latest[("a", "k1")]["state"] == "ok" and latest[("a", "k2")]["state"] == "retry"
    assert J.latest_by_item(path)["a"]["key"] == "k2"


@pytest.mark.parametrize(("error", "kind"), [
    (ExecutionFailed("x", "torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2 GiB"),
     FailureKind.TRANSIENT),
    (ExecutionFailed("x", "RuntimeError", "CUDA error: an illegal memory access"), FailureKind.TRANSIENT),
    (ExecutionFailed("x", "PIL.UnidentifiedImageError", "cannot identify image file"),
     FailureKind.DETERMINISTIC),
    (ExecutionFailed("x", "RuntimeError", "PSG LPIPS Loader: alexnet-owt-7be5be79.pth not found"),
     FailureKind.DETERMINISTIC),
    (CliError("ComfyUI rejected the workflow: denoise 1.5 > 1.0"), FailureKind.DETERMINISTIC),
    (UnreachableError("cannot reach ComfyUI"), FailureKind.WORKER_DOWN),
    (EditTimeout("no result after 60 s"), FailureKind.TRANSIENT),
    (RetryableError("websocket lost"), FailureKind.TRANSIENT),
    (ConnectionResetError(), FailureKind.TRANSIENT),
    (KeyError("output"), FailureKind.DETERMINISTIC),
])
def test_core_failures_are_classified_by_kind(error: BaseException, kind: FailureKind) -> None:
    assert classify(error) is kind


def test_core_failures_backoff_grows_and_is_capped() -> None:
    waits = [backoff_s(n, 2.0) for n in range(1, 10)]
    assert waits[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(waits) == waits[-1] <= 60.0


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")


def test_core_report_streams_from_a_journal_with_thumbnail_files(tmp_path: Path) -> None:
    """Items as the journal holds them (last record wins, torn line skipped, several shards):
    thumbnails become files linked from the page, never data URIs."""
    rng = np.random.default_rng(0)
    src = _photo(tmp_path / "photo.png", size=32)
    n = 120
    shards = [tmp_path / "journal-shard-1-of-2.jsonl", tmp_path / "journal-shard-2-of-2.jsonl"]
    journals = [J.Journal(p, fsync=False) for p in shards]
    for i in range(n):
        edit = np.asarray(Image.open(src), dtype=np.float64) + rng.normal(0, 8, (32, 32, 3))
        Image.fromarray(np.clip(edit, 0, 255).astype(np.uint8)).save(tmp_path / f"e{i}.png")
        record = {"id": f"item-{i}", "type": "t", "image": "photo.png", "output": f"e{i}.png", "status": "ok",
                  "source": "s", "target": "t"}
        jr = journals[i % 2]
        jr.append(record["id"], "k", "failed", record={**record, "status": "failed", "error": "oom"})
        jr.append(record["id"], "k", "ok", record=record)
    for jr in journals:
        jr.close()
    with shards[0].open("a") as fh:
        fh.write('{"id": "item-0", "state": "failed", "record": {"id": "item-0", "status": "fa')

    paths = report.write(shards, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert len(data["items"]) == n and all(it["status"] == "ok" for it in data["items"])
    assert data["overall"]["psnr"]["n"] == n
    page = _Imgs()
    page.feed(paths["html"].read_text())
    assert len(page.srcs) == 3 * n
    assert not any(s.startswith("data:") for s in page.srcs)
    for s in page.srcs:
        assert (tmp_path / "rep" / s).is_file(), s
    assert paths["html"].stat().st_size < 1500 * n, "the page must not grow with the images"
    assert report.main([str(shards[0]), "--out", str(tmp_path / "cli")]) == 0
    assert len(json.loads((tmp_path / "cli" / "report.json").read_text())["items"]) == n // 2


def test_core_ray_is_imported_only_for_ray_batches() -> None:
    """The CLI, the batch scheduler and the servers' client work without Ray installed."""
    import subprocess
    import sys

    code = ("import sys; import psg_cli.main, psg_cli.batch, psg_cli.server_backend, psg_cli.journal; "
            "print('ray' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
