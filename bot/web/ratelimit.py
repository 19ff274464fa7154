"""Throttling of token guessing, per client address, without locking out the link's holder.

Each address has a bucket of allowed *failed* lookups (by default 20, refilled at one per
second). A lookup takes one unit up front, so fifty guesses sent at once cannot all slip past
an almost empty bucket, and gets it back when the token turned out to be live: successes never
count. Only the address that keeps failing runs dry; a holder on another address is untouched.

The client address is the TCP peer, or, when that peer is one of our trusted reverse proxies,
the right-most address in ``X-Forwarded-For`` that is not a trusted proxy (everything left of
it was written by the client and can be forged). IPv6 clients are bucketed by their /64, which
one subscriber usually holds whole; otherwise a single host could rotate through addresses.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class RateLimit:
    """How many failed lookups an address may make: ``burst`` at once, then ``per_second``."""

    burst: int = 20
    per_second: float = 1.0
    max_addresses: int = 10_000

    def __post_init__(self) -> None:
        if self.burst < 1 or self.per_second <= 0 or self.max_addresses < 1:
            raise ValueError("RateLimit needs burst >= 1, per_second > 0, max_addresses >= 1")


class FailureLimiter:
    """Token buckets of failed lookups, one per address, the least recently seen forgotten
    first once ``max_addresses`` are tracked (memory stays bounded under a flood)."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        # address -> (units left, when last refilled)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _current(self, key: str) -> float:
        units, at = self._buckets.get(key, (float(self.limit.burst), self._clock()))
        now = self._clock()
        elapsed = max(0.0, now - at)
        return min(float(self.limit.burst), units + elapsed * self.limit.per_second)

    def _store(self, key: str, units: float) -> None:
        if units >= self.limit.burst:
            # A full bucket is the same as no bucket: keep the table to active addresses.
            self._buckets.pop(key, None)
            return
        self._buckets[key] = (units, self._clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.limit.max_addresses:
            self._buckets.popitem(last=False)

    def acquire(self, key: str) -> tuple[float | None, bool]:
        """Before a lookup: (seconds to wait, or None when allowed; whether a unit was taken).

        An address with no failure on record is not charged up front, so any number of a real
        holder's requests in flight pass (also everyone behind one unlisted proxy). An address
        that has failed is charged up front, so its guesses in flight cannot outrun the bucket.
        """
        if key not in self._buckets:
            return None, False
        units = self._current(key)
        if units < 1.0:
            self._store(key, units)
            return (1.0 - units) / self.limit.per_second, False
        self._store(key, units - 1.0)
        return None, True

    def settle(self, key: str, *, charged: bool, found: bool) -> None:
        """After a lookup: give a hit its unit back, charge a miss that was not charged yet.
        A burst of misses from a clean address may run into debt (down to -burst), which
        delays that address's next lookups accordingly."""
        if found and charged:
            self._store(key, self._current(key) + 1.0)
        elif not found and not charged:
            self._store(key, max(-float(self.limit.burst), self._current(key) - 1.0))


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def parse_networks(items: Iterable[str | IPNetwork | IPAddress]) -> tuple[IPNetwork, ...]:
    """Trusted proxies as networks, from strings ("10.0.0.0/8", "::1"), addresses or networks."""
    networks: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(item)
        else:
            networks.append(ipaddress.ip_network(str(item).strip(), strict=False))
    return tuple(networks)


def _parse_address(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:51000"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: tuple[IPNetwork, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str],
                   proxies: tuple[IPNetwork, ...]) -> str:
    """The bucket key of the client behind a request (see the module docstring)."""
    address = _parse_address(peer or "")
    if address is None:
        return peer or "unknown"
    if _trusted(address, proxies):
        hops = [h for header in forwarded_for for h in header.split(",") if h.strip()]
        for hop in reversed(hops):
            parsed = _parse_address(hop)
            if parsed is None:
                break  # garbage from the hop we trusted last: blame that hop
            address = parsed
            if not _trusted(parsed, proxies):
                break
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
