"""Drive a running ComfyUI over HTTP (+ websocket for progress), standard library only.

:class:`ServerBackend` is the pack's one ComfyUI client: the CLI runs edits with :meth:`~ServerBackend.run`,
and the host tests use the same calls one by one (``post_prompt``, ``wait``, ``history``, ``events``,
``upload_file``, ``fetch``, ``interrupt``, ``queue``, ``object_info``).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import workflow
from .connection import split_credentials
from .edit import QUEUED_EVENT
from .errors import CliError, EditTimeout, PromptRejected, RetryableError, UnreachableError
from .failures import execution_failed
from .ws import OP_TEXT, WebSocket, WebSocketClosed

logger = logging.getLogger(__name__)
EventHandler = Callable[[str, dict[str, Any]], None]
POLL_S = 2.0


class ServerEvents:
    """The server's websocket for one client id: ComfyUI sends it the events (``executing``,
    ``progress``, ``executed``, ``execution_*``) of the prompts posted with that client id."""

    def __init__(self, socket: WebSocket, client_id: str) -> None:
        self.socket = socket
        self.client_id = client_id

    def next_event(self, timeout_s: float) -> tuple[str, dict[str, Any]] | None:
        """The next ``(type, data)`` text event, or None when none came within ``timeout_s``
        (binary preview frames are skipped); WebSocketClosed when the connection is gone."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining)
            try:
                opcode, payload = self.socket.recv()
            except TimeoutError:
                return None
            if opcode == OP_TEXT:
                message = json.loads(payload)
                return str(message.get("type", "")), message.get("data") or {}
        return None

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> ServerEvents:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise CliError(f"--server '{url}': bad port; expected a URL like http://127.0.0.1:8188") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--server '{url}': expected a URL like http://127.0.0.1:8188")
    return url


class ServerBackend:
    """One ComfyUI server. ``label`` names it in messages and results (never with credentials);
    ``headers`` (e.g. Authorization for a server behind a proxy) go on every HTTP request and on
    the websocket handshake."""

    def __init__(self, url: str, timeout: float = 3600.0, http_timeout: float = 60.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url, from_url = split_credentials(normalise_url(url))
        self.headers = {**from_url, **(headers or {})}
        self.label = self.url
        self.timeout = timeout
        self.http_timeout = http_timeout
        self.client_id = uuid.uuid4().hex
        self._object_info: dict[str, Any] | None = None
        self.active_prompt_id: str | None = None

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(self, path: str, data: bytes | None = None, headers: dict[str, str] | None = None,
                 ok_statuses: tuple[int, ...] = ()) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=data, headers={**self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.http_timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            body = err.read()
            if err.code in ok_statuses:
                return err.code, body
            if err.code in (401, 403):
                refusal = "unauthorised" if err.code == 401 else "forbidden"
                refused = " The credentials given were refused." if "Authorization" in req.headers else ""
                raise CliError(
                    f"ComfyUI at {self.url} answered {err.code} ({refusal}) to {path.split('?')[0]}: "
                    f"the server (or the proxy in front of it) wants credentials. Pass --token TOKEN or "
                    f"--basic-auth USER:PASSWORD (or set PSG_TOKEN / PSG_BASIC_AUTH).{refused}") from None
            raise RetryableError(f"ComfyUI at {self.url} answered {err.code} to {path.split('?')[0]}: "
                                 f"{body[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UnreachableError(
                f"cannot reach ComfyUI at {self.url} ({reason}). Is it running? Start it with "
                f"`python main.py --listen 127.0.0.1 --port 8188`, fix --server, or use --comfy-root "
                f"to run ComfyUI in-process.") from None

    def _json(self, path: str, payload: Any | None = None,
              ok_statuses: tuple[int, ...] = ()) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, body = self._request(path, data, headers, ok_statuses)
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            raise RetryableError(f"{self.url}{path} did not answer JSON; is this a ComfyUI server?") from None

    def get_json(self, path: str) -> Any:
        """GET ``path`` (e.g. ``/system_stats``) and decode its JSON answer."""
        return self._json(path)[1]

    def post_json(self, path: str, payload: Any) -> Any:
        """POST ``payload`` as JSON to ``path``; the decoded answer (None when it has no body, as
        ComfyUI's /interrupt, /queue and /history answer)."""
        body = self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"})[1]
        return json.loads(body) if body.strip() else None

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """Every node class's description (``/object_info``), fetched once."""
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def node_info(self, node_class: str) -> dict[str, Any]:
        """``/object_info/<class>``: a dict with that one class (empty if the server lacks it)."""
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}")

    def queue(self) -> dict[str, Any]:
        """The server's ``/queue``: ``queue_running`` and ``queue_pending`` entries."""
        return self.get_json("/queue")

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """Prompt ids (running, pending) in the server's queue."""
        answer = self.queue()
        return ([str(e[1]) for e in answer.get("queue_running", [])],
                [str(e[1]) for e in answer.get("queue_pending", [])])

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt ``prompt_id`` if it runs; without an id, whatever runs."""
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def cancel(self, prompt_id: str | None = None) -> None:
        """Stop ``prompt_id`` (default: the one this client is following): interrupt it if it
        runs, delete it from the queue if it waits. Best effort: the server may be gone."""
        prompt_id = prompt_id or self.active_prompt_id
        if not prompt_id:
            return
        try:
            self.interrupt(prompt_id)
            self.post_json("/queue", {"delete": [prompt_id]})
        except CliError as err:
            logger.warning("could not cancel prompt %s on %s: %s", prompt_id, self.url, err)

    def forget(self, prompt_id: str) -> None:
        """Drop a collected prompt from the server's /history (its files stay in output/)."""
        try:
            self.post_json("/history", {"delete": [prompt_id]})
        except CliError as err:
            logger.debug("could not delete %s from %s/history: %s", prompt_id, self.url, err)

    def upload_file(self, path: Path, name: str, subfolder: str = "",
                    overwrite: bool = True) -> dict[str, str]:
        """Upload to ComfyUI's input folder as ``name``; the server's answer (``name``,
        ``subfolder``, ``type``: ``name`` differs when the file exists and ``overwrite`` is off)."""
        boundary = uuid.uuid4().hex
        fields = (("overwrite", str(overwrite).lower()), ("type", "input"), ("subfolder", subfolder))
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode()
                 for field, value in fields]
        file_head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n")
        parts.append(file_head.encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        _, body = self._request("/upload/image", b"".join(parts),
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(body)

    def upload(self, path: Path, name: str) -> str:
        """Upload as ``name`` (names are content hashes); the value a LoadImage input takes."""
        info = self.upload_file(path, name)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def fetch(self, ref: dict[str, Any]) -> bytes:
        """The bytes of an output/input/temp file (``ref`` as in a node's ui ``images``)."""
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")[1]

    # -- running ------------------------------------------------------------------------------
    def events(self, client_id: str | None = None) -> ServerEvents:
        """Open the websocket of ``client_id`` (default: this client's, which :meth:`post_prompt`
        uses); WebSocketClosed or OSError when the server refuses it."""
        client_id = client_id or self.client_id
        ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={urllib.parse.quote(client_id)}"
        return ServerEvents(WebSocket(ws_url, timeout=self.http_timeout, headers=self.headers), client_id)

    def _connect_ws(self) -> ServerEvents | None:
        try:
            return self.events()
        except (OSError, WebSocketClosed) as err:
            logger.warning("no websocket (%s): following the run by polling /history", err)
            return None

    def post_prompt(self, prompt: workflow.Prompt, client_id: str | None = None,
                    partial_execution_targets: list[str] | None = None) -> str:
        """Queue an API-format prompt; its prompt id. PromptRejected when ComfyUI refuses it."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id or self.client_id}
        if partial_execution_targets is not None:
            body["partial_execution_targets"] = partial_execution_targets
        status, answer = self._json("/prompt", body, ok_statuses=(400,))
        if status == 400:
            raise PromptRejected(workflow.describe_rejection(answer, prompt), answer.get("error") or {},
                                 answer.get("node_errors") or {})
        return str(answer["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The /history entry of a finished prompt; None while it waits or runs (or is unknown)."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Poll /history until ``prompt_id`` finished; its entry (``status`` says how it ended).
        EditTimeout after ``timeout_s`` (default: this backend's timeout)."""
        timeout_s = self.timeout if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                return entry
            time.sleep(min(POLL_S / 20, max(deadline - time.monotonic(), 0)))
        raise EditTimeout(f"prompt {prompt_id} not finished on {self.url} after {timeout_s:.0f} s")

    def run(self, prompt: workflow.Prompt, on_event: EventHandler) -> dict[str, Any]:
        """Queue ``prompt``, follow it to the end, return its ``outputs`` from /history."""
        ws = self._connect_ws()
        try:
            prompt_id = self.post_prompt(prompt)
            on_event(QUEUED_EVENT, {"prompt_id": prompt_id, "server": self.url})
            return self._finish(ws, prompt_id, prompt, on_event)
        finally:
            if ws is not None:
                ws.close()

    def collect(self, prompt_id: str, prompt: workflow.Prompt,
                on_event: EventHandler) -> dict[str, Any] | None:
        """The outputs of a prompt queued by an earlier (killed) client: from /history when it
        finished, by following it when it still runs or waits; None when the server lost it."""
        if self.history(prompt_id) is None:
            running, pending = self.queue_ids()
            if prompt_id not in running + pending:
                return None
        ws = self._connect_ws()
        try:
            return self._finish(ws, prompt_id, prompt, on_event)
        finally:
            if ws is not None:
                ws.close()

    def _finish(self, ws: ServerEvents | None, prompt_id: str, prompt: workflow.Prompt,
                on_event: EventHandler) -> dict[str, Any]:
        self.active_prompt_id = prompt_id
        try:
            entry = self._follow(ws, prompt_id, prompt, on_event, time.monotonic() + self.timeout)
        except EditTimeout:
            self.cancel(prompt_id)
            raise
        finally:
            self.active_prompt_id = None
        state = entry.get("status") or {}
        if state.get("status_str") == "error":
            for kind, data in state.get("messages", []):
                if kind == "execution_error":
                    raise execution_failed(data, prompt)
                if kind == "execution_interrupted":
                    raise RetryableError(f"the run was interrupted on {self.url}")
            raise CliError(f"ComfyUI reported an error on {self.url} (see its log)")
        return entry.get("outputs") or {}

    def _follow(self, ws: ServerEvents | None, prompt_id: str, prompt: workflow.Prompt,
                on_event: EventHandler, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            if ws is not None:
                try:
                    event = ws.next_event(POLL_S)
                except (OSError, WebSocketClosed) as err:
                    logger.warning("websocket lost (%s): polling /history", err)
                    ws = None
                else:
                    if event is not None:
                        kind, data = event
                        if data.get("prompt_id") in (None, prompt_id):
                            on_event(kind, data)
                        if data.get("prompt_id") != prompt_id:
                            continue
                        if kind == "execution_error":
                            raise execution_failed(data, prompt)
                        if kind == "execution_interrupted":
                            raise RetryableError(f"the run was interrupted on {self.url}")
                        finished = (kind == "execution_success"
                                    or (kind == "executing" and data.get("node") is None))
                        if not finished:
                            continue
            else:
                time.sleep(POLL_S / 2)
            entry = self.history(prompt_id)
            if entry is not None:  # /history holds a prompt only once it has finished
                on_event("executing", {"node": None, "prompt_id": prompt_id})
                return entry
        raise EditTimeout(f"no result from {self.url} after {self.timeout:.0f} s: interrupted it and took it "
                          f"off the queue (raise --timeout?)")
