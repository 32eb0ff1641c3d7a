"""Host-side method checks on tiny models in the real executor: the flow start, the cond wrapper of
optimized nulls, the fitted-scale check, post-CFG patches and the inversion's refinement."""

from __future__ import annotations

import logging

import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from psg_testing.cli_support import write_photo
from psg_testing.host import PromptExecutionError

logger = logging.getLogger(__name__)

SIZE = 64
STEPS = 3


@pytest.fixture(scope="module")
def photo(comfy_host) -> str:
    name = "psg_method_fixes.png"
    write_photo(comfy_host.base_dir / "input" / name, SIZE, "coffee", crop=False)
    return name


def front(family: str, photo: str, source_text: str = "a cup of coffee"):
    g = GraphBuilder(prefix="")
    ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
    text = {name: g.node("CLIPTextEncode", clip=ck.out(1), text=t)
            for name, t in (("null", ""), ("source", source_text), ("edit", "a cup of tea"))}
    image = g.node("LoadImage", image=photo)
    latent = g.node("VAEEncode", pixels=image.out(0), vae=ck.out(2))
    return g, ck, text, image, latent


def invert(g, ck, text, latent, refine: int = 0):
    return g.node("PSGDDIMInversion", model=ck.out(0), latent=latent.out(0), source=text["source"].out(0),
                  steps=STEPS, scheduler="simple", cfg=1.0, refine=refine)


def guider(g, ck, text, inversion=None, w_source=0.0, w_edit=3.0, model=None):
    extra = {} if inversion is None else {"inversion": inversion.out(0)}
    return g.node("PSGTriplePromptGuider", model=model or ck.out(0), null=text["null"].out(0),
                  source=text["source"].out(0), edit=text["edit"].out(0), w_source=w_source, w_edit=w_edit,
                  **extra)


def psg_sampler(g, ck, image, lpips, inversion=None):
    extra = {} if inversion is None else {"inversion": inversion.out(0)}
    return g.node("PSGPerceptualSampler", vae=ck.out(2), reference=image.out(0), lpips=lpips.out(0),
                  scale=0.0, start=0.0, end=1.0, every=1, gradient="x0 (fast)", **extra)


def run_advanced(g, ck, guide, sampler, inversion, noise=None):
    """SamplerCustomAdvanced from the inversion's noise LATENT."""
    sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="simple", steps=STEPS, denoise=1.0)
    return g.node("SamplerCustomAdvanced", noise=(noise or g.node("DisableNoise")).out(0),
                  guider=guide.out(0),
                  sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=inversion.out(1))


# --------------------------------------------------------------------------- flow start


def test_flow_psg_sampler_starts_from_the_inverted_latent_without_the_inversion_input(
        comfy_host, photo, lpips_folder):
    g, ck, text, image, latent = front("flow", photo)
    inv = invert(g, ck, text, latent)
    lpips = g.node("PSGLPIPSLoader", net="alex")
    guide = guider(g, ck, text, w_source=1.0, w_edit=0.0)
    with_input = run_advanced(g, ck, guide, psg_sampler(g, ck, image, lpips, inv), inv)
    without = run_advanced(g, ck, guide, psg_sampler(g, ck, image, lpips), inv)
    result = comfy_host.run(g.finalize(), outputs=[with_input.id, without.id])
    a, b = (result.output(r.id)["samples"] for r in (with_input, without))
    assert float(a.abs().max()) > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_flow_stock_sampler_with_disabled_noise_is_refused_clearly(comfy_host, photo):
    g, ck, text, image, latent = front("flow", photo)
    inv = invert(g, ck, text, latent)
    run = run_advanced(g, ck, guider(g, ck, text), g.node("KSamplerSelect", sampler_name="euler"), inv)
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(g.finalize(), outputs=[run.id])
    message = caught.value.exception_message
    assert "PSG Triple-Prompt Guider" in message and "PSG Perceptual Sampler" in message, message


# --------------------------------------------------------------------------- optimized nulls on MMDiT


def test_swapped_null_keeps_the_flow_models_cond_wrapper(comfy_host, photo):
    """SD3/Flux take CONDRegular: a null swapped in as CONDCrossAttn would be batched with a longer
    prompt and repeat-padded to its length (or fail to concatenate), which changes what MMDiT's joint
    attention sees."""
    long_text = ", ".join(["a cup of coffee on a wooden table in the morning light"] * 12)
    g, ck, text, image, latent = front("flow", photo, source_text=long_text)
    result = comfy_host.run(g.finalize(), outputs=[text["source"].id, text["null"].id, ck.id])
    pack = comfy_host.pack_module()
    host = pack.nodes.host
    model = result.output(ck.id, 0)
    null, source = result.output(text["null"].id), result.output(text["source"].id)
    assert source[0][0].shape[1] > null[0][0].shape[1]  # the long prompt really is longer
    family = host.detect_family(model, "test")
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    seen = {}

    def body(h):
        import comfy.samplers

        x = torch.randn(h.latent.shape, generator=torch.Generator().manual_seed(0))
        sigma = torch.tensor([0.7])
        processed_null, processed_source = h.bank.processed["null"], h.bank.processed["source"]
        swapped = host.swap_embedding(processed_null, h.bank.embeddings["null"].clone())
        # ComfyUI batches a cond with the first one of a step when the later one's wrapper says it can
        # concatenate: put the long prompt first, as any guider with another cond order would.
        for name, null_cond in (("plain", processed_null), ("swapped", swapped)):
            seen[name] = comfy.samplers.calc_cond_batch(h.inner, [processed_source, null_cond], x, sigma,
                                                        h.model_options)[1]
        return h.latent

    host.run_on_host(model, {"null": null, "source": source}, torch.zeros(1, 16, SIZE // 8, SIZE // 8), body,
                     family=family, fallback="null", sigmas=sigmas, node="test")
    torch.testing.assert_close(seen["swapped"], seen["plain"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- fitted scale, post-CFG


def test_guider_warns_when_the_fitted_scale_differs(comfy_host, photo, caplog):
    g, ck, text, image, latent = front("sd15", photo)
    inv = invert(g, ck, text, latent)
    fitted = g.node("PSGTextGuidanceOptimize", model=ck.out(0), inversion=inv.out(0),
                    source=text["source"].out(0),
                    null=text["null"].out(0), mode="direct offsets", guidance_scale=3.0, inner_steps=1,
                    tolerance=1e-5)
    matching = guider(g, ck, text, fitted, w_source=1.0, w_edit=2.0)
    other = guider(g, ck, text, fitted, w_source=0.0, w_edit=5.0)
    with caplog.at_level(logging.WARNING):
        comfy_host.run(g.finalize(), outputs=[matching.id])
        assert not [r for r in caplog.records if "fitted at guidance scale" in r.getMessage()]
        comfy_host.run(g.finalize(), outputs=[other.id])
    warnings = [r.getMessage() for r in caplog.records if "fitted at guidance scale" in r.getMessage()]
    assert len(warnings) == 1 and "w_source + w_edit = 5" in warnings[0] and "3" in warnings[0], warnings


@pytest.mark.parametrize("patch", [("RescaleCFG", {"multiplier": 0.7}), ("CFGNorm", {"strength": 0.5})])
def test_guider_applies_cfg_patches_like_the_stock_cfg_guider(comfy_host, patch):
    """RescaleCFG replaces the CFG formula (sampler_cfg_function), CFGNorm rescales after it
    (sampler_post_cfg_function): with w_source = 0 our guider must match the stock CFGGuider."""
    node, options = patch
    g = GraphBuilder(prefix="")
    ck = g.node("PSGTestTinyCheckpoint", family="sd2v", seed=0)
    text = {name: g.node("CLIPTextEncode", clip=ck.out(1), text=t)
            for name, t in (("null", ""), ("source", "a cat"), ("edit", "a tiger"))}
    patched = g.node(node, model=ck.out(0), **options)
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    noise = g.node("RandomNoise", noise_seed=3)
    sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="normal", steps=STEPS, denoise=1.0)
    ours = guider(g, ck, text, w_source=0.0, w_edit=4.0, model=patched.out(0))
    plain = guider(g, ck, text, w_source=0.0, w_edit=4.0)
    stock = g.node("CFGGuider", model=patched.out(0), positive=text["edit"].out(0),
                   negative=text["null"].out(0), cfg=4.0)
    runs = [g.node("SamplerCustomAdvanced", noise=noise.out(0), guider=gd.out(0), sampler=sampler.out(0),
                   sigmas=sigmas.out(0), latent_image=latent.out(0)) for gd in (ours, stock, plain)]
    result = comfy_host.run(g.finalize(), outputs=[r.id for r in runs])
    a, b, unpatched = (result.output(r.id)["samples"] for r in runs)
    assert not torch.allclose(unpatched, b, rtol=1e-3, atol=1e-3)  # the patch matters here
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


# --------------------------------------------------------------------------- inversion refinement


def test_inversion_refinement_reaches_the_core(comfy_host, photo):
    """The node's ``refine`` is the core's fixed-point refinement: the node's trajectory equals
    ``ddim_invert(..., fixed_point_iters=k)`` through the host denoiser. (Whether it helps is a
    property of the model; random tiny models prove plumbing only: see the core tests.)"""
    g, ck, text, image, latent = front("sd15", photo)
    invs = {k: invert(g, ck, text, latent, refine=k) for k in (0, 2)}
    result = comfy_host.run(g.finalize(), outputs=[i.id for i in invs.values()])
    pack = comfy_host.pack_module()
    host, ddim = pack.nodes.host, pack.psg_core.ddim
    model = result.output(ck.id, 0)
    source = result.output(text["source"].id)
    family = host.detect_family(model, "test")
    trajectories = {k: result.output(i.id, 0).latents for k, i in invs.items()}
    assert not torch.allclose(trajectories[0][-1], trajectories[2][-1])
    for k, inv in invs.items():
        sigmas = result.output(inv.id, 0).sigmas
        core = {}

        def body(h, k=k, sigmas=sigmas, core=core):
            traj = ddim.ddim_invert(h.denoise, h.latent, sigmas.to(h.device), h.bank.embeddings["source"],
                                    space=family.space, fixed_point_iters=k)
            core["latents"] = traj.latents.detach().cpu()
            return h.latent

        host.run_on_host(model, {"source": source}, result.output(latent.id)["samples"], body, family=family,
                         fallback="source", sigmas=sigmas, node="test")
        assert torch.equal(core["latents"], trajectories[k]), k


def test_offsets_folded_for_a_stock_sampler_land_where_the_psg_sampler_puts_them(
        comfy_host, photo, lpips_folder):
    """A stock euler step is this DDIM step: with the offsets folded into x0 by the guider
    (``offset_as_x0``) it must reach the latents the PSG sampler reaches by adding them."""
    g, ck, text, image, latent = front("sd15", photo)
    inv = invert(g, ck, text, latent)
    lpips = g.node("PSGLPIPSLoader", net="alex")
    fitted = g.node("PSGTextGuidanceOptimize", model=ck.out(0), inversion=inv.out(0),
                    source=text["source"].out(0),
                    null=text["null"].out(0), mode="direct offsets", guidance_scale=3.0, inner_steps=1,
                    tolerance=1e-5)
    guide = guider(g, ck, text, fitted, w_source=1.0, w_edit=2.0)
    ours = run_advanced(g, ck, guide, psg_sampler(g, ck, image, lpips), inv)
    stock = run_advanced(g, ck, guide, g.node("KSamplerSelect", sampler_name="euler"), inv)
    result = comfy_host.run(g.finalize(), outputs=[ours.id, stock.id])
    a, b = (result.output(r.id)["samples"] for r in (ours, stock))
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
