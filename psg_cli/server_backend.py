"""Drive a running ComfyUI over HTTP (+ websocket for progress), standard library only."""

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
from .errors import CliError, EditTimeout, RetryableError, UnreachableError
from .failures import execution_failed
from .ws import OP_TEXT, WebSocket, WebSocketClosed

logger = logging.getLogger(__name__)
EventHandler = Callable[[str, dict[str, Any]], None]
POLL_S = 2.0


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
                raise CliError(
                    f"ComfyUI at {self.url} answered {err.code} ({'unauthorised' if err.code == 401 else 'forbidden'})"
                    f" to {path.split('?')[0]}: the server (or the proxy in front of it) wants credentials. "
                    f"Pass --token TOKEN or --basic-auth USER:PASSWORD (or set PSG_TOKEN / PSG_BASIC_AUTH)."
                    + (" The credentials given were refused." if "Authorization" in req.headers else "")) from None
            raise RetryableError(f"ComfyUI at {self.url} answered {err.code} to {path.split('?')[0]}: "
                                 f"{body[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UnreachableError(
                f"cannot reach ComfyUI at {self.url} ({reason}). Is it running? Start it with "
                f"`python main.py --listen 127.0.0.1 --port 8188`, fix --server, or use --comfy-root "
                f"to run ComfyUI in-process.") from None

    def _json(self, path: str, payload: Any | None = None, ok_statuses: tuple[int, ...] = ()) -> tuple[int, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, body = self._request(path, data, headers, ok_statuses)
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            raise RetryableError(f"{self.url}{path} did not answer JSON; is this a ComfyUI server?") from None

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        if self._object_info is None or refresh:
            self._object_info = self._json("/object_info")[1]
        return self._object_info

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """Prompt ids (running, pending) in the server's queue."""
        answer = self._json("/queue")[1]
        return ([str(e[1]) for e in answer.get("queue_running", [])],
                [str(e[1]) for e in answer.get("queue_pending", [])])

    def cancel(self, prompt_id: str | None = None) -> None:
        """Stop ``prompt_id`` (default: the one this client is following): interrupt it if it
        runs, delete it from the queue if it waits. Best effort: the server may be gone."""
        prompt_id = prompt_id or self.active_prompt_id
        if not prompt_id:
            return
        try:
            self._request("/interrupt", json.dumps({"prompt_id": prompt_id}).encode(),
                          {"Content-Type": "application/json"})
            self._request("/queue", json.dumps({"delete": [prompt_id]}).encode(),
                          {"Content-Type": "application/json"})
        except CliError as err:
            logger.warning("could not cancel prompt %s on %s: %s", prompt_id, self.url, err)

    def forget(self, prompt_id: str) -> None:
        """Drop a collected prompt from the server's /history (its files stay in output/)."""
        try:
            self._request("/history", json.dumps({"delete": [prompt_id]}).encode(),
                          {"Content-Type": "application/json"})
        except CliError as err:
            logger.debug("could not delete %s from %s/history: %s", prompt_id, self.url, err)

    def upload(self, path: Path, name: str) -> str:
        """Upload to ComfyUI's input folder as ``name`` (overwrites: names are content hashes)."""
        boundary = uuid.uuid4().hex
        parts = []
        for field, value in (("overwrite", "true"), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        _, body = self._request("/upload/image", b"".join(parts),
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        info = json.loads(body)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def fetch(self, ref: dict[str, Any]) -> bytes:
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        return self._request(f"/view?{query}")[1]

    # -- running ------------------------------------------------------------------------------
    def _connect_ws(self) -> WebSocket | None:
        ws_url = "ws" + self.url[len("http"):] + f"/ws?clientId={self.client_id}"
        try:
            return WebSocket(ws_url, timeout=self.http_timeout, headers=self.headers)
        except (OSError, WebSocketClosed) as err:
            logger.warning("no websocket (%s): following the run by polling /history", err)
            return None

    def _history(self, prompt_id: str) -> dict[str, Any] | None:
        return self._json(f"/history/{prompt_id}")[1].get(prompt_id)

    def run(self, prompt: workflow.Prompt, on_event: EventHandler) -> dict[str, Any]:
        """Queue ``prompt``, follow it to the end, return its ``outputs`` from /history."""
        ws = self._connect_ws()
        try:
            status, answer = self._json("/prompt", {"prompt": prompt, "client_id": self.client_id},
                                        ok_statuses=(400,))
            if status == 400:
                raise CliError(workflow.describe_rejection(answer, prompt))
            prompt_id = answer["prompt_id"]
            on_event(QUEUED_EVENT, {"prompt_id": prompt_id, "server": self.url})
            return self._finish(ws, prompt_id, prompt, on_event)
        finally:
            if ws is not None:
                ws.close()

    def collect(self, prompt_id: str, prompt: workflow.Prompt, on_event: EventHandler) -> dict[str, Any] | None:
        """The outputs of a prompt queued by an earlier (killed) client: from /history when it
        finished, by following it when it still runs or waits; None when the server lost it."""
        if self._history(prompt_id) is None:
            running, pending = self.queue_ids()
            if prompt_id not in running + pending:
                return None
        ws = self._connect_ws()
        try:
            return self._finish(ws, prompt_id, prompt, on_event)
        finally:
            if ws is not None:
                ws.close()

    def _finish(self, ws: WebSocket | None, prompt_id: str, prompt: workflow.Prompt,
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

    def _follow(self, ws: WebSocket | None, prompt_id: str, prompt: workflow.Prompt,
                on_event: EventHandler, deadline: float) -> dict[str, Any]:
        while time.monotonic() < deadline:
            if ws is not None:
                ws.settimeout(POLL_S)
                try:
                    opcode, payload = ws.recv()
                except TimeoutError:
                    pass
                except (OSError, WebSocketClosed) as err:
                    logger.warning("websocket lost (%s): polling /history", err)
                    ws = None
                else:
                    if opcode == OP_TEXT:
                        message = json.loads(payload)
                        kind, data = message.get("type", ""), message.get("data") or {}
                        if data.get("prompt_id") in (None, prompt_id):
                            on_event(kind, data)
                        if data.get("prompt_id") != prompt_id:
                            continue
                        if kind == "execution_error":
                            raise execution_failed(data, prompt)
                        if kind == "execution_interrupted":
                            raise RetryableError(f"the run was interrupted on {self.url}")
                        if not (kind == "execution_success" or (kind == "executing" and data.get("node") is None)):
                            continue
                    else:
                        continue  # binary preview frames
            else:
                time.sleep(POLL_S / 2)
            entry = self._history(prompt_id)
            if entry is not None:  # /history holds a prompt only once it has finished
                on_event("executing", {"node": None, "prompt_id": prompt_id})
                return entry
        raise EditTimeout(f"no result from {self.url} after {self.timeout:.0f} s: interrupted it and took it "
                          f"off the queue (raise --timeout?)")
