"""A real ComfyUI server (``main.py --cpu``) on 127.0.0.1 for the tests, driven through the
CLI's own client (``psg_cli.server_backend.ServerBackend``).

The server gets a temporary ``--base-directory`` (models, input, output, temp, user,
custom_nodes) whose ``custom_nodes/`` links this pack as ComfyUI-PSG plus the test-only
nodes, and a database inside it, so nothing is written into the host tree. Its
stdout/stderr go to ``<base>/server.log``; ``log_tail()`` shows the end of it. What is
test-specific lives here: the process, its log, and ComfyUI's error payloads turned into
the harness's exceptions.

    server = ComfyServer.start(tmp_dir)
    prompt_id = server.post_prompt(prompt)
    entry = server.wait(prompt_id)            # the /history entry, raises on error
    png = server.view(**entry["outputs"]["9"]["images"][0])
    server.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from psg_cli.errors import CliError, EditTimeout, PromptRejected, UnreachableError
from psg_cli.server_backend import ServerBackend, ServerEvents
from psg_testing import host

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0
"""Importing torch + ComfyUI + all comfy_extras on 2 busy cores can take a minute."""
REQUEST_TIMEOUT_S = 30.0


class ServerStartError(RuntimeError):
    pass


class EventLog(ServerEvents):
    """The events of one client id, as they come over the server's websocket, kept in ``received``."""

    def __init__(self, events: ServerEvents) -> None:
        super().__init__(events.socket, events.client_id)
        self.received: list[tuple[str, dict]] = []

    def wait_for(
        self, event_type: str, timeout_s: float = 60.0, where: Callable[[dict], bool] = lambda data: True
    ) -> dict:
        """Read events until one of ``event_type`` whose data satisfies ``where``."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            event = self.next_event(remaining)
            if event is None:
                break
            self.received.append(event)
            if event[0] == event_type and where(event[1]):
                return event[1]
        raise TimeoutError(
            f"no {event_type!r} event within {timeout_s} s; received {[t for t, _ in self.received]}"
        )


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ComfyServer:
    """A running ``main.py`` subprocess; ``client`` talks to it, the methods below wrap the
    calls tests make so that failures raise the harness's exceptions."""

    def __init__(self, process: subprocess.Popen, url: str, base_dir: Path, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.base_dir = base_dir
        self.log_path = log_path
        self.client = ServerBackend(url, http_timeout=REQUEST_TIMEOUT_S)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        base_dir: Path,
        root: Path | None = None,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> ComfyServer:
        """Start ``main.py --cpu`` and wait until it answers /system_stats."""
        root = root or host.find_comfyui_root()
        if root is None:
            raise ServerStartError(host.no_host_message())
        base_dir = Path(base_dir)
        host.populate_custom_nodes(base_dir / "custom_nodes")
        (base_dir / "user").mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        log_path = base_dir / "server.log"
        command = [
            sys.executable,
            str(root / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--base-directory",
            str(base_dir),
            "--database-url",
            f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            "--disable-api-nodes",  # cloud API nodes: slow to import, useless offline
            *extra_args,
        ]
        env = {
            **os.environ,
            host.ENV_VAR: str(root),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
        }
        env.setdefault("PYTHONPYCACHEPREFIX", host.PYCACHE_PREFIX)  # keep the host tree untouched
        logger.info("starting ComfyUI server: %s", " ".join(command))
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command, cwd=str(base_dir), env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        server = cls(process, f"http://127.0.0.1:{port}", base_dir, log_path)
        try:
            server._wait_until_ready(timeout_s)
            server._check_packs_loaded()
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"ComfyUI server exited with code {self.process.returncode} during start-up\n"
                    f"{self.log_tail()}"
                )
            with contextlib.suppress(CliError):
                self.client.get_json("/system_stats")
                logger.info("ComfyUI server ready at %s (pid %d)", self.url, self.process.pid)
                return
            time.sleep(0.25)
        raise ServerStartError(f"ComfyUI server not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def _check_packs_loaded(self) -> None:
        """ComfyUI only logs "(IMPORT FAILED)" in its import-time table: fail loudly instead."""
        log = self.log_path.read_text(errors="replace").splitlines()
        for link_name in (host.PACK_LINK_NAME, host.TEST_NODES_LINK_NAME):
            rows = [line for line in log if line.rstrip().endswith(f"custom_nodes/{link_name}")]
            if not rows or any("IMPORT FAILED" in row for row in rows):
                raise ServerStartError(
                    f"the ComfyUI server did not load the custom node package {link_name!r}\n"
                    f"{self.log_tail(200)}"
                )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate by pid, then kill if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("ComfyUI server (pid %d) ignored SIGTERM; killing it", self.process.pid)
            self.process.kill()
            self.process.wait(timeout=timeout_s)

    def is_running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no server log: {error})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"----- last {lines} lines of {self.log_path} -----\n{tail}"

    @classmethod
    @contextlib.contextmanager
    def running(cls, base_dir: Path, root: Path | None = None, **options: Any) -> Iterator[ComfyServer]:
        """``start`` for the block, ``stop`` after it (also when the block raises)."""
        server = cls.start(base_dir, root, **options)
        try:
            yield server
        finally:
            server.stop()

    # ------------------------------------------------------------------ client

    @contextlib.contextmanager
    def _log_on_failure(self) -> Iterator[None]:
        """A server that stopped answering: say so with the tail of its log."""
        try:
            yield
        except UnreachableError as error:
            raise RuntimeError(f"{error}\n{self.log_tail()}") from None

    def object_info(self, node_class: str | None = None) -> dict:
        """/object_info (all nodes) or /object_info/<class> (a dict with that one key)."""
        with self._log_on_failure():
            return self.client.node_info(node_class) if node_class else self.client.object_info(refresh=True)

    def post_prompt(
        self,
        prompt: dict,
        *,
        client_id: str | None = None,
        partial_execution_targets: list[str] | None = None,
    ) -> str:
        """Queue an API-format prompt; PromptValidationError when ComfyUI refuses it."""
        try:
            with self._log_on_failure():
                return self.client.post_prompt(
                    prompt, client_id or f"psg-tests-{uuid.uuid4()}", partial_execution_targets
                )
        except PromptRejected as rejected:
            raise host.PromptValidationError(rejected.error, rejected.node_errors) from None

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a finished prompt, or None while it is queued or running."""
        with self._log_on_failure():
            return self.client.history(prompt_id)

    def wait(self, prompt_id: str, timeout_s: float = 120.0, *, check: bool = True) -> dict:
        """Wait until the prompt finished; its /history entry. With ``check`` raise
        PromptExecutionError or PromptInterrupted (with ComfyUI's message) when it did not succeed."""
        try:
            with self._log_on_failure():
                entry = self.client.wait(prompt_id, timeout_s)
        except EditTimeout as error:
            raise TimeoutError(f"{error}\n{self.log_tail()}") from None
        if check:
            host.raise_for_status_messages(entry["status"].get("messages", []))
        return entry

    def run(self, prompt: dict, timeout_s: float = 120.0) -> dict:
        """post_prompt + wait."""
        return self.wait(self.post_prompt(prompt), timeout_s)

    def events(self, client_id: str | None = None) -> EventLog:
        """Open the websocket; post prompts with ``client_id=events.client_id`` to get theirs."""
        return EventLog(self.client.events(client_id or f"psg-tests-{uuid.uuid4()}"))

    def queue(self) -> dict:
        with self._log_on_failure():
            return self.client.queue()

    def interrupt(self) -> None:
        with self._log_on_failure():
            self.client.interrupt()

    def upload_image(self, path: Path, *, subfolder: str = "", overwrite: bool = True) -> dict:
        """POST /upload/image; returns {"name", "subfolder", "type"} for a LoadImage input."""
        path = Path(path)
        with self._log_on_failure():
            return self.client.upload_file(path, path.name, subfolder, overwrite)

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        """GET /view: the bytes of an output/input/temp file (keywords as in ui["images"])."""
        with self._log_on_failure():
            return self.client.fetch({"filename": filename, "subfolder": subfolder, "type": type})
