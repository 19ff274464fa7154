"""The link server's request handlers: the viewer page, the image, the stylesheet, health.

Every token lookup follows one path, whatever its outcome: take a unit from the client's
failure bucket, ask the core, and on a miss answer the one 404 (the unit stays spent); on a hit
give the unit back. Malformed tokens are swapped for a random well-formed one first, so they
cost the same database lookup and hash as a real miss and take about the same time.

Only ``GET /l/<token>/image`` from something that is not a link-preview fetcher counts a view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from bot.core.links import LinkService, LinkTarget
from bot.core.models import ImageContent, ShareLink
from bot.web.pages import STYLESHEET, Pages
from bot.web.ratelimit import FailureLimiter, IPNetwork, client_address, retry_after_header
from bot.web.security import not_found, too_many_requests
from bot.web.useragent import agent_family, is_unfurler
from bot.web.watermark import apply_watermark, watermark_text
from db import Database

log = logging.getLogger(__name__)

# Whether the throttle took a unit from this request's address before its lookup.
_CHARGED = web.RequestKey("veil_charged", bool)


class LinkRoutes:
    """Handlers over one LinkService; built by ``create_app``."""

    def __init__(self, links: LinkService, db: Database, pages: Pages, *,
                 limiter: FailureLimiter | None, trusted_proxies: tuple[IPNetwork, ...],
                 clock: Callable[[], float] = time.time,
                 executor: Callable[[], Executor | None] = lambda: None) -> None:
        self.links = links
        self.db = db
        self.pages = pages
        self.limiter = limiter
        self.trusted_proxies = trusted_proxies
        self.clock = clock
        self._executor = executor
        self._stylesheet = STYLESHEET.encode()

    def add_to(self, app: web.Application) -> None:
        # add_get also answers HEAD with the same handler (which then sends no body).
        app.router.add_get("/l/{token}", self.page, name="link_page")
        app.router.add_get("/l/{token}/image", self.image, name="link_image")
        app.router.add_get("/static/veil.css", self.stylesheet, name="stylesheet")
        app.router.add_get("/healthz", self.health, name="health")

    # The throttle ----------------------------------------------------------------------------

    def _client(self, request: web.Request) -> str:
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                              self.trusted_proxies)

    def _refused(self, request: web.Request, client: str) -> web.Response | None:
        """A 429 if this client already failed too often (taking a unit up front if it has
        failed before)."""
        if self.limiter is None:
            return None
        wait, request[_CHARGED] = self.limiter.acquire(client)
        if wait is None:
            return None
        return too_many_requests(self.pages, retry_after_header(wait))

    def _settle(self, request: web.Request, client: str, *, found: bool) -> None:
        if self.limiter is not None:
            self.limiter.settle(client, charged=request[_CHARGED], found=found)

    def _miss(self, request: web.Request, client: str) -> web.Response:
        self._settle(request, client, found=False)
        return not_found(self.pages)

    # Handlers --------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The viewer page. Spends nothing: only the image fetch it triggers does."""
        client = self._client(request)
        if (refusal := self._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        target = await self.links.resolve(token)
        if target is None:
            return self._miss(request, client)
        self._settle(request, client, found=True)
        if is_unfurler(request.headers.get("User-Agent")):
            body = self.pages.for_unfurler()
        else:
            body = self.pages.viewer(token, target.link, target.image, self.clock())
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def image(self, request: web.Request) -> web.StreamResponse:
        """The image itself: counts one view (atomically, in the core) and logs it for the
        owner. HEAD and preview fetchers get the same answer without spending anything."""
        client = self._client(request)
        if (refusal := self._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        user_agent = request.headers.get("User-Agent")
        unfurler = is_unfurler(user_agent)
        if unfurler or request.method == "HEAD":
            target = await self.links.resolve(token)
            if target is None:
                return self._miss(request, client)
            self._settle(request, client, found=True)
            if not unfurler:
                return self._head(target)
            # Same bytes as any miss, so a preview fetcher learns nothing and spends nothing.
            return not_found(self.pages)
        served = await self.links.fetch(token, agent=agent_family(user_agent))
        if served is None:
            return self._miss(request, client)
        self._settle(request, client, found=True)
        content, link = served
        data = await self._render(content, link)
        return web.Response(body=data, content_type=content.record.mime,
                            headers={"Content-Disposition": _disposition(content, link)})

    def _head(self, target: LinkTarget) -> web.Response:
        return web.Response(content_type=target.image.mime, headers={
            "Content-Disposition": _disposition(ImageContent(target.image, b""), target.link)})

    async def _render(self, content: ImageContent, link: ShareLink) -> bytes:
        if not link.watermark:
            return content.data
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), apply_watermark, content.data,
                                          content.record.format, watermark_text(link.public_id))

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._stylesheet, content_type="text/css", charset="utf-8")

    async def health(self, request: web.Request) -> web.StreamResponse:
        try:
            ok = await self.db.fetchval("SELECT 1") == 1
        except Exception as exc:  # the database file is gone, locked or corrupt
            log.warning("Health check: database unreachable (%s)", type(exc).__name__)
            ok = False
        if ok:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable"}, status=503)


def _disposition(content: ImageContent, link: ShareLink) -> str:
    # Neutral name only (veil-<image id>.<ext>); the original file name is never kept.
    kind = "attachment" if link.allow_download else "inline"
    return f'{kind}; filename="{content.filename}"'
