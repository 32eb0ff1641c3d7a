"""A minimal RFC 6455 websocket client (receive-oriented) on the standard library.

ComfyUI reports progress over ``/ws``; the CLI only needs to read its text frames (and skip
binary preview frames), answer pings and close cleanly, so a dependency is not worth it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    """The server closed the connection (or it dropped)."""


class WebSocket:
    """One client connection; :meth:`recv` returns ``(opcode, payload)`` or raises on timeout."""

    def __init__(self, url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        secure = parts.scheme in ("wss", "https")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        sock = socket.create_connection((host, port), timeout=timeout)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = OP_TEXT
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
        sock.sendall(request.encode())
        while b"\r\n\r\n" not in self._buf:
            self._read_more()
        head, _, rest = bytes(self._buf).partition(b"\r\n\r\n")
        self._buf = bytearray(rest)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise WebSocketClosed(f"websocket handshake refused: {status.decode(errors='replace')}")
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:])}
        if headers.get(b"sec-websocket-accept") != expected:
            raise WebSocketClosed("websocket handshake: bad Sec-WebSocket-Accept")

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def _read_more(self) -> None:
        chunk = self.sock.recv(65536)  # socket.timeout propagates; the buffer stays consistent
        if not chunk:
            raise WebSocketClosed("connection closed by the server")
        self._buf += chunk

    def _parse_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        masked, length = bool(buf[1] & 0x80), buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, pos = struct.unpack(">H", buf[2:4])[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, pos = struct.unpack(">Q", buf[2:10])[0], 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask, pos = bytes(buf[pos:pos + 4]), pos + 4
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos:pos + length])
        del buf[:pos + length]
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return fin, opcode, payload

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """Send one masked frame (clients must mask)."""
        header = bytearray([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(bytes(header) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> tuple[int, bytes]:
        """Next complete message; answers pings itself; raises WebSocketClosed on close."""
        while True:
            frame = self._parse_frame()
            if frame is None:
                self._read_more()
                continue
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                raise WebSocketClosed("connection closed by the server")
            if opcode != OP_CONT:
                self._fragment_op, self._fragments = opcode, []
            self._fragments.append(payload)
            if fin:
                message, self._fragments = b"".join(self._fragments), []
                return self._fragment_op, message

    def close(self) -> None:
        try:
            self.send(OP_CLOSE, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()
