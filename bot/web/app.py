"""Veil's link server: the application factory, a runner to put it on a socket, and ``serve``.

``create_app(veil, public_url=...)`` builds the aiohttp application over an open Veil (which the
caller owns and closes). ``start_web(app, host, port)`` binds it and returns a ``WebServer``
whose ``stop()`` lets requests in flight finish. ``serve(settings)`` is what ``python -m bot
web`` runs: open Veil, serve until cancelled or sent SIGTERM, then close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from bot.config import ConfigError
from bot.core.limits import SharedFailureBudget
from bot.web.exports import ExportRoutes
from bot.web.logs import RedactingAccessLogger
from bot.web.pages import Pages, export_path, link_path
from bot.web.passwordthrottle import PasswordThrottle
from bot.web.ratelimit import FailureLimiter, IPAddress, IPNetwork, RateLimit, parse_networks
from bot.web.routes import LinkRoutes
from bot.web.security import PAGES, add_security_headers, error_pages

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.core.veil import Veil

log = logging.getLogger(__name__)

WATERMARK_POOL = web.AppKey("veil_watermark_pool", ThreadPoolExecutor)
# Watermarking is CPU work; two threads keep a burst of views from starving everything else.
WATERMARK_THREADS = 2
DEFAULT_RATE_LIMIT = RateLimit()

# glibc gives the free top of its heap back to the system once it exceeds the trim threshold,
# and the next allocation maps it again, a page fault per 4 KB page. Veil fixes the mmap
# threshold at 1 MB (bot/images/work.py), which also pins the trim threshold at its 128 KB
# default: every image a link server decrypts (241 KB), and aiohttp's copy of it with the
# headers, then cost 7 to 13 page faults per request under wrk (-c50), about a quarter of the
# server's system time. A link-server process keeps up to this much freed heap instead.
_M_TRIM_THRESHOLD = -1
_LINK_SERVER_TRIM_BYTES = 32 * 1024 * 1024


def settle_for_serving() -> None:
    """For a process that only serves links (``python -m bot web``), once it is listening:

    * glibc keeps up to 32 MB of freed heap for the next responses instead of returning it
      and faulting it back in (see above). Not in the bot's process, whose idle resident
      size has its own bound.
    * What start-up made (about 50,000 objects: modules, the app, Veil) moves out of the
      garbage collector's sight (``gc.freeze``, as the bot does at READY): a full collection
      over them took 26 to 29 ms of CPU here, a stall of every request in flight, often
      enough to reach a p99; after the freeze it takes microseconds."""
    gc.collect()
    gc.freeze()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(_M_TRIM_THRESHOLD, _LINK_SERVER_TRIM_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc (musl has no mallopt)


def link_url(public_url: str, token: str) -> str:
    """The address to hand out for a link: ``<public_url>/l/<token>``."""
    return public_url.rstrip("/") + link_path(token)


def export_url(public_url: str, token: str) -> str:
    """The address to hand out for an export download: ``<public_url>/x/<token>``."""
    return public_url.rstrip("/") + export_path(token)


def create_app(veil: Veil, *, public_url: str,
               trusted_proxies: Iterable[str | IPNetwork | IPAddress] = (),
               clock: Callable[[], float] = time.time,
               rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
               shared_limits: bool = False) -> web.Application:
    """The link server over ``veil``. ``rate_limit=None`` turns off the guessing throttles
    (tokens and passwords; for tests that hammer one link from one address on purpose);
    ``shared_limits`` keeps the token throttle's budget in the database, shared by every link
    server on it (several behind a load balancer)."""
    app = web.Application(middlewares=[error_pages])
    pages = Pages(urlsplit(public_url).path)
    app[PAGES] = pages
    limiter: FailureLimiter | SharedFailureBudget | None = None
    if rate_limit is not None and shared_limits:
        limiter = SharedFailureBudget(veil.ctx, burst=rate_limit.burst,
                                      per_second=rate_limit.per_second)
    elif rate_limit is not None:
        limiter = FailureLimiter(rate_limit, clock)
    routes = LinkRoutes(veil.links, veil.ctx.db, pages, limiter=limiter,
               trusted_proxies=parse_networks(trusted_proxies), clock=clock,
               executor=lambda: app.get(WATERMARK_POOL),
               passwords=PasswordThrottle(clock) if rate_limit is not None else None,
               secure_cookies=urlsplit(public_url).scheme == "https")
    routes.add_to(app)
    ExportRoutes(veil.exports, routes).add_to(app)
    app.on_response_prepare.append(add_security_headers)
    app.cleanup_ctx.append(_watermark_pool)
    return app


async def _watermark_pool(app: web.Application) -> AsyncIterator[None]:
    pool = ThreadPoolExecutor(max_workers=WATERMARK_THREADS,
                              thread_name_prefix="veil-watermark")
    app[WATERMARK_POOL] = pool
    yield
    pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class WebServer:
    """A running link server; ``stop()`` is graceful (requests in flight get to finish)."""

    runner: web.AppRunner
    site: web.TCPSite
    host: str
    port: int  # the bound port, also when 0 ("any free port") was asked for

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def cleanup(self) -> None:
        """The same as ``stop()``, for callers that treat the server like an AppRunner."""
        await self.stop()


async def start_web(app: web.Application, host: str, port: int, *,
                    shutdown_timeout: float = 5.0, reuse_port: bool = False) -> WebServer:
    """Bind ``app`` to ``host:port`` (port 0: any free port; see ``WebServer.port``). The
    access log goes through RedactingAccessLogger, which never writes a token.
    ``reuse_port``: SO_REUSEPORT, so other processes can bind the same port and the kernel
    spreads connections over them."""
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger,
                           shutdown_timeout=shutdown_timeout, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise _bind_error(host, port, exc) from exc
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return WebServer(runner, site, str(bound_host), int(bound_port))


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    """What the operator should change when the link server cannot listen where it was told."""
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"VEIL_WEB_PORT {port} on {host} is already in use by another "
                           "program: stop it, or set VEIL_WEB_PORT to a free port (or "
                           "VEIL_WEB_ENABLED=off if this process needs no link server).")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ConfigError(f"VEIL_WEB_PORT {port} needs administrator rights on this system: "
                           "use a port above 1023 and put a reverse proxy in front.")
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return ConfigError(f"the link server cannot listen on VEIL_WEB_HOST {host} port {port} "
                       f"({reason}): use an address of this machine, such as 127.0.0.1.")


async def serve(settings: Settings) -> None:
    """Run the link server from ``settings`` until cancelled or sent SIGTERM. With
    ``web_workers`` N > 1, this process binds the port with SO_REUSEPORT and starts N - 1
    more (``python -m bot web --worker``) that bind beside it; the kernel spreads connections
    over the N, and a SIGTERM here stops them all. Their failure throttle is then kept in the
    database (as with VEIL_SHARED_LIMITS=on), or every process would give a guesser its own
    budget."""
    from bot.core.veil import Veil  # the core loads only when a server really starts

    several = settings.web_workers > 1 or settings.web_reuse_port
    veil = await Veil.open(settings.data_dir, master_key=settings.master_keys(),
                           blob_url=settings.blob_url, s3=settings.s3,
                           database_url=settings.database_url,
                           db_pool_min=settings.db_pool_min, db_pool_max=settings.db_pool_max)
    async with veil:
        app = create_app(veil, public_url=settings.public_url,
                         trusted_proxies=settings.trusted_proxies,
                         shared_limits=settings.shared_limits or several)
        server = await start_web(app, settings.web_host, settings.web_port,
                                 reuse_port=several)
        workers = [await _start_worker(server.port) for _ in range(settings.web_workers - 1)]
        settle_for_serving()
        log.info("Link server listening on %s%s; links point at %s", server.url,
                 f" ({settings.web_workers} processes)" if workers else "",
                 settings.public_url)
        try:
            await _until_terminated()
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    worker.terminate()
            await server.stop()
            for worker in workers:
                await worker.wait()
            log.info("Link server stopped")


async def _start_worker(port: int) -> asyncio.subprocess.Process:
    # Same settings (the environment and .env), the port this process really bound.
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "web", "--worker",
        env={**os.environ, "VEIL_WEB_PORT": str(port), "VEIL_WEB_WORKERS": "1"})


async def _until_terminated() -> None:
    """Wait for SIGTERM (what a service manager or ``docker stop`` sends). Ctrl-C arrives as a
    cancellation from ``asyncio.run``, which unwinds the same ``finally`` blocks."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    except (NotImplementedError, RuntimeError, ValueError):
        # Windows, or not the main thread: cancellation is then the only way to stop.
        await asyncio.Event().wait()
        return
    try:
        await stopping.wait()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGTERM)

