"""PSG DDIM Inversion: a real image's latent run backwards to noise under its caption."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from . import host, validation
from .pipelines.inversion import invert, latent_samples
from .psg_types import PSGInversionType

logger = logging.getLogger(__name__)


REFINE_TOOLTIP = (
    "Fixed-point refinement: k extra model passes per step, solving each step so that plain DDIM sampling "
    "retraces it ((steps - 1) x k extra passes: k = 2 at 50 steps is 148 passes instead of 50). 0 = off, the "
    "standard one-pass inversion. Measured on an exact test model with ComfyUI's SD1.5 / SD3 50-step "
    "schedules, k = 2 cuts the round-trip error 16x / 59x, leaving null-text or offsets less to correct."
)


class PSGDDIMInversion(io.ComfyNode):
    """DDIM-inverts a real image's latent under its caption (deterministic, eta = 0)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PSGDDIMInversion",
            display_name="PSG DDIM Inversion",
            category="PSG/inversion",
            description=(
                "Runs DDIM backwards from a real image's latent to noise under its caption (the source "
                "prompt). The trajectory lets the PSG guider and sampler rebuild the image and edit it."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.x, SD2.x, SDXL, SD3 or Flux) used "
                                                "for inversion and editing."),
                io.Latent.Input("latent", tooltip="The real image's latent, from VAE Encode."),
                io.Conditioning.Input("source", tooltip="The caption of the real image (source prompt), from "
                                                        "CLIP Text Encode."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps; sample with the same number. 50 as in the paper; 20-30 is "
                                     "faster and usually fine."),
                io.Combo.Input("scheduler", options=host.SCHEDULERS, default=host.DEFAULT_SCHEDULER,
                               tooltip="Sigma schedule; sample with the same one. 'simple' (or ddim_uniform) "
                                       "matches DDIM."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Guidance during inversion; 1 (no guidance) is the standard, most "
                                       "faithful choice. Other values need 'null'."),
                io.Conditioning.Input("null", optional=True,
                                      tooltip="Empty-prompt conditioning, only used when cfg is not 1."),
                io.Int.Input("refine", default=0, min=0, max=10, optional=True, tooltip=REFINE_TOOLTIP),
            ],
            outputs=[
                PSGInversionType.Output(display_name="inversion",
                                        tooltip="The inversion trajectory (latents, sigmas, model family) "
                                                "for the PSG optimizer, guider, sampler and save nodes."),
                io.Latent.Output(display_name="noise",
                                 tooltip="The inverted noise latent; sample from it with noise disabled to "
                                         "rebuild or edit the image. On flow models (SD3/Flux) use the PSG "
                                         "Perceptual Sampler: a stock sampler with Disable Noise starts them "
                                         "from 0."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        cfg: float | None = None,
    ) -> bool | str:
        # the pack's number widgets, checked before anything runs (NaN / inf / range)
        return validation.check_number_inputs(cls, locals())

    @classmethod
    def execute(cls, model, latent, source, steps, scheduler, cfg, null=None, refine=0) -> io.NodeOutput:
        node = "PSG DDIM Inversion"
        samples = latent_samples(latent, node)
        host.embedding_of(source, "source", node)
        inv, noise = invert(model, samples, source, steps=steps, scheduler=scheduler, cfg=cfg, null=null,
                            node=node, fixed_point_iters=refine or 0)
        logger.info("PSG inversion: %s", inv.describe())
        return io.NodeOutput(inv, {"samples": noise})
