"""Expiring links to one image (DESIGN section 5).

A token is 32 random bytes in url-safe base64 (43 characters). Its first 16 characters are a
selector used to find the row; the rest is a verifier of which only a SHA-256 is stored and
compared in constant time, so a copy of the database gives no working link. Every verdict is
taken on the request itself: expiry, revocation, the view limit and the image's existence.

A link may also carry a password (kept only as a slow hash, see ``passwords``). A correct answer
gives a session bound to that link and to the password's epoch; every way to the image (the
page's image, HEAD, the watermarked and download forms) asks ``resolve``/``fetch`` with the
session, and a locked link serves nothing. Changing or removing the password bumps the epoch and
drops the link's sessions; revoking drops them too; a session never outlives its link.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from bot.core.context import IMAGE, WRAPPED_KEYS, Context, new_public_id
from bot.core.durations import format_duration
from bot.core.errors import InvalidInput, NotFound, PolicyViolation
from bot.core.images import ImageService
from bot.core.models import (
    ImageContent,
    ImageRecord,
    LinkSession,
    NewLink,
    ShareLink,
    Viewer,
    WrappedKeys,
)
from bot.core.passwords import DEFAULT_COST, ScryptCost, hash_password, verify_password
from bot.core.rows import Columns, Select, Value
from db import Row

if TYPE_CHECKING:
    from db import Row, Tx

TOKEN_BYTES = 32
TOKEN_CHARS = 43
SELECTOR_CHARS = 16
DEFAULT_LIFETIME = 24 * 3600.0
MAX_VIEWS = 1000
SESSION_LIFETIME = 30 * 60.0  # a session after a correct password; never past the link's expiry
_TOKEN_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# Hashed when no row matches, so a miss costs what a hit costs.
_DUMMY_HASH = hashlib.sha256(b"veil-no-such-link").digest()

# A link as its owner sees it, from links l joined with its image i.
SHARE_LINK = Columns(ShareLink, alias="l", sql={
    "image_public_id": "i.public_id", "revoked": "l.revoked_at IS NOT NULL",
    "has_password": "l.password_hash IS NOT NULL"})


class _LinkRow(Select):
    row_id = Value("l.id")
    link = SHARE_LINK
    verifier_hash = Value("l.verifier_hash")
    password_epoch = Value("l.password_epoch")


class _OwnedLinkRow(_LinkRow):
    owner_id = Value("i.owner_id")
    guild_id = Value("i.guild_id")


# A link, its image, the server's policy and the wrapped keys, in one indexed lookup: a fetch
# needs no second query for its keys.
class _ResolveRow(_LinkRow):
    image = IMAGE.on("i")
    links_enabled = Value("p.links_enabled")
    keys = WRAPPED_KEYS


_RESOLVE_SQL = (
    f"SELECT {_ResolveRow.columns}"
    " FROM links l JOIN images i ON i.id = l.image_id"
    " JOIN users u ON u.user_id = i.owner_id"
    " LEFT JOIN guild_policy p ON p.guild_id = i.guild_id WHERE l.selector = ?")


@dataclass(frozen=True)
class LinkTarget:
    """A live link and its image, as found by a token (nothing counted yet). ``locked``: the
    link has a password and the request brought no valid session for it, so no byte of the
    image may be served."""

    link: ShareLink
    image: ImageRecord
    row_id: int
    locked: bool = False
    password_epoch: int = 0
    keys: WrappedKeys | None = field(default=None, repr=False)


LoginOutcome = Literal["accepted", "wrong", "dead"]


@dataclass(frozen=True)
class Login:
    outcome: LoginOutcome
    session: LinkSession | None = None


class LinkService:
    def __init__(self, ctx: Context, images: ImageService) -> None:
        self.ctx = ctx
        self.images = images
        self.password_cost: ScryptCost = DEFAULT_COST
        # Group commit: view counts waiting for the next transaction, and the task running it.
        self._views: list[_PendingView] = []
        self._counter: asyncio.Task[None] | None = None

    async def create(self, public_id: str, owner: Viewer, *, expires_in: float | None = None,
                     max_views: int | None = None, allow_download: bool = False,
                     watermark: bool = False, password: str | None = None) -> NewLink:
        image = await self.images.get_owned(public_id, owner)
        # Hashed first: a password that is too short is refused before anything else happens.
        password_hash = (None if password is None
                         else await hash_password(password, self.password_cost))
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
                " created_at, expires_at, max_views, allow_download, watermark, password_hash)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (link_public_id, token[:SELECTOR_CHARS], _hash(token[SELECTOR_CHARS:]), image.id,
                 owner.user_id, now, now + lifetime, max_views, int(allow_download),
                 int(watermark), password_hash))
            await self.ctx.audit(tx, "link.create", actor_id=owner.user_id,
                                 guild_id=image.guild_id, image_ref=image.public_id,
                                 detail=f"link:{link_public_id}"
                                 + (" password" if password_hash else ""))
        link = ShareLink(link_public_id, image.public_id, now, now + lifetime, max_views, 0,
                         False, allow_download, watermark, password_hash is not None)
        return NewLink(link, token)

    async def resolve(self, token: str, *, session: str | None = None) -> LinkTarget | None:
        """The live link behind ``token``, or None for unknown, tampered, expired, revoked,
        used-up or deleted-image tokens alike. Spends nothing. A link with a password comes
        back ``locked`` unless ``session`` is a live session of this link under its current
        password."""
        if len(token) != TOKEN_CHARS or not _TOKEN_ALPHABET.issuperset(token):
            # A malformed token costs the same lookup and hash as any other miss, so timing
            # does not tell a tampered token from an unknown one.
            token = secrets.token_urlsafe(TOKEN_BYTES)
        row = await self.ctx.db.fetchone(_RESOLVE_SQL, (token[:SELECTOR_CHARS],))
        expected = _DUMMY_HASH if row is None else _ResolveRow.verifier_hash(row)
        if not hmac.compare_digest(_hash(token[SELECTOR_CHARS:]), expected) or row is None:
            return None
        link = _ResolveRow.link(row)
        image = _ResolveRow.image(row)
        if _ResolveRow.links_enabled(row) == 0:
            return None  # moderators turned links off: existing links stop too (while off)
        now = self.ctx.now()
        if link.status(now) != "live" or (image.expires_at is not None
                                          and now >= image.expires_at):
            return None
        row_id, epoch = _ResolveRow.row_id(row), _ResolveRow.password_epoch(row)
        locked = link.has_password and not await self._session_holds(row_id, epoch, session,
                                                                     now)
        return LinkTarget(link, image, row_id, locked, epoch, _ResolveRow.keys(row))

    async def _session_holds(self, link_row: int, epoch: int, session: str | None,
                             now: float) -> bool:
        if session is None or len(session) != TOKEN_CHARS \
                or not _TOKEN_ALPHABET.issuperset(session):
            return False
        found = await self.ctx.db.fetchone(
            "SELECT link_id, verifier_hash, password_epoch, expires_at FROM link_sessions"
            " WHERE selector = ?", (session[:SELECTOR_CHARS],))
        expected = _DUMMY_HASH if found is None else found[1]
        matches = hmac.compare_digest(_hash(session[SELECTOR_CHARS:]), expected)
        # A session is good for its own link only, under the password it was given for.
        return (found is not None and matches and found[0] == link_row and found[2] == epoch
                and now < found[3])

    async def login(self, target: LinkTarget, password: str) -> Login:
        """Check a password for a link found by ``resolve``. A correct one gives a new session
        (a new one on every login: a session id the browser had before is never promoted). A
        wrong one is counted for the owner's access log. ``dead``: the link stopped being live,
        or its password changed, while the answer was being checked."""
        stored = await self.ctx.db.fetchval(
            "SELECT password_hash FROM links WHERE id = ? AND password_epoch = ?",
            (target.row_id, target.password_epoch))
        if stored is None:
            return Login("dead")
        if not await verify_password(password, stored):
            async with self.ctx.db.transaction() as tx:
                await tx.execute(
                    "UPDATE links SET password_failures = password_failures + 1 WHERE id = ?",
                    (target.row_id,))
            return Login("wrong")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.ctx.now()
        expires_at = min(now + SESSION_LIFETIME, target.link.expires_at)
        async with self.ctx.db.transaction() as tx:
            await tx.execute("DELETE FROM link_sessions WHERE expires_at <= ?", (now,))
            # Only while the link is still live under the same password: a change or a revoke
            # racing this login wins.
            made = await tx.execute(
                "INSERT INTO link_sessions (link_id, selector, verifier_hash, password_epoch,"
                " created_at, expires_at)"
                " SELECT id, ?, ?, password_epoch, ?, ? FROM links WHERE id = ?"
                " AND password_epoch = ? AND password_hash IS NOT NULL AND revoked_at IS NULL"
                " AND expires_at > ?",
                (token[:SELECTOR_CHARS], _hash(token[SELECTOR_CHARS:]), now, expires_at,
                 target.row_id, target.password_epoch, now))
        if made != 1:
            return Login("dead")
        return Login("accepted", LinkSession(token, expires_at))

    async def set_password(self, link_public_id: str, owner: Viewer,
                           password: str | None) -> ShareLink:
        """Set, change (``password``) or remove (None) a link's password. Either way every
        session of the link ends at once."""
        row = await self._owned_row(link_public_id, owner)
        link, row_id = _OwnedLinkRow.link(row), _OwnedLinkRow.row_id(row)
        password_hash = (None if password is None
                         else await hash_password(password, self.password_cost))
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "UPDATE links SET password_hash = ?, password_epoch = password_epoch + 1"
                " WHERE id = ?", (password_hash, row_id))
            await tx.execute("DELETE FROM link_sessions WHERE link_id = ?", (row_id,))
            await self.ctx.audit(tx, "link.password" if password else "link.password_off",
                                 actor_id=owner.user_id, guild_id=_OwnedLinkRow.guild_id(row),
                                 image_ref=link.image_public_id, detail=f"link:{link.public_id}")
        return replace(link, has_password=password_hash is not None)

    async def _owned_row(self, link_public_id: str, owner: Viewer) -> Row:
        row = await self.ctx.db.fetchone(
            f"SELECT {_OwnedLinkRow.columns} FROM links l"
            " JOIN images i ON i.id = l.image_id WHERE l.public_id = ?",
            (link_public_id.strip().lower(),))
        if row is None or _OwnedLinkRow.owner_id(row) != owner.user_id:
            raise NotFound("You have no link with that id.")
        return row

    async def fetch(self, token: str, *, session: str | None = None,
                    agent: str | None = None) -> tuple[ImageContent, ShareLink] | None:
        """Serve the image behind ``token``, counting one view atomically: with max_views=N,
        exactly N fetches succeed however many run at once. None when the link is not live, or
        has a password and ``session`` is not a live session for it (nothing is spent then).

        The count and the owner's view log are written in one transaction, committed before
        the image is read and decrypted; a failure to read or open the image gives the view
        back (``_give_back``), so it spends nothing. Counting first means no fetch holds its
        decrypted image while it waits for the group commit: with 50 fetches in flight, 50
        images of 241 KB held across the wait made each decrypt write to cold memory, and a
        fetch cost about twice the CPU (docs/PERFORMANCE.md, issue 12, link server).

        Why no re-check of the image (``decrypt_unchecked`` re-reads the image row): here the
        count is that check. Its UPDATE is a write, so it runs after every transaction
        committed before it, and it only counts a link that is still unrevoked, unexpired,
        under its view limit, under the same password (epoch), whose image still exists (a
        deleted image takes its links with it, ON DELETE CASCADE) and whose server still allows
        links. Nothing is served unless that UPDATE counted, and the response waits for its
        COMMIT: a revoke or a deletion that committed before it is honoured; one that commits
        after it comes after this fetch in every order a witness can observe."""
        target = await self.resolve(token, session=session)
        if target is None or target.locked or target.keys is None:
            return None
        if not await self._count_view(target, agent):
            return None
        try:
            content = await self.images.decrypt_for_link(target.image, target.keys)
        except BaseException as exc:
            await asyncio.shield(self._give_back(target))
            if isinstance(exc, NotFound):
                return None
            raise
        return content, target.link

    async def _give_back(self, target: LinkTarget) -> None:
        """Undo a counted view whose image could not be served (gone, or unreadable): the
        count and its line in the owner's view log."""
        async with self.ctx.db.transaction() as tx:
            await tx.execute("UPDATE links SET views = views - 1 WHERE id = ? AND views > 0",
                             (target.row_id,))
            await tx.execute(
                "DELETE FROM view_log WHERE id = (SELECT max(id) FROM view_log"
                " WHERE image_id = ? AND link_id = ? AND via = 'link')",
                (target.image.id, target.link.public_id))

    async def _count_view(self, target: LinkTarget, agent: str | None) -> bool:
        """Count one view in the next group commit and wait until it is committed. Fetches that
        arrive while one transaction runs share the next: one BEGIN and one COMMIT (one WAL
        write) for all of them, each still answered only after its own row is committed."""
        pending = _PendingView(target, agent, asyncio.get_running_loop().create_future())
        self._views.append(pending)
        if self._counter is None or self._counter.done():
            self._counter = asyncio.create_task(self._count_views())
        return await pending.done

    async def _count_views(self) -> None:
        while self._views:
            batch, self._views = self._views, []
            try:
                async with self.ctx.db.transaction() as tx:
                    now = self.ctx.now()
                    counted = [await self._count_in(tx, p, now) for p in batch]
                    seen = [(p.target.image, p.target.link.public_id, p.agent)
                            for p, ok in zip(batch, counted, strict=True) if ok]
                    if seen:
                        await self.images.log_link_views_in(tx, seen, now)
            except Exception as exc:  # each waiting fetch fails as its own transaction would
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
                continue
            except BaseException:  # cancelled (shutting down): nobody is served uncounted
                for p in batch + self._views:
                    p.done.cancel()
                self._views = []
                raise
            for p, ok in zip(batch, counted, strict=True):
                if not p.done.done():
                    p.done.set_result(ok)

    async def _count_in(self, tx: Tx, view: _PendingView, now: float) -> bool:
        """Count one view (the owner's view log is written for the whole batch after)."""
        target = view.target
        counted = await tx.execute(
            "UPDATE links SET views = views + 1 WHERE id = ? AND revoked_at IS NULL"
            " AND ? < expires_at AND password_epoch = ?"
            " AND (max_views IS NULL OR views < max_views)"
            " AND NOT EXISTS (SELECT 1 FROM images i JOIN guild_policy p"
            " ON p.guild_id = i.guild_id WHERE i.id = links.image_id AND p.links_enabled = 0)",
            (target.row_id, now, target.password_epoch))
        return counted == 1

    async def revoke(self, link_public_id: str, owner: Viewer) -> ShareLink:
        row = await self._owned_row(link_public_id, owner)
        link, row_id = _OwnedLinkRow.link(row), _OwnedLinkRow.row_id(row)
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "UPDATE links SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                (self.ctx.now(), row_id))
            await tx.execute("DELETE FROM link_sessions WHERE link_id = ?", (row_id,))
            await self.ctx.audit(tx, "link.revoke", actor_id=owner.user_id,
                                 guild_id=_OwnedLinkRow.guild_id(row),
                                 image_ref=link.image_public_id, detail=f"link:{link.public_id}")
        return replace(link, revoked=True)

    async def links_of(self, owner: Viewer, image_public_id: str | None = None) -> list[ShareLink]:
        sql = (f"SELECT {SHARE_LINK.columns} FROM links l JOIN images i ON i.id = l.image_id"
               " WHERE i.owner_id = ?")
        params: list[object] = [owner.user_id]
        if image_public_id is not None:
            image = await self.images.get_owned(image_public_id, owner)
            sql += " AND l.image_id = ?"
            params.append(image.id)
        rows = await self.ctx.db.fetchall(sql + " ORDER BY l.id DESC LIMIT 50", params)
        return [SHARE_LINK(r) for r in rows]


@dataclass
class _PendingView:
    target: LinkTarget
    agent: str | None
    done: asyncio.Future[bool]


def _hash(verifier: str) -> bytes:
    return hashlib.sha256(verifier.encode()).digest()
