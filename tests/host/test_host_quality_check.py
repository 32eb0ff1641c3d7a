"""``python -m benchmarks.quality_check --stand-in`` end to end in a subprocess: the shipped psg_edit
workflow runs through the CLI's in-process ComfyUI with a tiny random-weight model, random TAESD
(loaded by VAELoader), random AlexNet and tiny CLIP, for the four guidance variants, and prints a
table of finite numbers under a banner saying they are meaningless."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from psg_testing import host
from psg_testing.cli_support import cli_env

VARIANTS = ("no perceptual guidance", "full-VAE guidance", "TAESD guidance (taesd)",
            "1/2-res guidance (full VAE)")
MASKED_EDIT = {"id": "cat-blue-eyes", "image": "chelsea", "type": "change color",
               "source": "a photo of a tabby cat with green eyes",
               "target": "a photo of a tabby cat with blue eyes",
               "mask_box": [0.2, 0.25, 0.8, 0.55]}


def test_host_quality_check_stand_in_prints_four_finite_rows_and_the_banner(comfy_root, tmp_path):
    dataset = tmp_path / "edits.json"
    dataset.write_text(json.dumps({"edits": [MASKED_EDIT]}), encoding="utf-8")  # a background to measure
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality_check", "--stand-in", "--limit", "1",
         "--steps", "2", "--size", "64", "--comfy-root", str(comfy_root), "--dataset", str(dataset),
         "--json", str(tmp_path / "means.json")],
        cwd=host.REPO_ROOT, env={**cli_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=240)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.count("NUMBERS ARE MEANINGLESS") == 2, proc.stdout  # above and below the table

    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert list(rows) == list(VARIANTS), proc.stdout
    for variant, cells in rows.items():
        assert len(cells) == 5 and all(math.isfinite(float(c)) for c in cells), f"{variant}: {cells}"
    means = json.loads((tmp_path / "means.json").read_text())
    assert set(means) == set(VARIANTS)
    assert all(math.isfinite(v) for row in means.values() for v in row.values()), means
    # the four variants really ran differently: guidance changes the image
    assert len({round(row["bg_lpips"], 6) for row in means.values()}) > 1, means
