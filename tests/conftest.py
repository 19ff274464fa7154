"""Shared fixtures: a real Veil over a real database (a SQLite file in a temporary folder, and a
database of its own in a throwaway PostgreSQL cluster: the ``veil`` fixture runs each test on
both), with a clock the test moves by hand, and small real images made with Pillow (``png``,
kept in tests.e2e beside the bot's fixture so both kinds of test make images the same way).

A test about the SQLite file itself (WAL, secure_delete, the file's bytes) is marked
``@pytest.mark.sqlite_only("why")`` and runs on SQLite alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.core.models import Viewer
from bot.core.veil import Veil
from bot.logs import REDACTOR
from tests.blobstores import blob_options  # noqa: F401  (the folder; @both_stores adds S3)
from tests.e2e import png, veil_app  # noqa: F401  (the bot fixture for all; png for imports)
from tests.pgserver import PgServer, find_bindir
from tests.s3server import s3_server  # noqa: F401  (the session's S3 server, started on demand)

BACKENDS = ("sqlite", "postgresql")

GUILD = 1_000_000_000_000_000_001
OTHER_GUILD = 1_000_000_000_000_000_002
ALICE = 2_000_000_000_000_000_001
BOB = 2_000_000_000_000_000_002
CAROL = 2_000_000_000_000_000_003
MOD = 2_000_000_000_000_000_009
ARTISTS = 3_000_000_000_000_000_001


def _redact_like_veil() -> None:
    """Put Veil's log filter on pytest's capture handlers, as ``setup_logging`` puts it on Veil's
    own handler, so what ``caplog`` holds is what Veil would write."""
    for handler in logging.getLogger().handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)


# pytest installs fresh capture handlers for each phase of a test, before these hooks run.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _redact_like_veil()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _redact_like_veil()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _redact_like_veil()


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): about the SQLite file itself; not run on PostgreSQL")
    config.addinivalue_line(
        "markers", "postgresql_only(reason): a PostgreSQL sample of a test run in full on SQLite")
    config.addinivalue_line(
        "markers", "postgresql: runs on the throwaway PostgreSQL cluster (set by conftest, "
        "never by hand); left out of `make test-fast`, run by `make test`")


# Fixtures that put a test on the PostgreSQL cluster whenever it asks for them.
_ON_POSTGRESQL = frozenset({"pg_server", "database_url_pg"})


# tryfirst: before the -m selection (another implementation of this hook) reads the markers.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that runs on PostgreSQL ``postgresql``: the ``[postgresql]`` variant of a
    test over both backends, and any test that asks for the cluster itself. `make test-fast`
    leaves them out (about a third of its CPU: each sends its work to the cluster's backends
    as well); `make test`, which CI runs, keeps them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_pg = callspec is not None and callspec.params.get("backend") == "postgresql"
        if on_pg or _ON_POSTGRESQL.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgresql)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = BACKENDS
        if metafunc.definition.get_closest_marker("sqlite_only"):
            backends = ("sqlite",)
        elif metafunc.definition.get_closest_marker("postgresql_only"):
            backends = ("postgresql",)
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the whole session, started on first use."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("VEIL_REQUIRE_POSTGRES") == "1":  # CI: installed by .ci/run
            pytest.fail("VEIL_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries found")
        pytest.skip("no PostgreSQL server binaries (initdb, postgres) on PATH or in "
                    "/usr/lib/postgresql/*/bin: install postgresql-15 to run the PostgreSQL half")
    server = PgServer.start(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test's Veil runs on ("sqlite" or "postgresql")."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def database_url(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None on SQLite (the file in data_dir); on PostgreSQL, the URL of a fresh database of its
    own (``database_url_pg``)."""
    if backend == "sqlite":
        yield None
    else:
        async with _fresh_pg_database(request.getfixturevalue("pg_server")) as url:
            yield url


@pytest.fixture
async def database_url_pg(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh PostgreSQL database of this test's own, copied from a migrated template (faster
    than migrating or truncating each time), dropped afterwards."""
    async with _fresh_pg_database(pg_server) as url:
        yield url


@contextlib.asynccontextmanager
async def _fresh_pg_database(server: PgServer) -> AsyncIterator[str]:
    url = await server.create_database()
    try:
        yield url
    finally:
        await server.drop_database(url)


@pytest.fixture
async def at_rest(data_dir: Path, database_url: str | None,
                  request: pytest.FixtureRequest) -> Callable[[], Awaitable[bytes]]:
    """Every byte Veil keeps at rest: the data folder (on SQLite: the database, its WAL) and, on
    PostgreSQL, this test's database files and the WAL segments written since the test began,
    after a CHECKPOINT has written everything out."""
    first_segment = ""
    if database_url is not None:
        conn = await asyncpg.connect(database_url)
        try:
            first_segment = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
        finally:
            await conn.close()

    async def read() -> bytes:
        if database_url is None:
            return _bytes_at_rest(data_dir)
        else:
            server: PgServer = request.getfixturevalue("pg_server")
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("CHECKPOINT")
                oid = await conn.fetchval(
                    "SELECT oid FROM pg_database WHERE datname = current_database()")
            finally:
                await conn.close()
            return _bytes_at_rest(data_dir, server.root / "data", oid, first_segment)
    return read


def _bytes_at_rest(data_dir: Path, cluster: Path | None = None, oid: int = 0,
                   first_segment: str = "") -> bytes:
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    if cluster is not None:
        files += sorted(p for p in (cluster / "base" / str(oid)).iterdir() if p.is_file())
        files += sorted(p for p in (cluster / "pg_wal").iterdir()
                        if p.is_file() and len(p.name) == 24 and p.name >= first_segment)
    return b"".join(p.read_bytes() for p in files)


@pytest.fixture
async def veil(data_dir: Path, clock: FakeClock, database_url: str | None,
               blob_options: dict[str, Any]) -> AsyncIterator[Veil]:  # noqa: F811
    v = await Veil.open(data_dir, clock=clock, database_url=database_url, **blob_options)
    try:
        yield v
    finally:
        await v.close()


def viewer(user_id: int, *roles: int, guild: int | None = GUILD, mod: bool = False) -> Viewer:
    return Viewer(user_id, frozenset(roles), guild, mod)
