"""What running several processes on one data folder costs (issue 10): the shared link throttle
against the in-memory one, and an online key rotation by the number of owners.

  * throttle: GET /l/<token> (the link page, a valid token) from an address that never
    failed, and unknown tokens from another address, sequential, through create_app on a real
    socket, with the in-memory throttle and with VEIL_SHARED_LIMITS (one extra read per
    request from a clean address; a failing address pays a write transaction per request),
    interleaved, median of 5 rounds.
  * rotation: `rotate-key` over 10,000 owners (1,000 with --quick) while nothing else runs:
    owners re-wrapped per second.

    python -m bench.several [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bot.core.crypto import new_key
from bot.core.models import Viewer
from bot.core.veil import Veil
from bot.web import RateLimit, create_app, start_web
from tests.conftest import png

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


async def fetch_many(url: str, n: int, client: str) -> float:
    """Seconds per request, n sequential GETs from ``client`` (through a trusted proxy)."""
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER,
                                              "X-Forwarded-For": client}) as session:
        started = time.perf_counter()
        for _ in range(n):
            async with session.get(url) as response:
                await response.read()
        return (time.perf_counter() - started) / n


async def throttle(folder: Path, n: int) -> dict[str, float]:
    async with await Veil.open(folder / "throttle") as veil:
        image = await veil.images.create(1, png(), guild_id=None, source="upload")
        link = await veil.links.create(image.public_id, Viewer(1))
        servers = {}
        for shared in (False, True):
            # A budget large enough that the misses of a round are never refused.
            app = create_app(veil, public_url="http://127.0.0.1", shared_limits=shared,
                             trusted_proxies=["127.0.0.1"],
                             rate_limit=RateLimit(burst=1_000_000, per_second=1.0))
            servers[shared] = await start_web(app, "127.0.0.1", 0)
        rounds: dict[str, list[float]] = {}
        try:
            for _ in range(5):
                for shared, server in servers.items():
                    kind = "database" if shared else "memory"
                    # The holder's address never failed; the guesser's always does.
                    hit = await fetch_many(f"{server.url}/l/{link.token}", n, "198.51.100.7")
                    miss = await fetch_many(f"{server.url}/l/{'Z' * 43}", n, "203.0.113.9")
                    rounds.setdefault(f"{kind} hit", []).append(hit)
                    rounds.setdefault(f"{kind} miss", []).append(miss)
        finally:
            for server in servers.values():
                await server.stop()
    return {k: statistics.median(v) for k, v in rounds.items()}


async def rotation(folder: Path, owners: int) -> float:
    async with await Veil.open(folder / "rotation") as veil:
        async with veil.ctx.db.transaction() as tx:
            for user in range(owners):
                await veil.ctx.ensure_user(tx, 10_000 + user)
        started = time.perf_counter()
        count = await veil.rotate_master_key(new_key())
        took = time.perf_counter() - started
        assert count == owners
    return owners / took


async def main(quick: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        figures = await throttle(Path(tmp), 100 if quick else 400)
        per_second = await rotation(Path(tmp), 1_000 if quick else 10_000)
    for kind in ("hit", "miss"):
        memory, database = figures[f"memory {kind}"], figures[f"database {kind}"]
        print(f"link page, {kind:4}: in-memory throttle {memory * 1e6:7.0f} us/request, "
              f"shared (database) {database * 1e6:7.0f} us/request, "
              f"ratio {database / memory:.2f}")
    print(f"rotate-key: {per_second:,.0f} owners re-wrapped per second")


if __name__ == "__main__":
    asyncio.run(main("--quick" in sys.argv))
