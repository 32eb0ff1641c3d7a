"""The PSG nodes through ComfyUI's real executor (in-process) and server, on tiny models.

Every graph is an API-format prompt built with ComfyUI's GraphBuilder, exactly what a user's
workflow sends to POST /prompt; node outputs are read back from the executor's cache.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from PIL import Image
from psg_testing.host import PromptExecutionError, PromptInterrupted
from psg_testing.tiny_models import FAMILIES

logger = logging.getLogger(__name__)

STEPS = 4
SIZE = 64  # pixels; the tiny models run at any multiple of 8, smaller is faster
PSG_NODES = (
    "PSGLPIPSLoader",
    "PSGDDIMInversion",
    "PSGTextGuidanceOptimize",
    "PSGTriplePromptGuider",
    "PSGPerceptualSampler",
    "PSGEdit",
    "PSGSaveInversion",
    "PSGLoadInversion",
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def photo(comfy_host) -> str:
    """A real photo (scikit-image's cat) at the tiny models' size, in ComfyUI's input folder."""
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((SIZE, SIZE), Image.BICUBIC)
    name = "psg_chelsea.png"
    image.save(comfy_host.base_dir / "input" / name)
    return name


# --------------------------------------------------------------------------- graphs


class Edit:
    """Builds the common front of every graph: checkpoint, prompts, photo -> latent."""

    def __init__(self, family: str, photo: str, *, lpips: bool = True):
        self.g = g = GraphBuilder(prefix="")
        self.ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
        self.source = g.node("CLIPTextEncode", clip=self.ck.out(1), text="a photo of a cat")
        self.edit = g.node("CLIPTextEncode", clip=self.ck.out(1), text="a photo of a tiger")
        self.null = g.node("CLIPTextEncode", clip=self.ck.out(1), text="")
        self.image = g.node("LoadImage", image=photo)
        self.latent = g.node("VAEEncode", pixels=self.image.out(0), vae=self.ck.out(2))
        self.lpips = g.node("PSGLPIPSLoader", net="alex") if lpips else None

    def inversion(self, steps: int = STEPS, scheduler: str = "simple"):
        return self.g.node("PSGDDIMInversion", model=self.ck.out(0), latent=self.latent.out(0),
                           source=self.source.out(0), steps=steps, scheduler=scheduler, cfg=1.0)

    def optimize(self, inversion, mode: str = "null-text optimization", inner_steps: int = 2,
                 guidance_scale: float = 3.0):
        return self.g.node("PSGTextGuidanceOptimize", model=self.ck.out(0), inversion=inversion.out(0),
                           source=self.source.out(0), null=self.null.out(0), mode=mode,
                           guidance_scale=guidance_scale, inner_steps=inner_steps, tolerance=1e-5)

    def sample(self, inversion, *, w_source: float, w_edit: float, scale: float = 1.0, steps: int = STEPS,
               scheduler: str = "simple", optimized=None):
        g = self.g
        guider = g.node("PSGTriplePromptGuider", model=self.ck.out(0), null=self.null.out(0),
                        source=self.source.out(0), edit=self.edit.out(0), w_source=w_source, w_edit=w_edit,
                        inversion=(optimized or inversion).out(0))
        sampler = g.node("PSGPerceptualSampler", vae=self.ck.out(2), reference=self.image.out(0),
                         lpips=self.lpips.out(0), scale=scale, start=0.0, end=1.0, every=1,
                         gradient="x0 (fast)", inversion=(optimized or inversion).out(0))
        sigmas = g.node("BasicScheduler", model=self.ck.out(0), scheduler=scheduler, steps=steps, denoise=1.0)
        run = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise").out(0), guider=guider.out(0),
                     sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=inversion.out(1))
        decode = g.node("VAEDecode", samples=run.out(0), vae=self.ck.out(2))
        return run, decode

    def one_node(self, *, w_source=0.0, w_edit=3.0, text="null-text optimization", scale=1.0, steps=STEPS,
                 inner_steps=2):
        return self.g.node(
            "PSGEdit", model=self.ck.out(0), vae=self.ck.out(2), image=self.image.out(0),
            null=self.null.out(0),
            source=self.source.out(0), edit=self.edit.out(0), lpips=self.lpips.out(0), steps=steps,
            scheduler="simple", w_source=w_source, w_edit=w_edit, text_optimization=text,
            inner_steps=inner_steps,
            scale=scale, start=0.0, end=1.0,
        )

    def prompt(self) -> dict:
        return self.g.finalize()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def load_photo(comfy_host, name: str) -> torch.Tensor:
    array = np.asarray(Image.open(comfy_host.base_dir / "input" / name).convert("RGB"),
                       dtype=np.float32) / 255
    return torch.from_numpy(array)[None]


# --------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_host_nodes_full_pipeline_and_one_node_edit(comfy_host, tiny_models, photo, lpips_folder, family):
    e = Edit(family, photo)
    inv = e.inversion()
    opt = e.optimize(inv)
    run, decode = e.sample(inv, w_source=0.0, w_edit=3.0, optimized=opt)
    edit = e.one_node()
    schedule = e.g.node("BasicScheduler", model=e.ck.out(0), scheduler="simple", steps=STEPS, denoise=1.0)
    result = comfy_host.run(e.prompt(), outputs=[decode.id, edit.id, schedule.id, e.latent.id])

    inversion = result.output(inv.id, 0)
    assert inversion.steps == STEPS and inversion.latents.shape[0] == STEPS + 1
    # the inversion climbs exactly the schedule the sampler descends, from the photo's own latent
    assert torch.equal(inversion.sigmas.cpu().float(), result.output(schedule.id).flip(0).cpu().float())
    latent_format = tiny_models(family).model.model.latent_format
    photo_latent = latent_format.process_in(result.output(e.latent.id)["samples"]).cpu()
    torch.testing.assert_close(inversion.latents[0].cpu(), photo_latent)
    assert float((inversion.latents[-1].cpu() - photo_latent).abs().max()) > 0.1, "inversion added no noise"
    optimized = result.output(opt.id)
    assert optimized.nulls is not None and len(optimized.nulls) == STEPS
    for image in (result.output(decode.id), result.output(edit.id, 0)):
        assert image.shape == (1, SIZE, SIZE, 3)
        assert torch.isfinite(image).all()
    losses = result.output_list(edit.id, 2)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    # progress reached the UI for every phase
    for node in (inv.id, opt.id, run.id, edit.id):
        assert result.progress(node), f"no progress from node {node}"


def test_host_nodes_edit_fed_a_tiny_photo_directly_refuses_it_with_the_fix(comfy_host, lpips_folder):
    """Without PSG Fit Image in front, PSG Edit itself refuses an 8x8 photo naming the fix, instead of
    torch's 'Output size is too small' from deep inside LPIPS."""
    Image.new("RGB", (8, 8), (10, 200, 10)).save(comfy_host.base_dir / "input" / "psg_tiny_8.png")
    e = Edit("sd15", "psg_tiny_8.png")
    edit = e.one_node()
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(e.prompt(), outputs=[edit.id])
    message = caught.value.exception_message
    assert caught.value.node_type == "PSGEdit", caught.value
    assert "the image is 8x8" in message and "at least 32 px" in message, message
    assert "Upscale Image" in message, message
    assert "Output size is too small" not in message


def test_host_nodes_text_modes_and_offsets_reconstruct(comfy_host, photo, lpips_folder):
    """w_edit = 0: each text mode gives a finite result; direct offsets retrace the inversion
    exactly (the PSG sampler adds them to the latent after each step, as the core does)."""
    e = Edit("sd15", photo)
    inv = e.inversion()
    outs = {}
    for mode in ("negative-prompt", "direct offsets"):
        opt = e.optimize(inv, mode=mode, guidance_scale=3.0)
        outs[mode] = e.sample(inv, w_source=3.0, w_edit=0.0, scale=0.0, optimized=opt)[0]
    result = comfy_host.run(e.prompt(), outputs=[r.id for r in outs.values()])
    start = result.output(e.latent.id)["samples"]
    for mode, run in outs.items():
        assert torch.isfinite(result.output(run.id)["samples"]).all(), mode
    rebuilt = result.output(outs["direct offsets"].id)["samples"]
    assert torch.allclose(rebuilt, start,
                          atol=1e-2 * float(start.abs().max())), float((rebuilt - start).abs().max())


def test_host_nodes_reconstruction_psnr_matches_vae_round_trip(comfy_host, photo, lpips_folder):
    e = Edit("sd15", photo)
    rebuild = e.one_node(w_source=3.0, w_edit=0.0, scale=0.0, steps=8, inner_steps=10)
    round_trip = e.g.node("VAEDecode", samples=e.latent.out(0), vae=e.ck.out(2))
    result = comfy_host.run(e.prompt(), outputs=[rebuild.id, round_trip.id])
    original = load_photo(comfy_host, photo)
    psnr_vae = psnr(result.output(round_trip.id), original)
    psnr_psg = psnr(result.output(rebuild.id, 0), original)
    logger.info("reconstruction PSNR: VAE round trip %.2f dB, PSG null-text (w_edit 0) %.2f dB", psnr_vae,
                psnr_psg)
    print(f"\nreconstruction PSNR: VAE round trip {psnr_vae:.2f} dB, "
          f"PSG null-text w_edit=0 {psnr_psg:.2f} dB")
    assert psnr_psg >= psnr_vae - 1.0


# --------------------------------------------------------------------------- guider vs core DualCFG


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_host_nodes_guider_matches_dual_cfg(comfy_host, family):
    cfg1, cfg2 = 4.0, 2.5
    g = GraphBuilder(prefix="")
    ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
    text = {k: g.node("CLIPTextEncode", clip=ck.out(1), text=t)
            for k, t in (("edit", "a tiger"), ("source", "a cat"), ("null", ""))}
    latent = g.node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=1)
    sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="normal", steps=3, denoise=1.0)
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    noise = g.node("RandomNoise", noise_seed=7)
    ours = g.node("PSGTriplePromptGuider", model=ck.out(0), null=text["null"].out(0),
                  source=text["source"].out(0), edit=text["edit"].out(0), w_source=cfg2 - cfg1, w_edit=cfg1)
    core = g.node("DualCFGGuider", model=ck.out(0), cond1=text["edit"].out(0), cond2=text["source"].out(0),
                  negative=text["null"].out(0), cfg_conds=cfg1, cfg_cond2_negative=cfg2, style="regular")
    runs = [g.node("SamplerCustomAdvanced", noise=noise.out(0), guider=gd.out(0), sampler=sampler.out(0),
                   sigmas=sigmas.out(0), latent_image=latent.out(0)) for gd in (ours, core)]
    result = comfy_host.run(g.finalize(), outputs=[r.id for r in runs])
    a, b = (result.output(r.id)["samples"] for r in runs)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max())), float((a - b).abs().max())


# --------------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("phase", ["inversion", "optimization", "sampling"])
def test_host_nodes_interrupt_stops_within_one_step(comfy_host, photo, lpips_folder, phase):
    steps = 6
    e = Edit("sd15", photo)
    inv = e.inversion(steps=steps)
    opt = e.optimize(inv, inner_steps=2)
    run, decode = e.sample(inv, w_source=0.0, w_edit=3.0, steps=steps, optimized=opt)
    target = {"inversion": inv.id, "optimization": opt.id, "sampling": run.id}[phase]
    seen: list[float] = []

    def stop_after_two(node_id, value, total):
        if node_id == target:
            seen.append(value)
            if value >= 2:
                comfy_host.interrupt()

    prompt = e.prompt()
    with pytest.raises(PromptInterrupted) as caught:
        comfy_host.run(prompt, outputs=[decode.id], on_progress=stop_after_two)
    assert caught.value.node_id == target
    assert max(seen) == 2, seen
    # the next prompt runs fine
    assert comfy_host.run(prompt, outputs=[decode.id]).output(decode.id).shape[0] == 1


# --------------------------------------------------------------------------- determinism


def test_host_nodes_one_node_edit_is_deterministic(comfy_host, photo, lpips_folder):
    e = Edit("sd15", photo)
    edit = e.one_node()
    prompt = e.prompt()
    first = comfy_host.run(prompt, outputs=[edit.id])
    again = comfy_host.run(prompt, outputs=[edit.id])
    assert torch.equal(first.output(edit.id, 1)["samples"], again.output(edit.id, 1)["samples"])
    assert first.output_list(edit.id, 2) == again.output_list(edit.id, 2)
    # and the edit did something: the edit prompt changes the result vs reconstruction
    e2 = Edit("sd15", photo)
    rebuild = e2.one_node(w_source=3.0, w_edit=0.0)
    other = comfy_host.run(e2.prompt(), outputs=[rebuild.id])
    assert not torch.equal(first.output(edit.id, 1)["samples"], other.output(rebuild.id, 1)["samples"])


# --------------------------------------------------------------------------- save / load


def test_host_nodes_save_load_round_trip_and_mismatch_refusal(comfy_host, photo):
    e = Edit("sd15", photo, lpips=False)
    inv = e.inversion()
    opt = e.optimize(inv, mode="direct offsets")
    save = e.g.node("PSGSaveInversion", inversion=opt.out(0), filename_prefix="psg_test/roundtrip")
    result = comfy_host.run(e.prompt(), outputs=[save.id])
    saved = result.output(opt.id)
    name = result.output(save.id)
    assert name.startswith("psg_test") and name.endswith(".safetensors")

    def load(family: str = "sd15", steps: int = 0, latent: bool = True):
        l2 = Edit(family, photo, lpips=False)
        inputs = {"file": name, "model": l2.ck.out(0), "steps": steps}
        if latent:
            inputs["latent"] = l2.latent.out(0)
        node = l2.g.node("PSGLoadInversion", **inputs)
        return l2.prompt(), node

    prompt, node = load()
    loaded_run = comfy_host.run(prompt, outputs=[node.id])
    loaded = loaded_run.output(node.id, 0)
    assert loaded.family == saved.family and loaded.steps == saved.steps and loaded.mode == saved.mode
    assert torch.equal(loaded.latents, saved.latents) and torch.equal(loaded.sigmas, saved.sigmas)
    assert all(torch.equal(a, b) for a, b in zip(loaded.offsets, saved.offsets, strict=True))
    assert torch.allclose(loaded_run.output(node.id, 1)["samples"], result.output(inv.id, 1)["samples"])

    for family, steps, needle in (("sdxl", 0, "SDXL"), ("sd15", STEPS + 1, "steps"), ("flow", 0, "family")):
        prompt, node = load(family, steps)
        with pytest.raises(PromptExecutionError) as caught:
            comfy_host.run(prompt, outputs=[node.id])
        assert caught.value.node_type == "PSGLoadInversion"
        message = caught.value.exception_message
        assert "PSG Load Inversion" in message and ("model" in message or "steps" in message), message
        if family == "sd15":
            assert needle in message


def test_host_nodes_lpips_loader_missing_backbone_is_one_clear_error(comfy_host):
    g = GraphBuilder(prefix="")
    node = g.node("PSGLPIPSLoader", net="squeeze")
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(g.finalize(), outputs=[node.id])
    message = caught.value.exception_message
    assert "PSG LPIPS Loader" in message and "squeezenet1_1" in message and "lpips" in message


def test_host_nodes_refuse_unsupported_model_type(comfy_host, photo):
    e = Edit("sd15", photo, lpips=False)
    patched = e.g.node("ModelSamplingDiscrete", model=e.ck.out(0), sampling="x0", zsnr=False)
    inv = e.g.node("PSGDDIMInversion", model=patched.out(0), latent=e.latent.out(0), source=e.source.out(0),
                   steps=STEPS, scheduler="simple", cfg=1.0)
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(e.prompt(), outputs=[inv.id])
    message = caught.value.exception_message
    assert "not supported" in message and "PSG DDIM Inversion" in message


def test_host_nodes_gradients_work_with_inference_mode_weights(comfy_host, photo, lpips_folder, tiny_models):
    """Checkpoint loaders run under inference_mode, so real weights are inference tensors that
    autograd refuses to save. Null-text optimization and the perceptual step must still work,
    and give the same result as with normal weights."""
    fresh = tiny_models("sd15", seed=0, cached=False)
    with torch.inference_mode():
        for module in (fresh.model.model, fresh.vae.first_stage_model):
            for p in module.parameters():
                p.data = p.data.clone()
    assert next(fresh.model.model.parameters()).is_inference()
    pack = comfy_host.pack_module()
    edit_node = pack.nodes.edit_nodes.PSGEdit
    lpips = pack.nodes.lpips_nodes.load("alex")
    image = load_photo(comfy_host, photo)
    conds = {}
    with torch.inference_mode():
        for name, text in (("null", ""), ("source", "a photo of a cat"), ("edit", "a photo of a tiger")):
            conds[name] = fresh.clip.encode_from_tokens_scheduled(fresh.clip.tokenize(text))
        args = dict(image=image, lpips=lpips, steps=3, scheduler="simple", w_source=0.0, w_edit=3.0,
                    text_optimization="null-text optimization", inner_steps=2, scale=1.0, start=0.0, end=1.0,
                    **conds)
        out = edit_node.execute(model=fresh.model, vae=fresh.vae, **args)
        ref = tiny_models("sd15", seed=0)
        expected = edit_node.execute(model=ref.model, vae=ref.vae, **args)
    assert torch.allclose(out.result[1]["samples"], expected.result[1]["samples"], atol=1e-4)
    params = list(fresh.model.model.parameters())
    assert all(p.grad is None for p in params), "gradients leaked into the shared model"
    assert all(p.requires_grad for p in params), "requires_grad was not restored"
    assert len(out.result[2]) == 3


# --------------------------------------------------------------------------- real server


def test_host_nodes_object_info_lists_every_node_with_tooltips(comfy_server):
    info = comfy_server.object_info()
    for node_id in PSG_NODES:
        assert node_id in info, f"{node_id} missing from /object_info"
        entry = info[node_id]
        assert entry["category"].startswith("PSG") and entry["description"]
        for section in ("required", "optional"):
            for name, spec in entry["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        tooltips = entry.get("output_tooltips") or []
        assert len(tooltips) == len(entry["output"]) and all(tooltips), (
            f"{node_id} output tooltips {tooltips}"
        )


def test_host_nodes_text_mode_reads_the_spelling_of_version_0_1_0(comfy_host):
    """Inversion files saved by version 0.1.0 hold "null-text optimisation": it still reads as the
    null-text mode, while the menus offer only the one spelling."""
    types = comfy_host.pack_module().nodes.psg_types
    assert types.TextMode("null-text optimisation") is types.TextMode.NULL_TEXT
    assert types.TextMode("null-text optimization") is types.TextMode.NULL_TEXT
    assert "null-text optimisation" not in types.TEXT_MODE_NAMES
    with pytest.raises(ValueError):
        types.TextMode("null-text")


def test_host_nodes_pack_init_imports_as_a_plain_module_with_the_host_present(comfy_host):
    """pytest imports the checkout's ``__init__.py`` as a plain module when the folder name is not a
    Python name (``ComfyUI-PSG``): with ComfyUI importable it must not attempt its relative imports;
    loaded as ComfyUI loads it (a package) it must offer the extension's entry point."""
    import importlib.util

    from psg_testing.host import REPO_ROOT

    spec = importlib.util.spec_from_file_location("ComfyUI-PSG", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=None)  # not a package
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.comfy_entrypoint is None and module.WEB_DIRECTORY == "./web"
    assert callable(comfy_host.pack_module().comfy_entrypoint)
