"""The headers every response carries, and the one error path that renders our own pages.

The headers go on in ``on_response_prepare``, which aiohttp runs for every response it sends on
behalf of the application, including the ones it builds itself for unhandled errors, so no path
can forget them. The middleware turns aiohttp's HTTP exceptions (unknown route, wrong method)
into our pages, and any other exception into a plain 500 logged without the token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.web.logs import format_exception_redacted, redacted_path
from bot.web.pages import Pages

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src 'self'; style-src 'self'; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# The password page alone may submit its one form, and only to our own origin.
PASSWORD_PAGE_CSP = CONTENT_SECURITY_POLICY.replace("form-action 'none'", "form-action 'self'")

SECURITY_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    # Another site cannot embed a link's image in its own page (and spend its views).
    "Cross-Origin-Resource-Policy": "same-origin",
    # Says nothing about the software and its version.
    "Server": "Veil",
    # no-store above is for HTTP/1.1 caches; an HTTP/1.0 proxy only understands Pragma.
    "Pragma": "no-cache",
}

PAGES = web.AppKey("veil_pages", Pages)
# Set by the handler that renders the password form (the only page with a form).
ALLOWS_FORM = web.RequestKey("veil_allows_form", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: overwrite, never merge, so a handler cannot weaken them
    (``update`` replaces every header of the same name, as one assignment per name would)."""
    response.headers.update(SECURITY_HEADERS)
    if request.get(ALLOWS_FORM):
        response.headers["Content-Security-Policy"] = PASSWORD_PAGE_CSP


def not_found(pages: Pages) -> web.Response:
    """The one 404: byte-identical whatever the reason (unknown, expired, revoked, used up,
    deleted, malformed, unknown route)."""
    return web.Response(status=404, body=pages.not_found, content_type="text/html",
                        charset="utf-8")


def too_many_requests(pages: Pages, retry_after: str) -> web.Response:
    return web.Response(status=429, body=pages.too_many, content_type="text/html",
                        charset="utf-8", headers={"Retry-After": retry_after})


def error_page(pages: Pages, status: int, reason: str,
               headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=pages.error(status, reason),
                        content_type="text/html", charset="utf-8", headers=headers)


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    pages = request.app[PAGES]
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return not_found(pages)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_page(pages, exc.status, exc.reason, kept)
    except Exception as exc:
        # The traceback text can quote the URL (and so the token): log it redacted.
        log.error("Unhandled error on %s %s\n%s", request.method, redacted_path(request),
                  format_exception_redacted(exc))
        return error_page(pages, 500, "Internal Server Error")
