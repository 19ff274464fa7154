"""The retention sweeper: removes what has outlived its time.

Images past their own expiry or their server's retention go through the one deletion path;
expired and revoked links are dropped; expired grants are dropped and, in the same
transaction, the copies sent through them (and moderators' copies of reports that lose force
with them) are queued for retraction.

Running the sweep twice, even at once from two processes, queues nothing twice: each expired
grant's copies move to the outbox in the transaction that deletes the grant, so a second sweep
finds neither the grant nor the copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.context import IMAGE, Context
from bot.core.images import ImageService
from bot.core.sharing import grant_copies_ended

BATCH = 1000

_IMAGE = IMAGE.on("i")
# What the sweep removes: images past their own expiry (images_by_expiry holds only images
# that have one) and images older than their server's retention. The second part starts from
# guild_policy, a row per server that set anything, and reads each retaining server's old
# images from images_by_guild_age (guild_id, created_at): the cost follows what is due, not
# the size of the library. CROSS JOIN keeps SQLite from choosing the other order (without
# statistics it drove from images and probed guild_policy once per image, a full scan); a
# planner with statistics, PostgreSQL's, treats it as the inner join it is.
DUE_SQL = f"""
SELECT {_IMAGE.columns} FROM images i
WHERE i.expires_at IS NOT NULL AND i.expires_at <= :now
UNION
SELECT {_IMAGE.columns} FROM guild_policy p CROSS JOIN images i
WHERE p.retention_days IS NOT NULL AND i.guild_id = p.guild_id
  AND i.created_at <= :now - p.retention_days * 86400.0
LIMIT :batch
"""


@dataclass(frozen=True)
class SweepResult:
    images: int
    links: int
    grants: int
    retractions: int
    retraction_ids: tuple[int, ...] = ()


class RetentionSweeper:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    async def sweep(self) -> SweepResult:
        now = self.ctx.now()
        removed = 0
        queued: list[int] = []
        while True:
            rows = await self.ctx.db.fetchall(DUE_SQL, {"now": now, "batch": BATCH})
            if not rows:
                break
            removal = await self.images.remove([_IMAGE(r) for r in rows], actor_id=None,
                                               guild_id=None, action="retention.expire")
            removed += len(removal.image_ids)
            queued += removal.retraction_ids
        async with self.ctx.db.transaction() as tx:
            links = await tx.execute(
                "DELETE FROM links WHERE expires_at <= ? OR revoked_at IS NOT NULL", (now,))
        grants, retracted = await self.expire_grants()
        queued += retracted
        return SweepResult(removed, links, grants, len(queued), tuple(queued))

    async def expire_grants(self) -> tuple[int, tuple[int, ...]]:
        """Drop expired shares and, in the same transaction, queue the retraction of the copies
        sent through them. Returns (shares dropped, retractions queued)."""
        now = self.ctx.now()
        queued: list[int] = []
        async with self.ctx.db.transaction() as tx:
            expired = await tx.fetchall(
                "SELECT id, owner_id FROM grants WHERE expires_at IS NOT NULL"
                " AND expires_at <= ? ORDER BY owner_id", (now,))
            by_owner: dict[int, list[int]] = {}
            for grant_id, owner_id in expired:
                by_owner.setdefault(owner_id, []).append(grant_id)
            for owner_id, grant_ids in by_owner.items():
                for start in range(0, len(grant_ids), 500):
                    chunk = grant_ids[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    await tx.execute(f"DELETE FROM grants WHERE id IN ({marks})", chunk)
                    queued += await grant_copies_ended(self.ctx, tx, owner_id, chunk,
                                                       "share expired")
        return len(expired), tuple(queued)

    async def next_grant_expiry(self) -> float | None:
        """When the next share expires (None: no share has an end), so the expiry sweep can
        run then rather than at its next periodic tick."""
        return await self.ctx.db.fetchval(
            "SELECT min(expires_at) FROM grants WHERE expires_at IS NOT NULL")
