"""Progress display on stderr, fed by ComfyUI's execution events (websocket or in-process)."""

from __future__ import annotations

import sys
from typing import Any, TextIO

BAR_WIDTH = 28


class ProgressReporter:
    """Turns ``executing`` / ``progress`` events into a one-line bar (or plain lines off a tty).

    Why a class: the same events arrive from the websocket and from the in-process executor, and
    both need the node titles of the prompt to say *which* phase is running.
    """

    def __init__(self, prompt: dict[str, Any], stream: TextIO | None = None, enabled: bool = True,
                 prefix: str = "") -> None:
        self.titles = {nid: (n.get("_meta") or {}).get("title") or n.get("class_type", nid)
                       for nid, n in prompt.items()}
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.prefix = prefix
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._node: str | None = None
        self._last_fraction = -1.0
        self._open_line = False
        self.nodes_done = 0

    def _label(self, node: Any) -> str:
        return self.titles.get(str(node), str(node))

    def _write(self, text: str, newline: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + self.prefix + text + ("\n" if newline else ""))
            self._open_line = not newline
        elif newline:
            self.stream.write(self.prefix + text + "\n")
        self.stream.flush()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        """Consume one ComfyUI event (``executing``, ``progress``, ``execution_cached``...)."""
        if kind == "executing":
            node = data.get("node")
            if node is None:
                self.finish()
                return
            self._node = str(node)
            self._last_fraction = -1.0
            self.nodes_done += 1
            self._write(f"running {self._label(node)}", newline=not self.tty)
        elif kind == "progress":
            value, total = int(data.get("value", 0)), max(int(data.get("max", 1)), 1)
            fraction = min(value / total, 1.0)
            node = data.get("node") or self._node
            if self.tty:
                filled = int(round(fraction * BAR_WIDTH))
                bar = "#" * filled + "-" * (BAR_WIDTH - filled)
                self._write(f"{self._label(node)} [{bar}] {value}/{total}", newline=False)
            elif fraction >= 1.0 or fraction - self._last_fraction >= 0.25:
                self._write(f"{self._label(node)} {value}/{total}", newline=True)
                self._last_fraction = fraction
        elif kind == "execution_cached":
            cached = data.get("nodes") or []
            if cached:
                self._write(f"{len(cached)} node(s) cached", newline=True)

    def finish(self) -> None:
        """End an open bar line so later messages start on a fresh line."""
        if self._open_line and self.enabled:
            self.stream.write("\n")
            self.stream.flush()
        self._open_line = False
