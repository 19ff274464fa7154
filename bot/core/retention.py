"""The retention sweeper: removes what has outlived its time.

Images past their own expiry or their server's retention go through the one deletion path;
expired and revoked links are dropped; expired grants are dropped and the messages posted
through them are queued for retraction.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.context import IMAGE_COLUMNS, Context, image_from_row
from bot.core.images import ImageService, queue_retractions

BATCH = 1000


@dataclass(frozen=True)
class SweepResult:
    images: int
    links: int
    grants: int
    retractions: int


class RetentionSweeper:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    async def sweep(self) -> SweepResult:
        now = self.ctx.now()
        columns = ", ".join("i." + c for c in IMAGE_COLUMNS.split(", "))
        removed = queued = 0
        while True:
            rows = await self.ctx.db.fetchall(
                f"SELECT {columns} FROM images i WHERE i.expires_at IS NOT NULL"
                " AND i.expires_at <= :now"
                f" UNION SELECT {columns} FROM images i JOIN guild_policy p"
                " ON p.guild_id = i.guild_id WHERE p.retention_days IS NOT NULL"
                " AND i.created_at <= :now - p.retention_days * 86400.0"
                " LIMIT :batch", {"now": now, "batch": BATCH})
            if not rows:
                break
            removal = await self.images.remove([image_from_row(r) for r in rows], actor_id=None,
                                               guild_id=None, action="retention.expire")
            removed += len(removal.image_ids)
            queued += removal.retractions_queued
        async with self.ctx.db.transaction() as tx:
            links = await tx.execute(
                "DELETE FROM links WHERE expires_at <= ? OR revoked_at IS NOT NULL", (now,))
            grant_ids = [r[0] for r in await tx.fetchall(
                "SELECT id FROM grants WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))]
            for start in range(0, len(grant_ids), 500):
                chunk = grant_ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                queued += await queue_retractions(tx, now, f"grant_id IN ({marks})", chunk)
                await tx.execute(f"DELETE FROM grants WHERE id IN ({marks})", chunk)
        return SweepResult(removed, links, len(grant_ids), queued)
