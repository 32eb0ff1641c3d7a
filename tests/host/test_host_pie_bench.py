"""The PIE-Bench runner and evaluator end to end on a generated mini set (no dataset, no weights).

``python -m benchmarks.pie_bench`` runs the shipped psg_edit workflow (tiny random-weight SD1.5-shaped
checkpoint, in-process ComfyUI, 64 px, 2 steps) for three methods over the mini set and must
write exactly PnPInversion's layout (``output/<method>/annotation_images/<image_path>``), resume
without redoing anything, and feed the mask only to ``+psg-mask`` methods. ``python -m psg_eval``
then scores those outputs plus a wide strip that must be cropped, and its numbers must equal
values computed here independently (numpy for PSNR / MSE, transformers' CLIP forward for the
CLIP scores). Every model is a RANDOM-WEIGHT stand-in: plumbing and conventions, not quality.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from psg_testing import host, pie_mini
from psg_testing.cli_support import cli_env, swap_checkpoint_loader, write_json
from psg_testing.metric_models import save_random_alexnet, save_tiny_clip

from psg_cli.workflow import load_workflow
from psg_eval import pie_bench as pie

METHODS = ("ddim-cfg", "null-text+psg-mask", "direct-offsets+psg")
STRIP = "strip-of-direct-offsets"
TIMEOUT_S = 600


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *map(str, cmd)], cwd=host.REPO_ROOT, capture_output=True,
                          text=True, env={**cli_env(), "OMP_NUM_THREADS": "1"}, timeout=TIMEOUT_S)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def bench(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pie_bench")
    data = pie_mini.write_mini_pie(root / "data")
    base = root / "comfy_base"
    host.populate_custom_nodes(base / "custom_nodes")
    save_random_alexnet(base / "models" / "lpips")
    wf = write_json(root / "psg_edit_tiny.json",
                    swap_checkpoint_loader(load_workflow("psg_edit"), family="sd15"))
    runner = ("-m", "benchmarks.pie_bench", "--data", data, "--out", root / "output",
              "--comfy-root", comfy_root, "--base-directory", base, "--cpu", "--workflow", wf,
              "--guidance-vae", "none", "--size", "64", "--steps", "2", "--set", "PSG Edit.inner_steps=2",
              "--seed", "0", "--methods", *METHODS)
    first = ok(run(*runner))
    return {"root": root, "data": data, "output": root / "output", "runner": runner,
            "first_stdout": first.stdout}


def test_host_pie_bench_writes_pnpinversion_layout(bench):
    items = pie.load_mapping(bench["data"])
    for method in METHODS:
        folder = bench["output"] / method / "annotation_images"
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert written == sorted(it.image_path for it in items), method
        for it in items:
            path = Path("output") / method / "annotation_images" / it.image_path  # evaluate.py's join
            with Image.open(bench["root"] / path) as img:
                assert img.format == "JPEG" and img.size == (512, 512)
        assert f"{method}: 3 ok, 0 failed of 3" in bench["first_stdout"]


def test_host_pie_bench_methods_reach_the_workflow(bench):
    """The method's settings reach PSG Edit; only +psg-mask uploads PIE-Bench's mask."""
    expected = {"ddim-cfg": ("none", 0.0, False), "null-text+psg-mask": ("null-text optimization", 1.0, True),
                "direct-offsets+psg": ("direct offsets", 1.0, False)}
    for method, (mode, scale, masked) in expected.items():
        results = json.loads((bench["output"] / method / "psg_batch" / "results.json").read_text())
        assert results["summary"]["ok"] == 3
        for rec in results["items"]:
            settings = json.loads((bench["output"] / method / "psg_batch" / rec["settings_file"]).read_text())
            edit = next(n for n in settings["prompt"].values() if n["class_type"] == "PSGEdit")
            assert edit["inputs"]["text_optimization"] == mode and edit["inputs"]["scale"] == scale
            assert edit["inputs"]["steps"] == 2
            mask_loader = mask_source(settings["prompt"], edit)
            assert mask_loader["class_type"] == ("LoadImageMask" if masked else "LoadImage"), method
            if masked:  # PIE-Bench's mask as uploaded (content-named), not the photo's own (empty) mask
                assert Path(settings["mask"]).name == f"{rec['id']}_64_mask.png"
                digest = hashlib.sha256(Path(settings["mask"]).read_bytes()).hexdigest()[:16]
                assert mask_loader["inputs"]["image"] == f"psg_{digest}.png"
            else:
                assert settings["mask"] is None
            assert "[" not in settings["target"] and "]" not in settings["target"]
    a = pie.read_rgb(bench["output"] / "ddim-cfg" / "annotation_images" / "0_random_140" / "000000000001.jpg")
    edited = bench["output"] / "direct-offsets+psg" / "annotation_images" / "0_random_140"
    b = pie.read_rgb(edited / "000000000001.jpg")
    assert np.abs(a.astype(int) - b).mean() > 1.0  # different methods, different edits


def mask_source(prompt: dict, edit: dict) -> dict:
    """The loader PSG Edit's mask comes from, through PSG Fit Image (which resizes it)."""
    node = prompt[edit["inputs"]["mask"][0]]
    while node["class_type"] == "PSGFitImage":
        node = prompt[node["inputs"]["mask"][0]]
    return node


def test_host_pie_bench_resumes_without_redoing(bench):
    files = {p: p.stat().st_mtime_ns for m in METHODS for p in (bench["output"] / m).rglob("*.jpg")}
    second = ok(run(*bench["runner"]))
    for method in METHODS:
        assert f"{method}: 3 ok, 0 failed of 3 (3 resumed, 0 kept)" in second.stdout, second.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_host_pie_bench_on_ray_actors_writes_the_same_edits(bench):
    """``--ray`` (a local Ray the runner starts, one CPU actor owning an in-process ComfyUI):
    the same layout, pixel for pixel, as the in-process run with the same settings."""
    out = bench["root"] / "ray_output"
    runner = list(bench["runner"])
    runner[runner.index("--out") + 1] = out
    runner = runner[:runner.index("--methods")]
    ok(run(*runner, "--methods", "ddim-cfg", "--ray", "--ray-actors", "1", "--ray-gpus-per-actor", "0"))
    results = json.loads((out / "ddim-cfg" / "psg_batch" / "results.json").read_text())
    assert results["summary"]["ok"] == 3
    assert all(r["backend"].startswith("ray actor 0") for r in results["items"]), results["items"]
    for it in pie.load_mapping(bench["data"]):
        assert np.array_equal(pie.read_rgb(pie.edited_path(out, "ddim-cfg", it)),
                              pie.read_rgb(pie.edited_path(bench["output"], "ddim-cfg", it))), it.key


@functools.cache
def clip_model(folder: Path):
    import transformers

    return (transformers.CLIPModel.from_pretrained(folder).eval(),
            transformers.CLIPProcessor.from_pretrained(folder))


def clip_reference(folder: Path, image: np.ndarray, text: str) -> float:
    """Independent CLIPScore: transformers' own forward, cos = logits / logit_scale, 100 * max(cos, 0)."""
    model, processor = clip_model(folder)
    inputs = processor(text=[text], images=Image.fromarray(image), return_tensors="pt", padding=True)
    with torch.no_grad():
        cos = model(**inputs).logits_per_image[0, 0] / model.logit_scale.exp()
    return 100 * max(float(cos), 0.0)


def test_host_pie_bench_evaluator_matches_independent_values(bench):
    output, data = bench["output"], bench["data"]
    items = pie.load_mapping(data)
    for it in items:  # a wide output: photo | photo | edit, to be cropped to its last 512x512
        photo = pie.read_rgb(pie.photo_path(data, it))
        edit = pie.read_rgb(pie.edited_path(output, "direct-offsets+psg", it))
        dest = pie.edited_path(output, STRIP, it)
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate([photo, photo, edit], axis=1)).save(dest)
    models = bench["root"] / "models"
    pie_mini.save_random_squeezenet(models / "lpips")
    pie_mini.save_random_dino(models / "dino")
    clip_dir = save_tiny_clip(models / "clip_score" / "clip-vit-large-patch14")
    proc = ok(run("-m", "psg_eval", "--data", data, "--output", output, "--models", models, "--metrics",
                  "pnp", "pack_bgavg_mse", "--device", "cpu", "--out-dir", bench["root"] / "eval"))

    rows = {r["file_id"]: r for r in csv.DictReader(open(bench["root"] / "eval" / "evaluation_result.csv"))}
    assert list(rows) == [it.key for it in items]
    for it in items:
        photo = pie.read_rgb(pie.photo_path(data, it))
        mask = pie_mini_mask(it)
        for method in (*METHODS, STRIP):
            raw = pie.read_rgb(pie.edited_path(output, method, it))
            edit = raw[:, -512:] if method == STRIP else raw
            assert raw.shape[1] == (1536 if method == STRIP else 512)
            keep = (1 - mask)[..., None]
            mse = np.mean((edit / 255.0 * keep - photo / 255.0 * keep) ** 2)
            row = rows[it.key]
            assert float(row[f"{method}|mse_unedit_part"]) == pytest.approx(mse, rel=1e-5)
            assert float(row[f"{method}|psnr_unedit_part"]) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
            target = pie.strip_brackets(it.target_prompt)
            assert float(row[f"{method}|clip_similarity_target_image"]) == pytest.approx(
                clip_reference(clip_dir, edit, target), abs=1e-3)
            masked = (edit * mask[..., None]).astype(np.uint8)
            assert float(row[f"{method}|clip_similarity_target_image_edit_part"]) == pytest.approx(
                clip_reference(clip_dir, masked, target), abs=1e-3)
        assert float(row[f"{STRIP}|structure_distance"]) == pytest.approx(
            float(row["direct-offsets+psg|structure_distance"]), rel=0.2)  # same edit, re-encoded as JPEG

    summary = list(csv.DictReader(open(bench["root"] / "eval" / "summary.csv")))
    overall = {r["method"]: r for r in summary if r["group"] == "overall"}
    assert set(overall) == {*METHODS, STRIP}
    for method in METHODS:
        assert float(overall[method]["seconds_per_edit"]) > 0
    assert overall[STRIP]["seconds_per_edit"] == "nan"  # not run by the runner: no timing
    for header in ("Structure distance ×10³", "BG PSNR", "BG LPIPS ×10³", "BG MSE ×10⁴", "BG SSIM ×10²",
                   "CLIP whole", "CLIP edited", "pack_bgavg_mse", "s / edit", "### overall", "### random",
                   "### change object", "### change style"):
        assert header in proc.stdout, proc.stdout


def pie_mini_mask(item: pie.PieItem) -> np.ndarray:
    """The mask by a per-pixel loop (independent of psg_eval's decoder)."""
    size = pie.PIE_SIZE
    mask = np.zeros((size, size))
    rle = item.rle
    for start, length in zip(rle[0::2], rle[1::2], strict=True):
        for p in range(start, min(start + length, size * size)):
            mask[p // size, p % size] = 1
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    return mask
