"""CLIPScore with a tiny random CLIP saved to a temp folder (no weights can be downloaded here).

What is checkable offline: loading from a folder (offline), the [0, 100] range and the
100 * max(cos, 0) formula, and ranking in a constructed case: the projection heads are
solved so that image i's embedding points along text i's (cos 1) and orthogonal to the
other text's (cos 0). That exercises the real tokenizer, preprocessing, towers and
projections end to end; it does not say anything about semantic quality (random towers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from psg_testing.metric_models import save_tiny_clip

from psg_eval.clip_score import OFFLINE_HINT, load_clip_scorer

TEXTS = ("a photo of a tabby cat", "a red cup of coffee")


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(skimage.data, name)().astype(np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_core_clip_score_loads_offline_and_stays_in_range(clip_dir: Path) -> None:
    scorer = load_clip_scorer(clip_dir)
    images = torch.cat([_photo("chelsea")[..., :300, :300], _photo("coffee")[..., :300, :300]])
    scores = scorer.score(images, TEXTS)
    assert scores.shape == (2,)
    assert bool(((scores >= 0) & (scores <= 100)).all())
    # the formula: 100 * max(cos, 0) of the normalised projected embeddings
    cos = (scorer.image_features(images) * scorer.text_features(TEXTS)).sum(-1)
    assert scores.tolist() == pytest.approx((100 * cos.clamp_min(0)).tolist(), abs=1e-4)


def test_core_clip_score_prefers_the_pair_it_was_built_to_match(clip_dir: Path, tmp_path: Path) -> None:
    scorer = load_clip_scorer(clip_dir)
    model = scorer.model
    images = torch.cat([_photo("chelsea")[..., :300, :300], _photo("coffee")[..., :300, :300]])
    pixels = scorer.processor(images=list(images), return_tensors="pt", do_rescale=False)["pixel_values"]
    tokens = scorer.processor(text=list(TEXTS), return_tensors="pt", padding=True)
    with torch.no_grad():
        v = model.vision_model(pixel_values=pixels).pooler_output  # (2, 32) before projection
        t = model.text_model(**tokens).pooler_output
        targets = torch.eye(16)[:2]  # image/text i -> unit vector e_i
        # solve W @ feature_i = e_i (least squares; exact since the two features are independent)
        model.visual_projection.weight.copy_(targets.T @ torch.linalg.pinv(v.T))
        model.text_projection.weight.copy_(targets.T @ torch.linalg.pinv(t.T))
    model.save_pretrained(tmp_path)
    scorer.processor.save_pretrained(tmp_path)

    built = load_clip_scorer(tmp_path)
    cat, coffee = images[:1], images[1:]
    assert float(built.score(cat, TEXTS[0])[0]) == pytest.approx(100.0, abs=1e-2)
    assert float(built.score(coffee, TEXTS[1])[0]) == pytest.approx(100.0, abs=1e-2)
    assert float(built.score(cat, TEXTS[1])[0]) == pytest.approx(0.0, abs=1e-2)
    assert float(built.score(coffee, TEXTS[0])[0]) < float(built.score(coffee, TEXTS[1])[0]) - 50


def test_core_clip_score_missing_folder_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_clip_scorer(tmp_path / "nothing")
    assert OFFLINE_HINT in str(err.value)
    assert str(tmp_path / "nothing") in str(err.value) and "save_pretrained" in str(err.value)
