"""Working sizes for any photo: aspect kept, sides multiples of the latent factor, resampling
that averages on the way down and returns to the photo's exact size on the way back."""

from __future__ import annotations

import pytest
import torch

from psg_core.sizing import resize, working_size


@pytest.mark.parametrize(("photo", "long_side", "multiple", "expected"), [
    ((4032, 3024), 512, 8, (512, 384)),      # phone photo, SD1.5
    ((3024, 4032), 1024, 16, (768, 1024)),   # portrait, Flux / SD3
    ((451, 300), 512, 8, (512, 344)),        # 300 * 512 / 451 = 340.6 -> 344
    ((741, 500), 0, 8, (744, 504)),          # 0 keeps the scale, only rounds
    ((8, 8), 512, 8, (512, 512)),            # tiny photos are brought up
    ((256, 8), 512, 8, (512, 16)),
])
def test_core_working_size(photo, long_side, multiple, expected):
    width, height = working_size(*photo, long_side, multiple)
    assert (width, height) == expected
    assert width % multiple == 0 and height % multiple == 0
    if long_side:
        assert abs(width / height - photo[0] / photo[1]) <= 2 * multiple / min(expected)


def test_core_working_size_refuses_empty_images():
    with pytest.raises(ValueError, match="no pixels"):
        working_size(0, 10, 512, 8)


def test_core_resize_averages_when_shrinking_and_restores_the_size():
    # a one-pixel checkerboard is mid grey at any smaller scale: plain bilinear would alias it
    board = (torch.arange(64)[:, None] + torch.arange(96)[None, :]) % 2
    image = board.float().expand(1, 3, 64, 96).contiguous()
    small = resize(image, 24, 16)
    assert small.shape == (1, 3, 16, 24)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)
    back = resize(small, 96, 64)
    assert back.shape == image.shape and float(back.min()) >= 0 and float(back.max()) <= 1
    assert resize(image, 96, 64) is image
