"""Erasure as a resumable job: forget-me (a person's everything) and purge (a member's images in
one server).

A request row is committed first; while it exists, ``create`` refuses new images for that
person (in that server, for a purge), so the loop that removes images through the one deletion
path cannot be outrun. The row goes in the transaction that finishes the job; a crash anywhere
before leaves the row, and the next start (of any process) resumes it. Every step is idempotent,
so two processes resuming one erasure at once do no harm.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core import failpoints
from bot.core.blobs import export_key
from bot.core.context import IMAGE, Context
from bot.core.images import ImageService, drop_exports_in
from bot.core.ledger import queue_ended
from bot.core.models import Removal
from bot.core.rows import Columns
from db import Tx

BATCH = 500


@dataclass(frozen=True)
class Erasure:
    id: int
    kind: str  # 'forget' or 'purge'
    user_id: int
    guild_id: int | None
    actor_id: int | None


ERASURE = Columns(Erasure)


class ErasureService:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    async def forget(self, user_id: int) -> Removal:
        return await self.run(await self.request("forget", user_id, None, None))

    async def purge(self, user_id: int, guild_id: int, actor_id: int) -> Removal:
        return await self.run(await self.request("purge", user_id, guild_id, actor_id))

    async def request(self, kind: str, user_id: int, guild_id: int | None,
                      actor_id: int | None) -> Erasure:
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO erasures (kind, user_id, guild_id, actor_id, requested_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (kind, user_id, guild_id, actor_id, self.ctx.now()))
            row = await tx.fetchone(
                f"SELECT {ERASURE.columns} FROM erasures"
                " WHERE kind = ? AND user_id = ? AND coalesce(guild_id, 0) = ?",
                (kind, user_id, guild_id or 0))
        failpoints.reach("erase:requested")
        assert row is not None  # inserted, or already there, in this very transaction
        return ERASURE(row)

    async def pending(self) -> list[Erasure]:
        rows = await self.ctx.db.fetchall(f"SELECT {ERASURE.columns} FROM erasures ORDER BY id")
        return [ERASURE(r) for r in rows]

    async def resume(self) -> int:
        """Finish every erasure a crash interrupted; returns how many were finished."""
        jobs = await self.pending()
        for job in jobs:
            await self.run(job)
        return len(jobs)

    async def run(self, job: Erasure) -> Removal:
        ids: list[str] = []
        queued = ephemeral = 0
        retractions: list[int] = []
        where = "owner_id = ?" + (" AND guild_id = ?" if job.kind == "purge" else "")
        params = (job.user_id,) + ((job.guild_id,) if job.kind == "purge" else ())
        action = "user.forget" if job.kind == "forget" else "admin.purge"
        while rows := await self.ctx.db.fetchall(
                f"SELECT {IMAGE.columns} FROM images WHERE {where} ORDER BY id LIMIT ?",
                (*params, BATCH)):
            removal = await self.images.remove(
                [IMAGE(r) for r in rows], actor_id=job.actor_id,
                guild_id=job.guild_id, action=action)
            ids += removal.image_ids
            queued += removal.retractions_queued
            retractions += removal.retraction_ids
            ephemeral += removal.ephemeral_copies
        failpoints.reach("erase:images-gone")
        async with self.ctx.db.transaction() as tx:
            if not await tx.execute("DELETE FROM erasures WHERE id = ?", (job.id,)):
                # another process finished it
                return Removal(tuple(ids), queued, ephemeral, tuple(retractions))
            exports: list[str] = []
            if job.kind == "forget":
                exports, later = await self._forget_the_rest(tx, job.user_id)
                queued += len(later)
                retractions += later
                await self.ctx.audit(tx, "user.forget", actor_id=None,
                                     detail=f"{len(ids)} images")
            else:
                await self.ctx.audit(tx, "admin.purge", actor_id=job.actor_id,
                                     guild_id=job.guild_id, target_user=job.user_id,
                                     detail=f"{len(ids)} images")
            failpoints.reach("erase:before-commit")
        failpoints.reach("erase:committed")
        # Unlinked after the commit: a file without its row opens for nobody, and the export
        # sweep removes such files (a crash right here).
        await self.ctx.blobs.delete([export_key(n) for n in exports])
        await self.ctx.db.checkpoint()
        return Removal(tuple(ids), queued, ephemeral, tuple(retractions))

    async def _forget_the_rest(self, tx: Tx,
                               user_id: int) -> tuple[list[str], list[int]]:
        """Everything of the person that is not an image: shares to and from them, groups,
        reports, links they made, their id in others' records, and their key (last). Returns
        the export files to unlink and the retractions queued."""
        await tx.execute("DELETE FROM grants WHERE grantee_kind = 'user' AND grantee_id = ?",
                         (user_id,))
        await tx.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
        report_ids = [r[0] for r in await tx.fetchall(
            "SELECT id FROM reports WHERE reporter_id = ?", (user_id,))]
        await tx.execute("DELETE FROM reports WHERE reporter_id = ?", (user_id,))
        # The copies they received through shares, and moderators' copies of what they
        # reported, lost their basis with these rows (before their id leaves the ledger).
        reports = ",".join(f":r{n}" for n in range(len(report_ids))) or "NULL"
        later = await queue_ended(
            self.ctx, tx, f"(d.basis = 'grant' AND d.recipient_id = :user)"
            f" OR (d.basis = 'report' AND d.report_id IN ({reports}))",
            {"user": user_id, **{f"r{n}": v for n, v in enumerate(report_ids)}},
            reason="forget-me")
        await tx.execute("UPDATE view_log SET viewer_id = NULL WHERE viewer_id = ?", (user_id,))
        # Messages they received stay recorded so the owners can still retract them.
        await tx.execute("UPDATE deliveries SET recipient_id = NULL WHERE recipient_id = ?",
                         (user_id,))
        await tx.execute("UPDATE audit_log SET actor_id = NULL WHERE actor_id = ?", (user_id,))
        await tx.execute("UPDATE audit_log SET target_user = NULL WHERE target_user = ?",
                         (user_id,))
        await tx.execute("DELETE FROM links WHERE created_by = ?", (user_id,))
        exports = await drop_exports_in(tx, {user_id})
        # Their own grants and groups go with the users row; the trigger of migration 0005
        # refuses it should an image of theirs still exist (none can: create waits for us).
        await tx.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        return exports, later
