"""Prompt-to-prompt cost: a two-branch step with attention control and LocalBlend capture, against a
one-branch step and against a plain model call with the same number of batch rows.

Run:   .venv/bin/python -m benchmarks.p2p_cost            # full SD1.5 shapes, 128 px (~3-5 min, 2 cores)
       .venv/bin/python -m benchmarks.p2p_cost --quick    # narrow SD1.5 topology
Options: --size PX (default 128), --repeats N (median of N, default 3).

Everything runs through the pack's own host path: a ModelPatcher around ComfyUI's SD1.5 UNet class
(seeded random weights, benchmarks/sd15_shapes.py), cloned and patched by
``nodes.pipelines.attention_patches``, conds batched by ComfyUI's ``calc_cond_batch``, the step by
``psg_core.two_branch``. Timings are process CPU seconds, measured round-robin (A B C D A B C D ...)
in one run, median per measurement (see benchmarks/run.py for why). The one-branch step and the
plain row-matched call run on the same clone with the attention control idle (its patches then
call ComfyUI's own attention).

One-branch step (w_source != 0): [null, source, edit] at x = 3 rows. Two-branch step: the edit
branch's 3 rows plus the source branch's [null, source] = 5 rows. Target: the two-branch step costs
no more than a plain 5-row call, within 10%.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import platform
import sys
from pathlib import Path

import torch

from . import sd15_shapes
from .run import alternate

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks.p2p")
SIGMA = 3.0
W_SOURCE, W_EDIT = 2.0, 7.5
TARGET = 1.10


def load_pack():
    """The pack as ComfyUI imports it (a package by file path, so its relative imports work)."""
    spec = importlib.util.spec_from_file_location("psg_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["psg_pack"] = pack
    spec.loader.exec_module(pack)
    import psg_pack.nodes.host  # noqa: F401
    import psg_pack.nodes.pipelines.attention_patches  # noqa: F401
    return pack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="narrow SD1.5 topology")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="median of N rounds (default 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sd15_shapes.comfy_import(cpu=True)
    import comfy.model_management
    import comfy.model_patcher

    pack = load_pack()
    patches, host = pack.nodes.pipelines.attention_patches, pack.nodes.host
    ac = pack.psg_core.attention_control
    from psg_pack.psg_core.ddim import ddim_step
    from psg_pack.psg_core.guidance import TextGuidance
    from psg_pack.psg_core.two_branch import two_branch_sample

    shapes = sd15_shapes.build(narrow=args.quick)
    latent, _photo, null, source, edit = sd15_shapes.random_problem(args.size, shapes.device)
    model = comfy.model_patcher.ModelPatcher(shapes.unet,
                                             load_device=comfy.model_management.get_torch_device(),
                                             offload_device=comfy.model_management.unet_offload_device())
    tokens = null.shape[1]
    swap = ac.replacement_map(7, 7, tokens)

    def plan(cross: float, self_: float) -> object:
        settings = patches.P2PSettings(mode=ac.P2PMode.REPLACE, cross_window=cross, self_window=self_,
                                       blend_words="cat, tiger")
        return patches.P2PPlan(settings, swap, ac.P2PMode.REPLACE, None, [5], [5])

    latent_hw = (args.size // 8, args.size // 8)
    edited: dict[str, int] = {}
    controller = patches.AttentionController(plan(1.0, 1.0), latent_hw, observers=[
        lambda e: edited.__setitem__(e["kind"], edited.get(e["kind"], 0) + int(e["edited"]))])
    family = host.detect_family(model, "benchmark")
    clone = patches.patched_clone(model, controller, patches.check_unet(model, family, "benchmark"))
    conds = {name: [[t, {}]] for name, t in (("null", null), ("source", source), ("edit", edit))}
    sigmas = torch.tensor([SIGMA, 0.0])
    results: dict[str, float] = {}

    def body(h) -> torch.Tensor:
        bank = h.bank.embeddings
        g = TextGuidance(bank["null"], bank["source"], bank["edit"], W_SOURCE, W_EDIT)
        x = h.latent.clone() + SIGMA * torch.randn(h.latent.shape, generator=torch.Generator().manual_seed(1))
        sig = torch.full((x.shape[0],), SIGMA)
        denoise = patches.branch_denoiser(h, controller)

        def idle() -> None:
            controller.layout = None

        def one_branch() -> None:
            idle()
            outs = h.denoise(x, sig, g.conds())
            ddim_step(x, sigmas[0], sigmas[1], g.combine(outs), family.space)

        def five_rows() -> None:
            idle()
            h.denoise(x, sig, [*g.conds(), bank["null"], bank["source"]])

        def two_branch(cross: float, self_: float):
            def run() -> None:
                edited.clear()
                controller.plan = plan(cross, self_)
                two_branch_sample(denoise, x, sigmas, g, source_scale=W_SOURCE + W_EDIT, space=family.space,
                                  on_step=controller.begin_step, blend=controller.blend_mask, blend_start=0.0)
            return run

        results.update(alternate({
            "one-branch step (3 rows)": one_branch,
            "plain call, 5 rows": five_rows,
            "two-branch step, windows open": two_branch(1.0, 1.0),
            "two-branch step, after windows": two_branch(0.0, 0.0),
        }, args.repeats))
        two_branch(1.0, 1.0)()  # untimed: count the attention layers the control edited in one step
        if not edited.get("attn2"):
            raise RuntimeError("the attention control edited no cross-attention layer: the benchmark "
                               "measured nothing")
        return h.latent

    host.run_on_host(clone, conds, shapes.unet.process_latent_out(latent), body, family=family,
                     fallback="null",
                     sigmas=sigmas.flip(0), node="benchmark")
    one, rows = results["one-branch step (3 rows)"], results["plain call, 5 rows"]
    config = "narrow" if args.quick else "full"
    print(f"\nMachine: {torch.get_num_threads()} torch threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, Python "
          f"{platform.python_version()}, {datetime.date.today()}")
    print(f"SD1.5 UNet ({config}), {args.size} px ({latent_hw[0]}x{latent_hw[1]} latent), float32 CPU, "
          f"process CPU s, median of {args.repeats}; w_source {W_SOURCE}, w_edit {W_EDIT}\n")
    print(f"Attention layers edited per two-branch step with the windows open: {edited.get('attn2', 0)} "
          f"cross, {edited.get('attn1', 0)} self (layers at <= 1/4 of the latent side).\n")
    print("| measurement | CPU s | vs one-branch step | vs plain 5-row call | target |")
    print("|---|---|---|---|---|")
    for name, t in results.items():
        target = f"<= {TARGET:.2f}x 5 rows" if name.startswith("two-branch") else ""
        verdict = (" (met)" if t / rows <= TARGET else " (NOT met)") if target else ""
        print(f"| {name} | {t:.3f} | {t / one:.2f}x | {t / rows:.2f}x | {target}{verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
