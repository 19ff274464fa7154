"""The database port (db.port) and its two adapters: SQLite (db.database, the embedded
default, on the stdlib sqlite3) and PostgreSQL (db.postgres, chosen with a ``postgresql://``
URL). Each has its own numbered migrations: db/migrations and db/migrations_pg, one twin per
number."""

from __future__ import annotations

from pathlib import Path

from db.database import Database, Transaction
from db.migrationfiles import migration_files
from db.port import Dialect, Row, Store, Tx

__all__ = ["Database", "Dialect", "Row", "Store", "Transaction", "Tx", "is_database_url",
           "migration_numbers", "open_database"]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


def migration_numbers(dialect: Dialect) -> list[int]:
    """The migration numbers shipped for one database (each SQLite one has a PostgreSQL twin)."""
    folder = "migrations_pg" if dialect == "postgresql" else "migrations"
    return [version for version, _, _ in migration_files(folder)]


async def open_database(target: str | Path, *, pool_min: int | None = None,
                        pool_max: int | None = None) -> Store:
    """A ``postgresql://`` URL opens PostgreSQL (pool sizes apply there); anything else is the
    path of a SQLite file. Migrations run before this returns."""
    if is_database_url(target):
        from db.postgres import DEFAULT_POOL_MAX, DEFAULT_POOL_MIN, PostgresDatabase
        return await PostgresDatabase.open(
            str(target), pool_min=DEFAULT_POOL_MIN if pool_min is None else pool_min,
            pool_max=DEFAULT_POOL_MAX if pool_max is None else pool_max)
    return await Database.open(target)
