"""Throttling of wrong link passwords, per link and address and per link, without locking out
the holder.

Two kinds of bucket, both of *wrong answers* (a correct one gives its unit back):

- one per (link, address): 5 wrong answers at once, then one every 30 s. Someone guessing from
  one address gets about 3 000 tries a day, while the holder on another address is untouched.
- one per link, shared by every address: 20 wrong answers at once, then one every 10 s. It
  slows a guesser who spreads over many addresses. It is only asked of an address that has
  already answered this link wrongly, so an address's first answer is never refused: the
  holder typing the right password gets in even while the link is under attack.

Kept in the server's memory (bounded; least recently seen forgotten first) and apart from the
token-guessing throttle, on purpose: it is small, and either may move to shared storage alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.web.ratelimit import FailureLimiter, RateLimit

PER_ADDRESS = RateLimit(burst=5, per_second=1 / 30, max_addresses=10_000)
PER_LINK = RateLimit(burst=20, per_second=1 / 10, max_addresses=10_000)


@dataclass(frozen=True)
class Ticket:
    """What ``acquire`` took, to hand back to ``settle``."""

    pair: str
    link: str
    pair_charged: bool
    link_charged: bool


class PasswordThrottle:
    def __init__(self, clock: Callable[[], float], *, per_address: RateLimit = PER_ADDRESS,
                 per_link: RateLimit = PER_LINK) -> None:
        self._pairs = FailureLimiter(per_address, clock)
        self._links = FailureLimiter(per_link, clock)

    def acquire(self, link_key: str, client: str) -> tuple[float | None, Ticket | None]:
        """Before checking an answer: (seconds to wait, None) when refused, else (None, ticket)."""
        pair = f"{link_key}|{client}"
        wait, pair_charged = self._pairs.acquire(pair)
        if wait is not None:
            return wait, None
        link_charged = False
        if pair_charged:  # this address has answered this link wrongly before
            wait, link_charged = self._links.acquire(link_key)
            if wait is not None:
                self._pairs.settle(pair, charged=True, found=True)  # nothing was tried
                return wait, None
        return None, Ticket(pair, link_key, pair_charged, link_charged)

    def settle(self, ticket: Ticket, *, correct: bool) -> None:
        self._pairs.settle(ticket.pair, charged=ticket.pair_charged, found=correct)
        if ticket.link_charged or not correct:
            self._links.settle(ticket.link, charged=ticket.link_charged, found=correct)
