"""A 512 px, 50-step PSG edit with a random-weight full-size SD1.5 on CUDA: seconds and peak GPU
memory per phase. Run it through ``benchmarks/gpu_check.sh``.

Why random weights: the cost of a phase depends on the architecture and the number of passes,
not on the weights, and a GPU machine may have no checkpoint. The one caveat is null-text
optimization's early stop: it reacts to the reconstruction error, so with random weights it may
run all ``inner_steps`` per step (the worst case; the count of passes is printed).

Phases: encode (VAE encoder), inversion (50 steps, source prompt), null-text optimization (10
inner, fitted at w_source + w_edit), sampling (triple prompt + LPIPS guidance on the decoded
Tweedie x0 through the full VAE decoder), decode; then the sampling variants (no perceptual
guidance, TAESD, half resolution, checkpointed decode + loss at 1/2 size) and the fast text modes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.losses import ImageLoss
from psg_core.null_text import direct_inversion_offsets, negative_prompt_nulls, optimize_null_text
from psg_core.perceptual import PerceptualGuidance

from . import sd15_shapes

logger = logging.getLogger("gpu_edit")
GiB = 2**30
W_SOURCE, W_EDIT = 0.0, 7.5  # the one-node edit's defaults


@dataclass
class Phase:
    name: str
    seconds: float
    peak: int  # max_memory_allocated during the phase, bytes
    resident: int  # memory_allocated when it started (weights and kept tensors)
    note: str = ""


@contextmanager
def measured(phases: list[Phase], name: str, note: str = "") -> Iterator[None]:
    """Wall time and CUDA peak allocation of the block (peaks read 0 on the CPU smoke test)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated() if cuda else 0
    t0 = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    phases.append(Phase(name, time.perf_counter() - t0, peak, resident, note))
    logger.info("%-40s %.2f s, peak %.2f GiB", name, phases[-1].seconds, phases[-1].peak / GiB)


def sigmas_for(unet: object, steps: int) -> torch.Tensor:
    """ComfyUI's 'simple' schedule for the model (descending, ending at 0)."""
    import comfy.samplers

    sig = comfy.samplers.calculate_sigmas(unet.model_sampling, "simple", steps).float()
    return sig if float(sig[-1]) == 0 else torch.cat([sig, sig.new_zeros(1)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="UNet dtype")
    parser.add_argument("--no-variants", action="store_true", help="only the main edit's phases")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny CPU run of the same code (narrow nets, fp32) to check the script, not to "
                             "measure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    sd15_shapes.comfy_import(cpu=args.cpu_smoke)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_edit: no CUDA device visible to torch; nothing measured.")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.cpu_smoke:
        dtype = torch.float32
    t0 = time.perf_counter()
    shapes = sd15_shapes.build(narrow=args.cpu_smoke, device="cpu" if args.cpu_smoke else "cuda", dtype=dtype,
                               vae_dtype=torch.float32)
    build_s = time.perf_counter() - t0
    dev = shapes.device
    latent_noise, photo, null, source, edit = sd15_shapes.random_problem(args.size, dev, dtype)
    del latent_noise
    den = shapes.denoiser()
    sig = sigmas_for(shapes.unet, args.steps).to(dev)
    sig_up = sig.flip(0).clone()
    sig_up[0] = 0.0
    guidance = TextGuidance(null, source, edit, W_SOURCE, W_EDIT)
    loss = ImageLoss(shapes.lpips)
    phases: list[Phase] = []

    def guide(decode: Callable[[torch.Tensor], torch.Tensor], **kw: object) -> PerceptualGuidance:
        metric = ImageLoss(shapes.lpips, loss_scale=kw.pop("loss_scale")) if "loss_scale" in kw else loss
        return PerceptualGuidance(decode, photo, loss=metric, **kw)

    # The core is called directly (as the nodes do inside their gradient context), so no
    # inference_mode here: null-text optimization differentiates the null embedding.
    with measured(phases, "encode"), torch.no_grad():
        z = shapes.vae.first_stage_model.encode(photo.to(shapes.vae_dtype) * 2 - 1)
        x0 = shapes.unet.process_latent_in(z).to(dtype)
    with measured(phases, "inversion", f"{args.steps} calls, batch 1"):
        den.calls = 0
        traj = ddim_invert(den, x0, sig_up, source)
    with measured(phases, "null-text optimization"):
        den.calls = 0
        nulls = optimize_null_text(den, traj, source, null, guidance_scale=W_SOURCE + W_EDIT,
                                   inner_steps=args.inner_steps)
    phases[-1].note = f"{den.calls} calls (worst case {args.steps * (args.inner_steps + 2)})"
    with measured(phases, "sampling, full-decoder LPIPS guidance", "batch-2/3 call + decoder f+b per step"):
        out = ddim_sample(den, traj.noise, sig, guidance, nulls=nulls, perceptual=guide(shapes.decode))
    with measured(phases, "decode"), torch.no_grad():
        image = shapes.decode(out.float())
    main_phases = list(phases)
    finite = bool(torch.isfinite(image).all())
    if not args.no_variants:
        for name, perceptual in (("sampling, no perceptual guidance", None),
                                 ("sampling, TAESD guidance", guide(shapes.decode_taesd)),
                                 ("sampling, half-res full-decoder guidance", guide(shapes.decode_half)),
                                 ("sampling, full decoder, checkpoint + loss 1/2",
                                  guide(shapes.decode, checkpoint=True, loss_scale=0.5)),
                                 ("sampling, block-checkpointed decoder + loss 1/2",
                                  guide(shapes.decode_blocks, loss_scale=0.5))):
            with measured(phases, name):
                ddim_sample(den, traj.noise, sig, guidance, nulls=nulls, perceptual=perceptual)
        with measured(phases, "text mode: negative prompt", "0 extra calls"):
            negative_prompt_nulls(traj, source)
        with measured(phases, "text mode: direct offsets", f"{args.steps} calls, no backward"):
            direct_inversion_offsets(den, traj, source, null, guidance_scale=W_SOURCE + W_EDIT)

    total = sum(p.seconds for p in main_phases)
    where = "CPU smoke test (numbers mean nothing)"
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        where = f"{props.name} ({props.total_memory / GiB:.0f} GiB)"
    print(f"### GPU edit: {where}, torch {torch.__version__}, "
          f"{args.size} px, {args.steps} steps, UNet {str(dtype).removeprefix('torch.')}, VAE fp32\n")
    print(f"Networks: {shapes.config}; built in {build_s:.0f} s; final image finite: {finite}.\n")
    print("| phase | seconds | share of edit | peak allocated GiB | peak above resident GiB | notes |")
    print("|---|---|---|---|---|---|")
    for p in phases:
        share = f"{p.seconds / total:.0%}" if p in main_phases else "-"
        print(f"| {p.name} | {p.seconds:.2f} | {share} | {p.peak / GiB:.2f} | "
              f"{(p.peak - p.resident) / GiB:.2f} | {p.note} |")
    print(f"| **whole edit** | {total:.2f} | 100% | {max(p.peak for p in main_phases) / GiB:.2f} | - | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
