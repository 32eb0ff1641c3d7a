"""Perceptual similarity guidance: the hook's step rule, window, losses, masks, memory options,
and LPIPS itself on real photos. LPIPS here has a random backbone (``pnet_rand=True``, no weights
can be downloaded) with the packaged linear heads: it is a fixed deep-feature distance, not the
calibrated metric, which is enough for the properties tested."""

from __future__ import annotations

import math

import lpips
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from psg_testing.perceptual_scenario import CountBackward, build_scene, instrumented, make_decoder

from psg_core.losses import ImageLoss
from psg_core.perceptual import PerceptualGuidance
from psg_core.spaces import NoiseSpace


@pytest.fixture(scope="module")
def lpips_alex() -> lpips.LPIPS:
    torch.manual_seed(0)
    return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)


def mse(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (image - reference).pow(2).mean()


def photo(name: str, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    x = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=size, mode="area")


def call_hook(hook: PerceptualGuidance, x0: torch.Tensor, *, step: int = 0, total: int = 10,
              predict=None) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = torch.full((x0.shape[0],), 2.0)
    eps = torch.randn_like(x0)
    return hook(step=step, total=total, x=x0 + 2.0 * eps, sigma=sigma, sigma_next=sigma / 2, x0_hat=x0,
                eps_hat=eps, predict=predict or (lambda x: pytest.fail("predict called on the MPGD path")),
                space=None)


# ----------------------------------------------------------------------------- the MPGD step
def test_mpgd_step_descends_the_loss_with_the_normalised_length():
    decode = make_decoder(factor=2)
    torch.manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8)
    reference = torch.rand(1, 3, 16, 16)
    hook = PerceptualGuidance(decode, reference, loss=mse, scale=2.0)
    new_x0, new_eps = call_hook(hook, x0, total=10)
    assert mse(decode(new_x0), reference) < mse(decode(x0), reference)
    # per sample, the move is scale * every / total of rms(x0_hat)
    rms = lambda t: t.pow(2).flatten(1).mean(1).sqrt()  # noqa: E731
    torch.testing.assert_close(rms(new_x0 - x0), 2.0 / 10 * rms(x0))
    assert hook.losses == [pytest.approx(float(mse(decode(x0), reference)))]


def test_step_does_not_depend_on_loss_magnitude_or_latent_scale():
    decode = make_decoder(factor=2)
    torch.manual_seed(2)
    x0 = torch.randn(1, 4, 8, 8)
    reference = torch.rand(1, 3, 16, 16)
    moves = []
    for loss_mult in (1.0, 1000.0):
        hook = PerceptualGuidance(decode, reference, loss=lambda i, r, k=loss_mult: k * mse(i, r), scale=1.0)
        moves.append(call_hook(hook, x0)[0] - x0)
    torch.testing.assert_close(moves[0], moves[1])
    # a decoder that undoes a latent scale c sees the same problem: the step scales with c
    c = 5.0
    hook = PerceptualGuidance(lambda z: decode(z / c), reference, loss=mse, scale=1.0)
    torch.testing.assert_close(call_hook(hook, c * x0)[0] - c * x0, c * moves[0])


def test_repeats_take_more_steps_and_keep_descending():
    decode = make_decoder(factor=2)
    torch.manual_seed(3)
    x0 = torch.randn(1, 4, 8, 8)
    reference = torch.rand(1, 3, 16, 16)
    results = [call_hook(PerceptualGuidance(decode, reference, loss=mse, scale=1.0, repeats=r), x0)[0]
               for r in (1, 3)]
    assert mse(decode(results[1]), reference) < mse(decode(results[0]), reference)


def test_dps_step_differentiates_the_model_once_per_repeat_and_moves_x_next_in_full():
    decode = make_decoder(factor=2)
    torch.manual_seed(4)
    weight = torch.randn(4, 4) / 2  # a differentiable stand-in denoiser: channel mixing, shrunk by sigma
    predict_calls = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        predict_calls.append(x.requires_grad)
        return torch.einsum("oc,bchw->bohw", weight, x) / (1 + 2.0 ** 2)

    x = torch.randn(1, 4, 8, 8) * 2
    reference = torch.rand(1, 3, 16, 16)
    sigma = torch.tensor([2.0])
    x0_hat = predict(x).detach()
    eps_hat = (x - x0_hat) / 2.0
    hook = PerceptualGuidance(decode, reference, loss=mse, scale=1.0, through_model=True)
    x0, eps = hook(step=0, total=10, x=x, sigma=sigma, sigma_next=sigma / 2, x0_hat=x0_hat,
                   eps_hat=eps_hat, predict=predict, space=NoiseSpace.VE)
    assert predict_calls[1:] == [True]  # one differentiable call per repeat
    assert torch.equal(eps, eps_hat)  # VE: a(s') = 1, so x_next moves by exactly x0 - x0_hat
    moved = x + (x0 - x0_hat)  # the DPS step at x_t, carried to x_next in full
    assert mse(decode(predict(moved)), reference) < mse(decode(predict(x)), reference)
    rms = (x0 - x0_hat).pow(2).mean().sqrt()
    torch.testing.assert_close(rms, 0.1 * x0_hat.pow(2).mean().sqrt())


def test_window_every_and_loss_record():
    decode = make_decoder(factor=2)
    hook = PerceptualGuidance(decode, torch.rand(1, 3, 16, 16), loss=mse, start=0.2, end=0.7, every=2)
    assert [i for i in range(10) if hook.is_guided(i, 10)] == [2, 4, 6]
    x0 = torch.randn(1, 4, 8, 8)
    for run in range(2):  # a second run starts a fresh record at step 0
        for i in range(10):
            out, _ = call_hook(hook, x0, step=i, total=10)
            assert torch.equal(out, x0) != hook.is_guided(i, 10)
        assert len(hook.losses) == 10, run
        assert [i for i, v in enumerate(hook.losses) if not math.isnan(v)] == [2, 4, 6]
    assert not any(PerceptualGuidance(decode, torch.rand(1, 3, 16, 16), loss=mse, scale=0).is_guided(i, 10)
                   for i in range(10))


def test_inference_tensors_in_inference_mode_are_accepted():
    decode = make_decoder(factor=2)
    with torch.inference_mode():
        x0 = torch.randn(1, 4, 8, 8)
        reference = torch.rand(1, 3, 16, 16)
        hook = PerceptualGuidance(decode, reference, loss=mse)
        out, _ = call_hook(hook, x0)
    assert not torch.equal(out, x0)


def test_checkpointed_decode_gives_the_same_step():
    decode = make_decoder(factor=2)
    x0 = torch.randn(1, 4, 8, 8)
    reference = torch.rand(1, 3, 16, 16)
    plain = call_hook(PerceptualGuidance(decode, reference, loss=mse), x0)[0]
    checked = call_hook(PerceptualGuidance(decode, reference, loss=mse, checkpoint=True), x0)[0]
    torch.testing.assert_close(plain, checked)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": -1.0}, "scale"),
    ({"start": 0.8, "end": 0.2}, "start"),
    ({"every": 0}, "every"),
    ({"loss_scale": 0.0}, "loss_scale"),
    ({"mse_weight": -1.0}, "mse_weight"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerceptualGuidance(make_decoder(factor=2), torch.rand(1, 3, 16, 16), loss=mse, **kwargs)


def test_non_scalar_loss_raises():
    hook = PerceptualGuidance(make_decoder(factor=2), torch.rand(1, 3, 16, 16), loss=lambda i,
                              r: (i - r).pow(2))
    with pytest.raises(ValueError, match="scalar"):
        call_hook(hook, torch.randn(1, 4, 8, 8))


def test_bad_reference_raises():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PerceptualGuidance(make_decoder(factor=2), torch.rand(1, 3, 16, 16) * 2 - 1, loss=mse)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        PerceptualGuidance(make_decoder(factor=2), torch.rand(3, 16, 16), loss=mse)


# ----------------------------------------------------------------------------- the loss
def test_lpips_loss_maps_to_minus_one_one(lpips_alex):
    a, b = photo("chelsea"), photo("coffee")
    expected = lpips_alex(a, b, normalize=True).mean()
    torch.testing.assert_close(ImageLoss(lpips_alex)(a, b), expected)


def test_mask_blocks_the_image_gradient_in_the_edited_region(lpips_alex):
    reference = photo("chelsea", (64, 64))
    image = photo("coffee", (64, 64)).requires_grad_(True)
    mask = torch.zeros(64, 64)
    mask[16:48, 8:40] = 1  # the edited region
    for loss in (ImageLoss(lpips_alex, mask=mask), ImageLoss(lpips_alex, mask=mask, mse_weight=1.0),
                 ImageLoss(mse, mask=mask)):
        (grad,) = torch.autograd.grad(loss(image, reference), image)
        assert grad[..., 16:48, 8:40].abs().max() == 0
        assert grad[..., :16, :].abs().mean() > 0


def test_reduced_resolution_loss_tracks_the_full_one(lpips_alex):
    reference = photo("chelsea", (128, 128))
    noisy = (reference + 0.1 * torch.randn_like(reference)).clamp(0, 1)
    blurred = TF.gaussian_blur(reference, [9, 9], [3.0, 3.0])
    for loss in (ImageLoss(lpips_alex), ImageLoss(lpips_alex, loss_scale=0.5)):
        assert loss(reference, reference) == 0
        assert loss(noisy, reference) > 0 and loss(blurred, reference) > 0
    with pytest.raises(ValueError, match="at least"):
        ImageLoss(lpips_alex, loss_scale=0.1)(reference, reference)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_lpips_on_real_photos_is_zero_on_itself_and_grows_with_noise_and_blur(lpips_alex, name):
    x = photo(name)
    loss = ImageLoss(lpips_alex)
    assert loss(x, x).item() == 0
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=generator)
    by_noise = [loss((x + s * noise).clamp(0, 1), x).item() for s in (0.02, 0.05, 0.1, 0.2)]
    by_blur = [loss(TF.gaussian_blur(x, [k, k], [k / 3, k / 3]), x).item() for k in (3, 5, 9, 15)]
    assert by_noise == sorted(by_noise) and by_noise[0] > 0
    assert by_blur == sorted(by_blur) and by_blur[0] > 0


def test_masked_step_leaves_the_edited_latents_alone_up_to_decoder_leakage(lpips_alex):
    """Image-space gradient is exactly 0 where mask = 1; the latent step leaks only through the
    decoder's footprint (here bilinear 2x upsampling: one latent pixel at the border)."""
    decode = make_decoder(factor=2)
    torch.manual_seed(5)
    x0 = torch.randn(1, 4, 32, 32)
    reference = photo("chelsea", (64, 64))
    mask = torch.zeros(64, 64)
    mask[16:48, 8:40] = 1  # latent rows 8:24, cols 4:20
    hook = PerceptualGuidance(decode, reference, loss=lpips_alex, mask=mask, mse_weight=1.0)
    move = (call_hook(hook, x0)[0] - x0).abs().sum(1)[0]
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 4:20] = True
    interior = torch.zeros_like(inside)
    interior[9:23, 5:19] = True
    assert move[interior].max() == 0
    assert move[~inside].mean() > 0
    leakage = float(move[inside].sum() / move.sum())
    assert leakage < 0.1, leakage


# ----------------------------------------------------------------------------- end to end (analytic model)
@pytest.fixture(scope="module")
def scene():
    return build_scene(steps=50)


def losses_under_test(lpips_alex) -> dict:
    return {"mse": mse, "lpips": ImageLoss(lpips_alex)}


@pytest.mark.parametrize("through_model", [False, True])
@pytest.mark.parametrize("loss_name", ["mse", "lpips"])
def test_guidance_pulls_toward_the_photo_more_as_scale_rises_but_keeps_the_edit(
        scene, lpips_alex, loss_name, through_model):
    loss = losses_under_test(lpips_alex)[loss_name]
    unguided = scene.sample()
    assert scene.edit_weight(unguided) > 0.99 and scene.edit_retained(unguided) > 0.9  # the edit happened
    scales = [0.25, 0.5, 1.0, 2.0]
    results = [scene.sample(scene.guide(loss, scale=s, through_model=through_model)) for s in scales]
    distances = [scene.distance(r, loss) for r in results]
    assert distances[0] < scene.distance(unguided, loss)
    assert distances == sorted(distances, reverse=True) and len(set(distances)) == len(distances), distances
    default = scene.sample(scene.guide(loss, through_model=through_model))
    assert scene.distance(default, loss) < 0.6 * scene.distance(unguided, loss)
    assert scene.edit_weight(default) > 0.5 and scene.edit_retained(default) > 0.5


def test_mpgd_never_differentiates_the_denoiser_and_dps_does(scene):
    for through_model, window in ((False, {}), (True, {}), (True, {"start": 0.5, "every": 5})):
        hook = scene.guide(mse, through_model=through_model, **window)
        CountBackward.count = 0
        before = scene.model.calls
        scene.sample(hook, denoise=instrumented(scene.model))
        guided = sum(not math.isnan(v) for v in hook.losses)
        assert len(hook.losses) == 50 and guided == (50 if not window else 5)
        assert CountBackward.count == (guided if through_model else 0)
        assert scene.model.calls - before == 50 + (guided if through_model else 0)


@pytest.mark.parametrize("through_model", [False, True])
def test_masked_region_is_not_pulled(scene, lpips_alex, through_model):
    """mask = 1 on the left half (latent columns 0-3): the right half is pulled, the left is not.

    Measured (alex, random backbone, scale 1): MPGD puts 5% of its latent moves in the masked
    columns, all in the border column (interior exactly 0); DPS 21% (the model's Jacobian couples
    pixels). Either way the masked half's distance to the photo moves < 1%, the kept half's 14%.
    """
    mask = torch.zeros(32, 32)
    mask[:, :16] = 1
    masked, kept = slice(0, 4), slice(4, 8)
    moves = []
    hook = scene.guide(lpips_alex, mask=mask, through_model=through_model)

    def recorded(**kw):
        x0, eps = hook(**kw)
        moves.append((x0 - kw["x0_hat"]).abs() + kw["sigma"] * (eps - kw["eps_hat"]).abs())
        return x0, eps

    base, out = scene.sample(), scene.sample(recorded)
    total = torch.stack(moves).sum((0, 1, 2, 3))  # per latent column
    if not through_model:
        assert total[:3].max() == 0
        assert float(total[masked].sum() / total.sum()) < 0.1
    assert abs(scene.region_error(out, masked) / scene.region_error(base, masked) - 1) < 0.02
    assert scene.region_error(out, kept) < 0.95 * scene.region_error(base, kept)
    unmasked = scene.sample(scene.guide(lpips_alex, through_model=through_model))
    assert scene.region_error(unmasked, masked) < 0.95 * scene.region_error(base, masked)


def test_one_scale_means_the_same_at_any_step_count():
    """30 and 100 steps. (With the rescaled inversion input, 20- and 25-step runs of this bimodal
    scene tip into another mixture component under guidance: a mode switch of the coarse
    schedule, not a change of the step rule.)"""
    relative = []
    for steps in (30, 100):
        scene = build_scene(steps=steps)
        out = scene.sample(scene.guide(mse, scale=1.0))
        relative.append(scene.distance(out, mse) / scene.distance(scene.sample(), mse))
    assert relative[0] < 0.5 and abs(relative[0] - relative[1]) < 0.05, relative
