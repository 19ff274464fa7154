"""A person's own settings and data: private mode, what Veil holds about them, forget.

``forget`` is the right to erasure: every image (through the one deletion path), every grant,
group, link and report of theirs, their key (so no backup of the database can be read for them),
and their id in other people's records is replaced by nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.context import IMAGE_COLUMNS, Context, image_from_row
from bot.core.images import ImageService, drop_exports_in
from bot.core.models import Removal
from bot.core.sharing import SharingService


@dataclass(frozen=True)
class PrivacyStatus:
    private_mode: bool
    forced_by_server: bool
    images: int
    grants: int
    live_links: int
    groups: int


class PrivacyService:
    def __init__(self, ctx: Context, images: ImageService, sharing: SharingService) -> None:
        self.ctx = ctx
        self.images = images
        self.sharing = sharing

    async def private_mode(self, user_id: int) -> bool:
        value = await self.ctx.db.fetchval("SELECT private_mode FROM users WHERE user_id = ?",
                                           (user_id,))
        return True if value is None else bool(value)

    async def set_private_mode(self, user_id: int, on: bool) -> None:
        async with self.ctx.db.transaction() as tx:
            await self.ctx.ensure_user(tx, user_id)
            await tx.execute("UPDATE users SET private_mode = ? WHERE user_id = ?",
                             (int(on), user_id))
            await self.ctx.audit(tx, "private.on" if on else "private.off", actor_id=user_id)

    async def status(self, user_id: int, guild_id: int | None = None) -> PrivacyStatus:
        db, now = self.ctx.db, self.ctx.now()
        forced = guild_id is not None and bool(await db.fetchval(
            "SELECT force_private FROM guild_policy WHERE guild_id = ?", (guild_id,)))
        return PrivacyStatus(
            private_mode=await self.private_mode(user_id),
            forced_by_server=forced,
            images=await db.fetchval("SELECT count(*) FROM images WHERE owner_id = ?",
                                     (user_id,)),
            grants=await db.fetchval(
                "SELECT count(*) FROM grants WHERE owner_id = ?"
                " AND (expires_at IS NULL OR expires_at > ?)", (user_id, now)),
            live_links=await db.fetchval(
                "SELECT count(*) FROM links l JOIN images i ON i.id = l.image_id"
                " WHERE i.owner_id = ? AND l.revoked_at IS NULL AND l.expires_at > ?"
                " AND (l.max_views IS NULL OR l.views < l.max_views)", (user_id, now)),
            groups=await db.fetchval("SELECT count(*) FROM groups WHERE owner_id = ?",
                                     (user_id,)),
        )

    async def forget(self, user_id: int) -> Removal:
        """Erase a person from Veil. Returns what was removed and queued for retraction."""
        rows = await self.ctx.db.fetchall(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE owner_id = ?", (user_id,))
        removal = await self.images.remove([image_from_row(r) for r in rows], actor_id=None,
                                           guild_id=None, action="user.forget")
        async with self.ctx.db.transaction() as tx:
            # Grants to them; their own grants, groups and key go with their users row.
            await tx.execute("DELETE FROM grants WHERE grantee_kind = 'user' AND grantee_id = ?",
                             (user_id,))
            await tx.execute("DELETE FROM group_members WHERE user_id = ?", (user_id,))
            await tx.execute("DELETE FROM reports WHERE reporter_id = ?", (user_id,))
            await tx.execute("UPDATE view_log SET viewer_id = NULL WHERE viewer_id = ?",
                             (user_id,))
            # Messages they received stay recorded so the owners can still retract them.
            await tx.execute("UPDATE deliveries SET recipient_id = NULL WHERE recipient_id = ?",
                             (user_id,))
            await tx.execute("UPDATE audit_log SET actor_id = NULL WHERE actor_id = ?", (user_id,))
            await tx.execute("UPDATE audit_log SET target_user = NULL WHERE target_user = ?",
                             (user_id,))
            await tx.execute("DELETE FROM links WHERE created_by = ?", (user_id,))
            exports = await drop_exports_in(tx, {user_id})
            await tx.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            await self.ctx.audit(tx, "user.forget", actor_id=None,
                                 detail=f"{len(removal.image_ids)} images")
        await self.ctx.blobs.delete_exports(exports)
        await self.ctx.db.checkpoint()
        return removal
