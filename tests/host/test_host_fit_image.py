"""PSG Fit Image on real inputs: any photo (huge, odd-sided, grey, RGBA) comes out at the family's
working size with sides a multiple of the latent factor, the mask follows the same resize, and the
size to scale back to is the photo's (or 0 x 0 for 'working size', which core's Image Scale
passes through unchanged); an impossible photo is refused naming the node and the fix."""

from __future__ import annotations

import pytest
import torch

NODE = "PSGFitImage"


def _fit(comfy_host, image: torch.Tensor, long_side: int = 512, multiple: int = 8,
         output_size: str = "photo size", mask: torch.Tensor | None = None):
    return comfy_host.node_class(NODE).execute(image=image, long_side=long_side, multiple=multiple,
                                               output_size=output_size, mask=mask).result


def test_host_fit_image_phone_photo_and_its_mask(comfy_host):
    photo = torch.rand(1, 3024, 4032, 3)
    mask = torch.zeros(3024, 4032)
    mask[:1512, :2016] = 1.0  # top-left quarter free to change
    image, fitted_mask, width, height = _fit(comfy_host, photo, mask=mask)
    assert tuple(image.shape) == (1, 384, 512, 3) and (width, height) == (4032, 3024)
    assert tuple(fitted_mask.shape) == (1, 384, 512)
    assert float(fitted_mask[0, :180, :250].min()) > 0.999 and float(fitted_mask[0, 200:, 270:].max()) < 1e-6
    assert abs(float(image.mean()) - float(photo.mean())) < 0.01  # an average, not a crop


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_host_fit_image_grey_and_alpha_become_rgb(comfy_host, channels):
    image, mask, *_ = _fit(comfy_host, torch.rand(1, 300, 451, channels), long_side=128, multiple=16)
    assert tuple(image.shape) == (1, 80, 128, 3)  # 300 * 128 / 451 = 85.1 -> 80 (x16)
    assert tuple(mask.shape) == (1, 80, 128) and float(mask.abs().max()) == 0.0


def test_host_fit_image_working_size_restores_nothing(comfy_host):
    _, _, width, height = _fit(comfy_host, torch.rand(1, 100, 60, 3), output_size="working size")
    assert (width, height) == (0, 0)
    scale = comfy_host.node_class("ImageScale")()
    result = torch.rand(1, 512, 304, 3)
    (same,) = scale.upscale(result, "lanczos", width, height, "disabled")
    assert same is result  # Image Scale at 0 x 0 leaves the edit at working size


def test_host_fit_image_refuses_a_sliver_with_the_fix(comfy_host):
    with pytest.raises(ValueError, match=r"PSG Fit Image: the photo is 256x8.*16 px.*(Crop|crop)"):
        _fit(comfy_host, torch.rand(1, 8, 256, 3))


def test_host_fit_image_refuses_nan(comfy_host):
    photo = torch.rand(1, 64, 64, 3)
    photo[0, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="PSG Fit Image.*NaN"):
        _fit(comfy_host, photo)
