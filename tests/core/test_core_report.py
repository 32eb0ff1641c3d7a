"""Batch report: CSV, JSON and offline HTML from neutral items (psg_eval.report) and from edit-batch
results (psg_cli.report); plots' sizes."""

from __future__ import annotations

import csv
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.metrics
import torch
from PIL import Image

from psg_cli import report as cli_report
from psg_eval import plots, report

SIZE = 64


class _Page(HTMLParser):
    """Collects what the checks need: img sources, rows by data-id / data-type, external refs."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.item_rows: list[str] = []
        self.type_cells: dict[str, list[dict[str, str]]] = {}
        self.external: list[str] = []
        self._type: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)
        if tag == "tr" and "data-id" in a:
            self.item_rows.append(a["data-id"])
        if tag == "tr" and "data-type" in a:
            self._type = a["data-type"]
            self.type_cells[self._type] = []
        if tag == "td" and "data-metric" in a and self._type is not None:
            self.type_cells[self._type].append(a)


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """A psg-edit-batch/1 results file with 4 ok items of 2 types, one failed, one missing file."""
    rng = np.random.default_rng(3)
    (tmp_path / "out").mkdir()
    items = []
    photos = [("chelsea", "change color", 0.02), ("coffee", "change color", 0.08),
              ("astronaut", "change object", 0.05), ("rocket", "change object", 0.1)]
    for k, (name, typ, noise) in enumerate(photos):
        src = getattr(skimage.data, name)()[:SIZE, :SIZE].astype(np.float64) / 255.0
        edit = src + rng.normal(0, noise, src.shape)
        _save(src, tmp_path / f"{name}.png")
        _save(edit, tmp_path / "out" / f"{name}_edit.png")
        items.append({"id": f"{name}-{k}", "type": typ, "image": f"{name}.png", "source": "a photo <b>",
                      "target": "an edit", "mask": None, "mask_box": [0.25, 0.25, 0.75, 0.75], "status": "ok",
                      "output": f"out/{name}_edit.png", "outputs": {},
                      "metrics": {"PSG Edit": {"psg_metrics": [{"clip_score": 20.0 + k}]}}})
    items.append({"id": "broken", "type": "change object", "image": "chelsea.png", "source": "s",
                  "target": "t", "status": "failed", "error": "server went away", "output": None})
    items.append({"id": "lost", "type": "change color", "image": "chelsea.png", "source": "s", "target": "t",
                  "status": "ok", "output": "out/gone.png"})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": "psg-edit-batch/1", "items": items}), encoding="utf-8")
    return path


def test_core_report_csv_json_html_agree_and_match_skimage(results: Path, tmp_path: Path) -> None:
    paths = cli_report.write(results, tmp_path / "rep", thumbnails="inline")
    data = json.loads(paths["json"].read_text())
    with paths["csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = ["chelsea-0", "coffee-1", "astronaut-2", "rocket-3", "broken", "lost"]
    assert [r["id"] for r in rows] == ids == [it["id"] for it in data["items"]]
    assert {"psnr", "ssim", "mse", "bg_psnr", "bg_ssim", "clip_score"} <= set(data["metrics"])
    assert "lpips" not in data["metrics"]  # no LPIPS module given: not reported as 0

    # each measured value equals scikit-image on the files; CSV == JSON
    for row, item in zip(rows, data["items"], strict=True):
        for name in data["metrics"]:
            j = item["metrics"][name]
            assert (row[name] == "") == (j is None)
            if j is not None:
                assert float(row[name]) == j
        if item["status"] == "ok" and item["error"] is None:
            src, edit = _load(Path(item["image"])), _load(Path(item["output"]))
            assert item["metrics"]["psnr"] == pytest.approx(
                skimage.metrics.peak_signal_noise_ratio(src, edit, data_range=1.0), rel=1e-5)
            assert item["metrics"]["bg_psnr"] > item["metrics"]["psnr"]  # half the pixels zeroed in both
    assert data["items"][0]["metrics"]["clip_score"] == 20.0  # provided metric carried over
    assert data["items"][4]["metrics"]["psnr"] is None  # failed: not measured
    assert "missing image file" in data["items"][5]["error"]

    # per-type statistics: population mean/std over the measured items
    col = [it["metrics"]["psnr"] for it in data["items"]
           if it["type"] == "change color" and it["metrics"]["psnr"]]
    assert len(col) == 2
    st = data["by_type"]["change color"]["psnr"]
    assert st["n"] == 2
    assert st["mean"] == pytest.approx(np.mean(col)) and st["std"] == pytest.approx(np.std(col))
    assert st["std"] > 0
    assert data["overall"]["psnr"]["n"] == 4

    # the page: parses, self-contained, every item present, per-type mean/std shown
    page = _Page()
    page.feed(paths["html"].read_text())
    page.close()
    assert page.item_rows == ids
    assert page.external == []
    assert len(page.imgs) == 12 and all(s.startswith("data:image/jpeg;base64,") for s in page.imgs)
    assert set(page.type_cells) == {"change color", "change object", "all"}
    psnr_cell = next(c for c in page.type_cells["change color"] if c["data-metric"] == "psnr")
    assert float(psnr_cell["data-mean"]) == pytest.approx(st["mean"], rel=1e-3)
    assert float(psnr_cell["data-std"]) == pytest.approx(st["std"], rel=1e-3)
    assert "a photo &lt;b&gt;" in paths["html"].read_text()  # prompts escaped


def test_core_report_mask_box_and_errors(tmp_path: Path) -> None:
    m = report.box_mask([0.5, 0.0, 1.0, 0.5], 4, 6)
    assert m[0, 0].tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0] * 6, [0] * 6]
    with pytest.raises(FileNotFoundError, match="edit-batch"):
        cli_report.read_results(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"items": [{"type": "x"}]}))
    with pytest.raises(ValueError, match="no 'id'"):
        cli_report.read_results(bad)
    nested = {"A": {"psnr": 1, "ok": True}, "B": {"psnr": 2.5, "t": "x"}, "c": [3]}
    assert cli_report.flatten_metrics(nested) == {"A.psnr": 1.0, "B.psnr": 2.5, "c": 3.0}
    empty = report.stats([None, math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])
    assert report.stats([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}


def test_core_report_takes_neutral_items_with_a_mask_file(tmp_path: Path) -> None:
    """psg_eval's report reads no client format: ReportItems with a mask image (white = edited) and
    numbers measured elsewhere; the background metrics equal scikit-image on the masked images."""
    src = skimage.data.coffee()[:SIZE, :SIZE].astype(np.float64) / 255.0
    edit = src.copy()
    edit[:, SIZE // 2:] = 1.0 - edit[:, SIZE // 2:]  # changed only in the right half
    mask = np.zeros((SIZE, SIZE))
    mask[:, SIZE // 2:] = 1.0
    for name, arr in (("photo", src), ("edit", edit), ("mask", np.repeat(mask[..., None], 3, axis=2))):
        _save(arr, tmp_path / f"{name}.png")
    items = iter([  # a generator is enough: items are measured as they come
        report.ReportItem(id="a", photo=tmp_path / "photo.png", edited=tmp_path / "edit.png",
                          mask=tmp_path / "mask.png", type="recolour", metrics={"clip_score": 31.5}),
        report.ReportItem(id="b", photo=None, edited=None, status="failed", error="out of memory"),
    ])
    paths = report.write_report(items, tmp_path / "rep", label="two edits")
    data = json.loads(paths["json"].read_text())
    first, second = data["items"]
    assert first["metrics"]["bg_mse"] == 0.0 and first["metrics"]["bg_psnr"] == 100.0
    keep = 1.0 - mask[..., None]
    assert first["metrics"]["bg_ssim"] == pytest.approx(skimage.metrics.structural_similarity(
        src * keep, _load(tmp_path / "edit.png") * keep, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1), abs=1e-5)
    assert first["metrics"]["psnr"] < 20 and first["metrics"]["clip_score"] == 31.5
    assert second["status"] == "failed" and second["metrics"]["psnr"] is None
    assert data["results"] == "two edits" and (tmp_path / "rep" / "thumbs").is_dir()
    with pytest.raises(ValueError, match="status"):
        report.measure_item(report.ReportItem(id="c", photo=None, edited=None, status="done"))


def test_core_report_main_writes_files(results: Path, tmp_path: Path, capsys) -> None:
    assert cli_report.main([str(results), "--out", str(tmp_path / "cli")]) == 0
    written = {p.name for p in (tmp_path / "cli").iterdir()}
    assert written == {"report.csv", "report.json", "report.html", "thumbs"}
    assert cli_report.main([str(tmp_path / "missing.json")]) == 2
    assert "edit-batch" in capsys.readouterr().out


def test_core_report_grid_and_plot_sizes() -> None:
    src, edit = torch.rand(2, 3, 40, 56), torch.rand(1, 3, 40, 56)
    grid = plots.comparison_grid(src, edit)
    width = 3 * 56 + 3 * plots.GAP + plots.BAR_WIDTH + plots.BAR_LABEL_WIDTH
    assert grid.shape == (2, 3, 40 + plots.LABEL_HEIGHT, width)
    assert grid.shape[-2:] == plots.grid_size(40, 56)
    # the source panel is the source image (8-bit rounding aside)
    panel = grid[0, :, plots.LABEL_HEIGHT:, :56]
    assert torch.allclose(panel, src[0], atol=1 / 255 + 1e-6)
    # heatmap: black where equal, brightest colour at the largest difference
    same = plots.comparison_grid(src[:1], src[:1], vmax=1.0)
    heat = same[0, :, plots.LABEL_HEIGHT:, 2 * (56 + plots.GAP): 2 * (56 + plots.GAP) + 56]
    assert float(heat.max()) < 0.03
    assert plots.comparison_grid(src[:1], torch.rand(1, 3, 20, 28)).shape[-2:] == plots.grid_size(40, 56)
    plot = plots.loss_plot([0.5, 0.4, float("nan"), 0.2], width=300, height=200)
    assert plot.shape == (3, 200, 300)
    assert float(plot.min()) < 0.5  # something was drawn
    assert plots.loss_plot({"a": [1.0], "b": torch.tensor([2.0, 1.0])}, log_y=True).shape == (3, 320, 512)
    with pytest.raises(ValueError, match="non-number"):
        plots.loss_plot(["x"])
    with pytest.raises(ValueError, match="positive"):
        plots.comparison_grid(src, edit, vmax=0.0)


def test_core_report_html_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    """Optional: the page renders offline in a real browser (skipped without chromium)."""
    import shutil
    import subprocess

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium installed")
    paths = cli_report.write(results, tmp_path / "rep")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,800", paths["html"].as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (800, 1200)
    assert pixels.std() > 10  # thumbnails and tables drawn, not a blank page
