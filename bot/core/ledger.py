"""The delivery ledger and the retraction outbox: every copy Veil sent, why it was sent, and the
messages waiting to be deleted.

Every copy records its recipient and its **basis**: the owner's own copy, a grant (which one),
public visibility, a report (which one) or the owner's export. A copy's basis *holds* while the
thing it names still lets the recipient see the image (``BASIS_HOLDS_SQL``, the one definition).
Every event that ends a basis calls ``queue_ended`` in its own transaction, which moves the copies
in scope whose basis no longer holds into the outbox; so does the recording of a copy itself, so a
copy sent while its access ended is retracted at once.

A delivery is written ``pending`` before the message is sent and ``sent`` after, in a
transaction that checks the basis again. A crash in between leaves a pending row that start-up
reconciles (the adapter looks for the message it may have sent).

The outbox is leased per row: ``claim`` takes due rows with one conditional UPDATE, so two
processes never both delete the same message, and a dead process's claim expires. A retraction
that cannot be done is never dropped: it is marked stuck with its reason, shown to the owner,
and retried only rarely.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.core.access import Decision
from bot.core.context import IMAGE, REPORT_IN_FORCE_SQL, Context
from bot.core.errors import NotFound
from bot.core.models import DeliveryKind, ImageRecord, Retraction
from bot.core.rows import Columns, Select, Value
from db import Tx

BasisKind = Literal["owner", "grant", "public", "report", "export"]

LEASE_S = 120.0
MAX_ATTEMPTS = 12
# A retraction Discord refuses for good (403, channel gone, attempts used up) is tried again
# only this rarely: the refusal will not change by itself within minutes.
STUCK_RETRY_S = 24 * 3600.0
# A pending delivery older than this was interrupted (a send takes seconds at most).
PENDING_STALE_S = 300.0
_CHUNK = 500
# How long a command waits for its own retractions that another worker is deleting right now.
IN_FLIGHT_WAIT_S = 5.0

# Does copy ``d`` still have its reason to exist? Evaluated in the transaction of every event
# that may end a basis and in the one that records the copy. A role grant holds while the grant
# does: whether the recipient still has the role is known only from Discord (``roles_now``).
BASIS_HOLDS_SQL = f"""
EXISTS (SELECT 1 FROM images i WHERE i.id = d.image_id
        AND (i.expires_at IS NULL OR i.expires_at > :now)
        AND CASE d.basis
            WHEN 'owner' THEN d.recipient_id IS NULL OR d.recipient_id = i.owner_id
            WHEN 'export' THEN 1 = 1
            WHEN 'public' THEN i.visibility = 'public'
            WHEN 'grant' THEN EXISTS (
                SELECT 1 FROM grants g WHERE g.id = d.grant_id
                  AND (g.expires_at IS NULL OR g.expires_at > :now)
                  AND (   g.grantee_kind = 'role'
                       OR (g.grantee_kind = 'user' AND g.grantee_id = d.recipient_id)
                       OR (g.grantee_kind = 'group' AND EXISTS (
                              SELECT 1 FROM group_members m
                              WHERE m.group_id = g.grantee_id AND m.user_id = d.recipient_id))))
            WHEN 'report' THEN EXISTS ({REPORT_IN_FORCE_SQL} AND r.id = d.report_id)
            ELSE 1 = 0 END)
"""

_QUEUE_SQL = """
INSERT INTO retractions (channel_id, message_id, next_attempt_at, owner_id, image_ref,
                         recipient_id, reason, queued_at)
SELECT d.channel_id, d.message_id, :now, i.owner_id, i.public_id, d.recipient_id, :reason, :now
FROM deliveries d LEFT JOIN images i ON i.id = d.image_id
WHERE ({where}) AND d.state = 'sent' AND d.unretractable IS NULL AND d.message_id IS NOT NULL
  {ended}
ON CONFLICT DO NOTHING
RETURNING id
"""


@dataclass(frozen=True)
class Basis:
    """Why a copy was sent: the thing whose end must retract it."""

    kind: BasisKind
    grant_id: int | None = None
    report_id: int | None = None

    @classmethod
    def of(cls, decision: Decision) -> Basis:
        """The basis of a copy sent because of a view decision."""
        if decision.via == "grant":
            return cls("grant", grant_id=decision.grant_id)
        if decision.via == "report":
            return cls("report", report_id=decision.report_id)
        if decision.via in ("owner", "public"):
            return cls(decision.via)
        raise ValueError(f"no copy is sent on a decision through {decision.via!r}")


OWNER = Basis("owner")
PUBLIC = Basis("public")
EXPORT = Basis("export")


@dataclass(frozen=True)
class PendingDelivery:
    """Copies about to be sent in one message: the ledger rows written before the send."""

    ids: tuple[int, ...]
    images: tuple[ImageRecord, ...]
    kind: DeliveryKind
    channel_id: int


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording a sent message: False when its basis ended (or the image was
    deleted) while it was on its way, in which case ``retractions`` holds the queued row."""

    kept: bool
    retractions: tuple[int, ...] = ()


@dataclass(frozen=True)
class StuckCopy:
    """A copy of an owner's image Veil could not delete, and why."""

    image_ref: str | None
    channel_id: int
    message_id: int | None
    recipient_id: int | None
    reason: str


# A copy no bot can delete, from deliveries d joined with its image i.
_UNRETRACTABLE = Columns(StuckCopy, alias="d", sql={"image_ref": "i.public_id",
                                                    "reason": "d.unretractable"})
# A copy Veil failed to delete, from its outbox row.
_STUCK = Columns(StuckCopy, sql={"reason": "stuck_reason"})
RETRACTION = Columns(Retraction)


@dataclass(frozen=True)
class Drained:
    """What a drain of some outbox rows achieved."""

    done: int = 0
    waiting: int = 0
    stuck: int = 0


def worker_name() -> str:
    """Who holds a claim: host, process and a random part (two Veils in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def queue_all(ctx: Context, tx: Tx, where: str,
                    params: Mapping[str, object], *, reason: str) -> list[int]:
    """Queue the retraction of every sent copy matching ``where`` (over deliveries ``d``), and
    forget them. For the image's own deletion, where no basis can hold any more."""
    return await _queue(ctx, tx, where, params, reason=reason, ended_only=False)


async def queue_ended(ctx: Context, tx: Tx, where: str,
                      params: Mapping[str, object], *, reason: str) -> list[int]:
    """Queue the retraction of every sent copy matching ``where`` whose basis no longer holds
    (as of this transaction), and forget them. Call it after the change that ended access."""
    return await _queue(ctx, tx, where, params, reason=reason, ended_only=True)


async def _queue(ctx: Context, tx: Tx, where: str, params: Mapping[str, object], *,
                 reason: str, ended_only: bool) -> list[int]:
    ended = f"AND NOT {BASIS_HOLDS_SQL}" if ended_only else ""
    values = {**params, "now": ctx.now(), "reason": reason}
    rows = await tx.fetchall(_QUEUE_SQL.format(where=where, ended=ended), values)
    # Forget the queued copies (and, when nothing could hold any more, every copy in scope
    # that Veil can delete); copies no bot can delete stay listed for the owner.
    await tx.execute(
        f"DELETE FROM deliveries AS d WHERE ({where}) AND d.state = 'sent'"
        f" AND d.unretractable IS NULL {ended}", values)
    # Copies on their way: retracted as soon as they are recorded.
    await tx.execute(
        f"UPDATE deliveries AS d SET ended_at = :now WHERE ({where}) AND d.state = 'pending'"
        f" AND d.ended_at IS NULL {ended}", values)
    queued = [r[0] for r in rows]
    if queued:
        ctx.retractions_queued()
    return queued


def owner_reports_scope(owner_param: str = "owner") -> str:
    """Copies moderators received through reports of one owner's images: a report loses force
    when the reporter's own access ends, so every event that ends access checks them too."""
    return (f"d.basis = 'report' AND d.image_id IN"
            f" (SELECT id FROM images WHERE owner_id = :{owner_param})")


class DeliveryLedger:
    """Recording copies before and after they are sent, and the retraction outbox."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.worker = worker_name()

    # Recording ---------------------------------------------------------------------------

    async def begin(self, images: Sequence[ImageRecord], *, recipient_id: int | None,
                    basis: Basis, kind: DeliveryKind, channel_id: int,
                    guild_id: int | None = None,
                    unretractable: str | None = None) -> PendingDelivery:
        """Write the copies about to be sent as pending, checking in the same transaction that
        their basis still holds. NotFound (nothing to send) if it does not."""
        if kind == "ephemeral" and unretractable is None:
            unretractable = "an ephemeral reply"
        now = self.ctx.now()
        ids: list[int] = []
        async with self.ctx.db.transaction() as tx:
            present = {r[0] for r in await tx.fetchall(
                f"SELECT id FROM images WHERE id IN ({','.join('?' * len(images))})",
                [i.id for i in images])}
            if len(present) != len({i.id for i in images}):
                raise _NoLongerVisible(images)
            for image in images:
                ids.append(await tx.insert(
                    "INSERT INTO deliveries (image_id, recipient_id, guild_id, channel_id,"
                    " message_id, kind, grant_id, created_at, basis, report_id, state,"
                    " unretractable) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, 'pending', ?)",
                    (image.id, recipient_id, guild_id, channel_id, kind, basis.grant_id, now,
                     basis.kind, basis.report_id, unretractable)))
            where, params = _id_list("d.id", ids)
            holding = await tx.fetchval(
                f"SELECT count(*) FROM deliveries d WHERE {where} AND {BASIS_HOLDS_SQL}",
                {**params, "now": now})
            if holding != len(ids):
                raise _NoLongerVisible(images)
        return PendingDelivery(tuple(ids), tuple(images), kind, channel_id)

    async def complete(self, pending: PendingDelivery, *, message_id: int | None,
                       channel_id: int | None = None) -> Recorded:
        """The message went out: mark its copies sent and, in the same transaction, check their
        basis again; a copy whose access ended meanwhile (or whose image was deleted) is queued
        for retraction at once."""
        channel_id = pending.channel_id if channel_id is None else channel_id
        now = self.ctx.now()
        async with self.ctx.db.transaction() as tx:
            where, params = _id_list("d.id", pending.ids)
            updated = await tx.execute(
                f"UPDATE deliveries AS d SET state = 'sent', message_id = :message,"
                f" channel_id = :channel WHERE {where} AND state = 'pending'",
                {**params, "message": message_id, "channel": channel_id})
            queued = await _queue(
                self.ctx, tx, f"{where} AND (d.ended_at IS NOT NULL OR NOT {BASIS_HOLDS_SQL})",
                params, reason="access ended in flight", ended_only=False)
            missing = not pending.ids or updated < len(pending.ids)
            if missing and message_id is not None and pending.kind != "ephemeral":
                # Rows gone: the image was deleted while the message was on its way.
                image = pending.images[0]
                queued += [r[0] for r in await tx.fetchall(
                    "INSERT INTO retractions (channel_id, message_id, next_attempt_at,"
                    " owner_id, image_ref, reason, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT DO NOTHING RETURNING id",
                    (channel_id, message_id, now, image.owner_id, image.public_id,
                     "image deleted in flight", now))]
                self.ctx.retractions_queued()
        return Recorded(not queued and not missing, tuple(queued))

    async def abandon(self, pending: PendingDelivery) -> None:
        """The send failed: nothing went out, so nothing is recorded."""
        if not pending.ids:
            return
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                f"DELETE FROM deliveries WHERE id IN ({','.join('?' * len(pending.ids))})"
                " AND state = 'pending'", pending.ids)

    async def record(self, image: ImageRecord, *, kind: DeliveryKind, channel_id: int,
                     message_id: int | None, recipient_id: int | None, basis: Basis,
                     guild_id: int | None = None, unretractable: str | None = None) -> Recorded:
        """Record a message already sent (pending and completed at once), for senders that
        could not write the pending row first. A copy whose basis ended is queued at once."""
        try:
            pending = await self.begin([image], recipient_id=recipient_id, basis=basis,
                                       kind=kind, channel_id=channel_id, guild_id=guild_id,
                                       unretractable=unretractable)
        except NotFound:
            pending = await self._begin_unchecked(image, recipient_id=recipient_id,
                                                  basis=basis, kind=kind,
                                                  channel_id=channel_id, guild_id=guild_id,
                                                  unretractable=unretractable)
        return await self.complete(pending, message_id=message_id)

    async def _begin_unchecked(self, image: ImageRecord, *, recipient_id: int | None,
                               basis: Basis, kind: DeliveryKind, channel_id: int,
                               guild_id: int | None,
                               unretractable: str | None) -> PendingDelivery:
        if kind == "ephemeral" and unretractable is None:
            unretractable = "an ephemeral reply"
        async with self.ctx.db.transaction() as tx:
            if not await tx.fetchval("SELECT 1 FROM images WHERE id = ?", (image.id,)):
                return PendingDelivery((), (image,), kind, channel_id)
            delivery_id = await tx.insert(
                "INSERT INTO deliveries (image_id, recipient_id, guild_id, channel_id, kind,"
                " grant_id, created_at, basis, report_id, state, unretractable)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
                (image.id, recipient_id, guild_id, channel_id, kind, basis.grant_id,
                 self.ctx.now(), basis.kind, basis.report_id, unretractable))
        return PendingDelivery((delivery_id,), (image,), kind, channel_id)

    async def pending(self, *, older_than: float = PENDING_STALE_S) -> list[tuple[int, int, int,
                                                                                  str, float]]:
        """Deliveries a crash interrupted: (delivery id, recipient, channel, image id, since)."""
        rows = await self.ctx.db.fetchall(
            "SELECT d.id, d.recipient_id, d.channel_id, i.public_id, d.created_at"
            " FROM deliveries d JOIN images i ON i.id = d.image_id"
            " WHERE d.state = 'pending' AND d.created_at <= ? ORDER BY d.id",
            (self.ctx.now() - older_than,))
        return [tuple(r) for r in rows]

    async def reconcile(self, delivery_id: int, message_id: int | None) -> Recorded:
        """Settle a pending delivery after a crash: the message found (then recorded, and
        retracted if its basis ended meanwhile), or none found (then nothing was sent)."""
        row = await self.ctx.db.fetchone(
            f"SELECT {_PendingRow.columns} FROM deliveries d"
            " JOIN images i ON i.id = d.image_id WHERE d.id = ? AND d.state = 'pending'",
            (delivery_id,))
        if row is None:
            return Recorded(False)
        pending = PendingDelivery((_PendingRow.id(row),), (_PendingRow.image(row),),
                                  _PendingRow.kind(row), _PendingRow.channel_id(row))
        if message_id is None:
            await self.abandon(pending)
            return Recorded(False)
        return await self.complete(pending, message_id=message_id)

    async def unretractable_copies(self, owner_id: int,
                                   limit: int = 50) -> list[StuckCopy]:
        """Copies of the owner's images no bot can delete (ephemeral replies, and whatever an
        adapter recorded as such), newest first; the owner's own copies left out."""
        rows = await self.ctx.db.fetchall(
            f"SELECT {_UNRETRACTABLE.columns}"
            " FROM deliveries d JOIN images i ON i.id = d.image_id"
            " WHERE i.owner_id = ? AND d.unretractable IS NOT NULL"
            " AND coalesce(d.recipient_id, 0) != i.owner_id ORDER BY d.id DESC LIMIT ?",
            (owner_id, limit))
        return [_UNRETRACTABLE(r) for r in rows]

    # The outbox --------------------------------------------------------------------------

    async def claim(self, *, limit: int = 50, ids: Iterable[int] | None = None,
                    lease_s: float = LEASE_S) -> list[Retraction]:
        """Take due outbox rows for this worker with one conditional UPDATE: a row claimed by
        another live worker is never taken; one whose claim expired (its worker died) is."""
        now = self.ctx.now()
        only = ""
        params: dict[str, object] = {"me": self.worker, "now": now, "until": now + lease_s,
                                     "limit": limit}
        if ids is not None:
            chosen = list(ids)[:_CHUNK]
            if not chosen:
                return []
            only = f" AND id IN ({','.join(f':i{n}' for n in range(len(chosen)))})"
            params.update({f"i{n}": v for n, v in enumerate(chosen)})
        async with self.ctx.db.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE retractions SET claimed_by = :me, claimed_until = :until"
                " WHERE id IN (SELECT id FROM retractions WHERE next_attempt_at <= :now"
                "              AND (claimed_until IS NULL OR claimed_until <= :now)"
                f"             {only} ORDER BY id LIMIT :limit)"
                f" RETURNING {RETRACTION.columns}", params)
        return sorted((RETRACTION(r) for r in rows), key=lambda r: r.id)

    async def done(self, job: Retraction) -> bool:
        """The message is gone (deleted now, or already). False if our claim was lost."""
        async with self.ctx.db.transaction() as tx:
            return await tx.execute("DELETE FROM retractions WHERE id = ? AND claimed_by = ?",
                                    (job.id, self.worker)) == 1

    async def failed(self, job: Retraction, *, error: str, permanent: bool) -> bool:
        """Discord refused. A transient refusal is retried with back-off (30 s up to an hour);
        a permanent one, or the last attempt, marks the row stuck: kept, shown to the owner,
        retried only after ``STUCK_RETRY_S``. Returns True when the row is now stuck."""
        attempts = job.attempts + 1
        stuck = permanent or attempts >= MAX_ATTEMPTS
        reason = error if permanent else f"gave up after {attempts} attempts ({error})"
        now = self.ctx.now()
        delay = STUCK_RETRY_S if stuck else min(3600.0, 30.0 * (1 << min(job.attempts, 7)))
        async with self.ctx.db.transaction() as tx:
            await tx.execute(
                "UPDATE retractions SET attempts = ?, next_attempt_at = ?, last_error = ?,"
                " stuck_reason = ?, claimed_by = NULL, claimed_until = NULL"
                " WHERE id = ? AND claimed_by = ?",
                (attempts, now + delay, error, reason if stuck else None, job.id, self.worker))
        return stuck

    async def progress(self, ids: Iterable[int]) -> tuple[int, int, int]:
        """Of these outbox rows: (still there, stuck, being worked on by a worker right now)."""
        chosen = list(ids)
        if not chosen:
            return 0, 0, 0
        row = await self.ctx.db.fetchone(
            "SELECT count(*), count(stuck_reason),"
            " count(CASE WHEN claimed_until > ? AND stuck_reason IS NULL THEN 1 END)"
            f" FROM retractions WHERE id IN ({','.join('?' * len(chosen))})",
            (self.ctx.now(), *chosen))
        assert row is not None  # an aggregate always answers one row
        there, stuck, working = row
        return there, stuck, working

    async def outbox_size(self) -> int:
        return await self.ctx.db.fetchval("SELECT count(*) FROM retractions")

    async def stuck(self, owner_id: int, limit: int = 50) -> list[StuckCopy]:
        """Copies of the owner's images Veil tried and failed to delete, and why."""
        rows = await self.ctx.db.fetchall(
            f"SELECT {_STUCK.columns} FROM retractions WHERE owner_id = ?"
            " AND stuck_reason IS NOT NULL ORDER BY id DESC LIMIT ?", (owner_id, limit))
        return [_STUCK(r) for r in rows]


def _id_list(column: str, ids: Sequence[int]) -> tuple[str, dict[str, object]]:
    """``column IN (:k0, :k1, ...)`` with its named parameters."""
    params: dict[str, object] = {f"k{n}": v for n, v in enumerate(ids)}
    if not params:
        return "1 = 0", params  # PostgreSQL has no empty IN ()
    return f"{column} IN ({', '.join(':' + k for k in params)})", params


class _PendingRow(Select):
    """A delivery waiting for its message, with its image."""

    id = Value("d.id")
    kind = Value("d.kind")
    channel_id = Value("d.channel_id")
    image = IMAGE.on("i")


class _NoLongerVisible(NotFound):
    def __init__(self, images: Sequence[ImageRecord]) -> None:
        ids = ", ".join(f"`{i.public_id}`" for i in images)
        super().__init__(f"There is no image with id {ids} that you can see.")
