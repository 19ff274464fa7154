"""Durations as people type them (`30m`, `12h`, `7d`, `1d12h`) and as we write them back."""

from __future__ import annotations

import re

from bot.core.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+)\s*([smhdw])")
MAX_DURATION = 366 * 86400


def parse_duration(text: str) -> float:
    """Seconds in ``text``; InvalidInput with an example when it cannot be read."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned or _PART.sub("", cleaned):
        raise InvalidInput(f"{text.strip()[:20]!r} is not a duration. "
                           "Write it like 30m, 12h, 7d or 1d12h.")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(cleaned))
    if seconds <= 0:
        raise InvalidInput("A duration must be longer than zero.")
    if seconds > MAX_DURATION:
        raise InvalidInput("A duration can be at most a year.")
    return float(seconds)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            out.append(f"{count}{unit}")
    return "".join(out[:2])
