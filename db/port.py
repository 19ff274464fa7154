"""The database port the core talks to: what both adapters (SQLite in db.database, PostgreSQL
in db.postgres) provide. The core annotates with these protocols, never with an adapter.

SQL passed through the port is one text for both databases: ``?`` or ``:name`` parameters,
``ON CONFLICT DO NOTHING`` rather than ``INSERT OR IGNORE``, integers 0/1 for booleans, and the
few fragments that differ taken from db.dialect (``ids_in``, ``greatest``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]
Params = Sequence[Any] | dict[str, Any]


class Row(Protocol):
    """A result row: by position (``row[0]``) or by column name (``row["id"]``).
    sqlite3.Row and asyncpg.Record both are."""

    def __getitem__(self, key: int | str | slice, /) -> Any: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> Any: ...


class Reads(Protocol):
    async def fetchall(self, sql: str, params: Params = ()) -> Sequence[Row]: ...

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchval(self, sql: str, params: Params = ()) -> Any: ...


class Tx(Reads, Protocol):
    """An open write transaction: writers are serialized (SQLite's single writer; on
    PostgreSQL a transaction-level advisory lock), and reads inside it see its writes."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT into a table with an ``id`` key; returns the new row's id."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...


class Store(Reads, Protocol):
    """One database. Reads outside a transaction see every committed write."""

    dialect: Dialect

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def checkpoint(self) -> None:
        """After a deletion: make the deleted rows' bytes leave the database's own log where
        the database allows it (SQLite: a truncating WAL checkpoint; PostgreSQL: nothing can,
        see PostgresDatabase.checkpoint)."""
        ...

