"""The SQLite adapter under load a user would notice: another process writing, a long listing,
and link fetches that each wait for their own view to be committed (issue 12)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.veil import Veil
from db import Database
from tests.conftest import ALICE, GUILD, png, viewer


class LoopWatch:
    """How often a 1 ms ticker got to run on the event loop. Counted, not timed: on a shared
    machine a thread may wait tens of milliseconds for a core whatever the loop does, but a
    statement that holds the loop lets no tick through at all while it runs."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO meta (key, value) VALUES ('other-process', 'x')")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.fixture
async def shared(data_dir: Path) -> AsyncIterator[Veil]:
    veil = await Veil.open(data_dir)
    try:
        yield veil
    finally:
        await veil.close()


async def test_another_process_holding_the_write_lock_stalls_neither_link_pages_nor_the_loop(
        shared, data_dir):
    image = await shared.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    new = await shared.links.create(image.public_id, viewer(ALICE))
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_WRITE_LOCK, str(data_dir / "veil.db"), "1.0",
        stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"holding\n"
        async with LoopWatch() as watch:
            # The image fetch needs the write lock (its view count): it waits, off the loop.
            fetching = asyncio.create_task(shared.links.fetch(new.token))
            ticks = watch.ticks
            pages = []
            for _ in range(20):  # meanwhile the link's page (reads only) answers at once
                started = time.perf_counter()
                assert await shared.links.resolve(new.token) is not None
                pages.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            assert not fetching.done()  # still waiting for the other process's commit
            ticks = watch.ticks - ticks
            served = await fetching
        assert served is not None and served[1].public_id == new.link.public_id
        assert max(pages) < 0.05
        assert ticks >= 20, "the event loop stalled while the fetch waited"
    finally:
        await asyncio.wait_for(holder.wait(), 10)
    assert await shared.ctx.db.fetchval("SELECT views FROM links") == 1


async def test_a_long_listing_runs_without_blocking_the_event_loop(tmp_path):
    db = await Database.open(tmp_path / "veil.db")
    try:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE big (n INTEGER)")
            await tx.executemany("INSERT INTO big (n) VALUES (?)",
                                 [(n,) for n in range(200_000)])
        async with LoopWatch() as watch:
            started, ticks = time.perf_counter(), watch.ticks
            rows = await db.fetchall("SELECT a.n FROM big a WHERE a.n % 7 = 0"
                                     " AND a.n NOT IN (SELECT n FROM big WHERE n < 500)")
            took, ticks = time.perf_counter() - started, watch.ticks - ticks
            async with db.transaction() as tx:  # the same inside a transaction
                ticks_inside = watch.ticks
                inside = await tx.fetchval("SELECT count(*) FROM big a, big b"
                                           " WHERE a.n % 7 = 0 AND b.n = 3")
                ticks_inside = watch.ticks - ticks_inside
        sevens = len(range(0, 200_000, 7))
        assert (len(rows), inside) == (sevens - len(range(0, 500, 7)), sevens)
        # Long enough for many 1 ms ticks had the loop been free (47 ms on the idle 2-core
        # machine: a bound of 50 ms failed there, on a setup check, not on the adapter).
        assert took > 0.02
        assert ticks >= 5 and ticks_inside >= 5, "the listing held the event loop"
    finally:
        await db.close()


async def test_every_link_response_waits_for_its_own_view_to_be_committed(shared, data_dir):
    image = await shared.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    new = await shared.links.create(image.public_id, viewer(ALICE), max_views=30)
    outside = sqlite3.connect(data_dir / "veil.db")  # what another process would read
    seen: list[tuple[int, int]] = []

    async def fetch() -> bool:
        served = await shared.links.fetch(new.token, agent="firefox")
        # The moment the response could go out: the view is already on disk for everyone.
        views = outside.execute("SELECT views FROM links").fetchone()[0]
        logged = outside.execute("SELECT count(*) FROM view_log WHERE via = 'link'").fetchone()
        seen.append((views, logged[0]))
        return served is not None

    try:
        results = await asyncio.gather(*(fetch() for _ in range(40)))
    finally:
        outside.close()
    assert results.count(True) == 30
    for answered, (views, logged) in enumerate(seen, start=1):
        assert views == logged >= min(answered, 30)


async def _fetch_while(veil: Veil, token: str, action) -> object:
    """A fetch during which ``action`` commits, after its token lookup and before its count
    (the image is read after the count, which is why the hook is there)."""
    real = veil.links._count_view

    async def act_then_count(target, agent):
        await action()
        return await real(target, agent)

    veil.links._count_view = act_then_count  # type: ignore[method-assign]
    try:
        return await veil.links.fetch(token)
    finally:
        veil.links._count_view = real  # type: ignore[method-assign]


async def test_a_revoke_or_deletion_committed_during_a_fetch_is_honoured_by_that_fetch(
        data_dir):
    async with await Veil.open(data_dir) as web, await Veil.open(data_dir) as bot:
        image = await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        revoked = await bot.links.create(image.public_id, viewer(ALICE))
        locked = await bot.links.create(image.public_id, viewer(ALICE))
        deleted = await bot.links.create(image.public_id, viewer(ALICE))
        assert await _fetch_while(web, revoked.token, lambda: bot.links.revoke(
            revoked.link.public_id, viewer(ALICE))) is None
        assert await _fetch_while(web, locked.token, lambda: bot.links.set_password(
            locked.link.public_id, viewer(ALICE), "correct horse battery")) is None
        assert await _fetch_while(web, deleted.token, lambda: bot.images.delete(
            image.public_id, viewer(ALICE))) is None
        assert await web.ctx.db.fetchval("SELECT count(*) FROM view_log") == 0
        assert await web.ctx.db.fetchval("SELECT coalesce(sum(views), 0) FROM links") == 0
