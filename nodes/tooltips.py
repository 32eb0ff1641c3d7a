"""Tooltips more than one node declares."""

from __future__ import annotations

GUIDANCE_VAE_TOOLTIP = (
    "Optional: a small VAE used ONLY for the perceptual gradient, e.g. Load VAE (VAELoader) -> taesd "
    "(SD1.x/2.x), taesdxl (SDXL), taesd3 (SD3), taef1 (Flux): a guided step then costs about 1.1x a plain "
    "step instead of 2-3x. The final image always decodes with the main VAE. Unconnected: the main VAE is "
    "used."
)
GUIDANCE_RESOLUTION_TOOLTIP = (
    "Decode the x0 estimate and measure LPIPS at full, half or quarter resolution (the latent is downscaled "
    "before decoding; reference and mask follow). 1/2 is cheaper with a full VAE and keeps the broad look; "
    "the result itself is always full size."
)

