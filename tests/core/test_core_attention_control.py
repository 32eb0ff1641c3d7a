"""Prompt-to-prompt maths: token maps, attention edits, LocalBlend and the two-branch sampler
(against the exact analytic denoiser)."""

from __future__ import annotations

import logging

import pytest
import torch
from psg_testing.analytic import AnalyticMixture, inversion_sigmas

from psg_core.attention_control import (
    P2PMode,
    attend,
    attention_probabilities,
    blend_mask,
    cross_window_steps,
    edit_cross_attention,
    find_word,
    local_blend,
    parse_word_weights,
    refinement_map,
    self_window_steps,
    token_map,
    token_weights,
)
from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.losses import ImageLoss
from psg_core.null_text import direct_inversion_offsets, negative_prompt_nulls
from psg_core.spaces import NoiseSpace
from psg_core.two_branch import two_branch_sample

BOS, EOS = 49406, 49407


def test_refinement_map_aligns_equal_tokens_and_leaves_new_words_free() -> None:
    source = [BOS, 10, 20, 30, EOS]
    edit = [BOS, 10, 77, 78, 20, 30, EOS]  # a two-token word inserted after token 10
    m = refinement_map(source, edit, 12)
    assert m.index[:7].tolist() == [0, 1, 0, 0, 2, 3, 4]
    assert m.alpha[:7].tolist() == [1, 1, 0, 0, 1, 1, 1]
    assert m.index[7:].tolist() == list(range(7, 12)) and bool((m.alpha[7:] == 1).all())


def test_word_swap_with_other_token_count_falls_back_to_refinement(caplog: pytest.LogCaptureFixture) -> None:
    source, edit = [BOS, 10, 20, EOS], [BOS, 10, 21, 22, EOS]
    with caplog.at_level(logging.INFO):
        m, mode = token_map(P2PMode.REPLACE, source, edit, 8)
    assert mode is P2PMode.REFINE and "falling back to refinement" in caplog.text
    assert m.alpha[:5].tolist() == [1, 1, 0, 0, 1]
    same, mode = token_map(P2PMode.REPLACE, source, [BOS, 10, 21, EOS], 8)
    assert mode is P2PMode.REPLACE and same.index.tolist() == list(range(8))


def test_find_word_and_weights() -> None:
    tokens = [BOS, 5, 6, 7, 5, 6, EOS]
    assert find_word(tokens, [5, 6]) == [1, 2, 4, 5]
    assert find_word(tokens, [6, 5, 9]) == []
    assert parse_word_weights("tiger:2, striped ,", 1.5) == [("tiger", 2.0), ("striped", 1.5)]
    with pytest.raises(ValueError, match="must be a number"):
        parse_word_weights("tiger:x", 1.0)
    assert token_weights(5, [([1, 2], 3.0)]).tolist() == [1, 3, 3, 1, 1]


def test_windows_follow_prompt_to_prompt_counting() -> None:
    assert cross_window_steps(50, 0.8) == 40 and self_window_steps(50, 0.4) == 20
    assert cross_window_steps(10, 1.0) == 11 and self_window_steps(10, 0.0) == 0


def test_cross_attention_edits() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    probs = attention_probabilities(q, k, heads=2)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 2, 6))
    v = torch.randn(2, 5, 8, generator=g)
    assert torch.allclose(attend(probs, v), torch.nn.functional.scaled_dot_product_attention(
        q.view(2, 6, 2, 4).transpose(1, 2), k.view(2, 5, 2, 4).transpose(1, 2),
        v.view(2, 5, 2, 4).transpose(1, 2)).transpose(1, 2).reshape(2, 6, 8), atol=1e-6)
    src, edit = probs[0], probs[1]
    swap, _ = token_map(P2PMode.REPLACE, [1, 2, 3], [1, 9, 3], 5)
    assert torch.equal(edit_cross_attention(src, edit, swap), src)
    w = token_weights(5, [([2], 2.5)])
    out = edit_cross_attention(src, edit, swap, w)
    assert torch.equal(out[..., 2], src[..., 2] * 2.5)
    assert torch.equal(out[..., [0, 1, 3, 4]], src[..., [0, 1, 3, 4]])
    refine = refinement_map([1, 2, 3], [1, 9, 2, 3], 5)
    out = edit_cross_attention(src, edit, refine)
    assert torch.equal(out[..., 1], edit[..., 1])  # new word keeps its own attention
    assert torch.equal(out[..., 2], src[..., 1]) and torch.equal(out[..., 0], src[..., 0])


def test_blend_mask_and_local_blend_keep_source_outside() -> None:
    src_map = torch.zeros(1, 4, 4)
    src_map[0, 0, 0] = 1.0
    edit_map = torch.zeros(1, 4, 4)
    edit_map[0, 3, 3] = 2.0
    mask = blend_mask(src_map, edit_map, (8, 8), threshold=0.3)
    assert mask.shape == (1, 1, 8, 8)
    # max-pooled 3x3 on the 4x4 map, then nearest x2: top-left and bottom-right 4x4 corners
    assert mask[0, 0, :4, :4].all() and mask[0, 0, 4:, 4:].all() and not mask[0, 0, :4, 4:].any()
    x_src, x_edit = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    out = local_blend(x_src, x_edit, mask)
    outside = (mask == 0).expand_as(out)
    assert torch.equal(out[outside], x_src[outside]) and torch.allclose(
        out[~outside], x_edit[~outside], atol=1e-6)


def test_attention_mask_as_perceptual_mask_zeroes_the_edited_region_gradient() -> None:
    maps = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.1
    maps[0, 2, 5] = 1.0
    mask = blend_mask(maps, None, (32, 32), threshold=0.3)
    assert 0 < mask.mean() < 1
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = ImageLoss(None, mask=mask, mse_weight=1.0)(image, torch.rand(1, 3, 32, 32))
    (grad,) = torch.autograd.grad(loss, image)
    edited = (mask == 1).expand_as(grad)
    assert torch.count_nonzero(grad[edited]) == 0 and torch.count_nonzero(grad[~edited]) > 0


def _branches(model: AnalyticMixture):
    def denoise(xs, sigma, conds):
        return [model(x, sigma, [c])[0] for x, c in zip(xs, conds, strict=True)]
    return denoise


@pytest.mark.parametrize("space", list(NoiseSpace))
def test_two_branch_identity_and_source_reconstruction(space: NoiseSpace) -> None:
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=space, seed=3)
    source, edit = model.component_embedding(0), model.component_embedding(1)
    null = torch.zeros(1, model.dim, dtype=torch.float64)
    x0 = model.sample(1, source, torch.Generator().manual_seed(4))
    sigmas = inversion_sigmas(10, space)
    traj = ddim_invert(model, x0, sigmas, source, space=space)
    scale = 5.0
    offsets = direct_inversion_offsets(model, traj, source, null, guidance_scale=scale)
    reference = ddim_sample(model, traj.noise, sigmas.flip(0), TextGuidance(null, source, edit, scale, 0.0),
                            space=space, offsets=offsets)
    assert torch.allclose(reference, x0, atol=1e-8)
    g = TextGuidance(null, source, edit, -1.0, scale + 1.0)
    out = two_branch_sample(_branches(model), traj.noise, sigmas.flip(0), g, source_scale=scale, space=space,
                            offsets=offsets)
    assert torch.allclose(out.source, reference, atol=1e-10)
    assert (out.edit - out.source).abs().max() > 1e-3  # the edit branch did edit
    # identity: edit prompt = source prompt, same weights, no offsets: both branches agree exactly
    nulls = negative_prompt_nulls(traj, source)
    same = two_branch_sample(_branches(model), traj.noise, sigmas.flip(0),
                             TextGuidance(null, source, source, 0.0, scale),
                             source_scale=scale, space=space, nulls=nulls)
    assert torch.equal(same.edit, same.source)


def test_two_branch_blend_keeps_source_outside_mask_at_every_blended_step() -> None:
    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=NoiseSpace.VE, seed=5)
    source, edit = model.component_embedding(0), model.component_embedding(2)
    null = torch.zeros(1, model.dim, dtype=torch.float64)
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 10
    sigmas = inversion_sigmas(8, NoiseSpace.VE).flip(0)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    seen: list[tuple[int, torch.Tensor]] = []

    def blend(i: int) -> torch.Tensor:
        return mask

    def record(i, n, x, x0):
        seen.append((i, x.clone()))

    steps: list[int] = []
    out = two_branch_sample(_branches(model), x_T, sigmas, TextGuidance(null, source, edit, 0.0, 7.5),
                            source_scale=7.5, blend=blend, blend_start=0.25, callback=record,
                            on_step=lambda i, n, layout: steps.append(layout.source_row))
    assert steps == [3] * 8  # [null, edit] then [null, source]
    plain = two_branch_sample(_branches(model), x_T, sigmas, TextGuidance(null, source, edit, 0.0, 7.5),
                              source_scale=7.5)
    assert torch.equal(plain.source, out.source)
    outside = mask == 0
    assert torch.equal(out.edit[outside.expand_as(out.edit)], out.source[outside.expand_as(out.edit)])
    assert not torch.equal(out.edit, out.source)
    assert len(seen) == 8 and not torch.equal(seen[0][1], seen[0][1] * 0)


def test_two_branch_perceptual_step_leaves_the_attention_masked_region_alone() -> None:
    """The attention mask handed to the perceptual guidance: the x0 correction is exactly zero inside
    (decode is per-pixel here, so the latent gradient is the image gradient)."""
    from psg_core.perceptual import PerceptualGuidance

    model = AnalyticMixture.random(k=3, dim=8, std=0.5, space=NoiseSpace.VE, seed=7)
    source, edit = model.component_embedding(0), model.component_embedding(1)
    null = torch.zeros(1, model.dim, dtype=torch.float64)
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 10
    sigmas = inversion_sigmas(4, NoiseSpace.VE).flip(0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, 4:] = 1

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z[:, :3])

    reference = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    g = TextGuidance(null, source, edit, 0.0, 5.0)
    runs = {}
    for name, scale in (("plain", 0.0), ("guided", 5.0)):
        x0s: list[torch.Tensor] = []
        perceptual = PerceptualGuidance(decode, reference, loss=ImageLoss(None, mse_weight=1.0), scale=scale)
        two_branch_sample(_branches(model), x_T, sigmas, g, source_scale=5.0, perceptual=perceptual,
                          perceptual_mask=lambda i: mask, callback=lambda i, n, x, x0, _s=x0s: _s.append(x0))
        runs[name] = x0s[0]
        if scale:
            assert perceptual.loss.mask is mask
    inside = (mask == 1).expand_as(runs["plain"])
    assert torch.equal(runs["guided"][inside], runs["plain"][inside])
    assert not torch.equal(runs["guided"][~inside], runs["plain"][~inside])
