"""Run ComfyUI's own executor inside this process (``--comfy-root``): no server needed.

ComfyUI is process-global state (argument parser, folder paths, node registry), so it is booted
once per process; the backend then validates and executes prompts exactly like the server's
prompt worker does, and routes the executor's events to the same progress display. The host
tests run their prompts through the same backend (:meth:`InProcessBackend.execute`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import PACK_ROOT, workflow
from .errors import CliError, EditTimeout, PromptRejected, RetryableError
from .failures import execution_failed

logger = logging.getLogger(__name__)
EventHandler = Callable[[str, dict[str, Any]], None]
CLIENT_ID = "psg-cli"
_booted: tuple[Path, Path | None, Path | None] | None = None


class _EventSink:
    """Stands in for ComfyUI's PromptServer: the executor (and nodes that talk to the UI) only
    call ``send_sync`` / ``send_progress_text`` and read ``client_id`` / ``last_node_id``; events
    go to the current run's handler."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict[str, Any] = {}
        self.handler: EventHandler | None = None

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        if self.handler is not None and isinstance(event, str) and isinstance(data, dict):
            self.handler(event, data)

    def send_progress_text(self, text: str, node_id: str, sid: Any = None) -> None:
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self) -> None:
        pass


def put_first_on_sys_path(comfy_root: Path) -> None:
    """``comfy_root`` goes before the pack's own folder on sys.path: the pack has a ``nodes``
    package that would shadow ComfyUI's ``nodes.py``. Entries ComfyUI itself put in front
    (its ``comfy/`` folder) may stay there; an entry naming the same folder through a link counts."""
    root, pack = comfy_root.resolve(), PACK_ROOT.resolve()
    where = [Path(entry or ".").resolve() for entry in sys.path]
    pack_index = min((i for i, path in enumerate(where) if path in (pack, Path.cwd())), default=len(where))
    if root in where[:pack_index]:
        return
    if str(comfy_root) in sys.path:
        sys.path.remove(str(comfy_root))
    sys.path.insert(0, str(comfy_root))


def boot(comfy_root: Path, base_directory: Path | None = None, cpu: bool = False,
         custom_nodes: Path | None = None) -> None:
    """Import ComfyUI from ``comfy_root`` and load its nodes plus custom nodes (once).

    ``base_directory`` is ComfyUI's --base-directory (its input, output, temp and user folders
    are set there even when ComfyUI was imported before). ``custom_nodes``: load exactly the
    node packages in this folder, each of which must import, instead of ComfyUI's custom_nodes
    folders plus this pack. ComfyUI's start-up chatter (optional nodes it cannot import, ...) is
    hidden unless the CLI runs with -v; whether *this* pack loaded is checked afterwards with a
    clear message.
    """
    root_logger = logging.getLogger()
    quiet = not logger.isEnabledFor(logging.INFO)
    level = root_logger.level
    if quiet:
        root_logger.setLevel(logging.ERROR)
    try:
        _boot(comfy_root, base_directory, cpu, custom_nodes)
    finally:
        root_logger.setLevel(level)


def _boot(comfy_root: Path, base_directory: Path | None, cpu: bool, custom_nodes: Path | None) -> None:
    global _booted
    comfy_root = comfy_root.expanduser().resolve()
    if _booted is not None:
        if _booted != (comfy_root, base_directory, custom_nodes):
            raise CliError("ComfyUI is already loaded in this process from another folder")
        return
    if not (comfy_root / "main.py").is_file() or not (comfy_root / "execution.py").is_file():
        raise CliError(f"--comfy-root {comfy_root} is not a ComfyUI folder (no main.py / execution.py)")
    put_first_on_sys_path(comfy_root)
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
    if base_directory is not None:
        _use_base_directory(folder_paths, Path(args.base_directory))
    yaml_config = comfy_root / "extra_model_paths.yaml"
    if yaml_config.is_file():
        utils.extra_config.load_extra_path_config(str(yaml_config))
    if custom_nodes is not None:
        asyncio.run(_load_node_packages(nodes, folder_paths, custom_nodes))
    else:
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        loaded = {os.path.realpath(p) for p in nodes.LOADED_MODULE_DIRS.values()}
        if os.path.realpath(PACK_ROOT) not in loaded:
            logger.info("ComfyUI-PSG is not in %s/custom_nodes: loading it from %s",
                        folder_paths.base_path, PACK_ROOT)
            asyncio.run(nodes.load_custom_node(str(PACK_ROOT)))
    _booted = (comfy_root, base_directory, custom_nodes)


def _use_base_directory(folder_paths: Any, base: Path) -> None:
    """ComfyUI reads --base-directory when ``folder_paths`` is first imported; set its input,
    output, temp and user folders again in case that happened before the boot."""
    for name, setter in (("input", folder_paths.set_input_directory),
                         ("output", folder_paths.set_output_directory),
                         ("temp", folder_paths.set_temp_directory),
                         ("user", folder_paths.set_user_directory)):
        (base / name).mkdir(parents=True, exist_ok=True)
        setter(str(base / name))


@contextlib.contextmanager
def _root_log_kept() -> Iterator[list[str]]:
    """What ComfyUI logs on the root logger inside the block (warnings and up), kept instead of
    shown: it reports a node package that fails to import only as a warning."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    root_logger.handlers = [Keep(logging.WARNING)]
    root_logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        root_logger.handlers = handlers
        root_logger.setLevel(level)


async def _load_node_packages(nodes: Any, folder_paths: Any, custom_nodes: Path) -> None:
    """ComfyUI's built-in and extra nodes (no API nodes), then every package in ``custom_nodes``
    through ComfyUI's own ``load_custom_node``, as its main.py does but failing loudly."""
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes)], set())
    await nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)
    builtin_names = set(nodes.NODE_CLASS_MAPPINGS)
    packages = sorted(p for p in custom_nodes.iterdir()
                      if not p.name.startswith((".", "__")) and (p.is_dir() or p.suffix == ".py"))
    for package in packages:
        with _root_log_kept() as messages:
            loaded = await nodes.load_custom_node(str(package), builtin_names, module_parent="custom_nodes")
        if not loaded:
            raise CliError(f"ComfyUI failed to load the custom node package {package.name!r} ({package}):\n"
                           + "\n".join(messages))


class InProcessBackend:
    """ComfyUI's PromptExecutor in this process."""

    def __init__(self, comfy_root: Path, base_directory: Path | None = None, cpu: bool = False,
                 timeout: float | None = None, custom_nodes: Path | None = None) -> None:
        boot(comfy_root, base_directory, cpu, custom_nodes)
        self.timeout = timeout
        self.running = False
        import execution
        import server

        self.label = f"in-process ComfyUI ({comfy_root})"
        self._sink = _EventSink()
        self.executor = execution.PromptExecutor(self._sink)
        """ComfyUI's executor: after :meth:`execute`, its ``status_messages``, ``history_result``
        and ``caches`` hold what the prompt did."""
        self._object_info: dict[str, Any] | None = None
        if getattr(server.PromptServer, "instance", None) is None:  # nodes that talk to the UI
            server.PromptServer.instance = self._sink

    def interrupt(self) -> None:
        """Raise ComfyUI's interrupt flag: the running prompt stops at its next progress report
        (the executor clears the flag when the next prompt starts)."""
        import nodes

        nodes.interrupt_processing()

    def cancel(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt, if one runs."""
        if self.running:
            self.interrupt()

    def reset_cache(self) -> None:
        """Forget every cached node output (the next prompt runs all its nodes)."""
        self.executor.reset()

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

    def validate(self, prompt: workflow.Prompt, outputs: Iterable[str] | None = None,
                 prompt_id: str = "") -> list[str]:
        """Check ``prompt`` as the server's /prompt does; the node ids to execute. ``outputs``:
        those nodes (any node, not only output nodes), default every output node. PromptRejected
        with ComfyUI's own payload when a node's inputs are invalid."""
        return asyncio.run(self._validate(prompt_id or uuid.uuid4().hex, prompt,
                                          None if outputs is None else list(outputs)))

    async def _validate(self, prompt_id: str, prompt: workflow.Prompt,
                        outputs: list[str] | None) -> list[str]:
        import execution

        import nodes

        def output_node(node_id: str) -> bool:
            node_class = nodes.NODE_CLASS_MAPPINGS.get(prompt.get(node_id, {}).get("class_type"))
            return bool(getattr(node_class, "OUTPUT_NODE", False))

        def rejected(error: dict[str, Any], node_errors: dict[str, Any]) -> PromptRejected:
            response = {"error": error, "node_errors": node_errors}
            return PromptRejected(workflow.describe_rejection(response, prompt), error, node_errors)

        output_nodes = None if outputs is None else [n for n in outputs if output_node(n)]
        targets: list[str] = []
        if output_nodes is None or output_nodes:
            valid, error, good_outputs, node_errors = await execution.validate_prompt(
                prompt_id, prompt, output_nodes)
            if not valid:
                raise rejected(error, node_errors)
            targets = list(good_outputs)
        validated: dict[str, Any] = {}
        node_errors = {}
        for node_id in [n for n in outputs or () if n not in (output_nodes or ())]:
            if node_id not in prompt:
                raise rejected({"type": "invalid_prompt", "message": "requested node is not in the prompt",
                                "details": node_id}, {})
            # the per-node check validate_prompt applies to the inputs of each output node
            valid, _, _ = await execution.validate_inputs(prompt_id, prompt, node_id, validated)
            if valid is not True:
                for failed_id, (ok, reasons, _) in validated.items():
                    if ok is not True and reasons:
                        node_errors[failed_id] = {"errors": reasons, "dependent_outputs": [node_id],
                                                  "class_type": prompt[failed_id]["class_type"]}
            targets.append(node_id)
        if node_errors:
            raise rejected({"type": "prompt_outputs_failed_validation",
                            "message": "Prompt outputs failed validation"}, node_errors)
        return targets

    def execute(self, prompt: workflow.Prompt, on_event: EventHandler, outputs: Iterable[str] | None = None,
                extra_data: dict[str, Any] | None = None) -> str:
        """Validate ``prompt`` (see :meth:`validate`) and run it to the end; its prompt id.

        Events (``executing``, ``progress``, ``executed``, ``execution_*``...) go to ``on_event``
        as they happen; a ``progress`` event comes before ComfyUI checks its interrupt flag, so a
        handler may :meth:`interrupt` at a given step. How the run ended is in ``self.executor``
        (``success``, ``status_messages``, ``history_result``)."""
        import comfy.utils
        from comfy_execution.utils import get_executing_context

        prompt_id = uuid.uuid4().hex
        targets = self.validate(prompt, outputs, prompt_id)

        def hook(value: int, total: int, preview: Any, prompt_id: str | None = None,
                 node_id: str | None = None) -> None:
            import comfy.model_management

            context = get_executing_context()
            node = node_id or (context.node_id if context is not None else None) or self._sink.last_node_id
            on_event("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node})
            comfy.model_management.throw_exception_if_processing_interrupted()

        def handler(event: str, data: dict[str, Any]) -> None:
            if event == "executing":
                self._sink.last_node_id = data.get("node")
            on_event(event, data)

        self._sink.handler = handler
        comfy.utils.set_progress_bar_global_hook(hook)
        self.running = True
        try:
            self.executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID, **(extra_data or {})}, targets)
        finally:
            self.running = False
            comfy.utils.set_progress_bar_global_hook(None)
            self._sink.handler = None
        return prompt_id

    def run(self, prompt: workflow.Prompt, on_event: EventHandler) -> dict[str, Any]:
        """Run ``prompt`` (see :meth:`execute`) within this backend's timeout; its ``outputs``."""
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            self.cancel()

        timer = threading.Timer(self.timeout, on_timeout) if self.timeout else None
        root_logger = logging.getLogger()
        level = root_logger.level
        if not logger.isEnabledFor(logging.INFO):  # ComfyUI logs a traceback; the CLI says it in one line
            root_logger.setLevel(logging.CRITICAL)
        try:
            if timer is not None:
                timer.daemon = True
                timer.start()
            prompt_id = self.execute(prompt, on_event)
        finally:
            root_logger.setLevel(level)
            if timer is not None:
                timer.cancel()
        on_event("executing", {"node": None, "prompt_id": prompt_id})
        if not self.executor.success:
            for kind, data in self.executor.status_messages:
                if kind == "execution_error":
                    raise execution_failed(data, prompt)
            if timed_out.is_set():
                raise EditTimeout(f"no result after {self.timeout:.0f} s: interrupted it (raise --timeout?)")
            raise RetryableError("ComfyUI stopped the run (interrupted)")
        return self.executor.history_result.get("outputs", {})
