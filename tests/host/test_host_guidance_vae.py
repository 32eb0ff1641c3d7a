"""Guidance VAE and reduced-resolution guidance through real ComfyUI: a TAESD loaded by
ComfyUI's own VAELoader decodes the x0 estimates for the LPIPS gradient (in PSG Perceptual Sampler
and PSG Edit), the main VAE is never differentiated and still decodes the result, half resolution
decodes half-size guidance images, and a TAESD of the wrong family is refused with one clear
message. The TAESD weights are random (tests/psg_testing/taesd_files.py): the architecture,
scale/shift and loading path are ComfyUI's own."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from psg_testing.host import PromptExecutionError
from psg_testing.model_folders import extra_model_folder
from psg_testing.reliability import PHOTO_BIG, STEPS, PSGGraph, prepare_base_dir
from psg_testing.taesd_files import write_random_taesd

logger = logging.getLogger(__name__)

MAIN_DECODER = "comfy.ldm.modules.diffusionmodules.model.Decoder"  # the tiny AutoencoderKL's decoder
TAESD_BLOCK = "comfy.taesd.taesd.Block"
NO_GUIDANCE_VAE = "no guidance_vae"


@pytest.fixture(scope="module")
def taesd_host(comfy_host) -> Iterator[Any]:
    """The in-process host with the photos, an LPIPS backbone and random taesd / taesdxl / taesd3
    files in extra model folders (ComfyUI's own models/ stays untouched)."""
    base = comfy_host.base_dir
    prepare_base_dir(base)
    write_random_taesd(base / "models" / "vae_approx", ("taesd", "taesdxl", "taesd3"))
    with extra_model_folder("lpips", base / "models" / "lpips"), \
            extra_model_folder("vae_approx", base / "models" / "vae_approx"):
        yield comfy_host


@dataclass
class Trace:
    """What the guidance path did in one run."""

    decoders: list[str] = field(default_factory=list)  # first_stage_model class per DifferentiableDecoder
    decoded_sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of every guidance decode
    grad_modules: set[str] = field(default_factory=set)  # module classes run on inputs that need grad
    vae_decodes: list[str] = field(default_factory=list)  # first_stage_model class per VAE.decode call

    def reset(self) -> None:
        for value in (self.decoders, self.decoded_sizes, self.vae_decodes):
            value.clear()
        self.grad_modules.clear()


@pytest.fixture
def trace(taesd_host, monkeypatch) -> Iterator[Trace]:
    """Record which decoder the perceptual gradient goes through, the guidance image sizes, every
    module autograd records (a global forward hook: a module whose input requires grad is on the
    backward path) and every ``comfy.sd.VAE.decode`` (the final, non-differentiable decode)."""
    import comfy.sd

    record = Trace()
    decoder_cls = taesd_host.pack_module().nodes.host.DifferentiableDecoder
    init, call = decoder_cls.__init__, decoder_cls.__call__

    def traced_init(self, vae, *args, **kwargs):
        init(self, vae, *args, **kwargs)
        record.decoders.append(type(vae.first_stage_model).__name__)

    def traced_call(self, z):
        image = call(self, z)
        record.decoded_sizes.append(tuple(image.shape[-2:]))
        return image

    decode = comfy.sd.VAE.decode

    def traced_decode(vae, *args, **kwargs):
        record.vae_decodes.append(type(vae.first_stage_model).__name__)
        return decode(vae, *args, **kwargs)

    def on_forward(module, inputs, _output):
        if torch.is_grad_enabled() and any(torch.is_tensor(t) and t.requires_grad for t in inputs):
            record.grad_modules.add(f"{type(module).__module__}.{type(module).__qualname__}")

    monkeypatch.setattr(decoder_cls, "__init__", traced_init)
    monkeypatch.setattr(decoder_cls, "__call__", traced_call)
    monkeypatch.setattr(comfy.sd.VAE, "decode", traced_decode)
    handle = torch.nn.modules.module.register_module_forward_hook(on_forward)
    try:
        yield record
    finally:
        handle.remove()


def taesd(graph: PSGGraph, name: str = "taesd") -> Any:
    return graph.node("VAELoader", vae_name=name)


def guided_sampling(graph: PSGGraph, *, guidance_vae: Any = None, scale: float = 1.0, **extra: Any) -> Any:
    """Inversion -> PSGTriplePromptGuider + PSGPerceptualSampler -> SamplerCustomAdvanced -> VAEDecode
    with the main VAE; returns the VAEDecode node."""
    inv = graph.inversion()
    if guidance_vae is not None:
        extra["guidance_vae"] = guidance_vae.out(0)
    guider = graph.node("PSGTriplePromptGuider", model=graph.ck.out(0), null=graph.null.out(0),
                        source=graph.source.out(0), edit=graph.edit_text.out(0), w_source=0.0, w_edit=3.0,
                        inversion=inv.out(0))
    sampler = graph.node("PSGPerceptualSampler", vae=graph.ck.out(2), reference=graph.image.out(0),
                         lpips=graph.lpips.out(0), scale=scale, start=0.0, end=1.0, every=1,
                         gradient="x0 (fast)",
                         inversion=inv.out(0), **extra)
    sigmas = graph.node("BasicScheduler", model=graph.ck.out(0), scheduler="simple", steps=STEPS, denoise=1.0)
    sample = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise").out(0),
                        guider=guider.out(0),
                        sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=graph.latent.out(0))
    return graph.node("VAEDecode", samples=sample.out(0), vae=graph.ck.out(2))


def assert_guided_through_taesd_only(trace: Trace, *, final_decodes: int = 1) -> None:
    assert trace.decoders == ["TAESD"], f"guidance decoders built: {trace.decoders}"
    assert TAESD_BLOCK in trace.grad_modules, sorted(trace.grad_modules)
    assert MAIN_DECODER not in trace.grad_modules, "the main VAE's decoder was differentiated"
    main_decodes = [k for k in trace.vae_decodes if k != "TAESD"]
    assert len(main_decodes) == final_decodes, f"VAE.decode calls: {trace.vae_decodes}"


# --------------------------------------------------------------------------- the TAESD-guided path


def test_host_guidance_vae_sampler_runs_through_taesd_only(taesd_host, trace):
    """SamplerCustomAdvanced + PSG Triple-Prompt Guider + PSG Perceptual Sampler with a guidance VAE:
    the gradient goes through the TAESD, never the main VAE, which decodes the result once."""
    graph = PSGGraph()
    decode = guided_sampling(graph, guidance_vae=taesd(graph))
    image = taesd_host.run(graph.prompt(), [decode.id]).output(decode.id)
    assert image.shape[1:3] == (64, 64) and bool(torch.isfinite(image).all())
    assert_guided_through_taesd_only(trace)
    assert trace.decoded_sizes and set(trace.decoded_sizes) == {(64, 64)}, trace.decoded_sizes


@pytest.mark.parametrize("guidance", ["taesd", None])
def test_host_guidance_vae_edit_decodes_result_with_main_vae(taesd_host, trace, guidance, caplog):
    """PSG Edit with a guidance VAE differentiates only the TAESD; without one it goes through the
    main VAE (the control that shows the instrument can see it) and says once what TAESD would save."""
    graph = PSGGraph()
    extra = {"guidance_vae": taesd(graph).out(0)} if guidance else {}
    edit = graph.edit(**extra)
    graph.preview(edit.out(2))
    with caplog.at_level(logging.INFO):
        result = taesd_host.run(graph.prompt())
    losses = result.output_list(edit.id, 2)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    hints = [r for r in caplog.records if NO_GUIDANCE_VAE in r.getMessage()]
    if guidance:
        assert_guided_through_taesd_only(trace)
        assert not hints
    else:
        assert trace.decoders == ["AutoencoderKL"], trace.decoders
        assert MAIN_DECODER in trace.grad_modules
        assert len(hints) == 1, [r.getMessage() for r in hints]
        assert "taesd" in hints[0].getMessage() and "PSG Edit" in hints[0].getMessage()


def test_host_guidance_vae_reduces_the_loss_it_guides(taesd_host):
    """The guidance works: LPIPS between the photo and the result decoded through the same TAESD is
    lower with perceptual guidance than without (same inversion, prompts and seed)."""
    distances = {}
    for scale in (0.0, 4.0):
        graph = PSGGraph()
        vae = taesd(graph)
        edit = graph.edit(steps=4, scale=scale, guidance_vae=vae.out(0), text_optimization="none")
        seen = graph.node("VAEDecode", samples=edit.out(1), vae=vae.out(0))
        metrics = graph.node("PSGImageMetrics", image_a=graph.image.out(0), image_b=seen.out(0),
                             lpips=graph.lpips.out(0))
        distances[scale] = float(taesd_host.run(graph.prompt()).output(metrics.id, 2))
    logger.info("LPIPS through TAESD: %s", distances)
    assert distances[4.0] < 0.95 * distances[0.0], distances


# --------------------------------------------------------------------------- reduced resolution


def test_host_guidance_half_resolution_decodes_half_size(taesd_host, trace):
    """guidance_resolution 1/2 decodes 64 px guidance images for a 128 px photo (a quarter of the
    pixels through decoder and LPIPS), with a mask, and still returns a full-size result; the guided
    trajectory differs from full resolution."""
    results = {}
    for resolution in ("full", "1/2"):
        trace.reset()
        graph = PSGGraph(photo=PHOTO_BIG)
        mask = graph.node("SolidMask", value=0.0, width=128, height=128)
        edit = graph.edit(guidance_resolution=resolution, mask=mask.out(0))
        graph.preview(edit.out(2))
        result = taesd_host.run(graph.prompt())
        image = result.output(edit.id, 0)
        assert image.shape[1:3] == (128, 128)
        side = 128 if resolution == "full" else 64
        assert trace.decoded_sizes and set(trace.decoded_sizes) == {(side, side)}, trace.decoded_sizes
        results[resolution] = (image, result.output_list(edit.id, 2))
    full_pixels, half_pixels = 128 * 128, 64 * 64
    assert half_pixels * 4 == full_pixels
    assert results["full"][1] != results["1/2"][1], results
    assert not torch.equal(results["full"][0], results["1/2"][0])


def test_host_guidance_quarter_resolution_too_small_is_refused(taesd_host):
    """1/4 of a 64 px photo would be a 16 px guidance image, too small for LPIPS: one clear message."""
    graph = PSGGraph()
    edit = graph.edit(guidance_resolution="1/4", text_optimization="none")
    graph.preview(edit.out(2))
    with pytest.raises(PromptExecutionError) as caught:
        taesd_host.run(graph.prompt())
    message = caught.value.exception_message.strip()
    assert "PSG Edit" in message and "guidance_resolution" in message and "'full'" in message, message


# --------------------------------------------------------------------------- mismatches


@pytest.mark.parametrize(
    ("node", "vae_name", "what"),
    [
        ("PSG Edit", "taesdxl", "taesdxl (SDXL)"),
        ("PSG Edit", "taesd3", "16 latent channels"),
        ("PSG Perceptual Sampler", "taesdxl", "taesdxl (SDXL)"),
        ("PSG Perceptual Sampler", "taesd3", "16 latent channels"),
    ],
)
def test_host_guidance_vae_of_another_family_is_refused(taesd_host, node, vae_name, what):
    """An SD1.5 model with an SDXL or SD3 TAESD: one message naming the node, the mismatch and the fix."""
    graph = PSGGraph(family="sd15")
    vae = taesd(graph, vae_name)
    if node == "PSG Edit":
        graph.preview(graph.edit(guidance_vae=vae.out(0)).out(2))
    else:
        graph.preview(guided_sampling(graph, guidance_vae=vae).out(0))
    with pytest.raises(PromptExecutionError) as caught:
        taesd_host.run(graph.prompt())
    message = caught.value.exception_message.strip()
    assert message.startswith(f"{node}: guidance_vae is"), message
    for part in (what, "SD1.x/SD2.x", "load taesd with VAELoader"):
        assert part in message, f"{part!r} not in: {message}"
    assert len(message) < 300 and "\n" not in message, message


# --------------------------------------------------------------------------- block checkpointing


def test_host_guidance_full_vae_block_checkpointing_keeps_the_gradient(comfy_host, tiny_models):
    """Large guidance images decode through a block-checkpointed copy of the full VAE decoder:
    same image and same gradient as without, and the shared VAE is untouched."""
    host_module = comfy_host.pack_module().nodes.host
    vae = tiny_models("sd15").vae
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    grads, images = [], []
    for checkpoint in (False, True):
        decode = host_module.DifferentiableDecoder(vae, lambda z: z / 0.18215, "test", checkpoint=checkpoint)
        assert (decode.checkpointed > 0) == checkpoint
        with torch.inference_mode(False), torch.enable_grad():
            z = z0.clone().requires_grad_(True)
            image = decode(z)
            (grad,) = torch.autograd.grad(image.square().mean(), z)
        images.append(image.detach())
        grads.append(grad)
    torch.testing.assert_close(images[1], images[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    assert not any(getattr(m, "_psg_checkpointed", False) for m in vae.first_stage_model.modules())
