"""Command line: ``edit`` one photo, ``edit-batch`` a dataset, ``workflows`` to list them."""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

from . import connection, photo, roles, workflow
from .batch import BatchRun, LocalWorker, Worker
from .dataset import load_dataset, safe_stem
from .edit import DEFAULT_WORKFLOW, Backend, EditRequest, describe_sizes, run_edit
from .errors import CliError

DEFAULT_SERVER = connection.DEFAULT_SERVER
logger = logging.getLogger("psg_cli")


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected x0,y0,x1,y1 as fractions, e.g. 0.2,0.25,0.8,0.55") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError("expected four numbers x0,y0,x1,y1")
    return values


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected I/N, e.g. 1/3 for the first of three machines") from None
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"expected I/N with 1 <= I <= N, got {text}")
    return index, count


def _working_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a whole number of pixels, e.g. 512 (0 keeps the photo's size)") from None
    if value != 0 and value < 64:
        raise argparse.ArgumentTypeError("expected at least 64 px (or 0 to keep the photo's size)")
    return value


def _add_common(p: argparse.ArgumentParser, many_servers: bool) -> None:
    envs = " / ".join(f"${n}" for n in connection.SERVER_ENV)
    where = p.add_argument_group(f"where ComfyUI runs (default: {envs}, else --server {DEFAULT_SERVER})")
    where.add_argument("--server", action="append" if many_servers else "store", metavar="URL",
                       help="ComfyUI server URL" + (" (repeat to share the work, e.g. one per GPU)"
                                                     if many_servers else ""))
    where.add_argument("--token", metavar="TOKEN",
                       help=f"send 'Authorization: Bearer TOKEN' (server behind a proxy; "
                            f"or set ${connection.TOKEN_ENV})")
    where.add_argument("--basic-auth", metavar="USER:PASSWORD",
                       help=f"HTTP basic auth (or set ${connection.BASIC_AUTH_ENV}, "
                            f"or use http://USER:PASSWORD@host)")
    where.add_argument("--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                       help="extra header on every request and the websocket (repeatable)")
    where.add_argument("--comfy-root", type=Path, metavar="DIR",
                       help="run ComfyUI's executor in this process from this ComfyUI folder (no server)")
    where.add_argument("--base-directory", type=Path, metavar="DIR",
                       help="with --comfy-root: ComfyUI's --base-directory "
                            "(models, custom_nodes, input, output)")
    where.add_argument("--cpu", action="store_true", help="with --comfy-root: force CPU")
    p.add_argument("--workflow", default=DEFAULT_WORKFLOW, metavar="NAME",
                   help=f"API workflow: a name from example_workflows/api/ or a file "
                        f"(default {DEFAULT_WORKFLOW}); `python -m psg_cli workflows` lists them")
    p.add_argument("--ckpt", metavar="NAME",
                   help=f"checkpoint file name as ComfyUI lists it "
                        f"(workflow default: {roles.DEFAULT_CHECKPOINT})")
    p.add_argument("--guidance-vae", metavar="NAME",
                   help="VAELoader name for the workflow's 'Guidance VAE' node (the LPIPS gradient's "
                        "decoder, e.g. taesd, taesdxl; files in models/vae_approx), or 'none' to decode "
                        "the guidance with the model's own VAE (default: as in the workflow)")
    p.add_argument("--seed", type=int, metavar="N", help="seed for every seed input of the workflow")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override any node input; NODE is a node id or title (repeatable)")
    p2p = p.add_argument_group("prompt-to-prompt (the psg_p2p workflow unless --workflow names another "
                               "with a PSG Prompt-to-Prompt node)")
    p2p.add_argument("--p2p", choices=roles.P2P_MODES,
                     help="attention control: replace (word swap), refine (added words), "
                          "reweight (--reweight words)")
    p2p.add_argument("--reweight", metavar="WORDS",
                     help="edit-prompt words to scale, e.g. 'tiger:2, striped:0.5'")
    p2p.add_argument("--blend", metavar="WORDS", help="words naming the edited object in either prompt, e.g. "
                                                      "'cat, tiger': LocalBlend and the attention mask")
    size = p.add_argument_group("photo size")
    size.add_argument("--working-size", type=_working_size, metavar="PX",
                      help=f"scale the photo down to this long side before the edit (default: the model "
                           f"family's, {roles.DEFAULT_WORKING_SIZE} for SD1.x/SD2.x, 1024 for SDXL/SD3/Flux; "
                           f"0 keeps the photo's size); not for workflows that resize the photo themselves")
    size.add_argument("--output-size", choices=[o.value for o in photo.OutputSize],
                      default=photo.OutputSize.ORIGINAL.value,
                      help="save the edit at the photo's own size (default) or at the size the model "
                           "worked at")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="give up on one edit after S seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and ComfyUI's log in-process)")


def add_ray(p: argparse.ArgumentParser) -> None:
    """``--ray [ADDRESS]`` and the actor sizes (read by :func:`workers`)."""
    ray = p.add_argument_group("Ray cluster (pip install ray; needs --comfy-root, a path on every node)")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run the batch on Ray actors, each owning one in-process ComfyUI: no value = "
                          "RAY_ADDRESS or a local Ray, 'auto' = the cluster this machine belongs to, or "
                          "ray://HOST:10001")
    ray.add_argument("--ray-actors", type=int, metavar="N",
                     help="number of actors (default: one per GPU of the cluster, else one per CPU slot)")
    ray.add_argument("--ray-gpus-per-actor", type=float, metavar="G",
                     help="GPUs each actor reserves (default 1 on a cluster with GPUs, else 0)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=1.0, metavar="C",
                     help="CPUs each actor reserves (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m psg_cli",
        description="Edit real photos with ComfyUI-PSG through a ComfyUI server or in-process.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("edit", help="edit one photo",
                       description="Upload IMAGE, run the edit workflow, write OUT/NAME.png and "
                                   "OUT/NAME.json.")
    p.add_argument("image", type=Path, metavar="IMAGE")
    p.add_argument("--source", required=True, help="caption of the photo as it is")
    p.add_argument("--target", required=True, help="caption of the photo as you want it")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--mask", type=Path, metavar="M",
                      help="grey mask image, white = region allowed to change")
    mask.add_argument("--mask-box", type=_box, metavar="X0,Y0,X1,Y1",
                      help="rectangular mask as fractions of width/height (inside = allowed to change)")
    p.add_argument("--out", type=Path, default=Path("edits"), metavar="DIR",
                   help="output folder (default edits/)")
    p.add_argument("--name", metavar="STEM", help="output file stem (default: IMAGE's stem + _edit)")
    _add_common(p, many_servers=False)

    b = sub.add_parser("edit-batch", help="edit every record of a dataset, across one or more servers",
                       description="Records need image, source, target, optional mask / mask_box "
                                   "(PIE-Bench mapping files work too). Rerun to resume.")
    b.add_argument("dataset", type=Path, metavar="DATASET.json")
    b.add_argument("--out", type=Path, default=Path("edits"), metavar="DIR",
                   help="output folder (default edits/)")
    b.add_argument("--results", type=Path, metavar="FILE", help="results JSON (default OUT/results.json)")
    b.add_argument("--image-root", type=Path, metavar="DIR", help="resolve relative image paths here")
    b.add_argument("--retries", type=int, default=1, metavar="N",
                   help="extra attempts per item after a transient failure (out of memory, lost connection, "
                        "timeout), each after a backoff and on another worker when there is one (default 1); "
                        "an item that fails for a reason that would repeat (bad input) is not retried")
    b.add_argument("--backoff", type=float, default=2.0, metavar="S",
                   help="wait S, 2S, 4S... seconds before a retry (default 2)")
    b.add_argument("--recheck", type=float, default=10.0, metavar="S",
                   help="re-check a server (or Ray actor) that stopped answering every S seconds and give it "
                        "work again once it answers (default 10)")
    b.add_argument("--give-up-after", type=float, default=600.0, metavar="S",
                   help="when no worker has answered for S seconds, fail the remaining items (default 600)")
    b.add_argument("--shard", type=_shard, metavar="I/N",
                   help="edit only items I, I+N, I+2N... (1-based) of the dataset: one client per machine "
                        "without Ray; each shard keeps its own journal and results file")
    b.add_argument("--journal", type=Path, metavar="FILE",
                   help="append-only journal of every item's state (default OUT/journal.jsonl); a rerun "
                        "skips items whose result would be identical and collects prompts still queued")
    add_ray(b)
    _add_common(b, many_servers=True)

    sub.add_parser("workflows", help="list the shipped API workflows")
    return parser


def _backends(args: argparse.Namespace) -> list[Backend]:
    servers = args.server if isinstance(args.server, list) else ([args.server] if args.server else [])
    if args.comfy_root and servers:
        raise CliError("use either --server or --comfy-root, not both")
    if args.comfy_root:
        from .inprocess_backend import InProcessBackend

        return [InProcessBackend(args.comfy_root, args.base_directory, args.cpu, timeout=args.timeout)]
    if args.base_directory or args.cpu:
        raise CliError("--base-directory and --cpu only apply with --comfy-root")
    from .server_backend import ServerBackend

    urls = servers or connection.servers_from_env() or [DEFAULT_SERVER]
    if len(set(urls)) != len(urls):
        raise CliError("the same --server is given twice")
    headers = connection.auth_headers(args.token, args.basic_auth, args.headers)
    return [ServerBackend(u, timeout=args.timeout, headers=headers) for u in urls]


def _apply_p2p(args: argparse.Namespace) -> None:
    """``--p2p`` / ``--reweight`` / ``--blend`` -> the psg_p2p workflow and --set values on its
    Prompt-to-Prompt node (explicit --set values still win: they come after)."""
    if args.p2p is None:
        if args.reweight or args.blend:
            raise CliError("--reweight and --blend need --p2p replace|refine|reweight")
        return
    if args.p2p == "reweight" and not args.reweight:
        raise CliError("--p2p reweight needs --reweight WORDS (e.g. 'tiger:2')")
    if args.workflow == DEFAULT_WORKFLOW:
        args.workflow = roles.P2P_WORKFLOW
    if not workflow.find_role(workflow.load_workflow(args.workflow), roles.P2P_SETTINGS):
        raise CliError(f"--p2p: the workflow {args.workflow} has no node titled '{roles.P2P_SETTINGS.title}' "
                       f"(PSG Prompt-to-Prompt); use --workflow {roles.P2P_WORKFLOW}")
    title = roles.P2P_SETTINGS.title
    sets = [f"{title}.mode={args.p2p}"]
    if args.reweight:
        sets.append(f"{title}.reweight_words={args.reweight}")
    if args.blend is not None:
        sets.append(f"{title}.blend_words={args.blend}")
    args.sets = sets + list(args.sets)


def _request(args: argparse.Namespace, **extra: object) -> EditRequest:
    return EditRequest(ckpt=args.ckpt, seed=args.seed, guidance_vae=args.guidance_vae, sets=args.sets,
                       workflow=args.workflow, working_size=args.working_size, output_size=args.output_size,
                       **extra)


def cmd_edit(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise CliError(f"image not found: {args.image}")
    if args.mask is not None and not args.mask.is_file():
        raise CliError(f"mask not found: {args.mask}")
    _apply_p2p(args)
    req = _request(args, image=args.image, source=args.source, target=args.target, mask=args.mask,
                   mask_box=args.mask_box)
    workflow.load_workflow(args.workflow)  # a bad name fails before ComfyUI is contacted
    backend = _backends(args)[0]
    stem = safe_stem(args.name or f"{args.image.stem}_edit")
    record = run_edit(backend, req, args.out, stem, progress=not args.quiet)
    if not args.quiet:
        sys.stderr.write(describe_sizes(record) + "\n")
    print(args.out / record["output"])
    logger.info("settings: %s", args.out / f"{stem}.json")
    return 0


def workers(args: argparse.Namespace) -> list[Worker]:
    """The batch's workers: one per --server, the in-process executor, or --ray actors."""
    if args.ray is None:
        if args.ray_actors or args.ray_gpus_per_actor is not None:
            raise CliError("--ray-actors and --ray-gpus-per-actor only apply with --ray")
        return [LocalWorker(b) for b in _backends(args)]
    if args.server:
        raise CliError("use either --server or --ray (Ray actors run ComfyUI in-process: give --comfy-root)")
    if not args.comfy_root:
        raise CliError("--ray needs --comfy-root: the ComfyUI folder on every Ray node "
                       "(same path everywhere)")
    try:
        from .ray_backend import RaySettings, start_workers
    except ImportError as err:
        raise CliError(f"--ray needs Ray in this Python ({err}): pip install ray") from None

    return start_workers(RaySettings(
        address=args.ray or None, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
        cpus_per_actor=args.ray_cpus_per_actor, comfy_root=str(args.comfy_root),
        base_directory=str(args.base_directory) if args.base_directory else None, cpu=args.cpu,
        timeout=args.timeout))


def close_workers(batch_workers: list[Worker]) -> None:
    """Release what the workers hold (Ray actors); servers and the in-process executor hold nothing."""
    for worker in batch_workers:
        close = getattr(worker, "close", None)
        if close is not None:
            close()


def cmd_batch(args: argparse.Namespace) -> int:
    _apply_p2p(args)
    template = workflow.load_workflow(args.workflow)
    out = args.out
    suffix = f"-shard-{args.shard[0]}-of-{args.shard[1]}" if args.shard else ""
    results = args.results or out / f"results{suffix}.json"
    journal = args.journal or out / f"journal{suffix}.jsonl"
    items = load_dataset(args.dataset, out / "_inputs", args.image_root)
    if args.shard:
        index, count = args.shard
        items = items[index - 1::count]
        if not items:
            raise CliError(f"--shard {index}/{count}: the dataset has fewer than {index} items")
    req = _request(args, image=Path(), source="", target="")
    batch_workers = workers(args)
    settings = {"workflow": args.workflow, "ckpt": args.ckpt, "guidance_vae": args.guidance_vae,
                "seed": args.seed, "sets": args.sets, "retries": args.retries,
                "workers": [w.label for w in batch_workers],
                "shard": list(args.shard) if args.shard else None}
    run = BatchRun(items, out, results, args.dataset, template, req, settings, retries=args.retries,
                   journal_path=journal, backoff_s=args.backoff, recheck_s=args.recheck,
                   grace_s=args.give_up_after, stream=sys.stderr if not args.quiet else io.StringIO())
    try:
        summary = run.run(batch_workers)["summary"]
    finally:
        close_workers(batch_workers)
    print(results)
    sys.stderr.write(f"{summary['ok']} ok, {summary['failed']} failed of {summary['total']} "
                     f"({run.skipped} already done) -> {results}\n")
    return 0 if summary["failed"] == 0 else 1


def cmd_workflows(_: argparse.Namespace) -> int:
    for name in workflow.available_workflows():
        prompt = workflow.load_workflow(name)
        filled = [r.title for r in roles.FILLED_ROLES if workflow.find_role(prompt, r)]
        print(f"{name}: {len(prompt)} nodes; fills {', '.join(filled)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "edit":
            return cmd_edit(args)
        if args.command == "edit-batch":
            return cmd_batch(args)
        return cmd_workflows(args)
    except CliError as err:
        sys.stderr.write(f"psg: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("psg: interrupted\n")
        return 130
