"""The graphs users run compute what the core computes.

On tiny models of every family, through ComfyUI's real executor: the advanced graph (PSG
Triple-Prompt Guider + PSG Perceptual Sampler in SamplerCustomAdvanced, Disable Noise) and the
one-node PSG Edit give the same latent as ``psg_core.ddim_sample`` driven directly through the host
denoiser (``nodes.host.run_on_host``) with the inversion's nulls / offsets, for every text mode and
both gradient paths, to float32 rounding. Few steps and a small latent keep it fast.
"""

from __future__ import annotations

import logging

import node_helpers
import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from psg_testing.cli_support import write_photo
from psg_testing.tiny_models import FAMILIES

logger = logging.getLogger(__name__)

STEPS = 3
SIZE = 64
W_SOURCE, W_EDIT = 1.0, 2.0
FIT_SCALE = W_SOURCE + W_EDIT
INNER_STEPS = 2
SCALE = 1.0
MODES = ("none", "null-text optimization", "negative-prompt", "direct offsets")
GRADIENTS = {"x0 (fast)": False, "through model (DPS)": True}


@pytest.fixture(scope="module")
def photo(comfy_host) -> str:
    name = "psg_equals_core.png"
    write_photo(comfy_host.base_dir / "input" / name, SIZE, "astronaut", crop=False)
    return name


def build_graph(family: str, photo: str):
    g = GraphBuilder(prefix="")
    ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
    text = {name: g.node("CLIPTextEncode", clip=ck.out(1), text=t)
            for name, t in (("null", ""), ("source", "a photo of an astronaut"),
                            ("edit", "a photo of a robot"))}
    image = g.node("LoadImage", image=photo)
    latent = g.node("VAEEncode", pixels=image.out(0), vae=ck.out(2))
    lpips = g.node("PSGLPIPSLoader", net="alex")
    inv = g.node("PSGDDIMInversion", model=ck.out(0), latent=latent.out(0), source=text["source"].out(0),
                 steps=STEPS, scheduler="simple", cfg=1.0)
    fitted = {"none": inv}
    for mode in MODES[1:]:
        fitted[mode] = g.node("PSGTextGuidanceOptimize", model=ck.out(0), inversion=inv.out(0),
                              source=text["source"].out(0), null=text["null"].out(0), mode=mode,
                              guidance_scale=FIT_SCALE, inner_steps=INNER_STEPS, tolerance=1e-5)
    sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="simple", steps=STEPS, denoise=1.0)
    runs = {}
    for mode, source_of_guidance in fitted.items():
        guider = g.node("PSGTriplePromptGuider", model=ck.out(0), null=text["null"].out(0),
                        source=text["source"].out(0), edit=text["edit"].out(0), w_source=W_SOURCE,
                        w_edit=W_EDIT,
                        inversion=source_of_guidance.out(0))
        for gradient in GRADIENTS:
            sampler = g.node("PSGPerceptualSampler", vae=ck.out(2), reference=image.out(0),
                             lpips=lpips.out(0), scale=SCALE, start=0.0, end=1.0, every=1, gradient=gradient)
            runs[mode, gradient] = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise").out(0),
                                          guider=guider.out(0), sampler=sampler.out(0), sigmas=sigmas.out(0),
                                          latent_image=inv.out(1))
        runs[mode, "PSG Edit"] = g.node(
            "PSGEdit", model=ck.out(0), vae=ck.out(2), image=image.out(0), null=text["null"].out(0),
            source=text["source"].out(0), edit=text["edit"].out(0), lpips=lpips.out(0), steps=STEPS,
            scheduler="simple", w_source=W_SOURCE, w_edit=W_EDIT, text_optimization=mode,
            inner_steps=INNER_STEPS,
            scale=SCALE, start=0.0, end=1.0, seed=0)
    nodes = {"ck": ck, "image": image, "lpips": lpips, **{f"text:{k}": v for k, v in text.items()},
             **{f"fit:{k}": v for k, v in fitted.items()}}
    return g.finalize(), nodes, runs


def core_reference(pack, result, nodes, mode: str, through_model: bool, from_latent: bool) -> torch.Tensor:
    """``psg_core.ddim_sample`` through the host denoiser, with the graph's own inversion and prompts,
    starting from the inverted noise LATENT (``from_latent``, as SamplerCustomAdvanced hands it over)
    or from the inversion's own noise tensor (as PSG Edit does)."""
    host, perceptual_pipeline = pack.nodes.host, pack.nodes.pipelines.perceptual
    ddim, guidance_mod = pack.psg_core.ddim, pack.psg_core.guidance
    model, vae = result.output(nodes["ck"].id, 0), result.output(nodes["ck"].id, 2)
    image, lpips = result.output(nodes["image"].id, 0), result.output(nodes["lpips"].id, 0)
    conds = {name: result.output(nodes[f"text:{name}"].id, 0) for name in ("null", "source", "edit")}
    # the guider's own cond processing: the source prompt is its "middle" (negative-type) cond
    conds["source"] = node_helpers.conditioning_set_values(conds["source"], {"prompt_type": "negative"})
    inv = result.output(nodes[f"fit:{mode}"].id, 0)
    family = host.detect_family(model, "test")
    settings = perceptual_pipeline.PerceptualSettings(scale=SCALE, start=0.0, end=1.0, every=1,
                                                through_model=through_model)
    sigmas = inv.sigmas.flip(0).clone()

    def body(h):
        emb = h.bank.embeddings
        text = guidance_mod.TextGuidance(emb["null"], emb["source"], emb["edit"], W_SOURCE, W_EDIT)
        nulls = offsets = None
        if inv.nulls is not None:
            nulls = [n.to(h.device) for n in inv.nulls]
        if inv.offsets is not None:
            offsets = [o.to(h.device) for o in inv.offsets]
        perceptual = perceptual_pipeline.build_perceptual(vae, image, lpips, settings, None,
                                                          h.process_latent_out,
                                                    tuple(inv.latent_shape[-2:]), "test")
        if through_model:
            h.enable_model_gradients()
        start = h.latent if from_latent else inv.noise.to(h.device)
        return ddim.ddim_sample(h.denoise, start, sigmas.to(h.device), text, space=family.space,
                                nulls=nulls, offsets=offsets, perceptual=perceptual)

    outer_noise = model.model.process_latent_out(inv.noise.clone())
    return host.run_on_host(model, conds, outer_noise, body, family=family, fallback="null", sigmas=sigmas,
                            node="test")


@pytest.mark.parametrize("family", FAMILIES)
def test_host_graphs_equal_core_ddim_sample(comfy_host, photo, lpips_folder, family):
    prompt, nodes, runs = build_graph(family, photo)
    result = comfy_host.run(prompt, outputs=[r.id for r in runs.values()])
    pack = comfy_host.pack_module()
    worst = {}
    for mode in MODES:
        for gradient, through_model in GRADIENTS.items():
            ran = [(gradient, True, result.output(runs[mode, gradient].id)["samples"])]
            if not through_model:  # PSG Edit guides through x0
                ran.append(("PSG Edit", False, result.output(runs[mode, "PSG Edit"].id, 1)["samples"]))
            for name, from_latent, got in ran:
                expected = core_reference(pack, result, nodes, mode, through_model, from_latent)
                assert torch.isfinite(got).all()
                scale = float(expected.abs().max())
                error = float((got - expected).abs().max()) / scale
                worst[mode, name] = error
                assert error < 1e-5, f"{family} / {mode} / {name}: max relative difference {error:.2e}"
    print(f"\n{family}: max |host - core| / max |core| = {max(worst.values()):.2e} over {len(worst)} runs")
