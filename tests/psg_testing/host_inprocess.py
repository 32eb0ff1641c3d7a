"""ComfyUI booted as a library (CPU) that runs API-format prompts through its REAL executor.

Same path as the server, minus HTTP: ``execution.validate_prompt`` then
``execution.PromptExecutor.execute``, with the built-in nodes, comfy_extras, this pack
(linked into a temporary ``custom_nodes/`` as ComfyUI-PSG) and the test-only nodes.

    host = InProcessHost.boot(tmp_dir)
    result = host.run(prompt)                 # prompt: {id: {"class_type", "inputs"}}
    image = result.output("9")                # first output of node "9" (e.g. IMAGE tensor)
    result.ui["9"]["images"]                  # what a SaveImage node reported

One host per test session (booting takes seconds); ``run`` starts from an empty output
cache unless ``reuse_cache=True`` (then it caches across prompts like a server does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psg_testing import host

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str | None, float, float], None]
"""on_progress(node_id, value, total), called from ComfyUI's progress hook every step."""


class RecordingServer:
    """Stands in for server.PromptServer: the executor reports to it, we keep the events."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.events: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        with self._lock:
            self.events.append((str(event), data))

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self) -> None:
        pass

    def take_events(self) -> list[tuple[str, Any]]:
        with self._lock:
            events, self.events = self.events, []
        return events


@dataclass
class RunResult:
    """What one prompt produced: node outputs (from the executor's output cache), ui outputs
    (as /history would show them), ComfyUI's status messages and every event sent."""

    prompt_id: str
    prompt: dict
    node_outputs: dict[str, list[list[Any]]]
    ui: dict[str, dict]
    messages: list[tuple[str, dict]]
    events: list[tuple[str, Any]] = field(repr=False)

    def output(self, node_id: str, slot: int = 0) -> Any:
        """Value of output ``slot`` of ``node_id`` (unwrapped when the node produced one item)."""
        values = self.output_list(node_id, slot)
        return values[0] if len(values) == 1 else values

    def output_list(self, node_id: str, slot: int = 0) -> list[Any]:
        """Raw list ComfyUI keeps per output slot (one item per list-execution)."""
        if node_id not in self.node_outputs:
            raise KeyError(
                f"node {node_id!r} has no cached outputs; executed nodes: {sorted(self.node_outputs)}"
            )
        return self.node_outputs[node_id][slot]

    @property
    def executed(self) -> list[str]:
        """Node ids that actually ran in this prompt (not served from the cache)."""
        return [data["node"] for event, data in self.events if event == "executing" and data.get("node")]

    @property
    def cached(self) -> list[str]:
        """Node ids served from the cache (ComfyUI's ``execution_cached`` message)."""
        return [
            node for event, data in self.messages if event == "execution_cached" for node in data["nodes"]
        ]

    def progress(self, node_id: str | None = None) -> list[tuple[float, float]]:
        """(value, total) of every progress report, optionally of one node."""
        return [
            (data["value"], data["max"])
            for event, data in self.events
            if event == "progress" and (node_id is None or data.get("node") == node_id)
        ]


class InProcessHost:
    """A booted ComfyUI (see module docstring). Build it with ``InProcessHost.boot``."""

    CLIENT_ID = "psg-tests"

    def __init__(self, root: Path, base_dir: Path) -> None:
        self.root = root
        self.base_dir = base_dir
        import execution

        self.server = RecordingServer()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC)
        self._on_progress: ProgressCallback | None = None
        self._run_lock = threading.Lock()
        self._thread_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="comfy-run"
        )

    # ------------------------------------------------------------------ boot

    @classmethod
    def boot(cls, base_dir: Path, root: Path | None = None) -> InProcessHost:
        """Import ComfyUI in CPU mode with its dirs under ``base_dir`` and load all nodes."""
        root = host.prepare_comfy_import(root)
        base_dir = Path(base_dir)
        import folder_paths

        for name, setter in (
            ("output", folder_paths.set_output_directory),
            ("input", folder_paths.set_input_directory),
            ("temp", folder_paths.set_temp_directory),
            ("user", folder_paths.set_user_directory),
        ):
            (base_dir / name).mkdir(parents=True, exist_ok=True)
            setter(str(base_dir / name))
        custom_nodes = host.populate_custom_nodes(base_dir / "custom_nodes")
        # Only our two packs: never whatever the host tree has in its own custom_nodes/.
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes)], set())

        import comfy.utils
        import server

        import nodes

        asyncio.run(_load_all_nodes(nodes, custom_nodes))

        instance = cls(root, base_dir)
        # Nodes that talk to the UI (PromptServer.instance.send_sync / send_progress_text)
        # report to the recording server instead of crashing on a missing instance.
        if getattr(server.PromptServer, "instance", None) is None:
            server.PromptServer.instance = instance.server
        comfy.utils.set_progress_bar_global_hook(instance._progress_hook)
        logger.info("ComfyUI %s booted in-process (CPU) from %s", _host_version(), root)
        return instance

    # ------------------------------------------------------------------ running

    @property
    def node_class_mappings(self) -> dict[str, Any]:
        """``nodes.NODE_CLASS_MAPPINGS`` of the booted host (built-ins, extras, our packs)."""
        import nodes

        return nodes.NODE_CLASS_MAPPINGS

    def node_class(self, class_type: str) -> Any:
        return self.node_class_mappings[class_type]

    def pack_module(self) -> Any:
        """The pack as ComfyUI imported it (its package object in sys.modules)."""
        return _loaded_module(host.PACK_LINK_NAME)

    def run(
        self,
        prompt: dict,
        outputs: Iterable[str] | None = None,
        *,
        reuse_cache: bool = False,
        on_progress: ProgressCallback | None = None,
        extra_data: dict | None = None,
    ) -> RunResult:
        """Validate and execute an API-format prompt; raise PromptValidationError,
        PromptExecutionError or PromptInterrupted with ComfyUI's own messages.

        ``outputs``: node ids to execute (any node, not only output nodes, so a test can
        read a KSampler's LATENT without decoding it); default: every output node, as
        the server does. ``on_progress`` is called at each progress report, before
        ComfyUI checks for an interrupt, so ``on_progress=lambda n, v, t: host.interrupt()
        if v >= 2 else None`` stops a sampler after two steps.
        """
        with self._run_lock:
            prompt_id = str(uuid.uuid4())
            targets = asyncio.run(
                self._validate(prompt_id, prompt, None if outputs is None else list(outputs))
            )
            if not reuse_cache:
                self.executor.reset()
                self._forget_pack_memory()
            self.server.take_events()
            self._on_progress = on_progress
            try:
                data = {"client_id": self.CLIENT_ID, **(extra_data or {})}
                self.executor.execute(prompt, prompt_id, data, targets)
            finally:
                self._on_progress = None
            result = RunResult(
                prompt_id=prompt_id,
                prompt=prompt,
                node_outputs=self._snapshot_outputs(),
                ui=dict(self.executor.history_result.get("outputs", {})),
                messages=list(self.executor.status_messages),
                events=self.server.take_events(),
            )
        host.raise_for_status_messages(result.messages)
        return result

    def start(
        self, prompt: dict, outputs: Iterable[str] | None = None, **options: Any
    ) -> concurrent.futures.Future:
        """``run`` in a background thread (for tests that interrupt from outside)."""
        return self._thread_pool.submit(self.run, prompt, outputs, **options)

    def interrupt(self) -> None:
        """Ask the running prompt to stop (ComfyUI's interrupt flag; the executor clears it
        when the next prompt starts). Takes effect at the next progress report."""
        import comfy.model_management

        comfy.model_management.interrupt_current_processing(True)

    def close(self) -> None:
        self._thread_pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _forget_pack_memory(self) -> None:
        """PSG Edit keeps its last inversions in memory across prompts (as a server does); a run
        that starts from an empty output cache starts without them too."""
        cache_module = getattr(getattr(self.pack_module(), "nodes", None), "inversion_cache", None)
        if cache_module is not None:
            cache_module.INVERSIONS.clear()


    async def _validate(self, prompt_id: str, prompt: dict, outputs: list[str] | None) -> list[str]:
        import execution

        if outputs is None:
            return await _validate_like_server(prompt_id, prompt, None)
        output_nodes = [node_id for node_id in outputs if _is_output_node(prompt, node_id)]
        inner_nodes = [node_id for node_id in outputs if node_id not in output_nodes]
        targets = await _validate_like_server(prompt_id, prompt, output_nodes) if output_nodes else []
        validated: dict = {}
        node_errors: dict = {}
        for node_id in inner_nodes:
            if node_id not in prompt:
                raise host.PromptValidationError(
                    {
                        "type": "invalid_prompt",
                        "message": "requested node is not in the prompt",
                        "details": node_id,
                    },
                    {},
                )
            # The same per-node check validate_prompt applies to each output node's inputs.
            valid, reasons, _ = await execution.validate_inputs(prompt_id, prompt, node_id, validated)
            if valid is not True:
                for failed_id, (ok, failed_reasons, _) in validated.items():
                    if ok is not True and failed_reasons:
                        node_errors[failed_id] = {
                            "errors": failed_reasons,
                            "dependent_outputs": [node_id],
                            "class_type": prompt[failed_id]["class_type"],
                        }
            targets.append(node_id)
        if node_errors:
            raise host.PromptValidationError(
                {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
                node_errors,
            )
        return targets

    def _snapshot_outputs(self) -> dict[str, list[list[Any]]]:
        outputs_cache = self.executor.caches.outputs
        snapshot = {}
        for node_id in outputs_cache.all_node_ids():
            value = outputs_cache.get(node_id)
            if value is not None:
                snapshot[node_id] = value
        return snapshot

    def _progress_hook(
        self,
        value: float,
        total: float,
        preview_image: Any,
        prompt_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        """Our stand-in for main.py's progress hook: record, call back, honour interrupts."""
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        self.server.send_sync(
            "progress", {"value": value, "max": total, "node": node_id, "prompt_id": prompt_id}
        )
        if self._on_progress is not None:
            self._on_progress(node_id, value, total)
        comfy.model_management.throw_exception_if_processing_interrupted()


async def _validate_like_server(prompt_id: str, prompt: dict, partial: list[str] | None) -> list[str]:
    import execution

    valid, error, good_outputs, node_errors = await execution.validate_prompt(prompt_id, prompt, partial)
    if not valid:
        raise host.PromptValidationError(error, node_errors)
    return list(good_outputs)


def _is_output_node(prompt: dict, node_id: str) -> bool:
    import nodes

    class_type = prompt.get(node_id, {}).get("class_type")
    node_class = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    return bool(getattr(node_class, "OUTPUT_NODE", False))


def _loaded_module(link_name: str) -> Any:
    import sys

    import folder_paths

    custom_nodes_dir = folder_paths.get_folder_paths("custom_nodes")[0]
    # nodes.load_custom_node registers a package under its path with "." -> "_x_".
    module_name = str(Path(custom_nodes_dir) / link_name).replace(".", "_x_")
    if module_name not in sys.modules:
        raise LookupError(f"custom node package {link_name!r} is not loaded (expected {module_name!r})")
    return sys.modules[module_name]


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Warnings ComfyUI logs (on the root logger) inside the block, e.g. an import error."""
    messages: list[str] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collector(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger().removeHandler(handler)


async def _load_all_nodes(nodes_module: Any, custom_nodes: Path) -> None:
    """Built-ins + comfy_extras (no API nodes), then our two packs through ComfyUI's own
    ``nodes.load_custom_node``, as main.py does but failing loudly: ComfyUI only logs a
    warning when a custom node package fails to import."""
    await nodes_module.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
    builtin_names = set(nodes_module.NODE_CLASS_MAPPINGS)
    for link_name in (host.PACK_LINK_NAME, host.TEST_NODES_LINK_NAME):
        with _collect_warnings() as warnings:
            loaded = await nodes_module.load_custom_node(
                str(custom_nodes / link_name), builtin_names, module_parent="custom_nodes"
            )
        if not loaded:
            raise RuntimeError(
                f"ComfyUI failed to load the custom node package {link_name!r} "
                f"({custom_nodes / link_name}):\n" + "\n".join(warnings)
            )
    if "PSGTestTinyCheckpoint" not in nodes_module.NODE_CLASS_MAPPINGS:
        raise RuntimeError("the test-only nodes loaded but registered no PSGTestTinyCheckpoint")


def _host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "(unknown version)"
