"""A person's own settings and data: private mode, what Veil holds about them, forget.

``forget`` is the right to erasure: every image (through the one deletion path), every grant,
group, link and report of theirs, their key, and their id in other people's records is replaced
by nothing. It runs as a resumable job (bot/core/erasure.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.context import Context
from bot.core.erasure import ErasureService
from bot.core.images import ImageService
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
    def __init__(self, ctx: Context, images: ImageService, sharing: SharingService,
                 erasures: ErasureService) -> None:
        self.ctx = ctx
        self.images = images
        self.sharing = sharing
        self.erasures = erasures

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
        return await self.erasures.forget(user_id)
