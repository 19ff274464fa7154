"""Expiring links to one image (DESIGN section 5).

A token is 32 random bytes in url-safe base64 (43 characters). Its first 16 characters are a
selector used to find the row; the rest is a verifier of which only a SHA-256 is stored and
compared in constant time, so a copy of the database gives no working link. Every verdict is
taken on the request itself: expiry, revocation, the view limit and the image's existence.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from bot.core.context import IMAGE_COLUMNS, Context, image_from_row, new_public_id
from bot.core.durations import format_duration
from bot.core.errors import InvalidInput, NotFound, PolicyViolation
from bot.core.images import ImageService
from bot.core.models import ImageContent, ImageRecord, NewLink, ShareLink, Viewer

TOKEN_BYTES = 32
TOKEN_CHARS = 43
SELECTOR_CHARS = 16
DEFAULT_LIFETIME = 24 * 3600.0
MAX_VIEWS = 1000
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# Hashed when no row matches, so a miss costs what a hit costs.
_DUMMY_HASH = hashlib.sha256(b"veil-no-such-link").digest()

_LINK_COLUMNS = ("l.id, l.public_id, i.public_id, l.created_at, l.expires_at, l.max_views,"
                 " l.views, l.revoked_at IS NOT NULL, l.allow_download, l.watermark,"
                 " l.verifier_hash")


@dataclass(frozen=True)
class LinkTarget:
    """A live link and its image, as found by a token (nothing counted yet)."""

    link: ShareLink
    image: ImageRecord
    row_id: int


class LinkService:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images

    async def create(self, public_id: str, owner: Viewer, *, expires_in: float | None = None,
                     max_views: int | None = None, allow_download: bool = False,
                     watermark: bool = False) -> NewLink:
        image = await self.images.get_owned(public_id, owner)
        policy = await self.ctx.db.fetchone(
            "SELECT links_enabled, link_max_lifetime FROM guild_policy WHERE guild_id = ?",
            (image.guild_id,)) if image.guild_id is not None else None
        if policy is not None and not policy[0]:
            raise PolicyViolation("Links are turned off for images from this server.")
        longest = policy[1] if policy is not None else 7 * 86400.0
        lifetime = min(DEFAULT_LIFETIME, longest) if expires_in is None else expires_in
        if lifetime <= 0:
            raise InvalidInput("A link's lifetime must be longer than zero.")
        if lifetime > longest:
            raise PolicyViolation(f"Links to images from this server live at most "
                                  f"{format_duration(longest)}.")
        if max_views is not None and not 1 <= max_views <= MAX_VIEWS:
            raise InvalidInput(f"The view limit must be between 1 and {MAX_VIEWS}.")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.ctx.now()
        link_public_id = new_public_id(8)
        async with self.ctx.db.transaction() as tx:
            await tx.insert(
                "INSERT INTO links (public_id, selector, verifier_hash, image_id, created_by,"
                " created_at, expires_at, max_views, allow_download, watermark)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (link_public_id, token[:SELECTOR_CHARS], _hash(token[SELECTOR_CHARS:]), image.id,
                 owner.user_id, now, now + lifetime, max_views, int(allow_download),
                 int(watermark)))
            await self.ctx.audit(tx, "link.create", actor_id=owner.user_id,
                                 guild_id=image.guild_id, image_ref=image.public_id,
                                 detail=f"link:{link_public_id}")
        link = ShareLink(link_public_id, image.public_id, now, now + lifetime, max_views, 0,
                         False, allow_download, watermark)
        return NewLink(link, token)

    async def resolve(self, token: str) -> LinkTarget | None:
        """The live link behind ``token``, or None for unknown, tampered, expired, revoked,
        used-up or deleted-image tokens alike. Spends nothing."""
        if len(token) != TOKEN_CHARS or not _TOKEN_ALPHABET.issuperset(token):
            # A malformed token costs the same lookup and hash as any other miss, so timing
            # does not tell a tampered token from an unknown one.
            token = secrets.token_urlsafe(TOKEN_BYTES)
        row = await self.ctx.db.fetchone(
            f"SELECT {_LINK_COLUMNS}, {', '.join('i.' + c for c in IMAGE_COLUMNS.split(', '))},"
            " p.links_enabled"
            " FROM links l JOIN images i ON i.id = l.image_id"
            " LEFT JOIN guild_policy p ON p.guild_id = i.guild_id WHERE l.selector = ?",
            (token[:SELECTOR_CHARS],))
        expected = _DUMMY_HASH if row is None else row[10]
        if not hmac.compare_digest(_hash(token[SELECTOR_CHARS:]), expected) or row is None:
            return None
        link = _link_from_row(row)
        image = image_from_row(row[11:24])
        if row[24] == 0:
            return None  # moderators turned links off: existing links stop too (while off)
        now = self.ctx.now()
        if link.status(now) != "live" or (image.expires_at is not None
                                          and now >= image.expires_at):
            return None
        return LinkTarget(link, image, row[0])

    async def fetch(self, token: str, *, agent: str | None = None) -> tuple[ImageContent,
                                                                            ShareLink] | None:
        """Serve the image behind ``token``, counting one view atomically: with max_views=N,
        exactly N fetches succeed however many run at once. None when the link is not live.

        Decrypts before counting, so a failure to read the image spends no view; the count and
        the owner's view log are written in one transaction."""
        target = await self.resolve(token)
        if target is None:
            return None
        try:
            content = await self.images.decrypt(target.image)
        except NotFound:
            return None
        async with self.ctx.db.transaction() as tx:
            now = self.ctx.now()
            counted = await tx.execute(
                "UPDATE links SET views = views + 1 WHERE id = ? AND revoked_at IS NULL"
                " AND ? < ? AND (max_views IS NULL OR views < max_views)",
                (target.row_id, now, target.link.expires_at))
            if counted == 1:
                await self.images.log_view_in(tx, target.image, viewer_id=None, via="link",
                                              link_id=target.link.public_id, agent=agent)
        if counted != 1:
            return None
        return content, target.link

    async def revoke(self, link_public_id: str, owner: Viewer) -> ShareLink:
        row = await self.ctx.db.fetchone(
            f"SELECT {_LINK_COLUMNS}, i.owner_id, i.guild_id FROM links l"
            " JOIN images i ON i.id = l.image_id WHERE l.public_id = ?",
            (link_public_id.strip().lower(),))
        if row is None or row[11] != owner.user_id:
            raise NotFound("You have no link with that id.")
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "UPDATE links SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (self.ctx.now(), row[0]))
            await self.ctx.audit(tx, "link.revoke", actor_id=owner.user_id,
                                 guild_id=row[12], image_ref=row[2],
                                 detail=f"link:{row[1]}")
        link = _link_from_row(row)
        return replace(link, revoked=True)

    async def links_of(self, owner: Viewer, image_public_id: str | None = None) -> list[ShareLink]:
        sql = (f"SELECT {_LINK_COLUMNS} FROM links l JOIN images i ON i.id = l.image_id"
               " WHERE i.owner_id = ?")
        params: list[object] = [owner.user_id]
        if image_public_id is not None:
            image = await self.images.get_owned(image_public_id, owner)
            sql += " AND l.image_id = ?"
            params.append(image.id)
        rows = await self.ctx.db.fetchall(sql + " ORDER BY l.id DESC LIMIT 50", params)
        return [_link_from_row(r) for r in rows]


def _hash(verifier: str) -> bytes:
    return hashlib.sha256(verifier.encode()).digest()


def _link_from_row(row) -> ShareLink:
    return ShareLink(row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), bool(row[8]),
                     bool(row[9]))
