"""Server policy and moderation: permitted channels, forced private mode, link rules, retention,
the moderator role, purge, takedown, reports and the audit log.

Moderators remove; they do not view (guarantee 6). Nothing here returns image bytes, and a
moderator can see one private image only through ImageService.open after a grantee reported it.
"""

from __future__ import annotations

from dataclasses import replace

from bot.core.context import Context
from bot.core.erasure import ErasureService
from bot.core.errors import Forbidden, InvalidInput, NotFound
from bot.core.images import ImageService
from bot.core.ledger import queue_ended
from bot.core.models import AuditEntry, GuildPolicy, Removal, Report, Viewer
from bot.core.rows import Columns

MAX_REASON = 500
# A server's policy row; its permitted channels come from their own table.
_POLICY = Columns(GuildPolicy, omit=("permitted_channels",))
_REPORT = Columns(Report, alias="r", sql={"image_public_id": "i.public_id",
                                          "closed": "r.closed_at IS NOT NULL"})
_AUDIT_ENTRY = Columns(AuditEntry)
_POLICY_FIELDS = {"force_private", "links_enabled", "link_max_lifetime", "retention_days",
                  "mod_role_id"}


def is_moderator(policy: GuildPolicy, role_ids: frozenset[int], *, manage_guild: bool) -> bool:
    """Manage Server, or the moderator role this server set."""
    return manage_guild or (policy.mod_role_id is not None and policy.mod_role_id in role_ids)


class ModerationService:
    def __init__(self, ctx: Context, images: ImageService, erasures: ErasureService) -> None:
        self.ctx = ctx
        self.images = images
        self.erasures = erasures

    async def policy(self, guild_id: int) -> GuildPolicy:
        row = await self.ctx.db.fetchone(
            f"SELECT {_POLICY.columns} FROM guild_policy WHERE guild_id = ?", (guild_id,))
        channels = await self.ctx.db.fetchall(
            "SELECT channel_id FROM permitted_channels WHERE guild_id = ?", (guild_id,))
        policy = GuildPolicy(guild_id) if row is None else _POLICY(row)
        return replace(policy, permitted_channels=frozenset(c[0] for c in channels))

    async def update_policy(self, guild_id: int, actor_id: int,
                            **changes: bool | int | float | None) -> GuildPolicy:
        unknown = set(changes) - _POLICY_FIELDS
        if unknown:
            raise ValueError(f"unknown policy fields: {sorted(unknown)}")
        days = changes.get("retention_days")
        if days is not None and not 1 <= int(days) <= 3650:
            raise InvalidInput("Retention is between 1 and 3650 days (or off).")
        lifetime = changes.get("link_max_lifetime", 60)
        if lifetime is None or not 60 <= float(lifetime) <= 366 * 86400:
            raise InvalidInput("The longest link lifetime is between 1 minute and a year.")
        async with self.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO guild_policy (guild_id, updated_at)"
                             " VALUES (?, ?) ON CONFLICT DO NOTHING", (guild_id, self.ctx.now()))
            for name, value in changes.items():
                stored = int(value) if isinstance(value, bool) else value
                await tx.execute(f"UPDATE guild_policy SET {name} = ?, updated_at = ?"
                                 " WHERE guild_id = ?", (stored, self.ctx.now(), guild_id))
                if name == "link_max_lifetime":
                    # A lower maximum shortens existing links for good; raising it later
                    # does not bring back a link that already ended.
                    await tx.execute(
                        "UPDATE links SET expires_at = created_at + ? WHERE expires_at >"
                        " created_at + ? AND image_id IN (SELECT id FROM images WHERE"
                        " guild_id = ?)", (stored, stored, guild_id))
                await self.ctx.audit(tx, f"admin.{name}", actor_id=actor_id, guild_id=guild_id,
                                     detail=str(value))
        return await self.policy(guild_id)

    async def allow_channel(self, guild_id: int, channel_id: int, actor_id: int) -> None:
        async with self.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO permitted_channels (guild_id, channel_id)"
                             " VALUES (?, ?) ON CONFLICT DO NOTHING", (guild_id, channel_id))
            await self.ctx.audit(tx, "admin.channel-allow", actor_id=actor_id, guild_id=guild_id,
                                 detail=f"channel:{channel_id}")

    async def deny_channel(self, guild_id: int, channel_id: int, actor_id: int) -> None:
        async with self.ctx.db.transaction() as tx:
            await tx.execute("DELETE FROM permitted_channels WHERE guild_id = ? AND channel_id = ?",
                             (guild_id, channel_id))
            await self.ctx.audit(tx, "admin.channel-deny", actor_id=actor_id, guild_id=guild_id,
                                 detail=f"channel:{channel_id}")

    async def channel_permitted(self, guild_id: int | None, channel_id: int | None) -> bool:
        if guild_id is None or channel_id is None:
            return False
        return bool(await self.ctx.db.fetchval(
            "SELECT 1 FROM permitted_channels WHERE guild_id = ? AND channel_id = ?",
            (guild_id, channel_id)))

    async def purge(self, moderator: Viewer, member_id: int) -> Removal:
        """Remove every image a member made in this server (a resumable erasure job)."""
        guild_id = _guild_of(moderator)
        return await self.erasures.purge(member_id, guild_id, moderator.user_id)

    async def takedown(self, moderator: Viewer, public_id: str) -> Removal:
        """Remove one image that came from this server, without seeing it."""
        guild_id = _guild_of(moderator)
        image = await self.ctx.image(public_id)
        if image is None or image.guild_id != guild_id:
            raise NotFound("No image with that id came from this server.")
        return await self.images.remove([image], actor_id=moderator.user_id, guild_id=guild_id,
                                        action="admin.takedown")

    async def report(self, reporter: Viewer, public_id: str, reason: str) -> Report:
        """A person who can see an image reports it to the moderators of its server."""
        image, decision = await self.images.check_view(public_id, reporter)
        if image.guild_id is None:
            raise InvalidInput("That image was not made in a server, so no moderators can "
                               "review it.")
        if decision.via == "report":
            raise InvalidInput("You can see this image only because it was reported; it is "
                               "already with the moderators.")
        reason = " ".join(reason.split())[:MAX_REASON] or "no reason given"
        async with self.ctx.db.transaction() as tx:
            basis_kind = basis_target = None
            if decision.via == "grant":
                basis = await tx.fetchone(
                    "SELECT grantee_kind, grantee_id FROM grants WHERE id = ?",
                    (decision.grant_id,))
                if basis is not None:
                    basis_kind, basis_target = basis[0], basis[1]
            report_id = await tx.insert(
                "INSERT INTO reports (image_id, guild_id, reporter_id, reason, created_at,"
                " basis, basis_kind, basis_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (image.id, image.guild_id, reporter.user_id, reason, self.ctx.now(),
                 decision.via, basis_kind, basis_target))
            await self.ctx.audit(tx, "image.report", actor_id=reporter.user_id,
                                 guild_id=image.guild_id, image_ref=image.public_id,
                                 detail=f"report:{report_id}")
        return Report(report_id, image.public_id, image.guild_id, reporter.user_id, reason,
                      self.ctx.now(), False)

    async def reports(self, guild_id: int, *, open_only: bool = True) -> list[Report]:
        rows = await self.ctx.db.fetchall(
            f"SELECT {_REPORT.columns} FROM reports r JOIN images i ON i.id = r.image_id"
            " WHERE r.guild_id = ?" + (" AND r.closed_at IS NULL" if open_only else "")
            + " ORDER BY r.id DESC LIMIT 50", (guild_id,))
        return [_REPORT(r) for r in rows]

    async def close_report(self, moderator: Viewer, report_id: int) -> tuple[int, ...]:
        """Close a report; the copies moderators received through it are retracted in the same
        transaction. Returns the retractions queued."""
        guild_id = _guild_of(moderator)
        async with self.ctx.db.transaction() as tx:
            closed = await tx.execute(
                "UPDATE reports SET closed_at = ? WHERE id = ? AND guild_id = ?"
                " AND closed_at IS NULL", (self.ctx.now(), report_id, guild_id))
            if not closed:
                raise NotFound("No open report with that number in this server.")
            queued = await queue_ended(self.ctx, tx, "d.basis = 'report' AND d.report_id = :r",
                                       {"r": report_id}, reason="report closed")
            await self.ctx.audit(tx, "admin.report-close", actor_id=moderator.user_id,
                                 guild_id=guild_id, detail=f"report:{report_id}")
        return tuple(queued)

    async def audit(self, guild_id: int, *, member_id: int | None = None,
                    limit: int = 20) -> list[AuditEntry]:
        sql = f"SELECT {_AUDIT_ENTRY.columns} FROM audit_log WHERE guild_id = ?"
        params: list[object] = [guild_id]
        if member_id is not None:
            sql += " AND (actor_id = ? OR target_user = ?)"
            params += [member_id, member_id]
        rows = await self.ctx.db.fetchall(sql + " ORDER BY id DESC LIMIT ?",
                                          (*params, max(1, min(limit, 100))))
        return [_AUDIT_ENTRY(r) for r in rows]

    async def stats(self, guild_id: int) -> dict[str, int]:
        db, now = self.ctx.db, self.ctx.now()
        return {
            "images": await db.fetchval("SELECT count(*) FROM images WHERE guild_id = ?",
                                        (guild_id,)),
            "private images": await db.fetchval(
                "SELECT count(*) FROM images WHERE guild_id = ? AND visibility = 'private'",
                (guild_id,)),
            "owners": await db.fetchval(
                "SELECT count(DISTINCT owner_id) FROM images WHERE guild_id = ?", (guild_id,)),
            "live links": await db.fetchval(
                "SELECT count(*) FROM links l JOIN images i ON i.id = l.image_id"
                " WHERE i.guild_id = ? AND l.revoked_at IS NULL AND l.expires_at > ?",
                (guild_id, now)),
            "open reports": await db.fetchval(
                "SELECT count(*) FROM reports WHERE guild_id = ? AND closed_at IS NULL",
                (guild_id,)),
        }


def _guild_of(moderator: Viewer) -> int:
    if moderator.guild_id is None or not moderator.is_moderator:
        raise Forbidden("This works only for moderators, inside their server.")
    return moderator.guild_id
