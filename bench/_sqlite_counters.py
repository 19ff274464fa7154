"""SQLite's own counters for one statement: B-tree pages visited, pages read into the page cache,
and virtual-machine steps, through the C API (ctypes on the libsqlite3 the stdlib module links).

CPU time on a machine shared by many processes moves by tens of percent from run to run; these
counts do not move at all, so a change to a query can be judged by them. Linux only (where
``libsqlite3.so.0`` is found); ``Counter.open`` returns None elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path

_ROW, _DONE = 100, 101
_OPEN_READONLY, _OPEN_URI = 0x1, 0x40
_STMTSTATUS_VM_STEP = 4
_DBSTATUS_CACHE_HIT, _DBSTATUS_CACHE_MISS = 7, 8
_TRANSIENT = ctypes.c_void_p(-1)


@dataclass(frozen=True)
class Counts:
    first_column: list[int]  # the statement's first column, to compare two texts' answers
    vm_steps: int
    pages_visited: int  # page-cache hits and misses: every B-tree page the statement touched
    pages_read: int  # misses alone: pages copied in from the file (the OS page cache)


def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("sqlite3") or "libsqlite3.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    pi = ctypes.POINTER(ctypes.c_int)
    signatures = {
        "sqlite3_open_v2": ([s, ctypes.POINTER(p), i, p], i),
        "sqlite3_exec": ([p, s, p, p, p], i),
        "sqlite3_prepare_v2": ([p, s, i, ctypes.POINTER(p), p], i),
        "sqlite3_bind_parameter_index": ([p, s], i),
        "sqlite3_bind_int64": ([p, i, ctypes.c_int64], i),
        "sqlite3_bind_double": ([p, i, ctypes.c_double], i),
        "sqlite3_bind_text": ([p, i, s, i, p], i),
        "sqlite3_step": ([p], i),
        "sqlite3_reset": ([p], i),
        "sqlite3_column_int64": ([p, i], ctypes.c_int64),
        "sqlite3_stmt_status": ([p, i, i], i),
        "sqlite3_db_status": ([p, i, pi, pi, i], i),
        "sqlite3_errmsg": ([p], s),
        "sqlite3_finalize": ([p], i),
        "sqlite3_close": ([p], i),
    }
    for fname, (args, result) in signatures.items():
        fn = getattr(lib, fname)
        fn.argtypes, fn.restype = args, result
    return lib


class Counter:
    """A read-only connection of its own, with the page cache size the reader uses."""

    def __init__(self, lib: ctypes.CDLL, db: ctypes.c_void_p) -> None:
        self._lib, self._db = lib, db
        self._statements: dict[str, ctypes.c_void_p] = {}

    @classmethod
    def open(cls, path: Path, cache_kib: int) -> Counter | None:
        lib = _library()
        if lib is None:
            return None
        db = ctypes.c_void_p()
        if lib.sqlite3_open_v2(f"file:{path}?mode=ro".encode(), ctypes.byref(db),
                               _OPEN_READONLY | _OPEN_URI, None):
            return None
        lib.sqlite3_exec(db, f"PRAGMA cache_size = -{cache_kib}".encode(), None, None, None)
        return cls(lib, db)

    def _status(self, op: int) -> int:
        value, high = ctypes.c_int(), ctypes.c_int()
        self._lib.sqlite3_db_status(self._db, op, ctypes.byref(value), ctypes.byref(high), 1)
        return value.value

    def run(self, sql: str, params: dict[str, object]) -> Counts:
        lib = self._lib
        stmt = self._statements.get(sql)
        if stmt is None:
            stmt = ctypes.c_void_p()
            if lib.sqlite3_prepare_v2(self._db, sql.encode(), -1, ctypes.byref(stmt), None):
                raise RuntimeError(lib.sqlite3_errmsg(self._db).decode())
            self._statements[sql] = stmt
        for name, value in params.items():
            index = lib.sqlite3_bind_parameter_index(stmt, f":{name}".encode())
            if not index:
                continue
            if isinstance(value, int):
                lib.sqlite3_bind_int64(stmt, index, value)
            elif isinstance(value, float):
                lib.sqlite3_bind_double(stmt, index, value)
            else:
                lib.sqlite3_bind_text(stmt, index, str(value).encode(), -1, _TRANSIENT)
        self._status(_DBSTATUS_CACHE_HIT), self._status(_DBSTATUS_CACHE_MISS)  # reset both
        lib.sqlite3_stmt_status(stmt, _STMTSTATUS_VM_STEP, 1)
        first = []
        while (rc := lib.sqlite3_step(stmt)) == _ROW:
            first.append(lib.sqlite3_column_int64(stmt, 0))
        steps = lib.sqlite3_stmt_status(stmt, _STMTSTATUS_VM_STEP, 1)
        hits, misses = self._status(_DBSTATUS_CACHE_HIT), self._status(_DBSTATUS_CACHE_MISS)
        lib.sqlite3_reset(stmt)
        if rc != _DONE:
            raise RuntimeError(lib.sqlite3_errmsg(self._db).decode())
        return Counts(first, steps, hits + misses, misses)

    def close(self) -> None:
        for stmt in self._statements.values():
            self._lib.sqlite3_finalize(stmt)
        self._lib.sqlite3_close(self._db)
