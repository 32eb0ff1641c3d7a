"""Prompt-to-prompt on tiny UNet models with real attention blocks, in ComfyUI's real executor
and through the pack's host functions (for the attention probabilities themselves)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from comfy_execution.graph_utils import GraphBuilder
from PIL import Image
from psg_testing.host import PromptExecutionError
from psg_testing.metric_models import save_random_alexnet

logger = logging.getLogger(__name__)

STEPS = 4
SIZE = 64
SOURCE = "a photo of a cat"
SWAP = "a photo of a dog"


def _save_photo(comfy_host, size: int) -> str:
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((size, size), Image.BICUBIC)
    name = f"psg_p2p_chelsea_{size}.png"
    image.save(comfy_host.base_dir / "input" / name)
    return name


@pytest.fixture(scope="module")
def photo(comfy_host) -> str:
    return _save_photo(comfy_host, SIZE)


@pytest.fixture(scope="module")
def photo128(comfy_host) -> str:
    """128 px: 8x8 attention maps on the tiny models, enough for a partial LocalBlend mask."""
    return _save_photo(comfy_host, 128)


def test_host_p2p_tiny_models_have_real_attention_blocks(tiny_models, comfy_host) -> None:
    patches = comfy_host.pack_module().nodes.pipelines.attention_patches
    for family in ("sd15", "sdxl"):
        blocks = patches.transformer_blocks(tiny_models(family).model)
        assert ("middle", 0) in blocks
        assert any(b[0] == "input" for b in blocks) and any(b[0] == "output" for b in blocks)


class P2PGraph:
    """checkpoint -> encode photo -> inversion -> text optimization -> P2P settings -> P2P sampler."""

    def __init__(self, family: str, photo: str, *, mode: str = "negative-prompt", edit_text: str = SWAP,
                 p2p_mode: str = "replace", cross_window: float = 0.8, self_window: float = 0.4,
                 self_layers: str = "1/4", blend_words: str = "", reweight_words: str = "",
                 w_source: float = 0.0, w_edit: float = 3.0, guidance_scale: float = 3.0, lpips: bool = False,
                 perceptual_mask: str = "attention mask", blend_threshold: float = 0.3):
        self.g = g = GraphBuilder(prefix="")
        self.ck = ck = g.node("PSGTestTinyCheckpoint", family=family, seed=0)
        self.source = g.node("PSGTextEncode", clip=ck.out(1), text=SOURCE)
        self.target = g.node("PSGTextEncode", clip=ck.out(1), text=edit_text)
        self.null = g.node("CLIPTextEncode", clip=ck.out(1), text="")
        self.image = g.node("LoadImage", image=photo)
        self.latent = latent = g.node("VAEEncode", pixels=self.image.out(0), vae=ck.out(2))
        self.inv = g.node("PSGDDIMInversion", model=ck.out(0), latent=latent.out(0),
                          source=self.source.out(0), steps=STEPS, scheduler="simple", cfg=1.0)
        self.opt = g.node("PSGTextGuidanceOptimize", model=ck.out(0), inversion=self.inv.out(0),
                          source=self.source.out(0), null=self.null.out(0), mode=mode,
                          guidance_scale=guidance_scale,
                          inner_steps=2, tolerance=1e-5)
        settings = g.node("PSGPromptToPrompt", mode=p2p_mode, cross_window=cross_window,
                          self_window=self_window,
                          self_layers=self_layers, reweight_words=reweight_words, reweight_factor=2.0,
                          blend_words=blend_words, blend_threshold=blend_threshold, blend_start=0.2)
        extra = {}
        if lpips:
            extra = dict(vae=ck.out(2), reference=self.image.out(0),
                         lpips=g.node("PSGLPIPSLoader", net="alex").out(0),
                         scale=1.0, perceptual_mask=perceptual_mask)
        self.p2p = g.node("PSGP2PSampler", model=ck.out(0), clip=ck.out(1), inversion=self.opt.out(0),
                          source_text=self.source.out(1), edit_text=self.target.out(1), p2p=settings.out(0),
                          w_source=w_source,
                          w_edit=w_edit, **extra)

    def reconstruction(self):
        """The plain reconstruction: triple-prompt guider with w_edit = 0 at the fitted scale."""
        g, ck = self.g, self.ck
        guider = g.node("PSGTriplePromptGuider", model=ck.out(0), null=self.null.out(0),
                        source=self.source.out(0),
                        edit=self.source.out(0), w_source=3.0, w_edit=0.0, inversion=self.opt.out(0))
        sampler = g.node("PSGPerceptualSampler", vae=ck.out(2), reference=self.image.out(0),
                         lpips=g.node("PSGLPIPSLoader", net="alex").out(0), scale=0.0, start=0.0, end=1.0,
                         every=1,
                         gradient="x0 (fast)", inversion=self.opt.out(0))
        sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="simple", steps=STEPS, denoise=1.0)
        return g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise").out(0), guider=guider.out(0),
                      sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=self.inv.out(1))


def test_host_p2p_source_branch_is_the_null_text_reconstruction(comfy_host, photo, lpips_folder) -> None:
    p = P2PGraph("sd15", photo, mode="null-text optimization")
    rec = p.reconstruction()
    result = comfy_host.run(p.g.finalize(), outputs=[p.p2p.id, rec.id])
    source = result.output(p.p2p.id, 2)["samples"]
    plain = result.output(rec.id, 0)["samples"]
    fp32 = 1e-5 * float(plain.abs().max())  # a few ulps of the largest value, after 4 steps
    assert float((source - plain).abs().max()) < 10 * fp32
    edit = result.output(p.p2p.id, 0)["samples"]
    assert (edit - source).abs().max() > 1e-3


def test_host_p2p_source_branch_with_offsets_is_the_direct_inversion_reconstruction(
        comfy_host, tiny_models) -> None:
    """Direct offsets: the source branch must land on the photo's latent like ``ddim_sample`` with the
    offsets does. The random-weight UNet amplifies rounding differences between batch layouts (the
    offsets were fitted on a [null, source] batch), so the floor is measured: the same core sampler
    with every cond in its own model call."""
    pack = comfy_host.pack_module()
    nodes, core = pack.nodes, pack.psg_core
    tm = tiny_models("sd15")
    image = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        photo_latent = tm.vae.encode(image)
        conds = {name: tm.clip.encode_from_tokens_scheduled(tm.clip.tokenize(text))
                 for name, text in (("null", ""), ("source", SOURCE))}
        inv, _ = nodes.pipelines.inversion.invert(tm.model, photo_latent, conds["source"], steps=STEPS,
                                                  scheduler="simple", cfg=1.0, null=None, node="t")
        inv = nodes.pipelines.inversion.optimize_text(tm.model, inv, conds["source"], conds["null"],
                                                      mode="direct offsets",
                                                  guidance_scale=3.0, inner_steps=1, tolerance=1e-5, node="t")
        family = nodes.host.detect_family(tm.model, "t")
        plain: dict[str, torch.Tensor] = {}

        def body(h):
            g = core.guidance.TextGuidance(h.bank.embeddings["null"], h.bank.embeddings["source"],
                                           h.bank.embeddings["source"], 3.0, 0.0)

            def one_by_one(x, sigma, cs):
                return [h.denoise(x, sigma, [c])[0] for c in cs]

            for name, fn in (("batched", h.denoise), ("one_by_one", one_by_one)):
                plain[name] = h.process_latent_out(core.ddim.ddim_sample(
                    fn, inv.noise, inv.sigmas.flip(0), g, space=family.space, offsets=list(inv.offsets)))
            return h.latent

        nodes.host.run_on_host(tm.model, conds, torch.zeros(inv.latent_shape), body, family=family,
                               fallback="null", sigmas=inv.sigmas, node="t")
        settings = nodes.pipelines.attention_patches.P2PSettings()
        edit, source, _ = nodes.pipelines.p2p.run_p2p(tm.model, tm.clip, inv, SOURCE, SWAP, settings, 0.0,
                                                      3.0)
    floor = float((plain["batched"] - plain["one_by_one"]).abs().max())
    assert float((plain["batched"] - photo_latent).abs().max()) < 1e-3  # offsets retrace the inversion
    assert float((source - photo_latent).abs().max()) <= 2 * floor + 1e-5
    assert float((edit - source).abs().max()) > 1e-2


def test_host_p2p_identity_edit_equals_source_branch(comfy_host, photo) -> None:
    p = P2PGraph("sd15", photo, edit_text=SOURCE, cross_window=1.0, self_window=1.0, self_layers="all",
                 w_edit=3.0)
    result = comfy_host.run(p.g.finalize(), outputs=[p.p2p.id])
    edit, source = result.output(p.p2p.id, 0)["samples"], result.output(p.p2p.id, 2)["samples"]
    assert torch.equal(edit, source)


def _run(comfy_host, tiny_models, family: str, edit_text: str, observers=None, source_text: str = SOURCE,
         size: int = SIZE, perceptual=None, **settings):
    """run_p2p in-process on a negative-prompt inversion of the photo (for hooks on the attention);
    ``perceptual(inversion, image)`` may build the edit branch's perceptual guidance."""
    pack = comfy_host.pack_module()
    nodes = pack.nodes
    tm = tiny_models(family)
    image = torch.rand(1, size, size, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        samples = tm.vae.encode(image)
        source = tm.clip.encode_from_tokens_scheduled(tm.clip.tokenize(source_text))
        null = tm.clip.encode_from_tokens_scheduled(tm.clip.tokenize(""))
        inv, _ = nodes.pipelines.inversion.invert(tm.model, samples, source, steps=STEPS, scheduler="simple",
                                                  cfg=1.0, null=None, node="test")
        inv = nodes.pipelines.inversion.optimize_text(tm.model, inv, source, null, mode="negative-prompt",
                                                  guidance_scale=3.0, inner_steps=1, tolerance=1e-5,
                                                  node="test")
        p2p = nodes.pipelines.attention_patches
        mode = pack.psg_core.attention_control.P2PMode(settings.pop("mode", "replace"))
        cfg = p2p.P2PSettings(mode=mode, **settings)
        guidance = perceptual(inv, image) if perceptual is not None else None
        return nodes.pipelines.p2p.run_p2p(tm.model, tm.clip, inv, source_text, edit_text, cfg, 0.0, 3.0,
                                       observers=observers, perceptual=guidance)


def test_host_p2p_replacement_inside_window_only(comfy_host, tiny_models) -> None:
    seen: list[dict] = []
    _run(comfy_host, tiny_models, "sd15", SWAP, observers=[seen.append], cross_window=0.5, self_window=0.25,
         self_layers="all")
    cross = [e for e in seen if e["kind"] == "attn2"]
    window = 2  # int(0.5 * (4 + 1))
    assert {e["step"] for e in cross} == set(range(window))  # no explicit maps needed after the window
    for e in cross:
        p, s, t = e["probs"], e["source_rows"], e["edit_rows"]
        assert e["edited"] and torch.equal(p[t], p[s])  # word swap: every column is the source's
    selfs = [e for e in seen if e["kind"] == "attn1"]
    assert {e["step"] for e in selfs} == {0} and all(torch.equal(e["probs"][e["edit_rows"]],
                                                                 e["probs"][e["source_rows"]]) for e in selfs)
    # outside the window (capture on via blend words): the edit rows keep their own maps
    seen.clear()
    _run(comfy_host, tiny_models, "sd15", SWAP, observers=[seen.append], cross_window=0.5, self_window=0.0,
         blend_words="cat, dog")
    late = [e for e in seen if e["kind"] == "attn2" and e["step"] >= window]
    assert late and all(not e["edited"] for e in late)
    assert all(not torch.allclose(e["probs"][e["edit_rows"]], e["probs"][e["source_rows"]]) for e in late)


def test_host_p2p_reweight_scales_the_word_column(comfy_host, tiny_models) -> None:
    seen: list[dict] = []
    _run(comfy_host, tiny_models, "sd15", SOURCE, observers=[seen.append], mode="reweight", cross_window=1.0,
         self_window=0.0, reweight_words="cat:3")
    cat = 5  # BOS a photo of a cat
    cross = [e for e in seen if e["kind"] == "attn2"]
    assert len({e["step"] for e in cross}) == STEPS
    for e in cross:
        p, s, t = e["probs"], e["source_rows"], e["edit_rows"]
        assert torch.equal(p[t][..., cat], p[s][..., cat] * 3)
        others = [i for i in range(p.shape[-1]) if i != cat]
        assert torch.equal(p[t][..., others], p[s][..., others])


def test_host_p2p_alignment_on_real_tokens(comfy_host, tiny_models, caplog) -> None:
    patches = comfy_host.pack_module().nodes.pipelines.attention_patches
    modes = comfy_host.pack_module().psg_core.attention_control.P2PMode
    clip = tiny_models("sd15").clip
    src = patches.prompt_tokens(clip, SOURCE, "t")
    longer = patches.prompt_tokens(clip, "a photo of a xylophone cat", "t")
    xylo = patches.word_positions(clip, longer, "xylophone")
    assert xylo == [5, 6, 7]  # three tokens
    plan = patches.make_plan(clip, SOURCE, "a photo of a xylophone cat",
                             patches.P2PSettings(mode=modes.REFINE), "t")
    assert plan.mapping.alpha[xylo].tolist() == [0, 0, 0]
    assert plan.mapping.index[8] == 5 and plan.mapping.alpha[8] == 1  # 'cat' keeps its source column
    assert plan.mapping.index[:5].tolist() == [0, 1, 2, 3, 4] and len(src.meaningful) == 7
    with caplog.at_level(logging.INFO):
        swap = patches.make_plan(clip, SOURCE, "a photo of a xylophone", patches.P2PSettings(), "t")
    assert swap.mode is modes.REFINE and "falling back to refinement" in caplog.text
    same = patches.make_plan(clip, SOURCE, SWAP, patches.P2PSettings(blend_words="cat, dog"), "t")
    assert same.mode is modes.REPLACE and same.blend_source == [5] and same.blend_edit == [5]
    with pytest.raises(ValueError, match="neither prompt"):
        patches.make_plan(clip, SOURCE, SWAP, patches.P2PSettings(blend_words="zebra"), "t")
    # SDXL: alignment reads CLIP-L; CLIP-G's tokens sit at the same positions (only the padding differs)
    xl = tiny_models("sdxl").clip.tokenize("a photo of a xylophone cat", return_word_ids=True)
    words = [[t[0] for t in chunk if t[2] > 0] for chunk in (xl["l"][0], xl["g"][0])]
    assert len(xl["l"][0]) == len(xl["g"][0]) and words[0] == words[1]
    assert patches.prompt_tokens(tiny_models("sdxl").clip, "a photo of a xylophone cat", "t").meaningful == \
        longer.meaningful


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_host_p2p_local_blend_keeps_source_outside_mask(comfy_host, photo128, family) -> None:
    p = P2PGraph(family, photo128, blend_words="cat, dog", cross_window=0.5, blend_threshold=0.9)
    result = comfy_host.run(p.g.finalize(), outputs=[p.p2p.id])
    edit, mask, source = (result.output(p.p2p.id, i) for i in range(3))
    edit, source = edit["samples"], source["samples"]
    assert mask.shape == (1, 128, 128) and 0 < float(mask.mean()) < 1
    latent_mask = mask[:, ::8, ::8][:, None].expand_as(edit)
    assert torch.equal(edit[latent_mask == 0], source[latent_mask == 0])
    assert not torch.equal(edit[latent_mask == 1], source[latent_mask == 1])


def test_host_p2p_local_blend_at_every_blended_step(comfy_host, tiny_models, monkeypatch) -> None:
    """Every LocalBlend the real run applies leaves the edit branch equal to the source branch outside
    its mask (recorded around the sampler's own blend call), from the blend start on."""
    two_branch = comfy_host.pack_module().psg_core.two_branch
    real = two_branch.local_blend
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recorded(x_src, x_edit, mask):
        out = real(x_src, x_edit, mask)
        calls.append((x_src.clone(), out.clone(), mask.clone()))
        return out

    monkeypatch.setattr(two_branch, "local_blend", recorded)
    _run(comfy_host, tiny_models, "sd15", SWAP, size=128, blend_words="cat, dog", blend_threshold=0.9,
         blend_start=0.5, cross_window=0.5)
    assert len(calls) == STEPS - int(0.5 * STEPS)
    for x_src, out, mask in calls:
        outside = (mask == 0).expand_as(out)
        assert 0 < int(outside.sum()) < out.numel()
        assert torch.equal(out[outside], x_src[outside]) and not torch.equal(out, x_src)


class _GradientProbe:
    """Stands in for the perceptual guidance's ImageLoss (attribute reads and writes go to it) and
    records, at every guided step, the loss gradient w.r.t. the decoded image and the mask in use."""

    def __init__(self, real) -> None:
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "seen", [])

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __setattr__(self, name, value) -> None:
        setattr(self.real, name, value)

    def __call__(self, image, reference):
        value = self.real(image, reference)
        (grad,) = torch.autograd.grad(value, image, retain_graph=True)
        self.seen.append((grad.detach(), self.real.mask))
        return value


def test_host_p2p_attention_mask_zeroes_the_perceptual_gradient_inside(comfy_host, tiny_models,
                                                                       lpips_folder) -> None:
    import torch.nn.functional as F

    nodes = comfy_host.pack_module().nodes
    tm = tiny_models("sd15")
    probes: list[_GradientProbe] = []

    def perceptual(inversion, image):
        guidance = nodes.pipelines.p2p.make_perceptual(tm.model, tm.vae, image,
                                                       nodes.lpips_nodes.load("alex"), 1.0, None, inversion)
        guidance.loss = _GradientProbe(guidance.loss)
        probes.append(guidance.loss)
        return guidance

    _run(comfy_host, tiny_models, "sd15", SWAP, size=128, perceptual=perceptual, blend_words="cat, dog",
         blend_threshold=0.9)
    seen = probes[0].seen
    assert len(seen) == STEPS
    for grad, mask in seen:
        assert mask is not None and mask.shape[-2:] == (16, 16)
        inside = F.interpolate(mask.to(grad), size=grad.shape[-2:], mode="bilinear", align_corners=False) == 1
        inside = inside.expand_as(grad)
        assert 0 < int(inside.sum()) < grad.numel()
        assert torch.count_nonzero(grad[inside]) == 0 and torch.count_nonzero(grad[~inside]) > 0


def test_host_p2p_perceptual_with_attention_mask_runs(comfy_host, photo, lpips_folder) -> None:
    p = P2PGraph("sd15", photo, blend_words="cat, dog", lpips=True)
    result = comfy_host.run(p.g.finalize(), outputs=[p.p2p.id])
    assert torch.isfinite(result.output(p.p2p.id, 0)["samples"]).all()
    bad = P2PGraph("sd15", photo, lpips=True)  # attention mask without blend words
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(bad.g.finalize(), outputs=[bad.p2p.id])
    assert "blend_words" in caught.value.exception_message


def test_host_p2p_flow_model_refused(comfy_host, photo) -> None:
    p = P2PGraph("flow", photo)
    with pytest.raises(PromptExecutionError) as caught:
        comfy_host.run(p.g.finalize(), outputs=[p.p2p.id])
    message = caught.value.exception_message
    assert "PSG P2P Sampler" in message and "UNet" in message and "flow" in message


def test_host_p2p_user_model_unchanged(comfy_host, tiny_models) -> None:
    tm = tiny_models("sd15")
    options = copy.deepcopy(tm.model.model_options)
    weights = {k: v.clone() for k, v in tm.model.model.state_dict().items()}
    _run(comfy_host, tiny_models, "sd15", SWAP, blend_words="cat, dog")
    assert tm.model.model_options == options
    assert "patches_replace" not in tm.model.model_options.get("transformer_options", {})
    assert "model_function_wrapper" not in tm.model.model_options
    assert all(torch.equal(v, tm.model.model.state_dict()[k]) for k, v in weights.items())


def test_host_p2p_split_batch_gives_the_same_edit(comfy_host, tiny_models, monkeypatch) -> None:
    """When ComfyUI runs the conds in separate calls (low memory), the source rows come first and
    their maps are kept for the edit rows of the same step."""
    together = _run(comfy_host, tiny_models, "sd15", SWAP, blend_words="cat, dog")
    calls: list[int] = []
    real_apply = tiny_models("sd15").model.model.apply_model

    def counted(x, *args, **kwargs):
        calls.append(x.shape[0])
        return real_apply(x, *args, **kwargs)

    monkeypatch.setattr(tiny_models("sd15").model.model, "memory_required", lambda *a, **k: float("inf"))
    monkeypatch.setattr(tiny_models("sd15").model.model, "apply_model", counted)
    split = _run(comfy_host, tiny_models, "sd15", SWAP, blend_words="cat, dog")
    assert calls and max(calls[-4:]) == 1  # one cond per model call
    for a, b in zip(together, split, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def test_host_p2p_prompts_longer_than_77_tokens(comfy_host, tiny_models) -> None:
    tail = ", " + " ".join(["very detailed"] * 40)
    seen: list[dict] = []
    edit, _, _ = _run(comfy_host, tiny_models, "sd15", SWAP + tail, observers=[seen.append],
                      source_text=SOURCE + tail, blend_words="cat, dog", cross_window=1.0, self_window=0.0)
    cross = [e for e in seen if e["kind"] == "attn2" and e["edited"]]
    assert cross and all(e["probs"].shape[-1] == 154 for e in cross)
    assert all(torch.equal(e["probs"][e["edit_rows"]], e["probs"][e["source_rows"]]) for e in cross)
    assert torch.isfinite(edit).all()


def test_host_p2p_nodes_have_tooltips_and_help_pages(comfy_host) -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "web" / "docs"
    for node_id in ("PSGTextEncode", "PSGPromptToPrompt", "PSGP2PSampler"):
        schema = comfy_host.node_class(node_id).define_schema()
        assert schema.description
        assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
        assert (docs / f"{node_id}.md").is_file()


def test_host_p2p_cli_runs_the_p2p_workflow_headless(comfy_server, tmp_path) -> None:
    import json

    from psg_testing.cli_support import read_pixels, run_cli, swap_checkpoint_loader, write_json, write_photo

    from psg_cli import workflow

    save_random_alexnet(comfy_server.base_dir / "models" / "lpips")
    api = swap_checkpoint_loader(workflow.load_workflow("psg_p2p"), family="sd15")
    for node in api.values():
        for key, value in (("steps", 3), ("inner_steps", 1)):
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = value
    twin = write_json(tmp_path / "p2p_tiny.json", api)
    photo = write_photo(tmp_path / "cat.png")
    proc = run_cli("edit", photo, "--source", "a photo of a cat", "--target", "a photo of a dog",
                   "--p2p", "replace", "--blend", "cat, dog", "--reweight", "dog:1.5", "--workflow", twin,
                   "--guidance-vae", "none",
                   "--server", comfy_server.url, "--out", tmp_path / "out", "--name", "result", "-q")
    assert proc.returncode == 0, f"{proc.stderr}\n{comfy_server.log_tail()}"
    assert read_pixels(tmp_path / "out" / "result.png").shape == (128, 128, 3)
    settings = json.loads((tmp_path / "out" / "result.json").read_text())
    p2p = next(n for n in settings["prompt"].values() if n["class_type"] == "PSGPromptToPrompt")["inputs"]
    assert (p2p["mode"], p2p["blend_words"], p2p["reweight_words"]) == ("replace", "cat, dog", "dog:1.5")
    assert "Edited region" in settings["outputs"]


def test_host_p2p_sd2_v_prediction_model_works(comfy_host, tiny_models) -> None:
    """SD2's text encoder is OpenCLIP-H (tokenizer key 'h'); v-prediction lives in the same space."""
    seen: list[dict] = []
    edit, source, _ = _run(comfy_host, tiny_models, "sd2v", SWAP, observers=[seen.append], cross_window=1.0)
    assert any(e["edited"] and e["kind"] == "attn2" for e in seen)
    assert torch.isfinite(edit).all() and (edit - source).abs().max() > 1e-4


def test_host_p2p_painted_mask_widens_the_attention_mask(comfy_host) -> None:
    """The mask editor's painting (via PSG Fit Image) is left free as well: the perceptual loss mask
    is the union of the (upsampled) attention mask and the painting; 'painted mask' uses the painting
    alone; an unusable choice names the fix."""
    p2p = comfy_host.pack_module().nodes.pipelines.p2p
    attention = torch.zeros(1, 1, 2, 2)
    attention[..., 0, 0] = 1.0  # top-left latent pixel edited
    painted = torch.zeros(1, 1, 4, 4)
    painted[..., 3, 3] = 1.0  # bottom-right image pixel painted
    union = p2p.perceptual_mask_fn(p2p.MaskUse.ATTENTION_MASK, lambda step: attention, painted, "t")(0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., :2, :2] = 1.0
    expected[..., 3, 3] = 1.0
    assert torch.equal(union, expected)
    assert torch.equal(p2p.perceptual_mask_fn(p2p.MaskUse.PAINTED_MASK, lambda step: attention, painted,
                                              "t")(0), painted)
    assert p2p.perceptual_mask_fn(p2p.MaskUse.ATTENTION_MASK, None, painted, "t")(0) is painted
    assert p2p.perceptual_mask_fn(p2p.MaskUse.WHOLE_IMAGE, lambda step: attention, painted, "t") is None
    with pytest.raises(ValueError, match="needs a painted mask"):
        p2p.perceptual_mask_fn(p2p.MaskUse.PAINTED_MASK, lambda step: attention, None, "t")
    with pytest.raises(ValueError, match="blend_words .* or a painted mask"):
        p2p.perceptual_mask_fn(p2p.MaskUse.ATTENTION_MASK, None, None, "t")
