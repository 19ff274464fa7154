"""The SQLite adapter: connections, pragmas, migrations and transactions.

Statements reach SQLite through the stdlib ``sqlite3`` module, mostly on the event loop's own
thread: a short indexed statement costs a few microseconds, a trip to a worker thread and back
about a hundred (issue 12 measured ten such trips per link request). So:

* Reads outside a transaction run on the loop thread on a reader connection, with a time budget
  (``LOOP_BUDGET_S``) enforced by SQLite's progress handler. A read that runs past it is
  interrupted (a read-only statement changes nothing, so nothing is lost) and runs again on a
  thread with its own connection; so does one that meets a lock (``SQLITE_BUSY``). A long
  listing therefore blocks the loop for at most the budget, and a short one costs its SQL.
* A write transaction holds an asyncio lock from BEGIN to COMMIT (no other coroutine's
  statements get into it, whatever it awaits meanwhile) and runs its statements on the loop
  thread on the writer connection. ``BEGIN IMMEDIATE`` is tried without waiting
  (``busy_timeout`` 0 on that connection): when another process holds the write lock, the
  coroutine sleeps and tries again with backoff, so a foreign writer never blocks the loop.
  A write statement that ran longer than the budget (or is marked ``OFFLOAD``) runs on the
  writer's thread from then on; a transaction that keeps the loop busy gives it a turn between
  statements.
* The WAL is checkpointed off the loop: automatic checkpoints (which fsync inside the COMMIT
  that crosses the threshold) are turned off on the writer, and a passive checkpoint runs on a
  thread every ``CHECKPOINT_EVERY`` commits.

Readers never see a transaction that is still open (they use another connection), and every
read is a statement of its own whose cursor is finished before it returns, so a read right
after a commit sees it (no old snapshot kept alive: a revoked grant is never honoured again).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from db.migrationfiles import migration_files
from db.port import Dialect

Row = sqlite3.Row
Params = Sequence[Any] | dict[str, Any]
T = TypeVar("T")

# A statement on the loop thread runs at most this long; past it, it continues on a thread.
# Checked by SQLite's progress handler every _PROGRESS_STEPS virtual-machine instructions
# (a few microseconds each batch), so an indexed lookup never reaches the check's cost twice.
LOOP_BUDGET_S = 0.002
_PROGRESS_STEPS = 2000
# A transaction that has kept the loop for this long lets it turn before its next statement.
PACE_S = 0.005
# Waiting for another process's write lock: the same five seconds the old busy_timeout gave.
BUSY_TIMEOUT_S = 5.0
CHECKPOINT_EVERY = 100
LONG_AFTER = 3
# How many statement texts the writer remembers as read or write before starting over.
_KNOWN_STATEMENTS = 1024
# Marks a statement known to be long (one that may scan a large table): it runs on the
# writer's thread. A comment, so the same text is valid on every database.
OFFLOAD = "/* offload */ "

# The reader keeps a larger page cache (32 MiB): gallery queries over a large library read many
# pages. No mmap: mapped pages count in the bot's resident size, which has its own budget.
READER_PRAGMAS = (
    "PRAGMA cache_size = -32768",
)

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",
    "PRAGMA synchronous = NORMAL",
)


def _connect(path: Path, *, busy_ms: int, extra: tuple[str, ...] = ()) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           cached_statements=256)
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS + extra:
        conn.execute(pragma)
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return conn


def _is(exc: sqlite3.Error, code: int) -> bool:
    # Extended codes (SQLITE_BUSY_RECOVERY, SQLITE_BUSY_SNAPSHOT...) carry the primary code in
    # their low byte.
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == code


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


def _rows(conn: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    return conn.execute(sql, params).fetchall()


def _first(conn: sqlite3.Connection, sql: str, params: Params) -> Row | None:
    cur = conn.execute(sql, params)
    try:
        row: Row | None = cur.fetchone()
    finally:
        cur.close()  # resets the statement: no read snapshot outlives the call
    return row


class _Budget:
    """The progress handler of a connection used on the loop thread: interrupts a statement
    once the loop has spent ``LOOP_BUDGET_S`` on it, while ``armed``."""

    def __init__(self) -> None:
        self.deadline = float("inf")

    def __call__(self) -> int:
        return 1 if time.perf_counter() > self.deadline else 0

    def arm(self) -> None:
        self.deadline = time.perf_counter() + LOOP_BUDGET_S

    def disarm(self) -> None:
        self.deadline = float("inf")


class _Pace:
    """Whether the loop has turned lately: a statement that finds it has not for ``PACE_S``
    yields once first, so many short statements in a row do not add up to a long block."""

    def __init__(self) -> None:
        self._pending = False
        self._since = 0.0

    def _turned(self) -> None:
        self._pending = False

    def due(self) -> bool:
        """Whether the caller should let the loop turn (``await asyncio.sleep(0)``) before its
        statement. A plain function: the statement paths call it without making a coroutine."""
        if not self._pending:
            self._pending = True
            self._since = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._turned)
            return False
        return time.perf_counter() - self._since > PACE_S

    async def step(self) -> None:
        if self.due():
            await asyncio.sleep(0)


class Database:
    """One SQLite file. Open with ``await Database.open(path)``; close with ``await db.close()``."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection,
                 far_reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader  # on the loop thread only
        self._far_reader = far_reader  # on _far_thread only: reads past the budget, checkpoints
        self._reader_budget = _Budget()
        self._writer_budget = _Budget()
        reader.set_progress_handler(self._reader_budget, _PROGRESS_STEPS)
        writer.set_progress_handler(self._writer_budget, _PROGRESS_STEPS)
        self._write_lock = asyncio.Lock()
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="veil-db-writer")
        self._far_thread = ThreadPoolExecutor(1, thread_name_prefix="veil-db-reader")
        # The last job handed to the writer's thread: nothing else touches the writer until
        # it is done (a cancelled await leaves the job running there).
        self._writer_job: Future[Any] | None = None
        self._long: set[str] = set()  # write statements seen to run past the budget
        self._slow_runs: dict[str, int] = {}  # how many times in a row they did
        self._reads: dict[str, bool] = {}  # statement text -> read-only (SELECT)
        self._pace = _Pace()
        self._commits = 0
        self._checkpointing = False
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> Database:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return await asyncio.to_thread(cls._open_sync, path)

    @classmethod
    def _open_sync(cls, path: Path) -> Database:
        # Migrations run once, off the loop, waiting on other processes as long as they need.
        writer = _connect(path, busy_ms=int(BUSY_TIMEOUT_S * 1000))
        opened = [writer]
        try:
            _migrate(writer)
            writer.execute("PRAGMA busy_timeout = 0")
            writer.execute("PRAGMA wal_autocheckpoint = 0")
            reader = _connect(path, busy_ms=0, extra=READER_PRAGMAS)
            opened.append(reader)
            far_reader = _connect(path, busy_ms=int(BUSY_TIMEOUT_S * 1000))
            opened.append(far_reader)
        except BaseException:
            for conn in opened:
                conn.close()
            raise
        return cls(path, writer, reader, far_reader)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._writer_idle()
        # Closing the last connection checkpoints the WAL (an fsync): not on the loop.
        await self._on_far_thread(self._close_sync)
        self._writer_thread.shutdown(wait=False)
        self._far_thread.shutdown(wait=False)

    def _close_sync(self) -> None:
        self._reader.close()
        self._writer.close()
        self._far_reader.close()

    async def schema_version(self) -> int:
        return int(await self.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))

    # Reads ------------------------------------------------------------------------------------

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._read(_rows, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._read(_first, sql, params)

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def _read(self, run: Callable[[sqlite3.Connection, str, Params], T], sql: str,
                    params: Params) -> T:
        if self._pace.due():
            await asyncio.sleep(0)
        self._reader_budget.arm()
        try:
            return run(self._reader, sql, params)
        except sqlite3.OperationalError as exc:
            if not (_is(exc, sqlite3.SQLITE_INTERRUPT) or _is(exc, sqlite3.SQLITE_BUSY)):
                raise
        finally:
            self._reader_budget.disarm()
        # Past the budget, or another connection holds a lock a reader must wait for (WAL
        # recovery, a truncating checkpoint): again, on a thread that may wait.
        return await self._on_far_thread(run, self._far_reader, sql, params)

    async def _on_far_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._far_thread, fn, *args)

    # Writes -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """An IMMEDIATE transaction on the writer; commits on success, rolls back on error."""
        async with self._write_lock:
            await self._writer_idle()
            await self._begin()
            try:
                yield Transaction(self)
                await self._writer_idle()
                self._writer.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        self._committed()

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE without ever blocking the loop: another process's write lock is
        waited for by sleeping between attempts. A cancellation while waiting leaves no
        transaction open (every attempt either took the lock or failed at once)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.0005
        while True:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is(exc, sqlite3.SQLITE_BUSY) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _rollback(self) -> None:
        job = self._writer_job
        if job is not None and not job.done():
            # A statement still runs on the writer's thread (its await was cancelled): the
            # ROLLBACK queues behind it there, and the next transaction waits for both.
            self._writer_job = self._writer_thread.submit(self._rollback_sync)
        else:
            self._rollback_sync()

    def _rollback_sync(self) -> None:
        # A failed COMMIT or statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.OperationalError):
            self._writer.execute("ROLLBACK")

    async def _writer_idle(self) -> None:
        job = self._writer_job
        if job is not None and not job.done():
            await asyncio.wrap_future(job)

    async def _on_writer_thread(self, fn: Callable[..., T], *args: Any) -> T:
        self._writer_budget.disarm()
        job = self._writer_thread.submit(fn, *args)
        self._writer_job = job
        return await asyncio.wrap_future(job)

    def _committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._commits = 0
            self._checkpointing = True
            self._far_thread.submit(self._passive_checkpoint)

    def _passive_checkpoint(self) -> None:
        # PASSIVE copies what no reader still needs and never waits for a lock; the database
        # file's fsync happens here, off the loop, instead of inside some request's COMMIT.
        try:
            self._far_reader.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # a checkpoint that cannot run now runs after the next commits
        finally:
            self._checkpointing = False

    async def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, so deleted pages leave no copy there."""
        async with self._write_lock:
            await self._writer_idle()
            await self._on_writer_thread(_checkpoint_truncate, self._writer)


def _checkpoint_truncate(conn: sqlite3.Connection) -> None:
    # TRUNCATE waits for readers through the busy handler: only here, on the writer's thread.
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


class Transaction:
    """The writer connection inside an open transaction (the write lock held)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn = db._writer

    async def _run(self, run: Callable[[sqlite3.Connection, str, Params], T], sql: str,
                   params: Params) -> T:
        db = self._db
        # The checks below are inlined (no coroutine made per statement): a view count runs
        # two statements per fetch, and each await of a coroutine costs more than the check.
        job = db._writer_job
        if job is not None and not job.done():
            await asyncio.wrap_future(job)
        if db._pace.due():
            await asyncio.sleep(0)
        if sql in db._long or sql.startswith(OFFLOAD):
            return await db._on_writer_thread(run, self._conn, sql, params)
        reads = db._reads.get(sql)
        if reads is None:
            if len(db._reads) >= _KNOWN_STATEMENTS:  # texts built with varying lists
                db._reads.clear()
            reads = db._reads[sql] = _is_read(sql)
        if reads:
            # A read-only statement interrupted by the budget leaves the transaction as it was
            # (SQLite rolls back only writes on an interrupt), so it can simply run again.
            db._writer_budget.arm()
            try:
                return run(self._conn, sql, params)
            except sqlite3.OperationalError as exc:
                if not _is(exc, sqlite3.SQLITE_INTERRUPT):
                    raise
            finally:
                db._writer_budget.disarm()
            return await db._on_writer_thread(run, self._conn, sql, params)
        # A write cannot be interrupted without losing the whole transaction: it runs to the
        # end here, and if it took long LONG_AFTER times in a row, its next runs go to the
        # thread. In a row: on a busy machine any statement can lose the core for a while,
        # which says nothing about the statement (measured: once was enough to send every
        # write there). The clock, not this thread's CPU time: reading that is a system call.
        started = time.perf_counter()
        try:
            return run(self._conn, sql, params)
        finally:
            if time.perf_counter() - started > LOOP_BUDGET_S:
                seen = db._slow_runs[sql] = db._slow_runs.get(sql, 0) + 1
                if seen >= LONG_AFTER:
                    db._long.add(sql)
            elif sql in db._slow_runs:
                del db._slow_runs[sql]

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._run(_rows, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        return await self._run(_first, sql, params)

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        return await self._run(_rowcount, sql, params)

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run one INSERT; returns the new row's id."""
        return await self._run(_lastrowid, sql, params)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        db = self._db
        await db._writer_idle()
        await db._pace.step()
        if len(rows) > 64 or sql in db._long:
            await db._on_writer_thread(_many, self._conn, sql, rows)
        else:
            _many(self._conn, sql, rows)


def _rowcount(conn: sqlite3.Connection, sql: str, params: Params) -> int:
    cur = conn.execute(sql, params)
    try:
        return cur.rowcount
    finally:
        cur.close()


def _lastrowid(conn: sqlite3.Connection, sql: str, params: Params) -> int:
    cur = conn.execute(sql, params)
    try:
        if cur.lastrowid is None:  # sqlite3 sets it after every successful INSERT
            raise RuntimeError("not an INSERT: no row id")
        return cur.lastrowid
    finally:
        cur.close()


def _many(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    conn.executemany(sql, rows).close()


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
    for version, name, sql in migration_files():
        if version in applied:
            continue
        # One transaction per migration: a failing file leaves the schema as it was.
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Another process starting at the same moment may have applied it while we
            # waited for the write lock: the lock is the migration lock.
            if conn.execute("SELECT 1 FROM schema_version WHERE version = ?",
                            (version,)).fetchone() is not None:
                conn.execute("ROLLBACK")
                continue
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("ROLLBACK")
            raise


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
