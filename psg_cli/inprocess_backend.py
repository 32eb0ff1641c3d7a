"""Run ComfyUI's own executor inside this process (``--comfy-root``): no server needed.

ComfyUI is process-global state (argument parser, folder paths, node registry), so it is booted
once per process; the backend then validates and executes prompts exactly like the server's
prompt worker does, and routes the executor's events to the same progress display.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import PACK_ROOT, workflow
from .errors import CliError, EditTimeout, RetryableError
from .failures import execution_failed

logger = logging.getLogger(__name__)
EventHandler = Callable[[str, dict[str, Any]], None]
CLIENT_ID = "psg-cli"
_booted: tuple[Path, Path | None] | None = None


class _EventSink:
    """Stands in for ComfyUI's PromptServer: the executor only calls ``send_sync`` and reads
    ``client_id`` / ``last_node_id``; events go to the current run's handler."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.handler: EventHandler | None = None

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        if self.handler is not None and isinstance(event, str) and isinstance(data, dict):
            self.handler(event, data)

    def queue_updated(self) -> None:
        pass


def boot(comfy_root: Path, base_directory: Path | None = None, cpu: bool = False) -> None:
    """Import ComfyUI from ``comfy_root`` and load its nodes plus custom nodes (once).

    ComfyUI's start-up chatter (optional nodes it cannot import, ...) is hidden unless the
    CLI runs with -v; whether *this* pack loaded is checked afterwards with a clear message.
    """
    root_logger = logging.getLogger()
    quiet = not logger.isEnabledFor(logging.INFO)
    level = root_logger.level
    if quiet:
        root_logger.setLevel(logging.ERROR)
    try:
        _boot(comfy_root, base_directory, cpu)
    finally:
        root_logger.setLevel(level)


def _boot(comfy_root: Path, base_directory: Path | None, cpu: bool) -> None:
    global _booted
    comfy_root = comfy_root.expanduser().resolve()
    if _booted is not None:
        if _booted != (comfy_root, base_directory):
            raise CliError("ComfyUI is already loaded in this process from another folder")
        return
    if not (comfy_root / "main.py").is_file() or not (comfy_root / "execution.py").is_file():
        raise CliError(f"--comfy-root {comfy_root} is not a ComfyUI folder (no main.py / execution.py)")
    sys.path.insert(0, str(comfy_root))
    try:
        import torch
        from comfy.cli_args import args  # parses no argv unless ComfyUI's main enables it
    except ImportError as err:
        raise CliError(f"cannot import ComfyUI from {comfy_root} with this Python ({err}); run the CLI "
                       f"with ComfyUI's own Python environment") from None
    if base_directory is not None:
        args.base_directory = str(base_directory.expanduser().resolve())
    if cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        args.cpu = True
    import comfy.utils
    import folder_paths
    import utils.extra_config

    import nodes

    comfy.utils.set_progress_bar_enabled(False)  # the CLI draws its own bar from the hook
    yaml_config = comfy_root / "extra_model_paths.yaml"
    if yaml_config.is_file():
        utils.extra_config.load_extra_path_config(str(yaml_config))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    loaded = {os.path.realpath(p) for p in nodes.LOADED_MODULE_DIRS.values()}
    if os.path.realpath(PACK_ROOT) not in loaded:
        logger.info("ComfyUI-PSG is not in %s/custom_nodes: loading it from %s",
                    folder_paths.base_path, PACK_ROOT)
        asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    _booted = (comfy_root, base_directory)


class InProcessBackend:
    """ComfyUI's PromptExecutor in this process."""

    def __init__(self, comfy_root: Path, base_directory: Path | None = None, cpu: bool = False,
                 timeout: float | None = None) -> None:
        boot(comfy_root, base_directory, cpu)
        self.timeout = timeout
        self.running = False
        import execution

        self.label = f"in-process ComfyUI ({comfy_root})"
        self._sink = _EventSink()
        self._executor = execution.PromptExecutor(self._sink)
        self._object_info: dict[str, Any] | None = None

    def cancel(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt (ComfyUI checks the flag between sampler steps)."""
        if self.running:
            import nodes

            nodes.interrupt_processing()

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """The same per-class description a server's ``/object_info`` gives."""
        if self._object_info is None or refresh:
            from comfy_api.internal import _ComfyNodeInternal

            import nodes

            info: dict[str, Any] = {}
            for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
                try:
                    if issubclass(cls, _ComfyNodeInternal):
                        info[name] = cls.GET_NODE_INFO_V1()
                        continue
                    inputs = cls.INPUT_TYPES()
                    outputs = list(getattr(cls, "RETURN_TYPES", ()))
                    info[name] = {
                        "input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                        "output": outputs, "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
                        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
                        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)), "name": name,
                        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
                        "category": getattr(cls, "CATEGORY", "sd")}
                except Exception as err:  # a broken third-party node must not stop the edit
                    logger.debug("skipping node %s: %s", name, err)
            self._object_info = info
        return self._object_info

    def upload(self, path: Path, name: str) -> str:
        import folder_paths

        dest = Path(folder_paths.get_input_directory()) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        return name

    def fetch(self, ref: dict[str, Any]) -> bytes:
        import folder_paths

        base = folder_paths.get_directory_by_type(ref.get("type", "output"))
        if base is None:
            raise CliError(f"unknown ComfyUI output type {ref.get('type')!r}")
        return (Path(base) / ref.get("subfolder", "") / ref["filename"]).read_bytes()

    def run(self, prompt: workflow.Prompt, on_event: EventHandler) -> dict[str, Any]:
        import comfy.utils
        import execution

        prompt_id = uuid.uuid4().hex
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not valid[0]:
            raise CliError(workflow.describe_rejection({"error": valid[1], "node_errors": valid[3]}, prompt))

        def hook(value: int, total: int, preview: Any, prompt_id: str | None = None,
                 node_id: str | None = None) -> None:
            import comfy.model_management

            comfy.model_management.throw_exception_if_processing_interrupted()
            node = node_id or self._sink.last_node_id
            on_event("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node})

        def handler(event: str, data: dict[str, Any]) -> None:
            if event == "executing":
                self._sink.last_node_id = data.get("node")
            on_event(event, data)

        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            self.cancel()

        timer = threading.Timer(self.timeout, on_timeout) if self.timeout else None
        self._sink.handler = handler
        comfy.utils.set_progress_bar_global_hook(hook)
        self.running = True
        root_logger = logging.getLogger()
        level = root_logger.level
        if not logger.isEnabledFor(logging.INFO):  # ComfyUI logs a node's traceback; the CLI says it in one line
            root_logger.setLevel(logging.CRITICAL)
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            self._executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, valid[2])
        finally:
            root_logger.setLevel(level)
            self.running = False
            if timer is not None:
                timer.cancel()
            comfy.utils.set_progress_bar_global_hook(None)
            self._sink.handler = None
        on_event("executing", {"node": None, "prompt_id": prompt_id})
        if not self._executor.success:
            for kind, data in self._executor.status_messages:
                if kind == "execution_error":
                    raise execution_failed(data, prompt)
            if timed_out.is_set():
                raise EditTimeout(f"no result after {self.timeout:.0f} s: interrupted it (raise --timeout?)")
            raise RetryableError("ComfyUI stopped the run (interrupted)")
        return self._executor.history_result.get("outputs", {})
