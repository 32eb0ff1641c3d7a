"""ComfyUI booted as a library (CPU) that runs API-format prompts through its REAL executor,
by way of the CLI's in-process backend (``psg_cli.inprocess_backend.InProcessBackend``).

Same path as the server, minus HTTP: ``execution.validate_prompt`` then
``execution.PromptExecutor.execute``, with the built-in nodes, comfy_extras, this pack
(linked into a temporary ``custom_nodes/`` as ComfyUI-PSG) and the test-only nodes. What is
test-specific lives here: the node outputs a test reads, the recorded events, and ComfyUI's
error payloads turned into the harness's exceptions.

    host = InProcessHost.boot(tmp_dir)
    result = host.run(prompt)                 # prompt: {id: {"class_type", "inputs"}}
    image = result.output("9")                # first output of node "9" (e.g. IMAGE tensor)
    result.ui["9"]["images"]                  # what a SaveImage node reported

One host per test session (booting takes seconds); ``run`` starts from an empty output
cache unless ``reuse_cache=True`` (then it caches across prompts like a server does).
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psg_cli.errors import PromptRejected
from psg_cli.inprocess_backend import InProcessBackend
from psg_testing import host

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str | None, float, float], None]
"""on_progress(node_id, value, total), called from ComfyUI's progress hook every step."""


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

    def __init__(self, backend: InProcessBackend, root: Path, base_dir: Path) -> None:
        self.backend = backend
        self.root = root
        self.base_dir = base_dir
        self._run_lock = threading.Lock()
        self._thread_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="comfy-run"
        )

    @classmethod
    def boot(cls, base_dir: Path, root: Path | None = None) -> InProcessHost:
        """Import ComfyUI in CPU mode with its dirs under ``base_dir``; load the built-in nodes,
        this pack and the test-only nodes (only those two packs: never whatever the host tree
        has in its own custom_nodes/)."""
        root = host.prepare_comfy_import(root)
        base_dir = Path(base_dir)
        custom_nodes = host.populate_custom_nodes(base_dir / "custom_nodes")
        backend = InProcessBackend(root, base_dir, cpu=True, custom_nodes=custom_nodes)
        import nodes

        if "PSGTestTinyCheckpoint" not in nodes.NODE_CLASS_MAPPINGS:
            raise RuntimeError("the test-only nodes loaded but registered no PSGTestTinyCheckpoint")
        logger.info("ComfyUI %s booted in-process (CPU) from %s", _host_version(), root)
        return cls(backend, root, base_dir)

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
        import folder_paths

        custom_nodes_dir = folder_paths.get_folder_paths("custom_nodes")[0]
        # nodes.load_custom_node registers a package under its path with "." -> "_x_".
        module_name = str(Path(custom_nodes_dir) / host.PACK_LINK_NAME).replace(".", "_x_")
        if module_name not in sys.modules:
            raise LookupError(f"custom node package {host.PACK_LINK_NAME!r} is not loaded "
                              f"(expected {module_name!r})")
        return sys.modules[module_name]

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
        events: list[tuple[str, Any]] = []

        def record(event: str, data: dict) -> None:
            events.append((event, data))
            if event == "progress" and on_progress is not None:
                on_progress(data.get("node"), data["value"], data["max"])

        with self._run_lock:
            if not reuse_cache:
                self.backend.reset_cache()
                self._forget_pack_memory()
            try:
                prompt_id = self.backend.execute(
                    prompt, record, outputs, {"client_id": self.CLIENT_ID, **(extra_data or {})}
                )
            except PromptRejected as rejected:
                raise host.PromptValidationError(rejected.error, rejected.node_errors) from None
            executor = self.backend.executor
            result = RunResult(
                prompt_id=prompt_id,
                prompt=prompt,
                node_outputs=self._snapshot_outputs(),
                ui=dict(executor.history_result.get("outputs", {})),
                messages=list(executor.status_messages),
                events=events,
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
        self.backend.interrupt()

    def close(self) -> None:
        self._thread_pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _forget_pack_memory(self) -> None:
        """PSG Edit keeps its last inversions in memory across prompts (as a server does); a run
        that starts from an empty output cache starts without them too."""
        cache_module = getattr(getattr(self.pack_module(), "nodes", None), "inversion_cache", None)
        if cache_module is not None:
            cache_module.INVERSIONS.clear()

    def _snapshot_outputs(self) -> dict[str, list[list[Any]]]:
        outputs_cache = self.backend.executor.caches.outputs
        snapshot = {}
        for node_id in outputs_cache.all_node_ids():
            value = outputs_cache.get(node_id)
            if value is not None:
                snapshot[node_id] = value
        return snapshot


def _host_version() -> str:
    try:
        import comfyui_version

        return comfyui_version.__version__
    except ImportError:
        return "(unknown version)"
