"""The aiosqlite access layer: connections, pragmas, migrations and transactions.

Two connections to one WAL database: a writer, used only inside ``transaction()`` and serialised
by a lock, and a reader for everything else. Readers never see a transaction that is still open
(an open transaction on the same connection would otherwise be visible to concurrent reads), and
reads do not wait behind writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

Row = sqlite3.Row
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# The reader keeps a larger page cache (32 MiB): gallery queries over a large library read many
# pages. No mmap: mapped pages count in the bot's resident size, which has its own budget.
READER_PRAGMAS = (
    "PRAGMA cache_size = -32768",
)

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
)


def migration_files() -> list[tuple[int, str, str]]:
    """The numbered migrations shipped in db/migrations, in order: (version, name, sql)."""
    found = []
    for entry in resources.files("db").joinpath("migrations").iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {[n for _, n, _ in found]}")
    return found


class _Reads:
    """Queries that return rows, on whichever connection ``_conn`` is."""

    _conn: aiosqlite.Connection

    # One trip to aiosqlite's thread per query: a cursor left open across awaits would let
    # other queries interleave on the connection and keep an old read snapshot alive, so a
    # read right after a commit could miss it (a revoked grant honoured once more).
    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Row | None:
        rows = list(await self._conn.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class Database(_Reads):
    """One SQLite file. Open with ``await Database.open(path)``; close with ``await db.close()``."""

    def __init__(self, path: Path, writer: aiosqlite.Connection,
                 reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._conn = reader  # reads outside a transaction never see one that is still open
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await cls._connect(path)
        try:
            await cls._migrate(writer)
            reader = await cls._connect(path, READER_PRAGMAS)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    @staticmethod
    async def _connect(path: Path, extra: tuple[str, ...] = ()) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in PRAGMAS + extra:
            await conn.execute(pragma)
        return conn

    @staticmethod
    async def _migrate(conn: aiosqlite.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        async with conn.execute("SELECT version FROM schema_version") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        for version, name, sql in migration_files():
            if version in applied:
                continue
            # One transaction per migration: a failing file leaves the schema as it was.
            try:
                await conn.execute("BEGIN IMMEDIATE")
                # Another process starting at the same moment may have applied it while we
                # waited for the write lock: the lock is the migration lock.
                async with conn.execute("SELECT 1 FROM schema_version WHERE version = ?",
                                        (version,)) as cur:
                    if await cur.fetchone() is not None:
                        await conn.execute("ROLLBACK")
                        continue
                for statement in _split_sql(sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, time.time()),
                )
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.OperationalError):
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    async def schema_version(self) -> int:
        return await self.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")

    # Writes ----------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """An IMMEDIATE transaction on the writer; commits on success, rolls back on error."""
        async with self._write_lock:
            # BEGIN inside the try: a task cancelled while BEGIN waits for another process's
            # write lock leaves aiosqlite's thread to finish the BEGIN anyway, and without the
            # ROLLBACK queued behind it the writer would stay inside that transaction (every
            # later write failing until restart). Same for a COMMIT that fails or is cancelled.
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield Transaction(self._writer)
                await self._writer.execute("COMMIT")
            except BaseException:
                await asyncio.shield(self._rollback())
                raise

    async def _rollback(self) -> None:
        # aiosqlite runs a connection's calls in order, so this ROLLBACK runs after a BEGIN or
        # COMMIT still in flight; if no transaction is open by then there is nothing to undo.
        with contextlib.suppress(sqlite3.OperationalError):
            await self._writer.execute("ROLLBACK")

    async def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so deleted pages leave no copy there."""
        async with self._write_lock:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Transaction(_Reads):
    """The writer connection inside an open transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self._conn.execute(sql, params) as cur:
            return cur.rowcount

    async def insert(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one INSERT; returns the new row's id."""
        async with self._conn.execute(sql, params) as cur:
            if cur.lastrowid is None:  # sqlite3 sets it after every successful INSERT
                raise RuntimeError("not an INSERT: no row id")
            return cur.lastrowid

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    statements: list[str] = []
    buf: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("--")):
            continue
        buf.append(line)
        text = "\n".join(buf)
        if stripped.endswith(";") and sqlite3.complete_statement(text):
            statements.append(text)
            buf = []
    if "".join(buf).strip():
        statements.append("\n".join(buf))
    return statements
