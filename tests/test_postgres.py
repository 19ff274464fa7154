"""The PostgreSQL adapter on its own: the one SQL text the core writes reaches PostgreSQL
intact, its migrations mirror SQLite's, and its URL's password shows nowhere. (The core suite
and the stateful model run on both databases through the ``veil`` fixture.)"""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.config import load_settings
from bot.core.veil import DataFolderError, Veil
from db import migration_numbers, open_database
from db.postgres import PostgresDatabase, redact_url, translate


def test_every_sqlite_migration_has_a_postgresql_twin():
    sqlite, postgresql = migration_numbers("sqlite"), migration_numbers("postgresql")
    assert sqlite, "no SQLite migrations found"
    assert sqlite == postgresql, (
        f"SQLite migrations without a PostgreSQL twin in db/migrations_pg: "
        f"{sorted(set(sqlite) - set(postgresql))}; twins without a SQLite one: "
        f"{sorted(set(postgresql) - set(sqlite))}")


def test_parameters_become_numbered_but_literals_casts_and_comments_stay():
    text, names = translate(
        "SELECT ':not', '?' || x::text, \"a:b\" -- :no ?\n"
        "FROM t WHERE a = :user AND b IN (:roles, :user) AND c = ':x''?'")
    assert text == ("SELECT ':not', '?' || x::text, \"a:b\" -- :no ?\n"
                    "FROM t WHERE a = $1 AND b IN ($2, $1) AND c = ':x''?'")
    assert names == ("user", "roles")
    assert translate("UPDATE t SET a = ? WHERE b = ? /* ? */") == (
        "UPDATE t SET a = $1 WHERE b = $2 /* ? */", 2)


def test_a_password_in_the_database_url_is_redacted():
    url = "postgresql://veil:s3cret-pw@db.internal:5432/veil"
    assert redact_url(url) == "postgresql://veil:***@db.internal:5432/veil"
    assert redact_url("postgresql://veil@db/veil") == "postgresql://veil@db/veil"
    settings = load_settings(env={"DISCORD_TOKEN": "t", "VEIL_DATABASE_URL": url},
                             dotenv_path=None)
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.database_label
    assert "db.internal" in settings.database_label
    assert "s3cret" not in repr(PostgresDatabase(url, pool=None))


def test_a_database_url_that_is_not_postgresql_is_refused_with_what_to_do():
    with pytest.raises(Exception, match="postgresql://"):
        load_settings(env={"DISCORD_TOKEN": "t", "VEIL_DATABASE_URL": "mysql://x@y/z"},
                      dotenv_path=None)


async def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path):
    with pytest.raises(DataFolderError, match="VEIL_DATABASE_URL") as caught:
        await Veil.open(tmp_path / "data",
                        database_url="postgresql://veil:hunter2@127.0.0.1:1/veil")
    assert "hunter2" not in str(caught.value)


async def test_postgresql_rows_read_like_sqlite_rows(database_url_pg):
    db = await open_database(database_url_pg)
    try:
        assert db.dialect == "postgresql"
        async with db.transaction() as tx:
            new_id = await tx.insert(
                "INSERT INTO audit_log (at, action, detail) VALUES (?, ?, ?)",
                (1.5, "test", "it's :fine?"))
            assert await tx.execute("UPDATE audit_log SET guild_id = :g WHERE id = :id",
                                    {"g": 2**62, "id": new_id}) == 1
        row = await db.fetchone("SELECT id, guild_id, detail FROM audit_log WHERE id = ?",
                                (new_id,))
        assert (row[0], row["guild_id"], row[2]) == (new_id, 2**62, "it's :fine?")
        # sum() over bigint is numeric in PostgreSQL: it reads as a plain int, as on SQLite.
        total = await db.fetchval("SELECT sum(guild_id) FROM audit_log")
        assert total == 2**62 and type(total) is int
        assert await db.schema_version() == max(migration_numbers("postgresql"))
    finally:
        await db.close()


async def test_write_transactions_on_postgresql_run_one_at_a_time(database_url_pg):
    """SQLite's single writer, kept: a read-then-insert never interleaves with another."""
    dbs = [await PostgresDatabase.open(database_url_pg, pool_max=4) for _ in range(2)]
    try:
        async def add(db: PostgresDatabase, n: int) -> None:
            async with db.transaction() as tx:
                count = await tx.fetchval("SELECT count(*) FROM throttle")
                await asyncio.sleep(0.005)  # let the other writer try to get in between
                await tx.execute("INSERT INTO throttle (key, units, at) VALUES (?, ?, ?)",
                                 (f"k{count}", float(n), 0.0))
        await asyncio.gather(*(add(dbs[n % 2], n) for n in range(20)))
        keys = [r[0] for r in await dbs[0].fetchall("SELECT key FROM throttle")]
        assert sorted(keys, key=lambda k: int(k[1:])) == [f"k{n}" for n in range(20)]
    finally:
        for db in dbs:
            await db.close()


def test_the_adapter_reads_no_sqlite_only_sql_in_the_core():
    """No core module writes SQLite's dialect: fragments that differ come from db.dialect."""
    from pathlib import Path

    import bot.core

    pattern = re.compile(r"json_each|INSERT OR |BEGIN IMMEDIATE|lastrowid|PRAGMA|sqlite_")
    found = {}
    for path in Path(bot.core.__file__).parent.glob("*.py"):
        hits = [line for line in path.read_text().splitlines() if pattern.search(line)
                and not line.lstrip().startswith("#")]
        if hits:
            found[path.name] = hits
    assert not found, found


async def test_a_task_cancelled_while_waiting_for_the_write_lock_never_wedges_the_writers(
        database_url_pg):
    """PostgreSQL's twin of the SQLite test in test_several_processes: a write cancelled while
    another process holds the writers' lock leaves no connection holding it afterwards."""
    import asyncpg

    from db.postgres import WRITE_LOCK_KEY

    db = await PostgresDatabase.open(database_url_pg, pool_min=2, pool_max=2)
    other = await asyncpg.connect(database_url_pg)
    try:
        writing = other.transaction()
        await writing.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", WRITE_LOCK_KEY)  # another writer

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('a', 'b')")

        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.3)  # waiting on the advisory lock
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await writing.commit()
        for n in range(4):  # through every pooled connection, none left holding the lock
            async with asyncio.timeout(10):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                                     (f"c{n}", "d"))
        assert await db.fetchval("SELECT count(*) FROM meta WHERE key LIKE 'c%'") == 4
        assert await db.fetchval("SELECT value FROM meta WHERE key = 'a'") is None
    finally:
        await other.close()
        await db.close()
