"""Where the server is and how to authenticate to it: flags first, then environment variables.

A ComfyUI behind a reverse proxy usually wants an ``Authorization`` header (a bearer token or
HTTP basic auth); the same headers go on every HTTP request and on the websocket handshake.
Secrets are better passed through the environment than on the command line (``ps`` shows
arguments to other users of the machine).
"""

from __future__ import annotations

import base64
import os
import re
import urllib.parse
from collections.abc import Mapping

from .errors import CliError

DEFAULT_SERVER = "http://127.0.0.1:8188"
SERVER_ENV = ("PSG_SERVER", "COMFYUI_URL")
"""Server URL(s) when no --server is given; the first one set wins. Several URLs (edit-batch)
are separated by commas or spaces."""
TOKEN_ENV = "PSG_TOKEN"
BASIC_AUTH_ENV = "PSG_BASIC_AUTH"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def servers_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    for name in SERVER_ENV:
        value = env.get(name, "").strip()
        if value:
            return [u for u in re.split(r"[,\s]+", value) if u]
    return []


def _basic(credentials: str, where: str) -> str:
    user, colon, password = credentials.partition(":")
    if not colon or not user:
        raise CliError(f"{where}: expected USER:PASSWORD")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _HEADER_NAME.match(name) or "\n" in value or "\r" in value:
        raise CliError(f"--header '{text}': expected 'Name: value', e.g. 'X-Api-Key: abc'")
    return name, value


def auth_headers(token: str | None = None, basic_auth: str | None = None, headers: list[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Extra request headers from --token / --basic-auth / --header, else PSG_TOKEN / PSG_BASIC_AUTH."""
    env = os.environ if environ is None else environ
    token = token if token is not None else env.get(TOKEN_ENV) or None
    basic_auth = basic_auth if basic_auth is not None else env.get(BASIC_AUTH_ENV) or None
    if token and basic_auth:
        raise CliError(f"give a token (--token / {TOKEN_ENV}) or basic auth "
                       f"(--basic-auth / {BASIC_AUTH_ENV}), not both: both would be the Authorization header")
    out: dict[str, str] = {}
    if token:
        out["Authorization"] = f"Bearer {token.strip()}"
    elif basic_auth:
        out["Authorization"] = _basic(basic_auth, f"--basic-auth / {BASIC_AUTH_ENV}")
    for item in headers or []:
        name, value = parse_header(item)
        out[name] = value
    return out


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:pass@host:8188`` -> (``http://host:8188``, Basic auth header): credentials
    never show in messages or results files."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, {"Authorization": _basic(f"{user}:{password}", "server URL")}
