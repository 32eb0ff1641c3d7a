"""A real aiohttp server (what ComfyUI and most proxies speak) on 127.0.0.1, in a thread, for
client tests that need no ComfyUI."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

Handler = Callable[[Any], Awaitable[Any]]


@contextmanager
def serve_routes(routes: dict[str, Handler]) -> Iterator[str]:
    """Serve ``routes`` (path -> aiohttp handler, for any method); yields the base URL
    (``http://127.0.0.1:PORT``)."""
    from aiohttp import web

    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        state.update(port=site._server.sockets[0].getsockname()[1], loop=loop)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the aiohttp test server did not start within 10 s")
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)
