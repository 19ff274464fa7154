"""The link server's request handlers: the viewer page, the image, the stylesheet, health.

Every token lookup follows one path, whatever its outcome: take a unit from the client's
failure bucket, ask the core, and on a miss answer the one 404 (the unit stays spent); on a hit
give the unit back. Malformed tokens are swapped for a random well-formed one first, so they
cost the same database lookup and hash as a real miss and take about the same time.

Only ``GET /l/<token>/image`` from something that is not a link-preview fetcher counts a view.

A link with a password shows a form instead of the image until ``POST /l/<token>`` brings the
right answer; that sets a session cookie (HttpOnly, SameSite=Strict, Secure behind https, scoped
to this link's path) and redirects to the page. Every handler passes the cookie to the core,
which decides; a locked link answers HEAD and the image with the one 404.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

from aiohttp import web

from bot.core.limits import SharedFailureBudget
from bot.core.links import LinkService, LinkTarget
from bot.core.models import ImageContent, LinkSession, ShareLink
from bot.core.passwords import MAX_LENGTH
from bot.web.pages import STYLESHEET, Pages
from bot.web.passwordthrottle import PasswordThrottle
from bot.web.ratelimit import FailureLimiter, IPNetwork, client_address, retry_after_header
from bot.web.security import ALLOWS_FORM, not_found, too_many_requests
from bot.web.useragent import agent_family, is_unfurler
from bot.web.watermark import apply_watermark, watermark_text
from db import Store

log = logging.getLogger(__name__)

# Whether the throttle took a unit from this request's address before its lookup.
_CHARGED = web.RequestKey("veil_charged", bool)
SESSION_COOKIE = "veil_session"


class LinkRoutes:
    """Handlers over one LinkService; built by ``create_app``."""

    def __init__(self, links: LinkService, db: Store, pages: Pages, *,
                 limiter: FailureLimiter | SharedFailureBudget | None,
                 trusted_proxies: tuple[IPNetwork, ...],
                 clock: Callable[[], float] = time.time,
                 executor: Callable[[], Executor | None] = lambda: None,
                 passwords: PasswordThrottle | None = None,
                 secure_cookies: bool = False) -> None:
        self.links = links
        self.passwords = passwords
        self.secure_cookies = secure_cookies
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
        app.router.add_post("/l/{token}", self.login, name="link_login")
        app.router.add_get("/l/{token}/image", self.image, name="link_image")
        app.router.add_get("/static/veil.css", self.stylesheet, name="stylesheet")
        app.router.add_get("/healthz", self.health, name="health")

    # The throttle ----------------------------------------------------------------------------

    def _client(self, request: web.Request) -> str:
        if not self.trusted_proxies:  # X-Forwarded-For is the client's own word: ignored
            return _peer_key(request.remote)
        return client_address(request.remote, request.headers.getall("X-Forwarded-For", ()),
                              self.trusted_proxies)

    async def _refused(self, request: web.Request, client: str) -> web.Response | None:
        """A 429 if this client already failed too often (taking a unit up front if it has
        failed before)."""
        if self.limiter is None:
            return None
        if isinstance(self.limiter, SharedFailureBudget):
            wait, request[_CHARGED] = await self.limiter.acquire(client)
        else:
            wait, request[_CHARGED] = self.limiter.acquire(client)
        if wait is None:
            return None
        return too_many_requests(self.pages, retry_after_header(wait))

    async def _settle(self, request: web.Request, client: str, *, found: bool) -> None:
        if isinstance(self.limiter, SharedFailureBudget):
            await self.limiter.settle(client, charged=request[_CHARGED], found=found)
        elif self.limiter is not None:
            self.limiter.settle(client, charged=request[_CHARGED], found=found)

    async def _miss(self, request: web.Request, client: str) -> web.Response:
        await self._settle(request, client, found=False)
        return not_found(self.pages)

    # Handlers --------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The viewer page. Spends nothing: only the image fetch it triggers does."""
        client = self._client(request)
        if (refusal := await self._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        target = await self.links.resolve(token, session=_session(request))
        if target is None:
            return await self._miss(request, client)
        await self._settle(request, client, found=True)
        if is_unfurler(request.headers.get("User-Agent")):
            body = self.pages.for_unfurler()
        elif target.locked:
            return self._password_form(request, token)
        else:
            body = self.pages.viewer(token, target.link, target.image, self.clock())
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    def _password_form(self, request: web.Request, token: str, *,
                       wrong: bool = False) -> web.Response:
        request[ALLOWS_FORM] = True
        return web.Response(status=403 if wrong else 200,
                            body=self.pages.password_form(token, wrong=wrong),
                            content_type="text/html", charset="utf-8")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """A password answered on the form. Right: a new session cookie and a redirect to the
        page. Wrong: the form again (403). Throttled per link and address, then per link."""
        client = self._client(request)
        if (refusal := await self._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        target = await self.links.resolve(token)
        if target is None:
            return await self._miss(request, client)
        await self._settle(request, client, found=True)
        if not target.link.has_password:
            raise web.HTTPSeeOther(self.pages.page_url(token))
        form = await request.post()
        answer = form.get("password")
        password = answer[:MAX_LENGTH + 1] if isinstance(answer, str) else ""
        ticket = None
        if self.passwords is not None:
            wait, ticket = self.passwords.acquire(str(target.row_id), client)
            if wait is not None:
                return web.Response(status=429, body=self.pages.too_many_answers,
                                    content_type="text/html", charset="utf-8",
                                    headers={"Retry-After": retry_after_header(wait)})
        result = await self.links.login(target, password)
        if ticket is not None and self.passwords is not None:
            self.passwords.settle(ticket, correct=result.outcome != "wrong")
        if result.outcome == "dead" or result.session is None:
            if result.outcome == "wrong":
                return self._password_form(request, token, wrong=True)
            return not_found(self.pages)
        # See Other: the browser reloads the page with GET, so a reload never posts again.
        response = web.Response(status=303, headers={"Location": self.pages.page_url(token)})
        self._set_session(response, token, result.session)
        return response

    def _set_session(self, response: web.StreamResponse, token: str,
                     session: LinkSession) -> None:
        response.set_cookie(SESSION_COOKIE, session.token, path=self.pages.page_url(token),
                            max_age=max(1, int(session.expires_at - self.clock())),
                            httponly=True, samesite="Strict", secure=self.secure_cookies)

    async def image(self, request: web.Request) -> web.StreamResponse:
        """The image itself: counts one view (atomically, in the core) and logs it for the
        owner. HEAD and preview fetchers get the same answer without spending anything."""
        client = self._client(request)
        if (refusal := await self._refused(request, client)) is not None:
            return refusal
        token = request.match_info["token"]
        user_agent = request.headers.get("User-Agent")
        unfurler = is_unfurler(user_agent)
        session = _session(request)
        if unfurler or request.method == "HEAD":
            target = await self.links.resolve(token, session=session)
            if target is None:
                return await self._miss(request, client)
            await self._settle(request, client, found=True)
            if not unfurler and not target.locked:
                return self._head(target)
            # Same bytes as any miss, so a preview fetcher or a request without the password's
            # session learns nothing and spends nothing.
            return not_found(self.pages)
        served = await self.links.fetch(token, session=session, agent=agent_family(user_agent))
        if served is None:
            return await self._miss(request, client)
        await self._settle(request, client, found=True)
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


@functools.lru_cache(maxsize=4096)
def _peer_key(peer: str | None) -> str:
    """The bucket key of a TCP peer, remembered: parsing the address with ``ipaddress`` on
    every request was 3% of a link fetch's profile (py-spy under wrk), and the same few
    addresses (a proxy, a busy client) send most requests."""
    return client_address(peer, (), ())


def _session(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


def _disposition(content: ImageContent, link: ShareLink) -> str:
    # Neutral name only (veil-<image id>.<ext>); the original file name is never kept.
    kind = "attachment" if link.allow_download else "inline"
    return f'{kind}; filename="{content.filename}"'
