"""Logging for the link server that never writes a link token (guarantee 8).

A token is the whole secret of a link, and it travels in the URL path: ``/l/<token>`` (and
``/x/<token>`` for an export download). Three places could leak it: the access log, our own
error logs, and aiohttp's internal loggers (whose exception messages may quote the request
line). The access log gets a logger that writes the redacted path only; our error logs format
tracebacks redacted; and every record, aiohttp's included, passes the process-wide filter on the
log handler (bot/logs.py).
"""

from __future__ import annotations

import logging
import traceback

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bot.logs import redact_link_tokens as redact


def redacted_path(request: web.BaseRequest) -> str:
    """The request's path without its query string and with any token hidden."""
    try:
        path = request.rel_url.raw_path
    except Exception:  # a request so malformed that it has no URL
        return "?"
    return redact(path)


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines of method, redacted path, status, size and duration.

    Deliberately no client address and no user agent: the server needs neither to run, and
    together they identify the people who open a shared image.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('"%s %s" %d %d %.1fms', request.method, redacted_path(request),
                         response.status, body_size(request, response), time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def body_size(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The bytes of body the client was sent. aiohttp's ``body_length`` is everything written
    on the connection, status line and headers included (526 bytes more than the image on a
    link fetch), and stays 0 when the client left before the response was written."""
    written = response.body_length
    if request.method == "HEAD" or not written:
        return 0
    # A response with a length ends exactly there (aiohttp clips anything beyond it).
    length = response.content_length
    return length if length is not None else written


def format_exception_redacted(exc: BaseException) -> str:
    return redact("".join(traceback.format_exception(exc))).rstrip("\n")
