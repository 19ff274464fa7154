"""What every service shares: the database, the blob store, the key ring, the clock, the audit log.

Also the declaration of an image row's columns (``IMAGE``) and the one query that answers "does
this viewer hold a live grant on this image", used by every path that hands out image bytes.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.core.blobs import BlobStore
from bot.core.crypto import KeyRing, new_key
from bot.core.models import ImageRecord, Viewer, WrappedKeys
from bot.core.rows import Columns, Select, Value
from bot.images import ImageLimits
from db import Store, Tx
from db.dialect import ids_in
from db.port import Dialect

Clock = Callable[[], float]

# An image row: the columns named like ImageRecord's fields, in their order.
IMAGE = Columns(ImageRecord)
# An image's data key and its owner's key, from images i joined with users u on the owner.
WRAPPED_KEYS = Columns(WrappedKeys, sql={"image_key": "i.wrapped_key", "owner_key": "u.wrapped_key",
                                         "master_key_id": "u.master_key_id"})

# Easy to read aloud and type: no 0/o, 1/l/i. 10 characters from 31 give about 49 bits.
_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"


def new_public_id(length: int = 10) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


# "The viewer holds a live grant": a user grant, a role grant for a role the viewer has on this
# very request, or a group grant for a personal group the viewer is in; on this image or on all
# of its owner's images. A grant on this very image is named before an all-images one, then the
# oldest (the id a copy's basis records).
#
# Written for the plan, measured at a million images (python -m bench.access): each half is one
# index search, bounded by the grants on this one image (grants_by_image) and by the owner's
# all-images grants (grants_unique); min() per half instead of ORDER BY ... LIMIT 1 needs no
# sorter. The all-images half says coalesce(g.image_id, 0) = 0, the expression grants_unique
# holds: SQLite takes "g.image_id IS NULL" through grants_by_image, every all-images grant of
# every owner. A group is one primary-key probe of group_members for the grant at hand, not
# the list of the viewer's groups built first.
def _live_grant_sql(owner: str, image: str, dialect: Dialect) -> str:
    holder = f"""(g.expires_at IS NULL OR g.expires_at > :now)
     AND (   (g.grantee_kind = 'user' AND g.grantee_id = :user)
          OR (g.grantee_kind = 'role' AND g.grantee_id IN ({ids_in(":roles", dialect)}))
          OR (g.grantee_kind = 'group' AND EXISTS (
                 SELECT 1 FROM group_members m
                 WHERE m.group_id = g.grantee_id AND m.user_id = :user)))"""
    return f"""coalesce(
  (SELECT min(g.id) FROM grants g
   WHERE g.image_id = {image} AND g.owner_id = {owner}
     AND {holder}),
  (SELECT min(g.id) FROM grants g
   WHERE g.owner_id = {owner} AND coalesce(g.image_id, 0) = 0
     AND {holder}))"""


@functools.cache
def live_grant_sql(dialect: Dialect) -> str:
    """Params: owner, image, now, user, roles (roles_json)."""
    return f"SELECT {_live_grant_sql(':owner', ':image', dialect)}"


# An open report lets moderators see its image only while the reporter's access still holds
# (guarantee 6): their own image, a still-public one, or a share with the same target that is
# still live. Otherwise a report would outlive the image going private or the share's revoke.
REPORT_IN_FORCE_SQL = """
SELECT r.id FROM reports r
WHERE r.image_id = i.id AND r.closed_at IS NULL
  AND (   r.basis = 'owner'
       OR (r.basis = 'public' AND i.visibility = 'public')
       OR (r.basis = 'grant' AND EXISTS (
              SELECT 1 FROM grants g
              WHERE g.owner_id = i.owner_id AND coalesce(g.image_id, 0) IN (0, i.id)
                AND g.grantee_kind = r.basis_kind AND g.grantee_id = r.basis_target
                AND (g.expires_at IS NULL OR g.expires_at > :now))))
"""


# Everything a view decision needs, in one query (one trip to the database): the image, the
# viewer's live grant on it, and (for moderators) whether it has an open report. The live-grant
# text depends on the dialect: the declaration holds its place, filled in per dialect.
class _ViewFacts(Select):
    image = IMAGE.on("i")
    grant = Value("CASE WHEN i.owner_id = :user THEN NULL ELSE ({live_grant}) END")
    report = Value(f"CASE WHEN :moderator = 1 THEN ({REPORT_IN_FORCE_SQL} ORDER BY r.id LIMIT 1)"
                   " END")


@functools.cache
def view_facts_sql(dialect: Dialect) -> str:
    columns = _ViewFacts.columns.replace(
        "{live_grant}", _live_grant_sql("i.owner_id", "i.id", dialect))
    return f"SELECT {columns}\nFROM images i WHERE i.public_id = :public_id\n"


def roles_json(role_ids: frozenset[int]) -> str:
    """The JSON array of ``role_ids`` (``ids_in`` reads it), on every view check. Joined by hand:
    a quarter of the cost of json.dumps(sorted(...)), and order does not matter to IN.
    int.__repr__ refuses anything but an integer."""
    return "[" + ",".join(map(int.__repr__, role_ids)) + "]"


@dataclass
class Context:
    db: Store
    blobs: BlobStore
    keys: KeyRing
    clock: Clock = time.time
    limits: ImageLimits = field(default_factory=ImageLimits)
    # Called whenever a transaction queues retractions, so the worker that deletes them wakes
    # at once (the bot registers its wake-up here; the core knows nothing of it).
    retraction_listeners: list[Callable[[], None]] = field(default_factory=list)

    def now(self) -> float:
        return self.clock()

    def retractions_queued(self) -> None:
        for listener in self.retraction_listeners:
            listener()

    async def owner_key(self, user_id: int) -> bytes | None:
        row = await self.db.fetchone(
            "SELECT wrapped_key, master_key_id FROM users WHERE user_id = ?", (user_id,))
        if row is None:
            return None
        wrapped, master_key_id = row
        return self.keys.unwrap_owner_key(user_id, wrapped, master_key_id)

    async def ensure_user(self, tx: Tx, user_id: int) -> bytes:
        """The owner's key, creating the user (private mode on, fresh key) on first use."""
        row = await tx.fetchone(
            "SELECT wrapped_key, master_key_id FROM users WHERE user_id = ?", (user_id,))
        if row is not None:
            wrapped, master_key_id = row
            return self.keys.unwrap_owner_key(user_id, wrapped, master_key_id)
        # The current master key as of this transaction: a rotation in another process that
        # committed before it is seen here, one that commits after it re-wraps this row.
        current = await tx.fetchval("SELECT value FROM meta WHERE key = 'master_key_id'")
        key = new_key()
        await tx.execute(
            "INSERT INTO users (user_id, wrapped_key, master_key_id, created_at)"
            " VALUES (?, ?, ?, ?)",
            (user_id, self.keys.wrap_owner_key(user_id, key, current), current, self.now()),
        )
        return key

    async def image(self, public_id: str) -> ImageRecord | None:
        row = await self.db.fetchone(
            f"SELECT {IMAGE.columns} FROM images WHERE public_id = ?", (public_id.strip().lower(),))
        return None if row is None else IMAGE(row)

    async def view_facts(self, public_id: str,
                         viewer: Viewer) -> tuple[ImageRecord, int | None, int | None] | None:
        """(image, live grant id, open report's id) for a view decision, or None if no such
        image. The report is looked up for moderators only."""
        row = await self.db.fetchone(view_facts_sql(self.db.dialect), {
            "public_id": public_id.strip().lower(), "user": viewer.user_id,
            "roles": roles_json(viewer.role_ids), "now": self.now(),
            "moderator": int(viewer.is_moderator)})
        if row is None:
            return None
        return _ViewFacts.image(row), _ViewFacts.grant(row), _ViewFacts.report(row)

    async def audit(self, tx: Tx, action: str, *, actor_id: int | None,
                    guild_id: int | None = None, target_user: int | None = None,
                    image_ref: str | None = None, detail: str | None = None) -> None:
        """Record an action by ids only: never a token, key or prompt goes in ``detail``."""
        await tx.execute(
            "INSERT INTO audit_log (at, guild_id, actor_id, action, target_user, image_ref, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.now(), guild_id, actor_id, action, target_user, image_ref, detail),
        )

