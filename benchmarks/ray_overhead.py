"""What Ray and the batch journal cost per edit, against the plain in-process backend.

Run:   .venv/bin/python -m benchmarks.ray_overhead [--items 12] [--steps 4] [--size 64]

All in one run, on the tiny random-weight SD1.5 test checkpoint (img2img graph of the CLI tests,
CPU, one torch thread per process), after one untimed warm-up edit on every worker; the engines
run in alternating rounds (``--rounds``) and each keeps its fastest round (the least disturbed
by other jobs on a shared machine):

- plain: ``run_edit`` in a loop on the in-process backend (no batch, no journal);
- batch: the same backend through ``edit-batch``'s scheduler with the fsynced journal;
- Ray 1 / Ray 2: the scheduler driving 1 or 2 Ray actors (local cluster), each owning its own
  in-process ComfyUI; photos and outputs travel through Ray's object store.

Per-item overheads: ``batch - plain`` (journal + scheduler), ``Ray 1 - batch`` (Ray transport,
actor call, files shipped back), plus two micro-measurements that do not depend on the edit's
own noise: one fsynced journal append of a realistic record, and one actor round trip carrying a
photo's bytes out and an edit's bytes back. Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before anything below loads torch

from psg_testing import host  # noqa: E402
from psg_testing.cli_support import img2img_workflow, write_json, write_photo  # noqa: E402

from psg_cli.batch import BatchRun, LocalWorker  # noqa: E402
from psg_cli.dataset import load_dataset, safe_stem  # noqa: E402
from psg_cli.edit import EditRequest, run_edit  # noqa: E402
from psg_cli.journal import Journal  # noqa: E402

logger = logging.getLogger("ray_overhead")


def make_inputs(root: Path, items: int, size: int, steps: int) -> tuple[Path, Path, Path]:
    photos = [write_photo(root / f"{w}.png", size=size, which=w) for w in ("chelsea", "coffee", "astronaut")]
    records = [{"id": f"item-{i}", "image": photos[i % 3].name, "source": "a photo",
                "target": f"a painting number {i}"} for i in range(items)]
    base = root / "base"
    host.populate_custom_nodes(base / "custom_nodes")
    return (write_json(root / "edits.json", {"edits": records}),
            write_json(root / "wf.json", img2img_workflow(steps=steps)), base)


def batch_seconds(workers: list, dataset: Path, workflow_file: Path, out: Path) -> tuple[float, int]:
    """Wall seconds of one edit-batch run over ``dataset`` and the number of ok items."""
    items = load_dataset(dataset, out / "_inputs")
    template = json.loads(workflow_file.read_text())
    request = EditRequest(image=Path(), source="", target="", seed=1, workflow=str(workflow_file))
    run = BatchRun(items, out, out / "results.json", dataset, template, request, {"workflow": "bench"},
                   stream=io.StringIO())
    run.plan()  # keys (photo hashes) are not part of the per-item cost being compared
    started = time.perf_counter()
    results = run.run(workers)
    return time.perf_counter() - started, results["summary"]["ok"]


def journal_append_s(root: Path, record: dict, n: int = 200) -> float:
    jr = Journal(root / "bench_journal.jsonl", fsync=True)
    started = time.perf_counter()
    for i in range(n):
        jr.append(f"item-{i}", "0" * 32, "ok", record=record)
    jr.close()
    return (time.perf_counter() - started) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    comfy_root = host.find_comfyui_root()
    if comfy_root is None:
        print(host.no_host_message())
        return 2
    import ray

    from psg_cli.inprocess_backend import InProcessBackend
    from psg_cli.ray_backend import RaySettings, start_workers

    root = Path(tempfile.mkdtemp(prefix="psg_ray_bench_"))
    dataset, wf_file, base = make_inputs(root, args.items, args.size, args.steps)
    warm_data = write_json(root / "warm.json", {"edits": json.loads(dataset.read_text())["edits"][:2]})
    template = json.loads(wf_file.read_text())

    backend = InProcessBackend(comfy_root, base, cpu=True)
    items = load_dataset(dataset, root / "_inputs")
    request = EditRequest(image=Path(), source="", target="", seed=1, workflow=str(wf_file))
    run_edit(backend, EditRequest(**{**request.__dict__, "image": items[0].request.image, "source": "a",
                                     "target": "b"}), root / "warm_plain", "warm", progress=False,
             template=template)
    local = [LocalWorker(backend)]
    batch_seconds(local, warm_data, wf_file, root / "warm_batch")

    def plain_round(n: int) -> tuple[float, dict]:
        started = time.perf_counter()
        rec: dict = {}
        for it in items:
            req = EditRequest(**{**request.__dict__, "image": it.request.image, "source": it.request.source,
                                 "target": it.request.target})
            rec = run_edit(backend, req, root / f"plain{n}", safe_stem(it.id), progress=False,
                           template=template)
        return (time.perf_counter() - started) / len(items), rec

    settings = RaySettings(address=None, actors=2, gpus_per_actor=0, cpus_per_actor=1,
                           comfy_root=str(comfy_root), base_directory=str(base), cpu=True, timeout=600,
                           init_options={"num_cpus": 2, "include_dashboard": False})
    actors = start_workers(settings)
    times: dict[str, list[float]] = {"plain": [], "batch": [], "ray1": [], "ray2": []}
    try:
        for w in actors:  # boot + warm-up edit on each actor
            batch_seconds([w], warm_data, wf_file, root / f"warm_{w.label.replace(' ', '_')}")
        for n in range(args.rounds):
            per, record = plain_round(n)
            times["plain"].append(per)
            for name, workers in (("batch", local), ("ray1", actors[:1]), ("ray2", actors)):
                wall, ok = batch_seconds(workers, dataset, wf_file, root / f"{name}_{n}")
                assert ok == len(items), f"{name}: {ok} of {len(items)} ok"
                times[name].append(wall / len(items))
        photo = items[0].request.image.read_bytes()
        out_bytes = (root / "plain0" / record["output"]).read_bytes()
        echo = ray.remote(lambda payload, back: (len(payload), back)).options(num_cpus=0)
        ray.get(echo.remote(photo, out_bytes))
        trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            ray.get(actors[0].actor.ping.remote())
            ray.get(echo.remote(photo, out_bytes))
            trips.append(time.perf_counter() - t0)
        trip_s = statistics.median(trips)
    finally:
        ray.shutdown()
    append_s = journal_append_s(root, {k: v for k, v in record.items() if k != "prompt"})
    plain_s, batch_s, ray1_s, ray2_s = (min(times[k]) for k in ("plain", "batch", "ray1", "ray2"))

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"load average {os.getloadavg()[0]:.1f} at the end, Python {platform.python_version()}, "
               f"Ray {ray.__version__}")
    print(f"Machine: {machine}  \nTiny SD1.5 test checkpoint, img2img {args.steps} steps at {args.size} px, "
          f"{len(items)} items, CPU, OMP_NUM_THREADS=1, after one warm-up edit per worker; fastest of "
          f"{args.rounds} alternating rounds (all rounds, s/item: "
          + "; ".join(f"{k} " + ", ".join(f"{v:.3f}" for v in vs) for k, vs in times.items()) + ").\n")
    print("| engine | s per item | items/s | vs plain in-process |")
    print("|---|---|---|---|")
    for name, per in (("plain in-process (run_edit loop)", plain_s),
                      ("edit-batch, in-process + journal", batch_s),
                      ("edit-batch --ray, 1 actor", ray1_s), ("edit-batch --ray, 2 actors", ray2_s)):
        print(f"| {name} | {per:.3f} | {1 / per:.2f} | {plain_s / per:.2f}x |")
    print()
    print("| overhead per item | seconds | share of one tiny edit |")
    print("|---|---|---|")
    for name, sec in (("journal + scheduler (batch - plain)", batch_s - plain_s),
                      ("Ray (1 actor - batch)", ray1_s - batch_s),
                      ("fsynced journal append (micro)", append_s),
                      ("actor round trip with photo + edit bytes (micro)", trip_s)):
        print(f"| {name} | {sec:.4f} | {sec / plain_s:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
