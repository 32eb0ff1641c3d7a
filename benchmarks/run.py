"""PSG cost benchmarks: ratios measured side by side in ONE run.

Run:   .venv/bin/python -m benchmarks.run            # full SD1.5 shapes, 128 px (~5 min, 2 cores)
       .venv/bin/python -m benchmarks.run --quick    # narrow SD1.5 topology (~1-2 min)
Options: --size PX (default 128), --repeats N (median of N, default 3), --skip-host.

Why ratios: the CPUs here are shared, so seconds are noise; a ratio of two things measured
alternately (A B A B ..., median of each) in the same run is not. Steps are timed in CPU seconds
of this process (time.process_time), which other processes' load disturbs far less than wall
time; the host phases are wall time (one run each). Every timed network is
ComfyUI's own class with seeded random weights (benchmarks/sd15_shapes.py); the method code is
psg_core itself (ddim_sample, PerceptualGuidance, optimize_null_text), driven through its
denoiser contract.

Peak memory: torch's CPU allocator keeps no statistics, so the process's resident-set high-water
mark (VmHWM in /proc/self/status) is reset before each measured step (writing 5 to
/proc/self/clear_refs) and read after it. The script re-executes itself once with
MALLOC_MMAP_THRESHOLD_=65536, so glibc serves every tensor above 64 KiB by its own mmap and freed
tensors leave the resident set at once (without it, a step reuses heap pages an earlier one freed
and its peak reads near 0); the steps can then be measured one after another in one process.
"activations" = peak minus the resident set before the step (weights already resident); "with
weights" adds the bytes of the networks a step needs (UNet + VAE for every edit, LPIPS and the
guidance decoder for guided steps), as a GPU would hold them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from psg_core.ddim import ddim_invert, ddim_sample
from psg_core.guidance import TextGuidance
from psg_core.losses import ImageLoss
from psg_core.null_text import direct_inversion_offsets, negative_prompt_nulls, optimize_null_text
from psg_core.perceptual import PerceptualGuidance
from psg_core.spaces import NoiseSpace

from . import sd15_shapes

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks")
MiB = 2**20
MMAP_ENV, MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_", "65536"
SIGMA = 3.0  # a mid-schedule SD1.5 sigma; one DDIM step from it to 0
W_SOURCE, W_EDIT = 2.0, 7.5


# --------------------------------------------------------------------------- table


@dataclass
class Table:
    """Markdown rows: what, measured ratio, target, verdict, the numbers behind it."""

    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def add(self, what: str, ratio: float, target: float | None, detail: str) -> None:
        verdict = "report" if target is None else ("PASS" if ratio <= target else "FAIL")
        self.rows.append((what, f"{ratio:.3f}", "-" if target is None else f"<= {target:g}", verdict, detail))

    def note(self, what: str, value: str, detail: str) -> None:
        self.rows.append((what, value, "-", "report", detail))

    def markdown(self) -> str:
        lines = ["| measurement | ratio | target | verdict | measured |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


# --------------------------------------------------------------------------- timing and memory


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU seconds of each fn, run round-robin after one untimed warm-up round.

    CPU time of this process (all its threads), not wall time: on a shared machine the wall time
    of the same call swings several-fold with other people's load, its CPU time far less."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            if r > 0:
                times[name].append(cpu)
            logger.info("  %-26s round %d: %.3f s CPU (%.3f s wall)", name, r, cpu, wall)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_method_available() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_kib("VmHWM")
        return True
    except (OSError, RuntimeError):
        return False


def ensure_mmap_allocations() -> None:
    """Re-exec once with glibc serving every allocation >= 64 KiB by mmap (module docstring)."""
    if os.environ.get(MMAP_ENV) != MMAP_THRESHOLD:
        main_spec = sys.modules["__main__"].__spec__  # run as ``python -m benchmarks.<name>``
        command = ["-m", main_spec.name] if main_spec is not None else [sys.argv[0]]
        os.execve(sys.executable, [sys.executable, *command, *sys.argv[1:]],
                  {**os.environ, MMAP_ENV: MMAP_THRESHOLD})


def peak_bytes(fn: Callable[[], object]) -> int:
    """Resident-set high-water mark of one call of ``fn`` above the resident set before it."""
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def module_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


# --------------------------------------------------------------------------- the steps


@dataclass
class Steps:
    """One sampling step of each kind on the same latent and conds, plus the passes alone."""

    shapes: sd15_shapes.SD15Shapes
    size: int

    def __post_init__(self) -> None:
        s = self.shapes
        self.latent, self.photo, null, source, edit = sd15_shapes.random_problem(self.size, s.device)
        self.guidance = TextGuidance(null, source, edit, W_SOURCE, W_EDIT)
        self.sigmas = torch.tensor([SIGMA, 0.0], device=s.device)
        self.denoise = s.denoiser()
        self.loss = ImageLoss(s.lpips)
        k = len(self.guidance.conds())
        self._x3 = self.latent.repeat(k, 1, 1, 1)
        self._s3 = torch.full((k,), SIGMA, device=s.device)
        self._ctx3 = torch.cat(self.guidance.conds())
        with torch.no_grad():
            self._x0 = self.guidance.combine(self.denoise(self.latent, self._s3[:1], self.guidance.conds()))

    def sample(self, perceptual: PerceptualGuidance | None = None) -> torch.Tensor:
        return ddim_sample(self.denoise, self.latent, self.sigmas, self.guidance, perceptual=perceptual)

    def guide(self, decode: Callable[[torch.Tensor], torch.Tensor], **options: object) -> PerceptualGuidance:
        loss = self.loss if "loss_scale" not in options else ImageLoss(self.shapes.lpips,
                                                                       loss_scale=options.pop("loss_scale"))
        return PerceptualGuidance(decode, self.photo, loss=loss, **options)

    # the passes a guided step is made of, each alone
    @torch.no_grad()
    def denoiser_call(self) -> torch.Tensor:
        return self.shapes.unet.apply_model(self._x3, self._s3, c_crossattn=self._ctx3)

    def decoder_fb(self, decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        z = self._x0.clone().requires_grad_(True)
        image = (decode or self.shapes.decode)(z)
        return torch.autograd.grad(image, z, torch.ones_like(image))[0]

    def lpips_fb(self) -> torch.Tensor:
        image = self.photo.flip(-1).clone().requires_grad_(True)
        return torch.autograd.grad(self.loss(image, self.photo), image)[0]


def step_section(table: Table, steps: Steps, repeats: int) -> None:
    s = steps.shapes
    fns: dict[str, Callable[[], object]] = {
        "plain triple step": steps.sample,
        "denoiser call (b3)": steps.denoiser_call,
        "guided step (x0)": lambda: steps.sample(steps.guide(s.decode)),
        "VAE decoder f+b": steps.decoder_fb,
        "LPIPS f+b": steps.lpips_fb,
        "guided step (DPS)": lambda: steps.sample(steps.guide(s.decode, through_model=True)),
        "guided step (TAESD)": lambda: steps.sample(steps.guide(s.decode_taesd)),
        "TAESD decoder f+b": lambda: steps.decoder_fb(s.decode_taesd),
        "guided step (half-res)": lambda: steps.sample(steps.guide(s.decode_half)),
        "guided step (block ckpt)": lambda: steps.sample(steps.guide(s.decode_blocks, loss_scale=0.5)),
    }
    t = alternate(fns, repeats)
    floor = t["denoiser call (b3)"] + t["VAE decoder f+b"] + t["LPIPS f+b"]

    def ratio(what: str, numerator: str, denominator: str, target: float | None, extra: str = "") -> None:
        table.add(what, t[numerator] / t[denominator], target,
                  f"{t[numerator]:.3f} s / {t[denominator]:.3f} s{extra}")

    ratio("triple-prompt step / one batch-3 denoiser call", "plain triple step", "denoiser call (b3)", 1.05)
    table.add("x0-only LPIPS-guided step / sum of its passes alone", t["guided step (x0)"] / floor, 1.15,
              f"{t['guided step (x0)']:.3f} s / ({t['denoiser call (b3)']:.3f} + {t['VAE decoder f+b']:.3f} "
              f"+ {t['LPIPS f+b']:.3f}) s")
    ratio("through-model (DPS) guided step / x0-only guided step",
          "guided step (DPS)", "guided step (x0)", None)
    ratio("x0-only guided step (full VAE decoder) / plain triple step",
          "guided step (x0)", "plain triple step", None)
    ratio("TAESD-guided step / plain triple step", "guided step (TAESD)", "plain triple step", 1.15,
          f" (TAESD f+b alone {t['TAESD decoder f+b']:.3f} s)")
    ratio("block-checkpointed decoder (+ loss at 1/2) guided step / x0-only guided step",
          "guided step (block ckpt)", "guided step (x0)", None)
    ratio("half-resolution full-decoder guided step / plain triple step", "guided step (half-res)",
          "plain triple step", None)


def memory_section(table: Table, steps: Steps) -> None:
    s = steps.shapes
    if not memory_method_available():
        table.note("peak memory", "n/a", "/proc/self/clear_refs not writable here: no RSS high-water reset")
        return
    base = module_bytes(s.unet, s.vae.first_stage_model)
    extra_lpips = module_bytes(s.lpips)
    decoder_only = module_bytes(s.vae.first_stage_model.decoder, s.vae.first_stage_model.post_quant_conv)
    configs: list[tuple[str, Callable[[], object], int, float | None]] = [
        ("plain triple step", steps.sample, base, None),
        ("guided step, full decoder", lambda: steps.sample(steps.guide(s.decode)), base + extra_lpips, None),
        ("guided step, full decoder, checkpoint + loss at 1/2",
         lambda: steps.sample(steps.guide(s.decode, checkpoint=True, loss_scale=0.5)),
         base + extra_lpips, 1.5),
        ("guided step, full decoder, block checkpoints + loss at 1/2",
         lambda: steps.sample(steps.guide(s.decode_blocks, loss_scale=0.5)), base + extra_lpips, 1.5),
        ("guided step, TAESD", lambda: steps.sample(steps.guide(s.decode_taesd)),
         base + extra_lpips + module_bytes(s.taesd), 1.5),
        ("guided step, half-res full decoder", lambda: steps.sample(steps.guide(s.decode_half)),
         base + extra_lpips, None),
    ]
    measured = []
    for name, fn, weights, target in configs:
        steps_peak = [peak_bytes(fn) for _ in range(2)]  # the first call may allocate lazily
        act = min(steps_peak)
        logger.info("  memory %-50s activations %.1f MiB (runs: %s)", name, act / MiB,
                    ", ".join(f"{p / MiB:.1f}" for p in steps_peak))
        measured.append((name, act, weights, target))
    _, act0, w0, _ = measured[0]
    for name, act, weights, target in measured[1:]:
        table.add(f"peak memory with weights: {name} / plain step", (act + weights) / (act0 + w0), target,
                  f"({act / MiB:.0f} + {weights / MiB:.0f}) / ({act0 / MiB:.0f} + {w0 / MiB:.0f}) MiB "
                  f"(activations + weights)")
        table.add(f"peak activations: {name} / plain step", act / max(act0, 1), None,
                  f"{act / MiB:.1f} / {act0 / MiB:.1f} MiB (decoder weights {decoder_only / MiB:.0f} MiB)")


# --------------------------------------------------------------------------- null-text (analytic)


class GradCounter:
    """Counts the denoiser calls made with autograd on (the null-text optimization passes)."""

    def __init__(self, model: Callable) -> None:
        self.model, self.with_grad, self.calls = model, 0, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, conds: list) -> list[torch.Tensor]:
        self.calls += 1
        self.with_grad += int(torch.is_grad_enabled())
        return self.model(x, sigma, conds)


def null_text_section(table: Table, steps: int = 50, scale: float = 7.5) -> None:
    from .reconstruction_table import problem, rmse, schedule

    space = NoiseSpace.VE
    model, source, edit, null, x0 = problem(space)
    sig = schedule(steps, space)
    traj = ddim_invert(model, x0, sig, source, space=space, fixed_point_iters=2)
    rev, g = sig.flip(0), TextGuidance(null, source, edit, scale, 0.0)

    def err(**kw: object) -> float:
        return rmse(ddim_sample(model, traj.noise, rev, g, space=space, **kw), x0)

    worst = 12 * steps  # the reference schedule's worst case: 1 source + 10 Adam + 1 final call per step
    results = {}
    # reference with tol -1: its stop test (loss < tol + 2e-5 j) never passes, so every step runs all 10
    for name, fit, tol in (("reference, no early stop", "reference", -1.0),
                           ("reference, early stop", "reference", None),
                           ("secant (default)", "secant", None)):
        counter = GradCounter(model)
        nulls = optimize_null_text(counter, traj, source, null, guidance_scale=scale, inner_steps=10, tol=tol,
                                   schedule=fit)
        results[name] = (counter.with_grad, counter.calls, err(nulls=nulls))
    full_passes, full_calls, full_err = results["reference, no early stop"]
    _, ref_calls, ref_err = results["reference, early stop"]
    passes, calls, e = results["secant (default)"]
    plain = err()
    table.add(f"null-text: denoiser calls used / reference worst case ({worst // steps} x {steps})",
              calls / worst, 0.40,
              f"{calls} calls ({passes} fwd+bwd); reconstruction RMSE {e:.2e} vs {full_err:.2e} for the "
              f"reference with all {full_calls} calls and {ref_err:.2e} with its early stop ({ref_calls} "
              f"calls) (plain CFG {scale}: {plain:.2e}); analytic model, 50 steps")
    counter = GradCounter(model)
    neg = err(nulls=negative_prompt_nulls(traj, source))
    table.add(f"negative-prompt mode: extra calls / {worst}", counter.calls / worst, None,
              f"{counter.calls} extra calls; RMSE {neg:.2e}")
    offsets = direct_inversion_offsets(counter, traj, source, null, guidance_scale=scale)
    table.add(f"direct-offsets mode: extra calls / {worst}", counter.calls / worst, None,
              f"{counter.calls} extra calls (1 per step, no backward); RMSE {err(offsets=offsets):.2e}")


# --------------------------------------------------------------------------- whole edit through the host


def host_section(table: Table, steps: int, inner_steps: int) -> None:
    """The advanced graph on the in-process ComfyUI with the tiny SD1.5 model, one phase per prompt
    (cached nodes are reused), so each phase's wall time is its own."""
    from psg_testing import host

    host.prepare_comfy_import()
    from psg_testing.host_inprocess import InProcessHost

    with tempfile.TemporaryDirectory(prefix="psg_bench_") as tmp:
        comfy_host = InProcessHost.boot(Path(tmp))
        try:
            if "PSGDDIMInversion" not in comfy_host.node_class_mappings:
                table.note("whole edit through the host", "n/a", "PSG nodes not registered in the host")
                return
            graph, phases = _edit_graph(Path(tmp), steps, inner_steps)
            seconds: dict[str, float] = {}
            for phase, node_ids in phases:
                t0 = time.perf_counter()
                comfy_host.run(graph, outputs=node_ids, reuse_cache=phase != "setup")
                seconds[phase] = time.perf_counter() - t0
                logger.info("  host phase %-12s %.3f s", phase, seconds[phase])
        finally:
            comfy_host.close()
    seconds.pop("setup")
    total = sum(seconds.values())
    shares = ", ".join(f"{p} {v / total:.0%}" for p, v in seconds.items())
    table.note(f"whole edit, tiny SD1.5 in ComfyUI ({steps} steps, null-text {inner_steps} inner): "
               "phase shares",
               f"{total:.1f} s", shares + " (" + ", ".join(f"{v:.2f} s" for v in seconds.values()) + ")")


def _edit_graph(base: Path, steps: int, inner_steps: int) -> tuple[dict, list[tuple[str, list[str]]]]:
    import folder_paths
    import torchvision
    from comfy_execution.graph_utils import GraphBuilder
    from PIL import Image
    from psg_testing.tiny_models import IMAGE_SIZE
    from skimage import data

    lpips_dir = base / "models" / "lpips"
    lpips_dir.mkdir(parents=True)
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, lpips_dir / "alexnet-owt-7be5be79.pth")
    folder_paths.add_model_folder_path("lpips", str(lpips_dir))
    Image.fromarray(data.chelsea()).resize((IMAGE_SIZE, IMAGE_SIZE)).save(base / "input" / "cat.png")

    g = GraphBuilder(prefix="")
    ck = g.node("PSGTestTinyCheckpoint", family="sd15", seed=0)
    source = g.node("CLIPTextEncode", clip=ck.out(1), text="a photo of a cat")
    edit = g.node("CLIPTextEncode", clip=ck.out(1), text="a photo of a tiger")
    null = g.node("CLIPTextEncode", clip=ck.out(1), text="")
    image = g.node("LoadImage", image="cat.png")
    lp = g.node("PSGLPIPSLoader", net="alex")
    latent = g.node("VAEEncode", pixels=image.out(0), vae=ck.out(2))
    inv = g.node("PSGDDIMInversion", model=ck.out(0), latent=latent.out(0), source=source.out(0), steps=steps,
                 scheduler="simple", cfg=1.0)
    opt = g.node("PSGTextGuidanceOptimize", model=ck.out(0), inversion=inv.out(0), source=source.out(0),
                 null=null.out(0), mode="null-text optimization", guidance_scale=W_SOURCE + W_EDIT,
                 inner_steps=inner_steps, tolerance=1e-5)
    guider = g.node("PSGTriplePromptGuider", model=ck.out(0), null=null.out(0), source=source.out(0),
                    edit=edit.out(0), w_source=W_SOURCE, w_edit=W_EDIT, inversion=opt.out(0))
    sampler = g.node("PSGPerceptualSampler", vae=ck.out(2), reference=image.out(0), lpips=lp.out(0),
                     scale=1.0, start=0.0, end=1.0, every=1, gradient="x0 (fast)", inversion=opt.out(0))
    sigmas = g.node("BasicScheduler", model=ck.out(0), scheduler="simple", steps=steps, denoise=1.0)
    run = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise").out(0), guider=guider.out(0),
                 sampler=sampler.out(0), sigmas=sigmas.out(0), latent_image=inv.out(1))
    decode = g.node("VAEDecode", samples=run.out(0), vae=ck.out(2))
    prompt = g.finalize()
    setup = [n.id for n in (ck, source, edit, null, image, lp)]
    return prompt, [("setup", setup), ("encode", [latent.id]), ("inversion", [inv.id]),
                    ("optimization", [opt.id]), ("sampling", [run.id]), ("decode", [decode.id])]


# --------------------------------------------------------------------------- main


def machine() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {datetime.date.today().isoformat()}")


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    logger.info("== %s", name)
    yield
    logger.info("== %s done in %.1f s", name, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="narrow SD1.5 topology, 2 repeats, 10-step host edit (default 20 steps)")
    parser.add_argument("--size", type=int, default=128, help="image side in px for the step benchmarks")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (median)")
    parser.add_argument("--skip-host", action="store_true", help="skip the whole edit through ComfyUI")
    args = parser.parse_args(argv)
    ensure_mmap_allocations()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.size % 64:
        parser.error("--size must be a multiple of 64")
    repeats = args.repeats or (2 if args.quick else 3)
    torch.manual_seed(0)

    table = Table()
    sd15_shapes.comfy_import(cpu=True)
    with section("building networks"):
        shapes = sd15_shapes.build(narrow=args.quick)
    steps = Steps(shapes, args.size)
    with section("step timings"):
        step_section(table, steps, repeats)
    with section("peak memory"):
        memory_section(table, steps)
    with section("null-text optimization (analytic)"):
        null_text_section(table)
    if not args.skip_host:
        with section("whole edit through ComfyUI"):
            host_section(table, steps=10 if args.quick else 20, inner_steps=10)

    print(f"### PSG benchmarks ({'quick' if args.quick else 'full'})\n")
    print(f"Machine: {machine()}  ")
    print(f"Networks: {shapes.config}; steps at {args.size} px ({args.size // 8}x{args.size // 8} latent), "
          f"float32 CPU, process CPU seconds, median of {repeats} alternating rounds; sigma {SIGMA}, "
          f"w_source {W_SOURCE}, w_edit {W_EDIT}.\n")
    print(table.markdown())
    failed = [row[0] for row in table.rows if row[3] == "FAIL"]
    if failed:
        print(f"\n{len(failed)} target(s) missed: " + "; ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
