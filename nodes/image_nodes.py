"""PSG Fit Image: any photo (huge, tiny, odd-sided, grey, RGBA) to the size a model family works at.

ComfyUI's own scale nodes keep the aspect ratio (Image Scale To Max Dimension, Image Scale To
Total Pixels) but round sides to 1 px, which the VAE refuses; this node rounds them to the
family's latent multiple, resizes the mask the same way, and outputs the size to scale the result
back to (wired into core's Image Scale after the edit)."""

from __future__ import annotations

from enum import Enum

import torch
from comfy_api.latest import io

from ..psg_core.sizing import MIN_SIDE, resize, working_size
from . import host

NODE = "PSG Fit Image"
FIT_UI_KEY = "psg_fit"
"""History key of the sizes PSG Fit Image reports (the photo's and the working size)."""


class OutputSize(str, Enum):
    """What the edited image is scaled to by the Image Scale node fed from this node."""

    PHOTO = "photo size"
    WORKING = "working size"


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) with 1 (grey), 2 (grey + alpha), 3 or 4 (RGBA) channels -> (B, 3, H, W)."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{NODE}: expected an IMAGE (batch, height, width, channels), got "
                         f"{getattr(image, 'shape', type(image).__name__)}.")
    if image.shape[-1] < 3:
        image = image[..., :1].expand(*image.shape[:-1], 3)
    return host.image_to_bchw(image, NODE)


class PSGFitImage(io.ComfyNode):
    """Brings a photo to the model family's working size, so any photo goes in as it is."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGFitImage",
            display_name=NODE,
            category="PSG",
            description=(
                "Scales a photo (any size, grey or RGBA) so its long side is the model's working size "
                "(about 512 for SD1.x, 768 for SD2.x-v, 1024 for SDXL / SD3 / Flux) with both sides a "
                "multiple of the latent factor, keeping the aspect ratio; the mask follows the same resize. "
                "width / height feed an Image Scale after the edit: the photo's size, or 0 x 0 (Image Scale "
                "then leaves the result at working size) when output_size is 'working size'."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The photo, as Load Image gives it (any size)."),
                io.Int.Input("long_side", default=512, min=0, max=8192, step=8, tooltip=(
                    "Working size of the long side: 512 for SD1.x, 768 for SD2.x-v (768 models), 1024 for "
                    "SDXL / SD3 / Flux. 0 keeps the photo's size (only rounds its sides).")),
                io.Int.Input("multiple", default=8, min=8, max=128, step=8, tooltip=(
                    "Both sides are rounded to a multiple of this: 8 (the VAE factor) for SD1.x / SD2.x / "
                    "SDXL, 16 for SD3 / Flux (2x2 patches); 64 is safest for any model.")),
                io.Combo.Input("output_size", options=[s.value for s in OutputSize],
                               default=OutputSize.PHOTO.value, tooltip=(
                                   "What the Image Scale fed by width / height does with the result: back to "
                                   "the photo's size, or keep the working size (width = height = 0).")),
                io.Mask.Input("mask", optional=True, tooltip=(
                    "Optional mask (e.g. Load Image's mask from the mask editor: painted = 1 = free to "
                    "change); resized like the photo, from any size.")),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The photo at working size (RGB)."),
                io.Mask.Output(display_name="mask", tooltip=(
                    "The mask at working size; all 0 (nothing singled out) without a mask input.")),
                io.Int.Output(display_name="width", tooltip=(
                    "Width for Image Scale after the edit: the photo's width, or 0 for 'working size'.")),
                io.Int.Output(display_name="height", tooltip=(
                    "Height for Image Scale after the edit: the photo's height, or 0 for 'working size'.")),
            ],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, long_side: int, multiple: int, output_size: str,
                mask: torch.Tensor | None = None) -> io.NodeOutput:
        pixels = _rgb(image)
        photo_h, photo_w = int(pixels.shape[-2]), int(pixels.shape[-1])
        width, height = working_size(photo_w, photo_h, long_side, multiple)
        if min(width, height) < MIN_SIDE:
            raise ValueError(
                f"{NODE}: the photo is {photo_w}x{photo_h}; at long_side {long_side} its short side would "
                f"be {min(width, height)} px, below the {MIN_SIDE} px the model and LPIPS need. Crop it to a "
                f"less extreme aspect ratio, or raise long_side.")
        fitted = resize(pixels, width, height).movedim(1, -1).contiguous()
        if mask is None:
            fitted_mask = torch.zeros(fitted.shape[0], height, width)
        else:
            as_b1hw = host.mask_to_b1hw(mask, int(mask.shape[-2]), int(mask.shape[-1]))
            fitted_mask = resize(as_b1hw, width, height)[:, 0]
        keep = OutputSize(output_size) is OutputSize.WORKING
        # what was done, for the history: a headless client reports the size the model worked at
        sizes = {"photo": f"{photo_w}x{photo_h}", "working": f"{width}x{height}"}
        return io.NodeOutput(fitted, fitted_mask, 0 if keep else photo_w, 0 if keep else photo_h,
                             ui={FIT_UI_KEY: [sizes]})


NODES = [PSGFitImage]
