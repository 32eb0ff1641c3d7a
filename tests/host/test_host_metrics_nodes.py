"""The metric and picture nodes through ComfyUI's real executor (in-process, CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.metrics
import torch
from comfy_execution.graph_utils import GraphBuilder
from PIL import Image
from psg_testing.host import PromptExecutionError
from psg_testing.metric_models import save_random_alexnet, save_tiny_clip
from psg_testing.model_folders import extra_model_folder

from psg_eval import plots

SIZE = 64
BOX = (16, 48)  # rows/cols of the edited square


@pytest.fixture(scope="module")
def files(comfy_host) -> dict[str, str]:
    """A photo, the photo changed only inside BOX, the photo changed only outside, and BOX as a mask."""
    src = np.asarray(Image.fromarray(skimage.data.coffee()).resize((SIZE, SIZE), Image.BICUBIC))
    inside, outside = src.copy(), src.copy()
    lo, hi = BOX
    inside[lo:hi, lo:hi] = 255 - inside[lo:hi, lo:hi]
    outside[:8] = 255 - outside[:8]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[lo:hi, lo:hi] = 255
    names = {"src": src, "inside": inside, "outside": outside, "mask": mask}
    out = {}
    for key, arr in names.items():
        out[key] = f"psg_metrics_{key}.png"
        Image.fromarray(arr).save(comfy_host.base_dir / "input" / out[key])
    return out


@pytest.fixture(scope="module")
def lpips_dir(comfy_host, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "lpips"
    save_random_alexnet(folder)
    with extra_model_folder("lpips", folder):
        yield folder


def _arr(comfy_host, name: str) -> np.ndarray:
    with Image.open(comfy_host.base_dir / "input" / name) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def _metrics_graph(files: dict[str, str], edited: str, *, lpips: bool):
    g = GraphBuilder(prefix="")
    a = g.node("LoadImage", image=files["src"])
    b = g.node("LoadImage", image=files[edited])
    mask = g.node("LoadImageMask", image=files["mask"], channel="red")
    extra = {"lpips": g.node("PSGLPIPSLoader", net="alex").out(0)} if lpips else {}
    m = g.node("PSGImageMetrics", image_a=a.out(0), image_b=b.out(0), mask=mask.out(0), **extra)
    return g, m


def test_host_metrics_nodes_image_metrics_whole_and_background(comfy_host, files, lpips_dir) -> None:
    g, m = _metrics_graph(files, "inside", lpips=True)
    result = comfy_host.run(g.finalize())
    psnr, ssim, lp, bg_psnr, bg_ssim, bg_lp, mse, summary = (result.output(m.id, i) for i in range(8))
    src, inside = _arr(comfy_host, files["src"]), _arr(comfy_host, files["inside"])
    assert psnr == pytest.approx(skimage.metrics.peak_signal_noise_ratio(src, inside, data_range=1.0),
                                 rel=1e-4)
    assert ssim == pytest.approx(skimage.metrics.structural_similarity(
        src, inside, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        channel_axis=-1), abs=1e-5)
    assert mse > 0.01 and lp > 0
    # the change is inside the mask: the background metrics see a perfect match
    assert bg_psnr == 100.0 and bg_ssim == pytest.approx(1.0) and bg_lp == pytest.approx(0.0, abs=1e-6)
    assert "structure_distance: unavailable" in summary
    ui = result.ui[m.id]
    assert ui["text"] == [summary]
    assert ui["psg_metrics"][0]["bg_psnr"] == 100.0 and ui["psg_metrics"][0]["structure_distance"] is None

    # a change outside the mask is seen by the background metrics; no LPIPS -> NaN, 'unavailable'
    g, m = _metrics_graph(files, "outside", lpips=False)
    result = comfy_host.run(g.finalize())
    bg_psnr, lp, summary = result.output(m.id, 3), result.output(m.id, 2), result.output(m.id, 7)
    assert bg_psnr < 40
    assert math.isnan(lp) and "lpips: unavailable" in summary


def test_host_metrics_nodes_size_mismatch_is_one_clear_error(comfy_host, files) -> None:
    g = GraphBuilder(prefix="")
    a = g.node("LoadImage", image=files["src"])
    small = g.node("ImageScale", image=a.out(0), upscale_method="nearest-exact", width=32, height=32,
                   crop="disabled")
    g.node("PSGImageMetrics", image_a=a.out(0), image_b=small.out(0))
    with pytest.raises(PromptExecutionError) as err:
        comfy_host.run(g.finalize())
    assert err.value.node_type == "PSGImageMetrics"
    assert "64x64" in err.value.exception_message and "32x32" in err.value.exception_message


def test_host_metrics_nodes_clip_score(comfy_host, files, tmp_path: Path) -> None:
    folder = save_tiny_clip(tmp_path / "tiny_clip")  # transformers and the tokenizer ship with ComfyUI
    g = GraphBuilder(prefix="")
    img = g.node("LoadImage", image=files["src"])
    s = g.node("PSGCLIPScore", image=img.out(0), text="a cup of coffee", clip_model="none",
               folder_path=str(folder))
    result = comfy_host.run(g.finalize())
    score = result.output(s.id)
    assert 0.0 <= score <= 100.0
    assert result.ui[s.id]["psg_metrics"][0]["clip_score"] == score

    g = GraphBuilder(prefix="")
    img = g.node("LoadImage", image=files["src"])
    g.node("PSGCLIPScore", image=img.out(0), text="a cup of coffee", clip_model="none")
    with pytest.raises(PromptExecutionError) as err:
        comfy_host.run(g.finalize())
    assert "models/clip_score" in err.value.exception_message


def test_host_metrics_nodes_grid_and_loss_plot_sizes(comfy_host, files, lpips_dir) -> None:
    g = GraphBuilder(prefix="")
    a = g.node("LoadImage", image=files["src"])
    b = g.node("LoadImage", image=files["inside"])
    grid = g.node("PSGCompareGrid", source=a.out(0), edit=b.out(0), max_difference=0.0)
    g.node("PreviewImage", images=grid.out(0))
    # the per-step losses of a real one-node edit (a FLOAT list) on a tiny model
    ck = g.node("PSGTestTinyCheckpoint", family="sd15", seed=0)
    conds = {k: g.node("CLIPTextEncode", clip=ck.out(1), text=t).out(0)
             for k, t in (("null", ""), ("source", "a cup of coffee"), ("edit", "a cup of tea"))}
    lpips = g.node("PSGLPIPSLoader", net="alex").out(0)
    edit = g.node("PSGEdit", model=ck.out(0), vae=ck.out(2), image=a.out(0), lpips=lpips,
                  steps=3, scheduler="simple", w_source=0.0, w_edit=3.0, text_optimization="negative-prompt",
                  inner_steps=1, scale=1.0, start=0.0, end=1.0, seed=0, **conds)
    plot = g.node("PSGLossPlot", losses=edit.out(2), width=320, height=200, title="loss", log_scale=True)
    preview = g.node("PreviewImage", images=plot.out(0))
    result = comfy_host.run(g.finalize())
    image = result.output(grid.id)
    assert tuple(image.shape) == (1, *plots.grid_size(SIZE, SIZE), 3)
    src = torch.from_numpy(_arr(comfy_host, files["src"])).float()
    panel = image[0, plots.LABEL_HEIGHT:, :SIZE]
    assert torch.allclose(panel, src, atol=1 / 255 + 1e-6)
    losses = result.output_list(edit.id, 2)
    assert len(losses) >= 1 and all(isinstance(v, float) for v in losses)
    assert tuple(result.output(plot.id).shape) == (1, 200, 320, 3)
    assert result.ui[preview.id]["images"]


def test_host_metrics_nodes_structure_distance_is_pie_benchs(comfy_host, files, tmp_path: Path) -> None:
    """What PSG Image Metrics reports as structure_distance (the pack as ComfyUI loaded it, with its
    own ``<pack>.psg_eval``) equals ``python -m psg_eval``'s on the same 8-bit images (RANDOM-weight
    DINO-shaped ViT: plumbing, not meaning); no model = unavailable."""
    from psg_testing.pie_mini import save_random_dino

    from psg_eval import dino

    weights = save_random_dino(tmp_path / "dino")
    pipeline = comfy_host.pack_module().nodes.pipelines.metrics
    src, outside = (torch.from_numpy(_arr(comfy_host, files[k])).float().permute(2, 0, 1)[None]
                    for k in ("src", "outside"))
    as_uint8 = [(_arr(comfy_host, files[k]) * 255).round().astype(np.uint8) for k in ("src", "outside")]
    reference = dino.structure_distance(dino.load_dino(weights), as_uint8[1], as_uint8[0])
    assert reference > 0
    assert pipeline.structure_distance(weights.parent, src, outside) == pytest.approx(reference, rel=1e-5)
    assert pipeline.structure_distance(weights, src, src) == pytest.approx(0.0, abs=1e-12)
    assert pipeline.structure_distance(None, src, outside) is None


@pytest.mark.parametrize("node_id", ["PSGImageMetrics", "PSGCLIPScore", "PSGCompareGrid", "PSGLossPlot"])
def test_host_metrics_nodes_registered_with_tooltips(comfy_host, node_id: str) -> None:
    cls = comfy_host.node_class(node_id)
    inputs = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) and all(cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY.startswith("PSG")
