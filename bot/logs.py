"""Logging for the whole process, redacted in one place (guarantee 8).

``setup_logging`` puts one handler on the root logger and one filter, ``REDACTOR``, on that
handler. A filter on a handler sees every record the handler writes, whatever logger made it
(ours, discord.py's, aiohttp's, asyncio's, a cog's), so there is no list of logger
names to keep up to date. The filter keeps every line but never:

- a payload argument from a wire library (gateway events, HTTP bodies, SQL parameter tuples),
  which may carry interaction tokens, prompts or link selectors;
- an interaction or webhook token in a URL, or a link token (``/l/<token>`` or bare);
- a registered secret, such as the bot token (``REDACTOR.add_secrets``).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import traceback
from collections.abc import Mapping
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# discord.py's DEBUG output includes request bodies: even redacted, it is not worth its volume,
# so it never runs below INFO.
NOISY_LOGGERS = ("discord",)
# Loggers (and their children) whose arguments may be whole wire payloads: gateway events and
# HTTP bodies (discord.py, aiohttp).
WIRE_LOGGERS = ("discord", "aiohttp")

REDACTED = "<redacted>"
# A path segment after "/l/" (a link) or "/x/" (an export download), wherever it appears
# (paths, request lines, URLs in messages).
_LINK_PATH = re.compile(r"/([lx])/[^/\s?#\"'<>]+")
# A link token on its own (43 url-safe characters), for messages that quote it bare.
_BARE_TOKEN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_TOKEN_IN_URL = re.compile(r"(/(?:interactions/\d+|webhooks/\d+)/)[A-Za-z0-9_.\-]+")


def redact_link_tokens(text: str) -> str:
    """``text`` with every link token replaced by <redacted>."""
    return _BARE_TOKEN.sub(REDACTED, _LINK_PATH.sub(r"/\1/" + REDACTED, text))


def _kept(value: object) -> object:
    return value


def _withheld(value: object) -> object:
    """A log argument, or a short stand-in when it is a payload that may hold secrets."""
    if isinstance(value, dict) and "op" in value:
        return f"<op {value.get('op')} {value.get('t') or ''} payload withheld>"
    if isinstance(value, dict | list | tuple | set | bytes | bytearray | memoryview):
        return f"<{type(value).__name__} withheld>"
    if isinstance(value, functools.partial):
        return f"<{getattr(value.func, '__name__', 'call')}(...) withheld>"
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        return "<body withheld>"
    if type(value).__name__ in ("FormData", "WSMessage"):
        return f"<{type(value).__name__} withheld>"
    return value


class Redactor(logging.Filter):
    """Rewrites each record's message and traceback before it is written; never drops one."""

    def __init__(self) -> None:
        super().__init__()
        # A tuple replaced whole, never changed in place: records arrive from worker threads too.
        self.secrets: tuple[str, ...] = ()

    def add_secrets(self, *secrets: str | None) -> None:
        known = set(self.secrets) | {s for s in secrets if s}
        self.secrets = tuple(sorted(known, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        text = redact_link_tokens(_TOKEN_IN_URL.sub(r"\1<token>", text))
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        template, args = str(record.msg), record.args
        # Only the wire libraries log whole payloads; our own arguments are chosen with care
        # (and still pass the scrub below), so they are kept as they are.
        hold = _withheld if record.name.startswith(WIRE_LOGGERS) else _kept
        try:
            if not args:
                message = template
            elif isinstance(args, Mapping) and "%(" in template:
                message = template % {k: hold(v) for k, v in args.items()}
            elif isinstance(args, Mapping):  # one dict argument, which logging unwraps
                message = template % (hold(dict(args)),)
            else:
                message = template % tuple(hold(a) for a in args)
        except (TypeError, ValueError, KeyError):
            message = template
        record.msg, record.args = self.scrub(message), None
        if record.exc_info:
            # A Formatter writes exc_text when it is set, instead of formatting exc_info again;
            # exc_info stays for code that inspects the exception itself.
            record.exc_text = self.scrub("".join(
                traceback.format_exception(*record.exc_info))).rstrip("\n")
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


REDACTOR = Redactor()


def setup_logging(level: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records at ``level`` and above through one redacted handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
    return handler
