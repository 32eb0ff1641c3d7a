"""psg_eval.image_metrics against scikit-image and the lpips package on real photos with known
distortions."""

from __future__ import annotations

import io

import lpips
import numpy as np
import pytest
import skimage.data
import skimage.filters
import skimage.metrics
import torch
from PIL import Image

from psg_eval import dino
from psg_eval import image_metrics as metrics

PHOTOS = ("chelsea", "coffee", "astronaut")


def _photo(name: str, size: int = 192) -> np.ndarray:
    """A float64 HWC crop in [0, 1] (crops keep the suite fast; still real image content)."""
    img = getattr(skimage.data, name)()[:size, :size].astype(np.float64) / 255.0
    return img


def _noise(img: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.clip(img + rng.normal(0.0, 0.05, img.shape), 0.0, 1.0)


def _blur(img: np.ndarray) -> np.ndarray:
    return skimage.filters.gaussian(img, sigma=2.0, channel_axis=-1)


def _jpeg(img: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, format="JPEG", quality=20)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0


def _quantise(img: np.ndarray) -> np.ndarray:
    return np.round(img * 7) / 7


DISTORTIONS = {"noise": _noise, "blur": _blur, "jpeg": _jpeg, "quantise": _quantise}


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double()


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False, data_range=1.0, channel_axis=-1)


@pytest.fixture(scope="module")
def alex() -> lpips.LPIPS:
    torch.manual_seed(0)
    return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("distortion", sorted(DISTORTIONS))
def test_core_metrics_psnr_ssim_mse_match_skimage(photo: str, distortion: str) -> None:
    a = _photo(photo)
    b = DISTORTIONS[distortion](a)
    assert not np.allclose(a, b)
    ours_psnr = float(metrics.psnr(_t(a), _t(b))[0])
    ours_ssim = float(metrics.ssim(_t(a), _t(b))[0])
    ours_mse = float(metrics.mse(_t(a), _t(b))[0])
    assert ours_psnr == pytest.approx(skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-5)
    assert ours_ssim == pytest.approx(_sk_ssim(a, b), abs=1e-6)
    assert ours_mse == pytest.approx(skimage.metrics.mean_squared_error(a, b), rel=1e-5)


def test_core_metrics_batch_items_are_independent_and_ordered() -> None:
    a = _photo("coffee", 96)
    distorted = [DISTORTIONS[k](a) for k in sorted(DISTORTIONS)]
    batch = torch.cat([_t(d) for d in distorted])
    got = metrics.ssim(_t(a), batch)  # batch 1 broadcasts against batch 4
    want = [_sk_ssim(a, d) for d in distorted]
    assert got.shape == (4,)
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # stronger degradation -> lower SSIM: noise sigma 0.05 vs 0.2
    rng = np.random.default_rng(1)
    mild, strong = (np.clip(a + rng.normal(0, s, a.shape), 0, 1) for s in (0.05, 0.2))
    s = metrics.ssim(_t(a), torch.cat([_t(mild), _t(strong)]))
    assert s[0] > s[1]


@pytest.mark.parametrize("photo", PHOTOS)
def test_core_metrics_lpips_matches_the_package(photo: str, alex: lpips.LPIPS) -> None:
    a = _photo(photo, 128)
    for name in ("noise", "blur", "jpeg"):
        b = DISTORTIONS[name](a)
        ta, tb = _t(a).float(), _t(b).float()
        with torch.no_grad():
            want = float(alex(ta * 2 - 1, tb * 2 - 1).flatten()[0])
        assert float(metrics.lpips_distance(alex, ta, tb)[0]) == pytest.approx(want, rel=1e-5, abs=1e-7)
        assert want > 0
    with torch.no_grad():
        same = float(metrics.lpips_distance(alex, _t(a).float(), _t(a).float())[0])
        assert same == pytest.approx(0.0, abs=1e-7)


def _box_mask(h: int, w: int) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    m[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0  # 1 = edited region
    return m


def test_core_metrics_background_ignores_changes_inside_the_mask(alex: lpips.LPIPS) -> None:
    a = _photo("astronaut", 128)
    mask = _box_mask(128, 128)
    inside = a.copy()
    inside[32:96, 32:96] = 1.0 - inside[32:96, 32:96]  # heavy change, only where mask == 1
    ta, tb = _t(a).float(), _t(inside).float()
    assert float(metrics.mse(ta, tb, mask)[0]) == 0.0
    assert float(metrics.psnr(ta, tb, mask)[0]) == metrics.PSNR_CAP
    assert float(metrics.ssim(ta, tb, mask)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.lpips_distance(alex, ta, tb, mask)[0]) == pytest.approx(0.0, abs=1e-7)
    # the whole-image metrics do see it
    assert float(metrics.mse(ta, tb)[0]) > 1e-3
    assert float(metrics.ssim(ta, tb)[0]) < 0.95
    assert float(metrics.lpips_distance(alex, ta, tb)[0]) > 1e-4


def test_core_metrics_background_sees_changes_outside_the_mask(alex: lpips.LPIPS) -> None:
    a = _photo("chelsea", 128)
    mask = _box_mask(128, 128)
    outside = a.copy()
    outside[:20] = _noise(a)[:20]  # rows 0..19 are outside the box
    ta, tb = _t(a), _t(outside)
    keep = 1.0 - mask[0, 0].double().numpy()[..., None]
    # PIE-Bench convention checked independently: skimage on both images times (1 - mask)
    assert float(metrics.psnr(ta, tb, mask)[0]) == pytest.approx(
        skimage.metrics.peak_signal_noise_ratio(a * keep, outside * keep, data_range=1.0), rel=1e-5)
    assert float(metrics.ssim(ta, tb, mask)[0]) == pytest.approx(_sk_ssim(a * keep, outside * keep), abs=1e-6)
    assert float(metrics.mse(ta, tb, mask)[0]) > 0
    assert float(metrics.lpips_distance(alex, ta.float(), tb.float(), mask)[0]) > 1e-5
    # an empty mask is the whole image; the (H, W) and (B, H, W) mask shapes mean the same
    empty = torch.zeros(128, 128)
    assert float(metrics.ssim(ta, tb, empty)[0]) == pytest.approx(float(metrics.ssim(ta, tb)[0]), abs=1e-12)
    assert float(metrics.psnr(ta, tb, mask[:, 0])[0]) == pytest.approx(float(metrics.psnr(ta, tb, mask)[0]))


def test_core_metrics_image_metrics_and_summary(alex: lpips.LPIPS) -> None:
    a = _t(_photo("coffee", 64)).float()
    b = _t(_blur(_photo("coffee", 64))).float()
    without = metrics.image_metrics(a, b)
    assert set(without) == {"mse", "psnr", "ssim", "lpips"}
    assert without["lpips"] is None  # unavailable, not 0
    full = metrics.image_metrics(a, b, _box_mask(64, 64), alex)
    assert {"bg_psnr", "bg_ssim", "bg_lpips", "bg_mse"} <= set(full)
    assert full["bg_psnr"] > full["psnr"]
    text = metrics.format_summary(without)
    assert "lpips: unavailable" in text and f"{without['psnr']:.4f}" in text


def test_core_metrics_identical_images_and_clear_errors() -> None:
    a = _t(_photo("chelsea", 32)).float()
    assert float(metrics.psnr(a, a)[0]) == metrics.PSNR_CAP
    assert float(metrics.ssim(a, a)[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(a, a[..., :16])
    with pytest.raises(ValueError, match="mask is 8x8"):
        metrics.ssim(a, a, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[..., :8, :8], a[..., :8, :8])
    with pytest.raises(ValueError, match="lpips.LPIPS module"):
        metrics.lpips_distance(object(), a, a)
    with pytest.raises(ValueError, match="border"):
        metrics.ssim(a, a, border="zeros")


def test_core_metrics_structure_distance_needs_a_dino_file(tmp_path) -> None:
    assert dino.dino_file(tmp_path / "missing") is None
    assert dino.dino_file(tmp_path) is None  # an empty folder
    with pytest.raises(FileNotFoundError, match=dino.DINO_FILE):
        dino.load_dino(tmp_path)


def test_core_metrics_structure_distance_with_a_tiny_local_vit(tmp_path) -> None:
    """A RANDOM transformers ViT (DINO-shaped, patch 8 at 224 px): the same layout gives 0, a
    flipped one does not."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=1,
                                 intermediate_size=32, image_size=224, patch_size=8, layer_norm_eps=1e-6,
                                 qkv_bias=True)
    transformers.ViTModel(cfg, add_pooling_layer=False).save_pretrained(tmp_path)
    model = dino.load_dino(tmp_path)
    photo = (_photo("chelsea", 96) * 255).round().astype(np.uint8)
    assert dino.structure_distance(model, photo, photo.copy()) == pytest.approx(0.0, abs=1e-10)
    assert dino.structure_distance(model, photo[::-1].copy(), photo) > 1e-6
