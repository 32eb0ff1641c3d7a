"""Soak: N headless one-node edits queued at once on a real ComfyUI server.

Run:   .venv/bin/python -m benchmarks.soak [--runs 50] [--first 5] [--keep]

A real ``main.py --cpu`` (this pack linked in, tiny random-weight SD1.5 test checkpoint, 64 px,
2 steps, null-text optimization and LPIPS guidance on, through a random-weight TAESD guidance VAE
loaded by VAELoader unless ``--guidance-vae none``) gets all edits queued at once, each with
its own seed so none is served from the cache. Its only output node is Preview Any on the loss
list, so the runs write no files by design and any file that appears is a leak.

Measured for the server process: resident memory (RSS; peak while each run executes, from a
20 Hz sampler, and settled when the queue is empty), open file descriptors and threads, and the
file count of the base directory's temp/ and output/. Verdict: peak RSS growth from run
``--first`` to the last run < 5 %, no file growth. Prints a markdown table for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from psg_testing import host
from psg_testing.host_server import ComfyServer

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks.soak")
MiB = 2**20
RSS_GROWTH_LIMIT = 0.05
SAMPLE_INTERVAL_S = 0.05


@dataclass
class RunSample:
    """What the server looked like while run ``index`` (1-based) executed and right after it."""

    index: int
    peak_rss: int = 0
    end_rss: int = 0
    fds: int = 0
    threads: int = 0
    files: int = 0
    seconds: float = 0.0


@dataclass
class Sampler:
    """Polls the server's RSS in a thread; ``current`` says which run the samples belong to."""

    process: psutil.Process
    current: int = 1
    peaks: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(psutil.Error):
                rss = self.process.memory_info().rss
                self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)
            time.sleep(SAMPLE_INTERVAL_S)


def count_files(base_dir: Path) -> int:
    return sum(1 for d in ("temp", "output") for p in (base_dir / d).rglob("*") if p.is_file())


def soak(server: ComfyServer, runs: int, timeout_s: float,
         guidance_vae: str | None = None) -> list[RunSample]:
    from psg_testing.reliability import soak_prompt  # needs the host on sys.path (GraphBuilder)

    proc = psutil.Process(server.process.pid)
    sampler = Sampler(proc)
    thread = threading.Thread(target=sampler.loop, daemon=True)
    ids = [server.post_prompt(soak_prompt(seed=1000 + i, guidance_vae=guidance_vae)) for i in range(runs)]
    logger.info("queued %d edits", runs)
    thread.start()
    samples: list[RunSample] = []
    try:
        last = time.monotonic()
        for index, prompt_id in enumerate(ids, start=1):
            server.wait(prompt_id, timeout_s=timeout_s)
            sampler.current = index + 1
            now = time.monotonic()
            samples.append(RunSample(index, end_rss=proc.memory_info().rss, fds=proc.num_fds(),
                                     threads=proc.num_threads(), files=count_files(server.base_dir),
                                     seconds=now - last))
            last = now
            if index % 10 == 0:
                logger.info("run %d/%d done, RSS %.1f MiB", index, runs, samples[-1].end_rss / MiB)
    finally:
        sampler.stop.set()
        thread.join()
    for s in samples:
        s.peak_rss = max(sampler.peaks.get(s.index, 0), s.end_rss)
    return samples


def table(samples: list[RunSample], first: int, settled: int, files_before: int) -> tuple[str, bool]:
    a, b = samples[first - 1], samples[-1]
    growth = b.peak_rss / a.peak_rss - 1.0
    ok_rss = growth < RSS_GROWTH_LIMIT
    ok_files = b.files == files_before
    rows = [
        f"| measurement | run {first} | run {b.index} | growth | target | verdict |",
        "|---|---|---|---|---|---|",
        f"| server peak RSS while the run executed | {a.peak_rss / MiB:.1f} MiB | {b.peak_rss / MiB:.1f} MiB "
        f"| {100 * growth:+.2f} % | < {100 * RSS_GROWTH_LIMIT:.0f} % | {'PASS' if ok_rss else 'FAIL'} |",
        f"| server RSS right after the run | {a.end_rss / MiB:.1f} MiB | {b.end_rss / MiB:.1f} MiB "
        f"| {100 * (b.end_rss / a.end_rss - 1):+.2f} % | - | report (run {a.index}: the next run is "
        "executing) |",
        f"| files in temp/ + output/ (before: {files_before}) | {a.files} | {b.files} | "
        f"{b.files - a.files:+d} | 0 | {'PASS' if ok_files else 'FAIL'} |",
        f"| open file descriptors | {a.fds} | {b.fds} | {b.fds - a.fds:+d} | - | report |",
        f"| threads | {a.threads} | {b.threads} | {b.threads - a.threads:+d} | - | report |",
        f"| seconds per edit (queue throughput) | {a.seconds:.2f} | {b.seconds:.2f} | - | - | report |",
    ]
    tail = (f"\nRSS after the queue emptied and {settled} s idle: see the log line below the table. "
            f"All {len(samples)} edits succeeded.")
    return "\n".join(rows) + tail, ok_rss and ok_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--first", type=int, default=5, help="the run the growth is measured from")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per edit")
    parser.add_argument("--keep", action="store_true", help="keep the server's base directory")
    parser.add_argument("--guidance-vae", default="taesd", choices=["taesd", "none"],
                        help="plug a (random-weight) TAESD guidance VAE like the shipped workflows, or none")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.first < args.runs:
        parser.error("need 1 <= --first < --runs")
    root = host.find_comfyui_root()
    if root is None:
        print(host.no_host_message(), file=sys.stderr)
        return 2
    host.prepare_comfy_import(root)
    from psg_testing.reliability import prepare_base_dir
    from psg_testing.taesd_files import write_random_taesd

    guidance_vae = None if args.guidance_vae == "none" else args.guidance_vae
    base = Path(tempfile.mkdtemp(prefix="psg_soak_"))
    prepare_base_dir(base)
    if guidance_vae:
        write_random_taesd(base / "models" / "vae_approx", (guidance_vae,))
    try:
        with ComfyServer.running(base, root) as server:
            files_before = count_files(base)
            samples = soak(server, args.runs, args.timeout, guidance_vae)
            settle_s = 5
            time.sleep(settle_s)
            idle_rss = psutil.Process(server.process.pid).memory_info().rss
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    text, ok = table(samples, args.first, settle_s, files_before)
    machine = (f"Machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
               f"Python {platform.python_version()}, ComfyUI at {root}, {datetime.date.today()}")
    print(f"\n{machine}\nCommand: .venv/bin/python -m benchmarks.soak --runs {args.runs} --first "
          f"{args.first} --guidance-vae {args.guidance_vae}\n")
    print(text)
    print(f"Idle RSS after the queue: {idle_rss / MiB:.1f} MiB "
          f"({100 * (idle_rss / samples[args.first - 1].end_rss - 1):+.2f} % vs right after run "
          f"{args.first}).")
    print("\nverdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
