"""Leases: how several processes on one data store agree that a job runs in one of them.

A lease is a row (name, holder, expiry). A process takes it when nobody holds it, its holder
is this process, or the holder let it expire (a dead process's lease simply runs out). Taking
is one conditional upsert inside a write transaction, so two processes never both win.
Periodic jobs (retention, expiry sweeps) take their lease for one period and keep it: the job
then runs once per period across all processes. Key rotation holds its lease while it runs.

On PostgreSQL the same statement works as is (``INSERT .. ON CONFLICT .. DO UPDATE .. WHERE``);
per-row claims of a queue use ``FOR UPDATE SKIP LOCKED`` instead.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from bot.core.context import Context
from bot.core.errors import VeilError

T = TypeVar("T")

_TAKE_SQL = """
INSERT INTO leases (name, holder, expires_at) VALUES (:name, :holder, :until)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leases.holder = :holder OR leases.expires_at <= :now
"""


class LeaseHeld(VeilError):
    """Another process holds the lease on this job right now."""


class Leases:
    def __init__(self, ctx: Context, holder: str | None = None) -> None:
        self.ctx = ctx
        # Random per process (per Veil), so a restarted process never mistakes a lease of its
        # previous life, possibly mid-job when it died, for its own.
        self.holder = holder or secrets.token_hex(8)

    async def take(self, name: str, ttl_s: float) -> bool:
        """Take or extend the lease ``name`` for ``ttl_s`` seconds; False if someone else has
        it."""
        now = self.ctx.now()
        async with self.ctx.db.transaction() as tx:
            return await tx.execute(_TAKE_SQL, {"name": name, "holder": self.holder,
                                                "until": now + ttl_s, "now": now}) == 1

    async def release(self, name: str) -> None:
        async with self.ctx.db.transaction() as tx:
            await tx.execute("DELETE FROM leases WHERE name = ? AND holder = ?",
                             (name, self.holder))

    async def holder_of(self, name: str) -> str | None:
        return await self.ctx.db.fetchval(
            "SELECT holder FROM leases WHERE name = ? AND expires_at > ?", (name, self.ctx.now()))

    @asynccontextmanager
    async def holding(self, name: str, ttl_s: float, *, busy: str) -> AsyncIterator[None]:
        """Run the body holding ``name``; LeaseHeld (with the message ``busy``) if another
        process holds it. The lease is released at the end, also on error."""
        if not await self.take(name, ttl_s):
            raise LeaseHeld(busy)
        try:
            yield
        finally:
            await self.release(name)

    async def once_per(self, name: str, period_s: float,
                       job: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``job`` unless another process ran it (or runs it) within the last period;
        returns its result, or None when it was not this process's turn."""
        if not await self.take(name, period_s):
            return None
        return await job()
