"""Limits that hold across processes: the link servers' budget of failed lookups per client
address, and the number of generations a user may have waiting or running.

One process keeps these in memory (bot/web/ratelimit.py, bot/generate/queue.py). Several link
servers behind a load balancer, or several bot shards, keep them here, in the database they
share, so a guesser cannot multiply the budget by the number of servers and a user cannot
multiply the generation limit by the number of shards. The arithmetic is the in-memory one.
"""

from __future__ import annotations

from bot.core.context import Context
from bot.core.errors import QueueFull
from db import Tx


class SharedFailureBudget:
    """Token buckets of failed lookups per address, in the database (see FailureLimiter for
    the rules: a clean address is never charged up front; a hit gives its unit back)."""

    def __init__(self, ctx: Context, *, burst: int, per_second: float) -> None:
        self.ctx = ctx
        self.burst = float(burst)
        self.per_second = per_second

    def _refilled(self, units: float, at: float, now: float) -> float:
        return min(self.burst, units + max(0.0, now - at) * self.per_second)

    async def acquire(self, key: str) -> tuple[float | None, bool]:
        # A clean address costs one read and no write: the common case of a real holder.
        if await self.ctx.db.fetchone("SELECT 1 FROM throttle WHERE key = ?", (key,)) is None:
            return None, False
        now = self.ctx.now()
        async with self.ctx.db.transaction() as tx:
            row = await tx.fetchone("SELECT units, at FROM throttle WHERE key = ?", (key,))
            if row is None:
                return None, False
            stored, at = row
            units = self._refilled(stored, at, now)
            if units < 1.0:
                await self._store(tx, key, units, now)
                return (1.0 - units) / self.per_second, False
            await self._store(tx, key, units - 1.0, now)
            return None, True

    async def settle(self, key: str, *, charged: bool, found: bool) -> None:
        if found == charged:
            now = self.ctx.now()
            async with self.ctx.db.transaction() as tx:
                row = await tx.fetchone("SELECT units, at FROM throttle WHERE key = ?", (key,))
                if row is None:
                    units = self.burst
                else:
                    stored, at = row
                    units = self._refilled(stored, at, now)
                units = units + 1.0 if found else max(-self.burst, units - 1.0)
                await self._store(tx, key, units, now)
        # A hit that was not charged, or a miss already charged: nothing to settle.

    async def _store(self, tx: Tx, key: str, units: float, now: float) -> None:
        if units >= self.burst:
            await tx.execute("DELETE FROM throttle WHERE key = ?", (key,))
        else:
            await tx.execute("INSERT INTO throttle (key, units, at) VALUES (?, ?, ?)"
                             " ON CONFLICT (key) DO UPDATE SET units = excluded.units,"
                             " at = excluded.at", (key, units, now))
        # Buckets that have refilled by now are the same as none: keep the table to the
        # addresses failing lately (bounded under a flood of addresses, like the memory one).
        await tx.execute("DELETE FROM throttle WHERE at < ?",
                         (now - (2 * self.burst) / self.per_second,))


class GenerationSlots:
    """A slot per generation waiting or running, per user, across every bot process."""

    def __init__(self, ctx: Context, *, per_user_limit: int, lifetime_s: float) -> None:
        self.ctx = ctx
        self.per_user_limit = per_user_limit
        self.lifetime_s = lifetime_s  # a dead process's slots free themselves after this

    async def take(self, user_id: int, message: str) -> int:
        now = self.ctx.now()
        async with self.ctx.db.transaction() as tx:
            held = await tx.fetchval(
                "SELECT count(*) FROM generation_slots WHERE user_id = ? AND expires_at > ?",
                (user_id, now))
            if held >= self.per_user_limit:
                raise QueueFull(message)
            await tx.execute("DELETE FROM generation_slots WHERE expires_at <= ?", (now,))
            return await tx.insert(
                "INSERT INTO generation_slots (user_id, expires_at) VALUES (?, ?)",
                (user_id, now + self.lifetime_s))

    async def give_back(self, slot_id: int) -> None:
        async with self.ctx.db.transaction() as tx:
            await tx.execute("DELETE FROM generation_slots WHERE id = ?", (slot_id,))

    async def held(self, user_id: int) -> int:
        return await self.ctx.db.fetchval(
            "SELECT count(*) FROM generation_slots WHERE user_id = ? AND expires_at > ?",
            (user_id, self.ctx.now()))
