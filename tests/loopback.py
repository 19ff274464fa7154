"""Real servers on 127.0.0.1 for the tests: a free port, and an aiohttp app served on one."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was just released): connecting to it
    is refused, and a server may bind it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@asynccontextmanager
async def serving(app: web.Application, *, shutdown_timeout: float = 0.5,
                  ) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port until the block ends; yields its base URL
    (``http://127.0.0.1:PORT``, no trailing slash)."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, listener)
    try:
        await site.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        await runner.cleanup()
