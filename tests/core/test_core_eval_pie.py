"""psg_eval against values computed independently of it (no host, no dataset).

* the PIE-Bench RLE decoder against a per-pixel loop over (row, column) indices;
* masked PSNR / MSE against numpy by hand, SSIM against torchmetrics (this pack's own SSIM
  against scikit-image), LPIPS
  against the ``lpips`` package's SqueezeNet LPIPS, all on PnPInversion's convention (both
  images multiplied by the mask, the whole image scored);
* structure distance against timm's ViT with torchvision's Resize / Normalize;
* the evaluator end to end on a generated mini set with synthetic edits (one written as a
  wide strip that must be cropped) and a missing-files message.

LPIPS backbones and the DINO ViT here have RANDOM weights (real file names, real
architectures): they check conventions and plumbing, never what the numbers mean.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from psg_testing import pie_mini

from psg_eval import dino, pie_bench
from psg_eval import evaluate as ev
from psg_eval import models as model_files
from psg_eval import pie_metrics as em

SIZE = pie_mini.SIZE


def loop_decode(rle: list[int]) -> np.ndarray:
    """Independent decoder: pixel by pixel, (row, column) from the flat index."""
    mask = np.zeros((SIZE, SIZE))
    for start, length in zip(rle[0::2], rle[1::2], strict=True):
        for p in range(start, start + length):
            if p < SIZE * SIZE:
                mask[p // SIZE, p % SIZE] = 1
    for i in range(SIZE):
        mask[0, i] = mask[SIZE - 1, i] = mask[i, 0] = mask[i, SIZE - 1] = 1
    return mask


# --------------------------------------------------------------------------- RLE masks
@pytest.mark.parametrize("key", list(pie_mini.RECORDS))
def test_core_eval_decode_mask_matches_a_pixel_loop(key):
    rle = pie_mini.RECORDS[key]["mask"]
    assert np.array_equal(pie_bench.decode_mask(rle), loop_decode(rle))


def test_core_eval_decode_mask_run_past_the_end_and_border_rule():
    n = SIZE * SIZE
    # 50 pixels at the end of row 510, then on past the last row and the end of the image
    mask = pie_bench.decode_mask([n - SIZE - 50, 600, 10 * SIZE + 20, 5])
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.float32
    assert mask[-2, -50:].all() and not mask[-2, -51]
    assert mask.sum() == (4 * SIZE - 4) + 5 + 49  # border + short run + row 510 (its last pixel is border)
    assert mask[10, 20:25].all() and not mask[10, 25] and not mask[10, 19]
    empty = pie_bench.decode_mask([])
    assert empty.sum() == 4 * SIZE - 4 and empty[1:-1, 1:-1].sum() == 0  # border forced to "edited"
    with pytest.raises(ValueError, match="pairs"):
        pie_bench.decode_mask([1, 2, 3])


def test_core_eval_layout_crop_and_brackets(tmp_path):
    item = pie_bench.PieItem("k", "1_change_object_80/1.jpg", "a [cat]", "a [dog]", "1", ())
    assert pie_bench.edited_path(tmp_path, "null-text+psg", item) == (
        tmp_path / "null-text+psg" / "annotation_images" / "1_change_object_80" / "1.jpg")
    assert pie_bench.strip_brackets("a [watercolor painting] of [x]") == "a watercolor painting of x"
    strip = np.concatenate([np.full((SIZE, SIZE, 3), v, np.uint8) for v in (10, 20, 30)], axis=1)
    assert np.array_equal(pie_bench.crop_edit(strip), strip[:, -SIZE:])  # the last 512x512 block
    square = np.zeros((SIZE, SIZE, 3), np.uint8)
    assert pie_bench.crop_edit(square) is square
    with pytest.raises(ValueError, match="512x512"):
        pie_bench.crop_edit(np.zeros((100, 300, 3), np.uint8))


# --------------------------------------------------------------------------- masked metrics
@pytest.fixture(scope="module")
def pair() -> em.EditPair:
    rng = np.random.default_rng(0)
    photo = pie_mini.square_sample("chelsea")
    edit = np.clip(photo.astype(int) + rng.integers(-20, 21, photo.shape), 0, 255).astype(np.uint8)
    edit[100:300, 150:350] = rng.integers(0, 256, (200, 200, 3))  # the "edit"
    mask = pie_bench.decode_mask(pie_mini.RECORDS["000000000001"]["mask"])
    return em.EditPair(photo, edit, mask, "a cat lying on a rug", "a tiger lying on a rug")


def by_hand(pair: em.EditPair, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = pair.edit.astype(np.float64) / 255 * keep[..., None]
    b = pair.photo.astype(np.float64) / 255 * keep[..., None]
    return a, b


@pytest.mark.parametrize("part", ["_unedit_part", "_edit_part", ""])
def test_core_eval_masked_psnr_and_mse_by_hand(pair, part):
    keep = {"_unedit_part": 1 - pair.mask, "_edit_part": pair.mask, "": np.ones_like(pair.mask)}[part]
    a, b = by_hand(pair, keep)
    mse = np.mean((a - b) ** 2)  # over the whole 512x512x3, masked-out pixels count as equal
    models = em.MetricModels()
    assert em.pnp_metric(f"mse{part}", pair, models) == pytest.approx(mse, rel=1e-5)
    assert em.pnp_metric(f"psnr{part}", pair, models) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)


def test_core_eval_masked_ssim_matches_torchmetrics_and_skimage(pair):
    from skimage.metrics import structural_similarity
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = by_hand(pair, 1 - pair.mask)
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1)[None] for x in (a, b))
    exact = float(structural_similarity_index_measure(ta, tb, data_range=1.0))  # float64: the formula
    reference = float(structural_similarity_index_measure(ta.float(), tb.float(), data_range=1.0))  # as run
    sk = structural_similarity(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
    ours = em.pnp_metric("ssim_unedit_part", pair, em.MetricModels())
    assert ours == pytest.approx(exact, abs=1e-7)  # inputs rounded to float32 as /255 in PnPInversion
    assert ours == pytest.approx(reference, abs=2e-5)  # torchmetrics in float32, as PnPInversion ran it
    assert 0.3 < ours < 0.999  # a real difference was measured
    # this pack's SSIM is scikit-image's (windows inside the image only): not PnPInversion's number
    pack = em.pack_metrics(pair, em.MetricModels(), ["pack_bg_ssim"])["pack_bg_ssim"]
    assert pack == pytest.approx(sk, abs=2e-5)
    assert abs(pack - ours) > 1e-3


def test_core_eval_masked_lpips_matches_the_lpips_package(pair, tmp_path):
    """RANDOM-WEIGHT SqueezeNet backbone (same file for both sides): conventions, not quality."""
    import lpips

    pie_mini.save_random_squeezenet(tmp_path)
    models = model_files.load({"lpips_squeeze"}, model_files.ModelPaths.under(tmp_path, lpips_dir=tmp_path))
    reference_net = lpips.LPIPS(net="squeeze", pretrained=True, pnet_rand=True, verbose=False).eval()
    state = torch.load(tmp_path / pie_mini.SQUEEZE_FILE, weights_only=True)
    reference_net.net.load_state_dict({k: state["features." + k.split(".", 1)[1]]
                                       for k in reference_net.net.state_dict()})
    for part, keep in (("_unedit_part", 1 - pair.mask), ("_edit_part", pair.mask)):
        a, b = by_hand(pair, keep)
        ta, tb = (torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] for x in (a, b))
        with torch.no_grad():
            reference = float(reference_net(ta * 2 - 1, tb * 2 - 1))
        assert em.pnp_metric(f"lpips{part}", pair, models) == pytest.approx(reference, rel=1e-5, abs=1e-7)
        assert reference > 0


def test_core_eval_empty_part_is_nan(pair):
    full = em.EditPair(pair.photo, pair.edit, np.ones_like(pair.mask), "", "")
    assert math.isnan(em.pnp_metric("psnr_unedit_part", full, em.MetricModels()))
    none = em.EditPair(pair.photo, pair.edit, np.zeros_like(pair.mask), "", "")
    assert math.isnan(em.pnp_metric("mse_edit_part", none, em.MetricModels()))


# --------------------------------------------------------------------------- structure distance
def timm_self_similarity(model, image: np.ndarray, keep: np.ndarray | None) -> torch.Tensor:
    """Independent pipeline: torchvision Resize(224, max_size=480) + Normalize on 0..255 values,
    timm's ViT, the last block's qkv output hooked, keys = its middle third."""
    from torchvision import transforms

    x = image.astype(np.float32) * (1 if keep is None else keep[..., None])
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    t = transforms.Resize(224, max_size=480, antialias=False)(t)
    t = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(t)
    captured = []
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(t)
    hook.remove()
    dim = model.embed_dim
    keys = captured[0][0, :, dim:2 * dim]
    return torch.nn.functional.cosine_similarity(keys[:, None, :], keys[None, :, :], dim=-1)


@pytest.mark.parametrize("masked", [False, True])
def test_core_eval_structure_distance_matches_timm(pair, tmp_path, masked):
    """RANDOM-WEIGHT DINO-shaped ViT (16 wide, 12 blocks, patch 8)."""
    pie_mini.save_random_dino(tmp_path)
    ours_model = dino.load_dino(tmp_path)
    reference_model = pie_mini.random_timm_dino()
    keep = (1 - pair.mask) if masked else None
    a = timm_self_similarity(reference_model, pair.photo, keep)
    b = timm_self_similarity(reference_model, pair.edit, keep)
    assert a.shape == (785, 785)  # CLS + 28 x 28 patches
    reference = float(((a - b) ** 2).mean())
    name = "structure_distance_unedit_part" if masked else "structure_distance"
    ours = em.pnp_metric(name, pair, em.MetricModels(dino=ours_model))
    assert ours == pytest.approx(reference, rel=1e-4)
    assert reference > 0


# --------------------------------------------------------------------------- the evaluator
def write_edits(data, output) -> dict[str, dict[str, np.ndarray]]:
    """Two synthetic methods: 'noisy' (square JPEG) and 'strip' (photo | noise | edit, PNG bytes)."""
    rng = np.random.default_rng(1)
    items = pie_bench.load_mapping(data)
    written: dict[str, dict[str, np.ndarray]] = {"noisy": {}, "strip": {}}
    for item in items:
        photo = pie_bench.read_rgb(pie_bench.photo_path(data, item))
        edit = np.clip(photo.astype(int) + rng.integers(-30, 31, photo.shape), 0, 255).astype(np.uint8)
        path = pie_bench.edited_path(output, "noisy", item)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(edit).save(path)
        written["noisy"][item.key] = pie_bench.read_rgb(path)  # as decoded (JPEG)
        strip = np.concatenate([photo, rng.integers(0, 256, photo.shape, dtype=np.uint8), edit], axis=1)
        path = pie_bench.edited_path(output, "strip", item)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(path, format="PNG")
        written["strip"][item.key] = edit
    return written


def test_core_eval_end_to_end_on_the_mini_set(tmp_path):
    data = pie_mini.write_mini_pie(tmp_path / "data")
    written = write_edits(data, tmp_path / "output")
    models_dir = tmp_path / "models"
    pie_mini.save_random_squeezenet(models_dir / "lpips")
    pie_mini.save_random_dino(models_dir / "dino")
    metrics = ["mse_unedit_part", "psnr_unedit_part", "ssim_unedit_part", "lpips_unedit_part",
               "structure_distance", "pack"]
    from psg_testing.metric_models import save_random_alexnet

    save_random_alexnet(models_dir / "lpips")
    rc = ev.main(["--data", str(data), "--output", str(tmp_path / "output"), "--models", str(models_dir),
                  "--metrics", *metrics, "--device", "cpu", "--out-dir", str(tmp_path / "eval")])
    assert rc == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "evaluation_result.csv", encoding="utf-8")))
    assert [r["file_id"] for r in rows] == list(pie_mini.RECORDS)
    for row in rows:
        rec = pie_mini.RECORDS[row["file_id"]]
        photo = pie_bench.read_rgb(data / "annotation_images" / rec["image_path"]).astype(np.float64) / 255
        keep = 1 - loop_decode(rec["mask"])[..., None]
        for method in ("noisy", "strip"):
            edit = written[method][row["file_id"]].astype(np.float64) / 255
            mse = np.mean((edit * keep - photo * keep) ** 2)
            assert float(row[f"{method}|mse_unedit_part"]) == pytest.approx(mse, rel=1e-5)
            assert float(row[f"{method}|psnr_unedit_part"]) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
            bg = float((1 - loop_decode(rec["mask"])).mean())
            assert float(row[f"{method}|pack_bgavg_mse"]) == pytest.approx(mse / bg, rel=1e-5)
            assert float(row[f"{method}|pack_bg_mse"]) == pytest.approx(mse, rel=1e-5)
    summary = list(csv.DictReader(open(tmp_path / "eval" / "summary.csv", encoding="utf-8")))
    overall = {r["method"]: r for r in summary if r["group"] == "overall"}
    for method in ("noisy", "strip"):
        per_item = [float(r[f"{method}|mse_unedit_part"]) for r in rows]
        assert float(overall[method]["mse_unedit_part"]) == pytest.approx(np.mean(per_item), rel=1e-9)
        assert overall[method]["n"] == "3"
    groups = [r["group"] for r in summary if r["method"] == "noisy"]
    assert groups == ["overall", "random", "change object", "change style"]
    table = (tmp_path / "eval" / "summary.md").read_text()
    assert "| noisy |" in table and "BG PSNR" in table and "### change style" in table


def test_core_eval_missing_models_named_in_one_message(tmp_path, capsys):
    data = pie_mini.write_mini_pie(tmp_path / "data")
    write_edits(data, tmp_path / "output")
    rc = ev.main(["--data", str(data), "--output", str(tmp_path / "output"),
                  "--models", str(tmp_path / "none"), "--metrics", "pnp", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for fragment in ("squeezenet1_1-b8a52dc0.pth", "dino_vitbase8_pretrain.pth", "config.json",
                     "model.safetensors or pytorch_model.bin", "preprocessor_config.json"):
        assert fragment in err, err
    assert err.count("\n  - ") == 6, err


# --------------------------------------------------------------------------- packaging and runner
def test_core_eval_never_imports_comfy():
    """Evaluation code runs without ComfyUI: importing it (and the runner's helpers) loads no comfy module."""
    import subprocess
    import sys

    code = ("import sys; import psg_eval.evaluate, psg_eval.models, psg_eval.dino, psg_eval.pie_metrics, "
            "psg_eval.report, psg_eval.plots, psg_eval.clip_score, psg_eval.image_metrics; "
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'comfy_'))]; "
            "assert not bad, bad; print('clean')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=pie_mini.Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr


def load_runner():
    import importlib.util
    import sys

    path = pie_mini.Path(__file__).resolve().parents[2] / "benchmarks" / "pie_bench.py"
    spec = importlib.util.spec_from_file_location("pie_bench_runner", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_core_eval_runner_methods_and_layout_file(tmp_path):
    runner = load_runner()
    assert len(runner.ALL_METHODS) == 12
    m = runner.Method.parse("negative-prompt+psg-mask")
    assert (m.text_optimization, m.perceptual, m.masked) == ("negative-prompt", True, True)
    assert runner.Method.parse("ddim-cfg").sets(2.0) == [
        "PSG Edit.text_optimization=none", "PSG Edit.scale=0"]
    assert runner.Method.parse("direct-offsets+psg").sets(2.0) == [
        "PSG Edit.text_optimization=direct offsets", "PSG Edit.scale=2.0"]
    assert runner.Method.parse("null-text+psg").sets(None) == [
        "PSG Edit.text_optimization=null-text optimization"]
    with pytest.raises(runner.CliError, match="unknown method 'p2p'"):
        runner.Method.parse("p2p")
    with pytest.raises(SystemExit):  # the CLI's prompt-to-prompt flags are refused, not silently ignored
        runner.main(["--data", str(tmp_path), "--p2p", "refine"])
    small = tmp_path / "edit.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(small)
    dest = tmp_path / "out" / "m" / "annotation_images" / "0_random_140" / "1.jpg"
    runner.write_layout(small, dest)
    with Image.open(dest) as img:
        assert img.format == "JPEG" and img.size == (512, 512)
    assert [p.name for p in dest.parent.iterdir()] == ["1.jpg"]  # no temporary file left


def test_core_eval_dino_from_a_transformers_folder(tmp_path):
    """A RANDOM transformers ViT (DINO-shaped) saved with save_pretrained loads as the DINO network:
    its last-block keys equal those transformers' own forward computes (hooked key projection)."""
    import transformers

    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=1,
                                 intermediate_size=32, image_size=224, patch_size=8, layer_norm_eps=1e-6,
                                 qkv_bias=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
        for p in reference.parameters():
            torch.nn.init.normal_(p, std=0.2)
    reference.save_pretrained(tmp_path)
    ours = dino.load_dino(tmp_path)
    last = reference.encoder.layer[-1] if hasattr(reference, "encoder") else reference.layers[-1]
    key_proj = next(m for n, m in last.named_modules() if n.split(".")[-1] in ("key", "k_proj"))
    captured = []
    hook = key_proj.register_forward_hook(lambda m, i, o: captured.append(o))
    pixels = dino.dino_pixels(pie_mini.square_sample("coffee"))
    with torch.no_grad():
        reference(pixel_values=pixels)
        keys = ours.last_keys(pixels)
    hook.remove()
    assert keys.shape == (1, 785, 16)
    torch.testing.assert_close(keys, captured[0], rtol=1e-4, atol=1e-4)
