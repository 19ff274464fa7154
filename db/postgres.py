"""The PostgreSQL adapter of the database port, on an asyncpg connection pool.

The core's SQL is written once for both databases with ``?`` or ``:name`` parameters; this
adapter rewrites them to ``$n`` once per SQL text (cached) and binds values in that order.

Writers are serialized as on SQLite: every write transaction first takes one transaction-level
advisory lock, so a rule that reads and then writes (record a delivery, grant, take a lease)
sees no other writer in between. Reads run at READ COMMITTED outside any transaction, so each
statement sees every committed write, as SQLite's reader does.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg

from db.migrationfiles import migration_files
from db.port import Dialect, Params, Row

# Advisory lock keys (64-bit, arbitrary but fixed): one for writers, one for migrations.
WRITE_LOCK_KEY = 0x5665696C_57524954  # "VeilWRIT"
MIGRATION_LOCK_KEY = 0x5665696C_4D494752  # "VeilMIGR"

# What opening can fail with: refused or unreachable (OSError), too slow, or refused by the
# server (authentication, no such database, a failing migration).
OPEN_ERRORS: tuple[type[Exception], ...] = (OSError, TimeoutError, asyncpg.PostgresError,
                                            asyncpg.InterfaceError)

DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10

# A `:name` parameter, a `?`, or something to copy unchanged: a string literal, a quoted
# identifier, a comment, or a `::` cast (whose second colon must not start a name).
_TOKEN = re.compile(r"""
    (?P<skip>'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|::)
  | (?P<named>(?<![:\w]):[A-Za-z_]\w*)
  | (?P<positional>\?)
""", re.VERBOSE | re.DOTALL)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, tuple[str, ...] | int]:
    """``?``/``:name`` → ``$n``. Returns the new text and either the parameter names in ``$n``
    order (named style) or how many positional parameters there are."""
    names: list[str] = []
    positional = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal positional
        if match.group("skip"):
            return match.group(0)
        if match.group("positional"):
            positional += 1
            return f"${positional}"
        name = match.group("named")[1:]
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _TOKEN.sub(replace, sql)
    if names and positional:
        raise ValueError("SQL mixes ? and :name parameters")
    return text, (tuple(names) if names else positional)


def _bind(sql: str, params: Params) -> tuple[str, list[Any]]:
    text, shape = translate(sql)
    if isinstance(shape, tuple):
        if not isinstance(params, dict):
            raise TypeError("named parameters need a dict")
        return text, [params[name] for name in shape]
    if isinstance(params, dict):
        raise TypeError("? parameters need a sequence")
    if len(params) != shape:
        raise ValueError(f"SQL has {shape} parameters, {len(params)} given")
    return text, list(params)


def _rowcount(status: str) -> int:
    """asyncpg's command tag ("UPDATE 3", "INSERT 0 1", "DELETE 0") → rows changed."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


def _decode_numeric(text: str) -> int | float:
    # sum() of bigints and arithmetic with decimal literals give numeric; SQLite would give an
    # integer or a float, and the core computes with those (Decimal + float fails).
    if "." in text or "e" in text.lower() or text in ("NaN", "Infinity", "-Infinity"):
        return float(text)
    return int(Decimal(text))


def _encode_numeric(value: Any) -> str:
    return str(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("numeric", schema="pg_catalog", encoder=_encode_numeric,
                              decoder=_decode_numeric, format="text")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Reset on release to the pool: nothing beyond asyncpg's own ROLLBACK of a transaction left
    open. Veil changes no session state (no SET, LISTEN, cursors or session-level locks), and
    asyncpg's default reset query would cost a round trip after every single read."""


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced, for logs, reprs and `check`."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


class _Reads:
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        text, args = _bind(sql, params)
        return list(await self._run().fetch(text, *args))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        text, args = _bind(sql, params)
        row: Row | None = await self._run().fetchrow(text, *args)
        return row

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        text, args = _bind(sql, params)
        return await self._run().fetchval(text, *args)

    def _run(self) -> Any:  # a Pool or a Connection: both have fetch/fetchrow/fetchval/execute
        raise NotImplementedError


class PostgresDatabase(_Reads):
    """One PostgreSQL database. Open with ``await PostgresDatabase.open(url)``."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self._url = url
        self._pool = pool

    def __repr__(self) -> str:
        return f"PostgresDatabase({redact_url(self._url)!r})"

    @property
    def url(self) -> str:
        """The URL with its password redacted (the real one stays inside the pool)."""
        return redact_url(self._url)

    def _run(self) -> asyncpg.Pool:
        return self._pool

    @classmethod
    async def open(cls, url: str, *, pool_min: int = DEFAULT_POOL_MIN,
                   pool_max: int = DEFAULT_POOL_MAX) -> PostgresDatabase:
        # Migrations on a connection of their own, closed afterwards: the session-level lock
        # they take can never stay behind in a pooled connection.
        conn = await asyncpg.connect(url)
        try:
            await cls._migrate(conn)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            url, min_size=pool_min, max_size=max(pool_min, pool_max), init=_init_connection,
            reset=_keep_session, statement_cache_size=1024,
            # Short OLTP statements only: JIT compilation would cost more than it saves.
            server_settings={"jit": "off", "application_name": "veil"})
        return cls(url, pool)

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        # A session-level advisory lock: processes starting together apply each migration once.
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at DOUBLE PRECISION NOT NULL)")
            applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_version")}
            for version, name, sql in migration_files("migrations_pg"):
                if version in applied:
                    continue
                # One transaction per migration (PostgreSQL's DDL is transactional).
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_version (version, name, applied_at)"
                        " VALUES ($1, $2, $3)", version, name, time.time())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)

    async def close(self) -> None:
        await self._pool.close()

    async def schema_version(self) -> int:
        return int(await self.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """A transaction that holds the writers' advisory lock until it ends; commits on
        success, rolls back on error (asyncpg's pool resets a connection a cancelled task left
        mid-transaction before handing it out again)."""
        async with self._pool.acquire() as conn:
            try:
                # BEGIN and the lock in one round trip (the simple protocol takes both).
                await conn.execute(_BEGIN_WRITE)
                yield PostgresTransaction(conn)
                await conn.execute("COMMIT")
            except BaseException:
                # Shielded: a cancelled task still ends its transaction before the connection
                # goes back to the pool (asyncpg would also roll back, with a warning).
                await asyncio.shield(_rollback(conn))
                raise

    async def checkpoint(self) -> None:
        """Nothing to do on PostgreSQL. SQLite's checkpoint empties its WAL so that a deleted
        row's bytes (with secure_delete) are gone from the files; PostgreSQL has no such step:
        VACUUM marks a dead tuple's space free without overwriting it, WAL segments are
        recycled on the server's schedule, and archives keep them longer. Running VACUUM after
        every deletion would cost a scan of each index of a large table and still guarantee
        nothing, so it is left to autovacuum, and deletion is made final by the keys
        (README: "Backups and forget-me")."""


_BEGIN_WRITE = f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"


async def _rollback(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction() and not conn.is_closed():
        try:
            await conn.execute("ROLLBACK")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            conn.terminate()  # the pool replaces it


class PostgresTransaction(_Reads):
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def _run(self) -> asyncpg.Connection:
        return self._conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        text, args = _bind(sql, params)
        return _rowcount(await self._conn.execute(text, *args))

    async def insert(self, sql: str, params: Params = ()) -> int:
        text, args = _bind(sql, params)
        if not text.lstrip().upper().startswith(("INSERT", "WITH")):
            raise RuntimeError("not an INSERT: no row id")
        if " RETURNING " not in text.upper():
            text += " RETURNING id"
        new_id = await self._conn.fetchval(text, *args)
        return 0 if new_id is None else int(new_id)  # 0: ON CONFLICT DO NOTHING inserted none

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = [_bind(sql, row) for row in rows]
        if batch:
            await self._conn.executemany(batch[0][0], [args for _, args in batch])
