"""Who runs on a store: every Veil process holds a shared claim on its database for as long as
it runs, and maintenance that must have the store to itself (``migrate-storage``) holds the
exclusive one. So a copy cannot start while a process could still write on either side, and no
process can start (or write) while a copy runs.

A claim is a lock that the kernel or the database server drops when the process ends, however it
ends (SIGKILL, an OOM kill, a power cut): a crashed process leaves nothing behind to clean up,
and no clock has to guess whether a silent process is dead or only slow.

- SQLite: ``flock`` on a file beside the database (``veil.db.lock``). Every process on one SQLite
  file runs on one machine (SQLite's own locking needs that), so one kernel sees every holder.
- PostgreSQL: a session-level advisory lock on a connection of its own, open for the process's
  whole life; the server drops the lock with the connection. Shards and link servers on other
  machines hold it just the same.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Protocol

import asyncpg

from db import is_database_url

log = logging.getLogger(__name__)

# Advisory lock key (64-bit, arbitrary but fixed), beside db.postgres's writer and migration keys.
PRESENCE_LOCK_KEY = 0x5665696C_50524553  # "VeilPRES"


class Claim(Protocol):
    async def release(self) -> None: ...


def lock_file(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class _FileClaim:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class _PostgresClaim:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        conn.add_termination_listener(self._lost)

    @staticmethod
    def _lost(_conn: object) -> None:
        # Only a server restart or a cut connection ends it: a migrate-storage started from now
        # on would no longer see this process. Said loudly; the process itself keeps serving.
        log.error("Lost the connection that marks this process as running on the database: "
                  "restart this process before running migrate-storage.")

    async def release(self) -> None:
        if not self._conn.is_closed():
            self._conn.remove_termination_listener(self._lost)
            await self._conn.close()  # the server drops the advisory lock with the session


async def claim_database(database: str | Path, *, exclusive: bool) -> Claim | None:
    """Claim ``database`` (a ``postgresql://`` URL or a SQLite file's path) for this process:
    shared (a running process) or exclusive (maintenance). None if a conflicting claim is held:
    for shared, maintenance is running; for exclusive, some process is. Raises OSError (or
    asyncpg's errors) where the store cannot be reached at all."""
    if is_database_url(database):
        return await _claim_postgres(str(database), exclusive)
    path = lock_file(Path(database))
    os.makedirs(path.parent, exist_ok=True)  # a first run into a new folder (a copy's target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return _FileClaim(fd)


def _name() -> str:
    return f"veil pid {os.getpid()} on {socket.gethostname()}"[:63]


async def _claim_postgres(url: str, exclusive: bool) -> Claim | None:
    conn = await asyncpg.connect(url, server_settings={"application_name": _name()})
    try:
        taken = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1)" if exclusive
            else "SELECT pg_try_advisory_lock_shared($1)", PRESENCE_LOCK_KEY)
    except BaseException:
        await conn.close()
        raise
    if not taken:
        await conn.close()
        return None
    return _PostgresClaim(conn)


async def holders(database: str | Path) -> list[str]:
    """The processes running on ``database`` as far as they can be named (best effort, for an
    operator's message): PostgreSQL names each session; on SQLite, Linux's /proc/locks gives
    the process ids holding the lock file, and /proc their command lines."""
    if is_database_url(database):
        conn = await asyncpg.connect(str(database))
        try:
            rows = await conn.fetch(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                " AND l.database = (SELECT oid FROM pg_database"
                "                   WHERE datname = current_database())"
                " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1"
                " ORDER BY a.backend_start", PRESENCE_LOCK_KEY)
        finally:
            await conn.close()
        return [str(r[0]).removeprefix("veil ") for r in rows]
    return _file_holders(lock_file(Path(database)))


def _file_holders(path: Path) -> list[str]:
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as table:
            lines = table.read().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF" (a waiter's line: "1: -> FLOCK ...").
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        pid, where = fields[4], fields[5]
        if where.rsplit(":", 1)[-1] == str(inode) and pid.isdigit() and int(pid) != os.getpid():
            pids.append(int(pid))
    return [_describe(pid) for pid in sorted(set(pids))]


def _describe(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if words and os.path.basename(words[0]).startswith("python"):
        words[0] = "python"
    command = " ".join(words)[:60]
    return f"pid {pid}: {command}" if command else f"pid {pid}"
