"""A real ComfyUI server (``main.py --cpu``) on 127.0.0.1, and a small HTTP client for it.

The server gets a temporary ``--base-directory`` (models, input, output, temp, user,
custom_nodes) whose ``custom_nodes/`` links this pack as ComfyUI-PSG plus the test-only
nodes, and a database inside it, so nothing is written into the host tree. Its
stdout/stderr go to ``<base>/server.log``; ``log_tail()`` shows the end of it.

    server = ComfyServer.start(tmp_dir)
    prompt_id = server.post_prompt(prompt)
    entry = server.wait(prompt_id)            # the /history entry, raises on error
    png = server.view(**entry["outputs"]["9"]["images"][0])
    server.stop()
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import websocket

from psg_testing import host

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0
"""Importing torch + ComfyUI + all comfy_extras on 2 busy cores can take a minute."""
REQUEST_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.1


class ServerStartError(RuntimeError):
    pass


class ServerEvents:
    """The server's websocket for one client id: ComfyUI sends this client the events of
    the prompts it posts (``executing``, ``progress``, ``executed``, ``execution_*``)."""

    def __init__(self, url: str, client_id: str) -> None:
        self.client_id = client_id
        ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self._socket = websocket.create_connection(ws_url, timeout=REQUEST_TIMEOUT_S)
        self.received: list[tuple[str, dict]] = []

    def wait_for(
        self, event_type: str, timeout_s: float = 60.0, where: Callable[[dict], bool] = lambda data: True
    ) -> dict:
        """Read events until one of ``event_type`` whose data satisfies ``where``."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            self._socket.settimeout(remaining)
            try:
                message = self._socket.recv()
            except websocket.WebSocketTimeoutException:
                break
            if isinstance(message, bytes):
                continue  # binary previews
            event = json.loads(message)
            self.received.append((event["type"], event.get("data", {})))
            if event["type"] == event_type and where(event.get("data", {})):
                return event.get("data", {})
        raise TimeoutError(
            f"no {event_type!r} event within {timeout_s} s; received {[t for t, _ in self.received]}"
        )

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> ServerEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ComfyServer:
    """A running ``main.py`` subprocess plus the client calls tests need."""

    def __init__(self, process: subprocess.Popen, url: str, base_dir: Path, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.base_dir = base_dir
        self.log_path = log_path
        self.session = requests.Session()

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
                    f"ComfyUI server exited with code {self.process.returncode} during start-up\n{self.log_tail()}"
                )
            try:
                if self.session.get(f"{self.url}/system_stats", timeout=2).status_code == 200:
                    logger.info("ComfyUI server ready at %s (pid %d)", self.url, self.process.pid)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise ServerStartError(f"ComfyUI server not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def _check_packs_loaded(self) -> None:
        """ComfyUI only logs "(IMPORT FAILED)" in its import-time table: fail loudly instead."""
        log = self.log_path.read_text(errors="replace").splitlines()
        for link_name in (host.PACK_LINK_NAME, host.TEST_NODES_LINK_NAME):
            rows = [line for line in log if line.rstrip().endswith(f"custom_nodes/{link_name}")]
            if not rows or any("IMPORT FAILED" in row for row in rows):
                raise ServerStartError(
                    f"the ComfyUI server did not load the custom node package {link_name!r}\n{self.log_tail(200)}"
                )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate by pid, then kill if it does not exit in time."""
        self.session.close()
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

    # ------------------------------------------------------------------ client

    def get_json(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}{path}", params=params or None, timeout=REQUEST_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def object_info(self, node_class: str | None = None) -> dict:
        """/object_info (all nodes) or /object_info/<class> (a dict with that one key)."""
        return self.get_json(f"/object_info/{node_class}" if node_class else "/object_info")

    def post_prompt(
        self,
        prompt: dict,
        *,
        client_id: str | None = None,
        partial_execution_targets: list[str] | None = None,
    ) -> str:
        """Queue an API-format prompt; PromptValidationError on HTTP 400."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id or f"psg-tests-{uuid.uuid4()}"}
        if partial_execution_targets is not None:
            body["partial_execution_targets"] = partial_execution_targets
        response = self.session.post(f"{self.url}/prompt", json=body, timeout=REQUEST_TIMEOUT_S)
        if response.status_code == 400:
            payload = response.json()
            raise host.PromptValidationError(payload.get("error") or {}, payload.get("node_errors") or {})
        response.raise_for_status()
        return str(response.json()["prompt_id"])

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a finished prompt, or None while it is queued or running."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout_s: float = 120.0, *, check: bool = True) -> dict:
        """Poll /history until the prompt finished; with ``check`` raise PromptExecutionError
        or PromptInterrupted (with ComfyUI's message) when it did not succeed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                if check:
                    host.raise_for_status_messages(entry["status"].get("messages", []))
                return entry
            if not self.is_running():
                raise RuntimeError(f"ComfyUI server died while running {prompt_id}\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout_s} s\n{self.log_tail()}")

    def run(self, prompt: dict, timeout_s: float = 120.0) -> dict:
        """post_prompt + wait."""
        return self.wait(self.post_prompt(prompt), timeout_s)

    def events(self, client_id: str | None = None) -> ServerEvents:
        """Open the websocket; post prompts with ``client_id=events.client_id`` to get theirs."""
        return ServerEvents(self.url, client_id or f"psg-tests-{uuid.uuid4()}")

    def queue(self) -> dict:
        return self.get_json("/queue")

    def interrupt(self) -> None:
        self.session.post(f"{self.url}/interrupt", timeout=REQUEST_TIMEOUT_S).raise_for_status()

    def upload_image(self, path: Path, *, subfolder: str = "", overwrite: bool = True) -> dict:
        """POST /upload/image; returns {"name", "subfolder", "type"} for a LoadImage input."""
        path = Path(path)
        with open(path, "rb") as image_file:
            response = self.session.post(
                f"{self.url}/upload/image",
                files={"image": (path.name, image_file, "image/png")},
                data={"subfolder": subfolder, "overwrite": json.dumps(overwrite), "type": "input"},
                timeout=REQUEST_TIMEOUT_S,
            )
        response.raise_for_status()
        return response.json()

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        """GET /view: the bytes of an output/input/temp file (keywords as in ui["images"])."""
        response = self.session.get(
            f"{self.url}/view",
            params={"filename": filename, "subfolder": subfolder, "type": type},
            timeout=REQUEST_TIMEOUT_S,
        )
        response.raise_for_status()
        return response.content
