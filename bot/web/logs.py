"""Logging for the link server that never writes a link token (guarantee 8).

A token is the whole secret of a link, and it travels in the URL path: ``/l/<token>`` (and
``/x/<token>`` for an export download). Three places could leak it: the access log, our own
error logs, and aiohttp's internal loggers (whose exception messages may quote the request
line). The access log gets a logger that writes the
redacted path only; the rest go through a filter that rewrites the finished message.
"""

from __future__ import annotations

import logging
import re
import traceback

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REDACTED = "<redacted>"
# A path segment after "/l/" (a link) or "/x/" (an export download), wherever it appears
# (paths, request lines, URLs in messages).
_LINK_PATH = re.compile(r"/([lx])/[^/\s?#\"'<>]+")
# A token-shaped word on its own (43 url-safe characters), for messages that quote it bare.
_BARE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")

# aiohttp's loggers, and our own (a filter only sees records made by the logger it is on, not
# those of its children, so each module's logger is named).
_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal",
            "aiohttp.client", "aiohttp.websocket", "bot.web.app", "bot.web.routes",
            "bot.web.security", "bot.web.exports")


def redact(text: str) -> str:
    """``text`` with every link token replaced by <redacted>."""
    return _BARE_TOKEN.sub(REDACTED, _LINK_PATH.sub(r"/\1/" + REDACTED, text))


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
                         response.status, response.body_length, time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class TokenRedactingFilter(logging.Filter):
    """Rewrites a record's message and traceback with tokens redacted, before any handler sees
    them. Attached to loggers that may quote request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template only
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text).rstrip("\n")
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = TokenRedactingFilter()


def install_log_redaction(*extra: logging.Logger) -> None:
    """Put the filter on aiohttp's loggers, ours, and ``extra`` (idempotent)."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in (*loggers, *extra):
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def format_exception_redacted(exc: BaseException) -> str:
    return redact("".join(traceback.format_exception(exc))).rstrip("\n")
