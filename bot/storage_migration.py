"""Moving a deployment between storage backends (`python -m bot migrate-storage`).

Everything is copied through the ports, never around them: rows table by table, parents before
children, in key order and in batches, each batch one transaction of ``INSERT ... ON CONFLICT DO
NOTHING``; image blobs as the ciphertext they are, each written before the batch of rows that
names it (the stores' own rule, so no row in the target ever lacks its blob). A run stopped at
any point is finished by running it again, and a run over a finished copy adds nothing.

Nothing is decrypted to be copied: owner keys stay wrapped under the master key and image keys
under the owner keys, so the target must be opened with the same master key (opening it checks
that). Once copied, every image of the target is opened (full size and thumbnail, through the
target's own stores) before the copy is called done.

No Veil process may run on either store meanwhile: a delete, a revoke, a new share or a view
committed in the source after its table was copied would be lost in the target (or a deleted
image come back there), and a process on the target would hand out ids the copy then skips as
already there, or its repair would take copied objects whose rows have not arrived yet. So the
copy holds the exclusive claim on both databases (db.presence) for its whole run: it cannot
start while any process holds its shared claim, and no process can start until it ends. A copy
that stops part-way (killed, or an image that does not open) leaves a mark in the target's meta
table, so that no process starts on a half-filled store until a run of the copy has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.core import failpoints
from bot.core.blobs import image_key
from bot.core.context import IMAGE
from bot.core.veil import UNFINISHED_MIGRATION, Veil
from db.postgres import OPEN_ERRORS, redact_url
from db.presence import Claim, claim_database, holders

BATCH = 500
_PARALLEL_BLOBS = 8  # object stores answer one request at a time per connection: overlap them


class MigrationError(Exception):
    """The copy cannot start or did not verify; the message says why and what to do."""


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]  # the primary key: copied in this order, resumed after the last one


# Parents before children (foreign keys): users before images, images before everything that
# names one, groups before their members and grants.
TABLES = (
    Table("meta", ("key",)),
    Table("users", ("user_id",)),
    Table("images", ("id",)),
    Table("groups", ("id",)),
    Table("group_members", ("group_id", "user_id")),
    Table("grants", ("id",)),
    Table("links", ("id",)),
    Table("link_sessions", ("id",)),
    Table("reports", ("id",)),
    Table("deliveries", ("id",)),
    Table("retractions", ("id",)),
    Table("guild_policy", ("guild_id",)),
    Table("permitted_channels", ("guild_id", "channel_id")),
    Table("view_log", ("id",)),
    Table("audit_log", ("id",)),
    Table("erasures", ("id",)),
    Table("blob_deletions", ("blob_name",)),
)

# What stays behind, and why (README: 'Running beyond one machine').
NOT_COPIED = {
    "schema_version": "each store applies its own migrations",
    "leases": "held by running processes, and none may run during the copy",
    "staged_blobs": "uploads in flight; start-up repair has resolved every finished one",
    "throttle": "failed-guess budgets refill within minutes",
    "generation_slots": "generations waiting in processes that are stopped",
    "exports": "one-time downloads waiting in the old store; a new /export makes another",
}

# The target's mark while it is being filled (meta key; value: where the copy comes from).
UNFINISHED = UNFINISHED_MIGRATION

# Ids handed out once must never come back (a share id names the copies sent under it, so a
# reused id would attribute old copies to a new share): the high-water mark moves with the rows.
NEVER_REUSED = ("grants",)


@dataclass
class CopyReport:
    added: dict[str, int] = field(default_factory=dict)  # rows the target did not hold yet
    rows: dict[str, int] = field(default_factory=dict)  # rows in the source
    blobs_added: int = 0
    images: int = 0  # images verified to open in the target

    @property
    def rows_added(self) -> int:
        return sum(self.added.values())


@dataclass(frozen=True)
class Side:
    role: str  # "source" or "target"
    database: str | Path  # a postgresql:// URL or the SQLite file
    label: str  # how the operator knows it, without a password


@asynccontextmanager
async def stores_to_ourselves(sides: Sequence[Side]) -> AsyncIterator[None]:
    """Hold the exclusive claim on every database of ``sides`` (one that is both source and
    target, where only the images move, once) until the body ends; MigrationError naming the
    running processes if any Veil process is on one of them."""
    distinct: dict[str, Side] = {}
    for side in sides:
        key = str(side.database)
        if key in distinct:
            distinct[key] = Side("source and target", side.database, side.label)
        else:
            distinct[key] = side
    held: list[Claim] = []
    try:
        for side in distinct.values():
            try:
                claim = await claim_database(side.database, exclusive=True)
            except OPEN_ERRORS as exc:
                raise MigrationError(
                    f"migrate-storage cannot start: the {side.role}, {side.label}, cannot be "
                    f"used ({type(exc).__name__}: {redact_url(str(exc))}): check "
                    "VEIL_DATA_DIR and VEIL_DATABASE_URL.") from exc
            if claim is None:
                raise MigrationError(_busy(side, await holders(side.database)))
            held.append(claim)
        yield
    finally:
        for claim in held:
            await claim.release()


def _busy(side: Side, running: list[str]) -> str:
    count = (f"{len(running)} Veil process{'es are' if len(running) > 1 else ' is'}"
             if running else "a Veil process is")
    named = f" ({'; '.join(running[:5])}{'; ...' if len(running) > 5 else ''})" if running else ""
    return (f"migrate-storage cannot start: {count} running on the {side.role}, "
            f"{side.label}{named}. Stop every Veil process on it (the bot, link servers and "
            "their workers, check, sweep), then run migrate-storage again.")


def _dialect(veil: Veil) -> str:
    return getattr(veil.ctx.db, "dialect", "sqlite")


async def copy_store(source: Veil, target: Veil, *, blobs_shared: bool = False,
                     verify: bool = True, batch: int = BATCH, source_label: str = "another store",
                     progress: Callable[[str], None] = lambda line: None) -> CopyReport:
    """Copy every row (and, unless ``blobs_shared``, every image blob) of ``source`` into
    ``target``, then (``verify``) open every image of the target. Both must be at the same
    schema version and hold the same master key. Open the target with ``repair=False``: its
    repair would take the objects copied ahead of their rows for abandoned uploads. The target
    carries the UNFINISHED mark from the start until everything has been copied (and opened)."""
    mine, theirs = await source.ctx.db.schema_version(), await target.ctx.db.schema_version()
    if mine != theirs:
        raise MigrationError(
            f"The source store is at schema version {mine} and the target at {theirs}: run "
            "the same Veil version on both (start and stop it once on the older one).")
    report = CopyReport()
    await _set_mark(target, source_label)
    for table in TABLES:
        before = await target.ctx.db.fetchval(f"SELECT count(*) FROM {table.name}")
        copied = await _copy_table(source, target, table, batch, report,
                                   blobs_shared=blobs_shared)
        after = await target.ctx.db.fetchval(f"SELECT count(*) FROM {table.name}")
        report.rows[table.name], report.added[table.name] = copied, after - before
        if copied:
            progress(f"  {table.name}: {copied} rows, {after - before} new")
        failpoints.reach(f"migrate:copied:{table.name}")
        failpoints.pause(f"migrate:copied:{table.name}")
    await _carry_id_counters(source, target)
    if verify:
        report.images = await verify_images(target, batch=batch)
    await _clear_mark(target)
    return report


async def _set_mark(target: Veil, source_label: str) -> None:
    async with target.ctx.db.transaction() as tx:
        await tx.execute(f"INSERT INTO meta (key, value) VALUES ('{UNFINISHED}', ?)"
                         " ON CONFLICT DO NOTHING", (source_label,))


async def _clear_mark(target: Veil) -> None:
    async with target.ctx.db.transaction() as tx:
        await tx.execute(f"DELETE FROM meta WHERE key = '{UNFINISHED}'")


async def _copy_table(source: Veil, target: Veil, table: Table, batch: int,
                      report: CopyReport, *, blobs_shared: bool) -> int:
    order = ", ".join(table.key)
    after: tuple[Any, ...] | None = None
    copied = 0
    while True:
        params: dict[str, Any] = {"n": batch}
        where = ""
        if after is not None:
            names = [f":k{i}" for i in range(len(after))]
            left = table.key[0] if len(after) == 1 else f"({order})"
            right = names[0] if len(after) == 1 else f"({', '.join(names)})"
            where = f" WHERE {left} > {right}"
            params.update({f"k{i}": v for i, v in enumerate(after)})
        rows = await source.ctx.db.fetchall(
            f"SELECT * FROM {table.name}{where} ORDER BY {order} LIMIT :n", params)
        if not rows:
            return copied
        columns = list(rows[0].keys())
        last, fetched = rows[-1], len(rows)
        if table.name == "meta":  # a source that was itself being filled: its mark stays there
            rows = [r for r in rows if r["key"] != UNFINISHED]
        if table.name == "images" and not blobs_shared:
            # The objects first: a row in the target always names a blob that is there.
            report.blobs_added += await _copy_blobs(source, target,
                                                    [r["blob_name"] for r in rows])
            failpoints.reach("migrate:blobs-written")
        sql = (f"INSERT INTO {table.name} ({', '.join(columns)})"
               f" VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT DO NOTHING")
        async with target.ctx.db.transaction() as tx:
            await tx.executemany(sql, [tuple(r[c] for c in columns) for r in rows])
        copied += len(rows)
        after = tuple(last[k] for k in table.key)
        if fetched < batch:
            return copied


async def _copy_blobs(source: Veil, target: Veil, names: Sequence[str]) -> int:
    """Copy the blobs the target lacks, ciphertext as is; returns how many were copied."""
    gate = asyncio.Semaphore(_PARALLEL_BLOBS)

    async def one(name: str) -> int:
        async with gate:
            if await _blob_exists(target, name):
                return 0
            # One object per image (both sealed parts): its bytes, as they are.
            key = image_key(name)
            await target.ctx.blobs.put(key, await source.ctx.blobs.get(key))
            return 1

    return sum(await asyncio.gather(*(one(n) for n in names)))


async def _blob_exists(veil: Veil, name: str) -> bool:
    return await veil.ctx.blobs.exists(image_key(name))


async def _carry_id_counters(source: Veil, target: Veil) -> None:
    """Make the target hand out ids above every copied one, and above every id the source ever
    handed out where ids are never reused."""
    for table in TABLES:
        if table.key != ("id",):
            continue
        highest = await target.ctx.db.fetchval(f"SELECT coalesce(max(id), 0) FROM {table.name}")
        if table.name in NEVER_REUSED:
            highest = max(highest, await _high_water(source, table.name))
        await _raise_counter(target, table.name, highest)


async def _high_water(veil: Veil, table: str) -> int:
    if _dialect(veil) == "postgresql":
        value = await veil.ctx.db.fetchval(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
            f" FROM {await _sequence(veil, table)}")
    else:
        value = await veil.ctx.db.fetchval(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    return int(value or 0)


async def _sequence(veil: Veil, table: str) -> str:
    name = await veil.ctx.db.fetchval("SELECT pg_get_serial_sequence(?, 'id')", (table,))
    if name is None:
        raise MigrationError(f"The PostgreSQL table {table} has no id sequence: its schema is "
                             "not Veil's. Point VEIL_DATABASE_URL at Veil's own database.")
    return str(name)


async def _raise_counter(veil: Veil, table: str, value: int) -> None:
    if value <= 0:
        return
    async with veil.ctx.db.transaction() as tx:
        if _dialect(veil) == "postgresql":
            sequence = await _sequence(veil, table)
            await tx.execute(
                f"SELECT setval(?, greatest(?, (SELECT CASE WHEN is_called THEN last_value"
                f" ELSE 0 END FROM {sequence})))", (sequence, value))
        elif table in NEVER_REUSED:  # only AUTOINCREMENT tables keep a counter in SQLite
            await tx.execute("INSERT INTO sqlite_sequence (name, seq) SELECT ?, 0 WHERE NOT"
                             " EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                             (table, table))
            await tx.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                             (value, table))


async def verify_images(veil: Veil, *, batch: int = BATCH) -> int:
    """Open every image of ``veil`` (full size and thumbnail); returns how many opened. Raises
    MigrationError naming the images that did not."""
    failed: list[str] = []
    opened, after = 0, 0
    while True:
        rows = await veil.ctx.db.fetchall(
            f"SELECT {IMAGE.columns} FROM images WHERE id > ? ORDER BY id LIMIT ?", (after, batch))
        for row in rows:
            image = IMAGE(row)
            try:
                for thumbnail in (False, True):
                    await veil.images.decrypt_unchecked(image, thumbnail=thumbnail)
            except Exception:  # what failed is reported by id; the bytes never are
                failed.append(image.public_id)
            else:
                opened += 1
        if len(rows) < batch:
            break
        after = rows[-1][0]
    if failed:
        shown = ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
        raise MigrationError(
            f"{len(failed)} of {opened + len(failed)} images do not open in the target "
            f"({shown}): run migrate-storage again; if they still fail, their blobs are "
            "missing or damaged in the source too (`python -m bot check` on it).")
    return opened
