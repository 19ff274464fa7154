"""Images: create (sanitize, encrypt, store), view with a live access check, change visibility,
list a gallery, record deliveries, and remove for real.

``remove`` is the one deletion path: the owner's /delete, forget-me, a moderator's purge or
takedown and the retention sweeper all end there, so every deletion revokes links and grants,
queues the retraction of every posted message, destroys the data key and unlinks the blob.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, replace

from bot.core import failpoints
from bot.core.access import Decision, can_manage, can_remove, can_view, effective_visibility
from bot.core.blobs import (
    BlobMissing,
    LocalBlobStore,
    export_key,
    image_key,
    image_names,
    new_blob_name,
    put_image,
    read_full_part_sync,
    read_image_part,
)
from bot.core.context import IMAGE, WRAPPED_KEYS, Context, new_public_id, roles_json
from bot.core.crypto import image_aad as aad
from bot.core.crypto import new_key, seal, unseal
from bot.core.errors import InvalidInput, NotFound, PolicyViolation, TryAgain
from bot.core.ledger import (
    OWNER,
    PUBLIC,
    RETRACTION,
    Basis,
    DeliveryLedger,
    queue_all,
    queue_ended,
)
from bot.core.models import (
    MAX_PROMPT_CHARS,
    SEED_LIMIT,
    DeliveryKind,
    FollowUp,
    FollowUpKind,
    GalleryItem,
    GalleryPage,
    GalleryThumbnail,
    GenerationDetails,
    GenerationParams,
    ImageContent,
    ImageRecord,
    Removal,
    Retraction,
    ThumbnailPage,
    ViewEntry,
    Viewer,
    Visibility,
    WrappedKeys,
)
from bot.core.rows import Columns, Select, Value
from bot.images import sanitize_image_async
from db import Row, Tx
from db.dialect import ids_in, join_first
from db.port import Dialect

NOT_VISIBLE = "There is no image with id `{}` that you can see."
PAGE_SIZE = 25
_CHUNK = 500
# Variations keep the picture and move its details.
VARIATION_STRENGTH = 0.25
NOT_GENERATED = "Image `{}` was uploaded, not generated: it has no prompt or seed to show or reuse."
# An upload writes its object and commits within seconds; one whose intent is older than this
# was abandoned by a crashed or hung process. Also the grace period of the orphan sweep: an
# object younger than this may be another process's upload in flight.
STAGING_BOUND_S = 600.0
# Below this a sealed part is opened on the event loop (a thumbnail: microseconds of AES-GCM);
# above, in a thread, so a large picture never holds the loop.
_INLINE_UNSEAL_BYTES = 128 * 1024
# Up to this size a link's image is read and decrypted on the event loop when the store is the
# local folder: a page-cached read and AES-GCM of 241 KB cost about 45 µs of CPU there, less
# than a trip to a worker thread and back (docs/PERFORMANCE.md, issue 12).
INLINE_READ_MAX = 1 << 20
_LOG_VIEW_SQL = ("INSERT INTO view_log (image_id, owner_id, viewer_id, via, link_id, agent, at)"
                 " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?)")
# The orphan sweep lists every image object: at most this often, whatever the process starts.
ORPHAN_SWEEP_EVERY_S = 3600.0

# Own images, and images shared with the viewer one by one or through an all-images grant.
# The page is chosen on ids alone: each branch is cut to the page's end first (so a large
# library costs no more than a small one) and yields each image once (so an image reachable
# through two grants takes one place before the cut), and only the page's rows are read in full.
# - Own and all-images: images_by_owner covers (owner_id, id, expires_at), so these branches
#   know each image's expiry without touching the table. The granting owners are made distinct
#   first (about 100 for a viewer with five roles), so the images need no DISTINCT: with it,
#   every one of those owners' images (4,500 index entries at the median) went through a
#   temporary B-tree, which cost half the query. This branch already stops early: SQLite walks
#   each owner's entries newest first and, once it holds :upto ids, leaves an owner at the
#   first entry older than the last id it holds (the IfNotZero/Last/IdxLE opcodes of the
#   ordered inner loop), so it reads about one index leaf per owner, not the whole library. A
#   merge written out in SQL (a recursive CTE with a priority queue, one seek per step)
#   visited more B-tree pages than that: 529 against 339 at the median, 1M images,
#   bench.queries' viewers. PostgreSQL has no such early exit: there the join is LATERAL with
#   a LIMIT per owner (db.dialect.join_first).
# - One by one: an image's expiry is in its row, and reading the row of every image shared
#   with the viewer (about 160 random rows at 1M images) made the page slow. The branch is cut
#   on the grants' image ids alone (grants_by_grantee_image covers the grant's own expiry), and
#   the expiry of the images that reach the page is read with the page's rows. An expired image
#   the sweeper has not removed yet would then take a place on the page: ImageService.gallery
#   looks for one among the page's rows (which carry expires_at) and ``dead_before`` counts
#   them among the ids before the page (none on the first page, so the first page reads no row
#   twice); when there is one the page is chosen again with gallery_exact_sql, which reads
#   every shared row as the query did before.
def _gallery_me(dialect: Dialect) -> str:
    # PostgreSQL types a bare parameter in a SELECT list as text; SQLite needs no cast, and the
    # cast cost it dearly: newest-25 at 1M images, CPU median 3.0 ms with it, 0.9-1.25 ms
    # without (bench dataset, 100 viewers, three rounds).
    user = "CAST(:user AS BIGINT)" if dialect == "postgresql" else ":user"
    return f"""
WITH me (kind, gid) AS (
    SELECT 'user', {user}
    UNION ALL SELECT 'role', value FROM ({ids_in(":roles", dialect)}) AS roles
    UNION ALL SELECT 'group', group_id FROM group_members WHERE user_id = :user
),"""
def _gallery_own_and_all(dialect: Dialect) -> str:
    each_owner = join_first(
        "images", "i", "i.id",
        "i.owner_id = owners.owner_id AND (i.expires_at IS NULL OR i.expires_at > :now)",
        "i.id DESC", ":upto", dialect)
    return f"""
    SELECT * FROM (SELECT id, 1 FROM images
                   WHERE owner_id = :user AND (expires_at IS NULL OR expires_at > :now)
                   ORDER BY id DESC LIMIT :upto) AS own
    UNION ALL
    SELECT * FROM (SELECT i.id, 0
                   FROM (SELECT DISTINCT g.owner_id
                         FROM me JOIN grants g
                              ON g.grantee_kind = me.kind AND g.grantee_id = me.gid
                                 AND g.image_id IS NULL
                         WHERE g.expires_at IS NULL OR g.expires_at > :now) AS owners
                   {each_owner}
                   ORDER BY i.id DESC LIMIT :upto) AS everything"""

# A view of one of the owner's images, from view_log v joined with the image i.
_VIEW = Columns(ViewEntry, alias="v", sql={"image_public_id": "i.public_id"})


class _PageRow(Select):
    """A gallery row: the image and whether it is the viewer's own."""

    image = IMAGE.on("i")
    mine = Value("page.mine")


class _QuickPageRow(_PageRow):
    # How many shared images past their expiry (not swept yet) come before the page: any, and
    # the page is made again with the exact text.
    dead_before = Value("""(SELECT count(*)
        FROM (SELECT id, mine FROM upto ORDER BY id DESC LIMIT :offset) AS earlier
        JOIN images x ON x.id = earlier.id
        WHERE earlier.mine = 0 AND x.expires_at IS NOT NULL AND x.expires_at <= :now
       )""")


class _ExactPageRow(_PageRow):
    dead_before = Value("0")


_PAGE_EXPIRES_AT = _PageRow.image.field("expires_at")


@functools.cache
def gallery_sql(dialect: Dialect) -> str:
    return f"""{_gallery_me(dialect)}
candidates (id, mine) AS ({_gallery_own_and_all(dialect)}
    UNION ALL
    SELECT * FROM (SELECT DISTINCT g.image_id, 0
                   FROM me JOIN grants g ON g.grantee_kind = me.kind AND g.grantee_id = me.gid
                   WHERE g.image_id IS NOT NULL
                     AND (g.expires_at IS NULL OR g.expires_at > :now)
                   ORDER BY g.image_id DESC LIMIT :upto) AS shared
),
upto (id, mine) AS (
    SELECT id, max(mine) FROM candidates GROUP BY id ORDER BY id DESC LIMIT :upto
)
SELECT {_QuickPageRow.columns}
FROM (SELECT id, mine FROM upto ORDER BY id DESC LIMIT :limit OFFSET :offset) AS page
JOIN images i ON i.id = page.id
ORDER BY i.id DESC
"""


@functools.cache
def gallery_exact_sql(dialect: Dialect) -> str:
    return f"""{_gallery_me(dialect)}
candidates (id, mine) AS ({_gallery_own_and_all(dialect)}
    UNION ALL
    SELECT * FROM (SELECT DISTINCT i.id, 0
                   FROM me JOIN grants g ON g.grantee_kind = me.kind AND g.grantee_id = me.gid
                   JOIN images i ON i.id = g.image_id
                   WHERE (g.expires_at IS NULL OR g.expires_at > :now)
                     AND (i.expires_at IS NULL OR i.expires_at > :now)
                   ORDER BY i.id DESC LIMIT :upto) AS shared
),
page (id, mine) AS (
    SELECT id, max(mine) FROM candidates GROUP BY id ORDER BY id DESC LIMIT :limit OFFSET :offset
)
SELECT {_ExactPageRow.columns}
FROM page JOIN images i ON i.id = page.id
ORDER BY i.id DESC
"""


def _expired_share(row: Row, now: float) -> bool:
    """A row of gallery_sql that is someone else's image past its own expiry (not swept yet)."""
    expires_at = _PAGE_EXPIRES_AT(row)
    return not _PageRow.mine(row) and expires_at is not None and expires_at <= now


class ImageService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = DeliveryLedger(ctx)

    # Create --------------------------------------------------------------------------------

    async def create(self, owner_id: int, data: bytes, *, guild_id: int | None, source: str,
                     prompt: str | None = None, requested_private: bool | None = None,
                     expires_in: float | None = None,
                     generation: GenerationParams | None = None) -> ImageRecord:
        """Sanitize, encrypt and store an image. Refusals raise BadImage and leave nothing.

        ``prompt`` and ``generation`` (how it was drawn) are sealed under the image's own key."""
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(f"The prompt is longer than {MAX_PROMPT_CHARS} characters.")
        if expires_in is not None and expires_in <= 0:
            raise InvalidInput("The lifetime must be longer than zero.")
        clean = await sanitize_image_async(data, self.ctx.limits)
        public_id, blob_name, data_key = new_public_id(), new_blob_name(), new_key()
        full, thumb, prompt_ct, generation_ct = await asyncio.to_thread(
            _seal_parts, data_key, public_id, clean.data, clean.thumbnail, prompt, generation)
        # The intent is committed before any byte is written, so a repair in another process
        # can tell this live upload from the leftovers of a crash. Then the object (one, both
        # parts in it), then the row: no rename, so an object exists before any row names it.
        async with self.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO staged_blobs (blob_name, staged_at) VALUES (?, ?)",
                             (blob_name, self.ctx.now()))
        now = self.ctx.now()
        try:
            await put_image(self.ctx.blobs, blob_name, full, thumb)
            failpoints.reach("create:staged")
            failpoints.pause("create:staged")
            async with self.ctx.db.transaction() as tx:
                if not await tx.execute("DELETE FROM staged_blobs WHERE blob_name = ?",
                                        (blob_name,)):
                    # A repair judged this upload abandoned (it outlived STAGING_BOUND_S) and
                    # removed its object: committing now would make a row without a blob.
                    raise TryAgain("Storing the image took too long and was abandoned; "
                                   "please try again.")
                if await tx.fetchval(
                        "SELECT 1 FROM erasures WHERE user_id = ?"
                        " AND (kind = 'forget' OR guild_id = ?)", (owner_id, guild_id)):
                    raise TryAgain("Your images are being erased right now; nothing new can be "
                                   "stored for you until that is done. Try again in a moment.")
                owner_key = await self.ctx.ensure_user(tx, owner_id)
                private_mode = bool(await tx.fetchval(
                    "SELECT private_mode FROM users WHERE user_id = ?", (owner_id,)))
                forced = guild_id is not None and bool(await tx.fetchval(
                    "SELECT force_private FROM guild_policy WHERE guild_id = ?", (guild_id,)))
                visibility = effective_visibility(requested_private=requested_private,
                                                  user_private_mode=private_mode,
                                                  guild_forces_private=forced)
                row_id = await tx.insert(
                    "INSERT INTO images (public_id, owner_id, guild_id, visibility, source,"
                    " created_at, expires_at, byte_size, format, width, height, prompt_ct,"
                    " generation_ct, wrapped_key, blob_name)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (public_id, owner_id, guild_id, visibility, source, now,
                     None if expires_in is None else now + expires_in, len(clean.data),
                     clean.format, clean.width, clean.height, prompt_ct, generation_ct,
                     seal(owner_key, data_key, aad(public_id, "key")), blob_name))
                await self.ctx.audit(tx, "image.create", actor_id=owner_id, guild_id=guild_id,
                                     image_ref=public_id, detail=f"{source}, {visibility}")
                failpoints.reach("create:before-commit")
        except BaseException:
            await asyncio.shield(self._abandon(blob_name))
            raise
        failpoints.reach("create:committed")
        return ImageRecord(row_id, public_id, owner_id, guild_id, visibility, source, now,
                           None if expires_in is None else now + expires_in, len(clean.data),
                           clean.format, clean.width, clean.height, blob_name)

    async def _abandon(self, blob_name: str) -> None:
        """The object first, then the intent: an intent never outlives an object silently."""
        await self.ctx.blobs.delete([image_key(blob_name)])
        async with self.ctx.db.transaction() as tx:
            await tx.execute("DELETE FROM staged_blobs WHERE blob_name = ?", (blob_name,))

    # Look and view -------------------------------------------------------------------------

    async def get_owned(self, public_id: str, viewer: Viewer) -> ImageRecord:
        """The image, if ``viewer`` owns it; otherwise the same NotFound as a missing image."""
        image = await self.ctx.image(public_id)
        if image is None or not can_manage(image, viewer):
            raise NotFound(NOT_VISIBLE.format(_shown(public_id)))
        return image

    async def check_view(self, public_id: str, viewer: Viewer) -> tuple[ImageRecord, Decision]:
        """The image and why ``viewer`` may see it; NotFound (never Forbidden) otherwise, so a
        stranger cannot tell a private image from one that does not exist."""
        facts = await self.ctx.view_facts(public_id, viewer)
        if facts is not None:
            image, grant_id, open_report = facts
            decision = can_view(image, viewer, now=self.ctx.now(), live_grant_id=grant_id,
                                open_report=open_report)
            if decision:
                return image, decision
        raise NotFound(NOT_VISIBLE.format(_shown(public_id)))

    async def open(self, public_id: str, viewer: Viewer, *,
                   thumbnail: bool = False) -> tuple[ImageContent, Decision]:
        """Decrypted bytes for ``viewer``, checked now; views by others go to the owner's log."""
        image, decision = await self.check_view(public_id, viewer)
        content = await self.decrypt_unchecked(image, thumbnail=thumbnail)
        if decision.via != "owner" and not await self.log_view(
                image, viewer_id=viewer.user_id, via=decision.via):
            raise NotFound(NOT_VISIBLE.format(image.public_id))  # deleted while we read it
        return content, decision

    async def decrypt_unchecked(self, image: ImageRecord, *,
                                thumbnail: bool = False) -> ImageContent:
        """Bytes of ``image`` with NO access check: only for callers that have just checked
        access themselves (``open``, a link, an export). Everything else uses ``open``."""
        part = "thumb" if thumbnail else "full"
        data_key = await self._data_key(image)
        try:
            sealed = await read_image_part(self.ctx.blobs, image.blob_name, part)
        except BlobMissing:
            raise NotFound(NOT_VISIBLE.format(image.public_id)) from None
        if len(sealed) <= _INLINE_UNSEAL_BYTES:
            data = unseal(data_key, sealed, aad(image.public_id, part))
        else:
            data = await asyncio.to_thread(unseal, data_key, sealed, aad(image.public_id, part))
        # A deletion that committed while we read must win: serve nothing after it.
        if await self.ctx.image(image.public_id) is None:
            raise NotFound(NOT_VISIBLE.format(image.public_id))
        return ImageContent(image, data, thumbnail)

    async def decrypt_for_link(self, image: ImageRecord, keys: WrappedKeys) -> ImageContent:
        """The full image with NO access check and NO re-check that it still exists: only for
        a link fetch, which found ``keys`` in its token lookup and whose view-count transaction,
        committed before anything is served, is the check (see ``LinkService.fetch``).

        A small image is read and decrypted right here on the event loop: from the page cache
        that costs less than the trip to a worker thread and back (``INLINE_READ_MAX``)."""
        owner_key = self.ctx.keys.unwrap_owner_key(image.owner_id, keys.owner_key,
                                                   keys.master_key_id)
        data_key = unseal(owner_key, keys.image_key, aad(image.public_id, "key"))
        blobs = self.ctx.blobs
        full = aad(image.public_id, "full")
        try:
            if image.byte_size <= INLINE_READ_MAX and isinstance(blobs, LocalBlobStore):
                return ImageContent(image, unseal(data_key, read_full_part_sync(
                    blobs, image.blob_name), full), False)
            sealed = await read_image_part(blobs, image.blob_name, "full")
        except BlobMissing:
            raise NotFound(NOT_VISIBLE.format(image.public_id)) from None
        if len(sealed) <= _INLINE_UNSEAL_BYTES:
            return ImageContent(image, unseal(data_key, sealed, full), False)
        return ImageContent(image, await asyncio.to_thread(unseal, data_key, sealed, full), False)

    async def prompt(self, public_id: str, viewer: Viewer) -> str | None:
        """The prompt of a generated image; only its owner may read it."""
        image = await self.get_owned(public_id, viewer)
        sealed = await self.ctx.db.fetchval("SELECT prompt_ct FROM images WHERE id = ?",
                                            (image.id,))
        if sealed is None:
            return None
        return unseal(await self._data_key(image), sealed, aad(image.public_id, "prompt")).decode()

    async def details(self, public_id: str, viewer: Viewer) -> GenerationDetails:
        """How the owner's generated image was drawn: prompt, seed, size, generator. Only the
        owner gets it (anyone else gets the same NotFound as for a missing image); decrypted on
        demand, never stored in the clear and never logged."""
        return await self._details(await self.get_owned(public_id, viewer))

    async def _details(self, image: ImageRecord) -> GenerationDetails:
        row = await self.ctx.db.fetchone(
            "SELECT prompt_ct, generation_ct FROM images WHERE id = ?", (image.id,))
        if row is None:
            raise NotFound(NOT_VISIBLE.format(image.public_id))
        prompt_ct, generation_ct = row
        if prompt_ct is None:
            raise InvalidInput(NOT_GENERATED.format(image.public_id))
        data_key = await self._data_key(image)
        prompt = unseal(data_key, prompt_ct, aad(image.public_id, "prompt")).decode()
        params = None
        if generation_ct is not None:
            fields = json.loads(unseal(data_key, generation_ct, aad(image.public_id, "generation")))
            params = GenerationParams(**fields)
        return GenerationDetails(image.public_id, prompt, params)

    async def follow_up(self, public_id: str, viewer: Viewer,
                        kind: FollowUpKind) -> FollowUp:
        """What the owner's Re-roll (same prompt, a new seed) or Variations (the same seed,
        small changes) should draw. The new images belong to the original's server and take
        its visibility; a server that forces private mode still wins when they are stored."""
        image = await self.get_owned(public_id, viewer)
        details = await self._details(image)
        # Images made before seeds were kept: the stored size, on the 8-pixel grid samplers need.
        params = details.params or GenerationParams(
            seed=secrets.randbelow(SEED_LIMIT), width=_grid(image.width),
            height=_grid(image.height), generator="unknown")
        fresh = secrets.randbelow(SEED_LIMIT)
        if kind == "reroll":
            seed, variation_seed, strength = fresh, None, 0.0
        elif kind == "variation":
            seed, variation_seed, strength = params.seed, fresh, VARIATION_STRENGTH
        else:
            raise InvalidInput("Ask for a re-roll or for variations.")
        return FollowUp(details.prompt, params.batch_size, seed, params.width, params.height,
                        variation_seed, strength, image.guild_id,
                        requested_private=image.visibility == "private")

    async def _data_key(self, image: ImageRecord) -> bytes:
        row = await self.ctx.db.fetchone(
            f"SELECT {WRAPPED_KEYS.columns} FROM images i JOIN users u"
            " ON u.user_id = i.owner_id WHERE i.id = ?", (image.id,))
        if row is None:
            raise NotFound(NOT_VISIBLE.format(image.public_id))
        keys = WRAPPED_KEYS(row)
        owner_key = self.ctx.keys.unwrap_owner_key(image.owner_id, keys.owner_key,
                                                   keys.master_key_id)
        return unseal(owner_key, keys.image_key, aad(image.public_id, "key"))

    async def log_view(self, image: ImageRecord, *, viewer_id: int | None, via: str,
                       link_id: str | None = None, agent: str | None = None) -> bool:
        async with self.ctx.db.transaction() as tx:
            return await self.log_view_in(tx, image, viewer_id=viewer_id, via=via,
                                          link_id=link_id, agent=agent)

    async def log_view_in(self, tx: Tx, image: ImageRecord, *, viewer_id: int | None,
                          via: str, link_id: str | None = None,
                          agent: str | None = None) -> bool:
        """Add to the owner's view log: ids, the channel and a browser family; never a token.
        False (nothing logged) when the image was deleted meanwhile."""
        return await tx.execute(_LOG_VIEW_SQL, (image.id, image.owner_id, viewer_id, via,
                                                link_id, agent, self.ctx.now(), image.id)) == 1

    async def log_link_views_in(self, tx: Tx, views: Sequence[tuple[ImageRecord, str,
                                                                    str | None]],
                                at: float) -> None:
        """``log_view_in`` for several link views at once ((image, link id, agent) each), in
        one statement run over all of them: a group commit's views are logged together."""
        await tx.executemany(_LOG_VIEW_SQL, [
            (image.id, image.owner_id, None, "link", link_id, agent, at, image.id)
            for image, link_id, agent in views])

    async def view_log(self, owner: Viewer, public_id: str | None = None,
                       limit: int = 20) -> list[ViewEntry]:
        """Who viewed the owner's images (or one of them), newest first."""
        sql = (f"SELECT {_VIEW.columns} FROM view_log v"
               " JOIN images i ON i.id = v.image_id WHERE v.owner_id = ?")
        params: list[object] = [owner.user_id]
        if public_id is not None:
            image = await self.get_owned(public_id, owner)
            sql += " AND v.image_id = ?"
            params.append(image.id)
        rows = await self.ctx.db.fetchall(sql + " ORDER BY v.id DESC LIMIT ?",
                                          (*params, max(1, min(limit, 100))))
        return [_VIEW(r) for r in rows]

    # Change --------------------------------------------------------------------------------

    async def set_visibility(self, public_id: str, viewer: Viewer,
                             visibility: Visibility) -> tuple[ImageRecord, tuple[int, ...]]:
        """Make an image public or private. Going private retracts, in the same transaction,
        every copy sent because it was public (channel posts, and DMs to people it was not
        shared with) and moderators' copies of reports that lose force with it. Returns the
        image and the retractions queued."""
        if visibility not in ("public", "private"):
            raise InvalidInput("Visibility is either public or private.")
        image = await self.get_owned(public_id, viewer)
        queued: list[int] = []
        async with self.ctx.db.transaction() as tx:
            if visibility == "public" and image.guild_id is not None and await tx.fetchval(
                    "SELECT force_private FROM guild_policy WHERE guild_id = ?",
                    (image.guild_id,)):
                raise PolicyViolation("This server keeps every image private; "
                                      "its moderators turned on forced private mode.")
            await tx.execute("UPDATE images SET visibility = ? WHERE id = ?",
                             (visibility, image.id))
            if visibility == "private":
                queued = await queue_ended(self.ctx, tx, "d.image_id = :image",
                                           {"image": image.id}, reason="made private")
            await self.ctx.audit(tx, f"image.{visibility}", actor_id=viewer.user_id,
                                 guild_id=image.guild_id, image_ref=image.public_id)
        return replace(image, visibility=visibility), tuple(queued)

    async def delete(self, public_id: str, viewer: Viewer) -> Removal:
        """The owner's (or, for takedowns, a moderator's) deletion of one image."""
        image = await self.ctx.image(public_id)
        if image is None or not can_remove(image, viewer):
            raise NotFound(NOT_VISIBLE.format(_shown(public_id)))
        action = "image.delete" if viewer.user_id == image.owner_id else "image.takedown"
        return await self.remove([image], actor_id=viewer.user_id, guild_id=image.guild_id,
                                 action=action)

    async def remove(self, images: Sequence[ImageRecord], *, actor_id: int | None,
                     guild_id: int | None, action: str) -> Removal:
        """Delete images for good: rows (and with them grants, links, reports, view log, data
        keys), queued retraction of every posted message, blob files, and the WAL's copies."""
        if not images:
            return Removal()
        queued: list[int] = []
        ephemeral = 0
        removed: list[ImageRecord] = []
        async with self.ctx.db.transaction() as tx:
            # An export waiting for its download is a copy too (guarantee 5): it goes now.
            exports = await drop_exports_in(tx, {i.owner_id for i in images})
            for start in range(0, len(images), _CHUNK):
                chunk = images[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                # Another process (a sweep, a resumed erasure) may have removed some already:
                # act, count and audit only what is still there.
                live = {r[0] for r in await tx.fetchall(
                    f"SELECT id FROM images WHERE id IN ({marks})", [i.id for i in chunk])}
                chunk = [i for i in chunk if i.id in live]
                if not chunk:
                    continue
                removed.extend(chunk)
                marks = ",".join("?" * len(chunk))
                ids = [i.id for i in chunk]
                ephemeral += await tx.fetchval(
                    f"SELECT count(*) FROM deliveries WHERE unretractable IS NOT NULL"
                    f" AND image_id IN ({marks})", ids)
                scope = ",".join(f":i{n}" for n in range(len(ids)))
                queued += await queue_all(self.ctx, tx, f"d.image_id IN ({scope})",
                                          {f"i{n}": v for n, v in enumerate(ids)},
                                          reason=action)
                await tx.executemany("INSERT INTO blob_deletions (blob_name) VALUES (?)"
                                     " ON CONFLICT DO NOTHING",
                                     [(i.blob_name,) for i in chunk])
                await tx.execute(f"DELETE FROM images WHERE id IN ({marks})", ids)
                for image in chunk:
                    await self.ctx.audit(tx, action, actor_id=actor_id, guild_id=guild_id,
                                         target_user=image.owner_id, image_ref=image.public_id)
        failpoints.reach("delete:committed")
        await self.ctx.blobs.delete([export_key(n) for n in exports])
        await self.finish_blob_deletions()
        await self.ctx.db.checkpoint()
        return Removal(tuple(i.public_id for i in removed), len(queued), ephemeral,
                       tuple(queued))

    async def finish_blob_deletions(self) -> int:
        """Delete blobs whose rows are gone (also run at start-up to finish a crashed delete)."""
        names = [r[0] for r in await self.ctx.db.fetchall("SELECT blob_name FROM blob_deletions")]
        if names:
            await self.ctx.blobs.delete([image_key(n) for n in names])
            async with self.ctx.db.transaction() as tx:
                await tx.executemany("DELETE FROM blob_deletions WHERE blob_name = ?",
                                     [(n,) for n in names])
        return len(names)

    async def repair(self) -> dict[str, int]:
        """Repair after a crash, safe while other processes write: drop the objects of
        abandoned uploads and any object no row names, finish interrupted deletions.

        An upload is abandoned when its intent is older than STAGING_BOUND_S (its intent is
        removed first, so that writer, should it still live, refuses to commit). An object
        that neither a row nor an intent names, and that is older than the same bound, is an
        orphan (a crash between removing an intent and its object, a restored older database)
        and is deleted; a younger one may be an upload in flight and is left alone.
        """
        cutoff = self.ctx.now() - STAGING_BOUND_S
        async with self.ctx.db.transaction() as tx:
            stale = [r[0] for r in await tx.fetchall(
                "SELECT blob_name FROM staged_blobs WHERE staged_at <= ?", (cutoff,))]
            await tx.execute("DELETE FROM staged_blobs WHERE staged_at <= ?", (cutoff,))
        if stale:
            await self.ctx.blobs.delete([image_key(n) for n in stale])
        orphans = await self.sweep_orphans(cutoff)
        finished = await self.finish_blob_deletions()
        if finished:
            await self.ctx.db.checkpoint()
        return {"dropped": len(stale), "orphans": orphans, "deleted": finished}

    async def sweep_orphans(self, cutoff: float, *, force: bool = False) -> int:
        """Delete image objects written before ``cutoff`` that no row and no intent names.
        It lists the whole store, so it runs at most once per ORPHAN_SWEEP_EVERY_S across all
        processes (unless forced): every process start would otherwise list a million objects."""
        now = self.ctx.now()
        if not force:
            last = await self.ctx.db.fetchval(
                "SELECT value FROM meta WHERE key = 'orphan_sweep_at'")
            # A clock that went back (a restored host) is no reason to skip.
            if last is not None and now - ORPHAN_SWEEP_EVERY_S < float(last) <= now:
                return 0
        async with self.ctx.db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('orphan_sweep_at', :now)"
                             " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             {"now": repr(now)})
        orphans = 0
        async for names in image_names(self.ctx.blobs, older_than=cutoff):
            for start in range(0, len(names), _CHUNK):
                chunk = names[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                # One query, one snapshot: the commit that inserts a row removes its intent.
                named = {r[0] for r in await self.ctx.db.fetchall(
                    f"SELECT blob_name FROM images WHERE blob_name IN ({marks})"
                    f" UNION ALL SELECT blob_name FROM staged_blobs WHERE blob_name IN ({marks})",
                    [*chunk, *chunk])}
                unnamed = [n for n in chunk if n not in named]
                if unnamed:
                    await self.ctx.blobs.delete([image_key(n) for n in unnamed])
                    orphans += len(unnamed)
        return orphans

    # Lists ---------------------------------------------------------------------------------

    async def gallery(self, viewer: Viewer, page: int = 1,
                      per_page: int = PAGE_SIZE) -> GalleryPage:
        """Your images and those shared with you (live grants only), newest first."""
        page = max(1, page)
        offset = (page - 1) * per_page
        now = self.ctx.now()
        params = {"user": viewer.user_id, "roles": roles_json(viewer.role_ids),
                  "now": now, "upto": offset + per_page + 1, "limit": per_page + 1,
                  "offset": offset}
        rows = await self.ctx.db.fetchall(gallery_sql(self.ctx.db.dialect), params)
        if rows and (_QuickPageRow.dead_before(rows[0])
                     or any(_expired_share(r, now) for r in rows)):
            rows = await self.ctx.db.fetchall(gallery_exact_sql(self.ctx.db.dialect), params)
        items = tuple(GalleryItem(_PageRow.image(r), bool(_PageRow.mine(r)))
                      for r in rows[:per_page])
        return GalleryPage(items, page, len(rows) > per_page)

    async def gallery_thumbnails(self, viewer: Viewer, page: int = 1,
                                 per_page: int = PAGE_SIZE) -> ThumbnailPage:
        """``gallery`` with each thumbnail decrypted. A thumbnail of someone else's image is a
        view of it, logged for its owner; an image deleted while the page is made is left out."""
        listed = await self.gallery(viewer, page, per_page)
        shown = []
        for item in listed.items:
            try:
                basis = OWNER if item.mine else Basis.of(
                    (await self.check_view(item.record.public_id, viewer))[1])
                thumb = await self.decrypt_unchecked(item.record, thumbnail=True)
            except NotFound:
                continue  # deleted or unshared while the page was being made
            if not item.mine and not await self.log_view(item.record, viewer_id=viewer.user_id,
                                                         via="gallery"):
                continue
            shown.append(GalleryThumbnail(item.record, item.mine, thumb, basis))
        return ThumbnailPage(tuple(shown), listed.page, listed.has_more)

    async def owned(self, owner_id: int, *, prefix: str = "", limit: int = 25,
                    guild_id: int | None = None) -> list[ImageRecord]:
        """The owner's newest images (optionally only those from one server), for lists and
        autocomplete."""
        sql = f"SELECT {IMAGE.columns} FROM images WHERE owner_id = ? AND public_id LIKE ?"
        params: list[object] = [owner_id, _like_prefix(prefix)]
        if guild_id is not None:
            sql += " AND guild_id = ?"
            params.append(guild_id)
        rows = await self.ctx.db.fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [IMAGE(r) for r in rows]

    async def suggest(self, viewer: Viewer, prefix: str = "", *, owned_only: bool,
                      limit: int = 25) -> list[ImageRecord]:
        """Image ids for autocomplete: ones the viewer may act on, matching what they typed."""
        if owned_only:
            return await self.owned(viewer.user_id, prefix=prefix, limit=limit)
        page = await self.gallery(viewer, 1, per_page=100)
        prefix = prefix.strip().lower()
        return [i.record for i in page.items if i.record.public_id.startswith(prefix)][:limit]

    # Deliveries and retractions --------------------------------------------------------------

    async def record_delivery(self, image: ImageRecord, *, kind: DeliveryKind, channel_id: int,
                              message_id: int | None, recipient_id: int | None,
                              guild_id: int | None = None, grant_id: int | None = None,
                              basis: Basis | None = None) -> bool:
        """Remember a message already sent carrying ``image`` (see ``DeliveryLedger``: senders
        that can write the pending row first should). Without a basis, the strictest one the
        facts allow. False when the copy's basis ended (or the image was deleted) meanwhile: it
        is then queued for retraction at once."""
        if basis is None:
            basis = (Basis("grant", grant_id=grant_id) if grant_id is not None
                     else OWNER if recipient_id == image.owner_id else PUBLIC)
        recorded = await self.ledger.record(image, kind=kind, channel_id=channel_id,
                                            message_id=message_id, recipient_id=recipient_id,
                                            basis=basis, guild_id=guild_id)
        return recorded.kept

    async def deliveries(self, public_id: str) -> list[tuple[str, int, int | None]]:
        rows = await self.ctx.db.fetchall(
            "SELECT d.kind, d.channel_id, d.message_id FROM deliveries d JOIN images i"
            " ON i.id = d.image_id WHERE i.public_id = ? ORDER BY d.id", (public_id,))
        return [(kind, channel_id, message_id) for kind, channel_id, message_id in rows]

    async def due_retractions(self, limit: int = 50) -> list[Retraction]:
        """Outbox rows due now (a read: ``DeliveryLedger.claim`` is how a worker takes them)."""
        rows = await self.ctx.db.fetchall(
            f"SELECT {RETRACTION.columns} FROM retractions"
            " WHERE next_attempt_at <= ? ORDER BY id LIMIT ?", (self.ctx.now(), limit))
        return [RETRACTION(r) for r in rows]

    async def pending_retraction_count(self) -> int:
        return await self.ctx.db.fetchval("SELECT count(*) FROM retractions")


def _seal_parts(data_key: bytes, public_id: str, full: bytes, thumb: bytes, prompt: str | None,
                generation: GenerationParams | None
                ) -> tuple[bytes, bytes, bytes | None, bytes | None]:
    return (seal(data_key, full, aad(public_id, "full")),
            seal(data_key, thumb, aad(public_id, "thumb")),
            None if prompt is None else seal(data_key, prompt.encode(), aad(public_id, "prompt")),
            None if generation is None else seal(
                data_key, json.dumps(asdict(generation)).encode(),
                aad(public_id, "generation")))


def _grid(side: int) -> int:
    return max(64, min(2048, side - side % 8))


def _like_prefix(prefix: str) -> str:
    cleaned = "".join(c for c in prefix.strip().lower() if c.isalnum())
    return cleaned + "%"


def _shown(public_id: str) -> str:
    """An id echoed back in a message: only the characters an id can have, and short."""
    return "".join(c for c in public_id if c.isalnum())[:16] or "?"


async def drop_exports_in(tx: Tx, user_ids: set[int]) -> list[str]:
    """Delete the export rows of these users (in any state) inside ``tx``; returns their file
    names, to unlink once ``tx`` has committed (a file without a row opens for nobody: its key
    comes from a token that is not stored, and the sweep removes such files)."""
    names: list[str] = []
    ids = sorted(user_ids)
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        names += [r[0] for r in await tx.fetchall(
            f"SELECT file_name FROM exports WHERE user_id IN ({marks})", chunk)]
        await tx.execute(f"DELETE FROM exports WHERE user_id IN ({marks})", chunk)
    return names
