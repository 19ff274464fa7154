"""The numbered migration files (plain .sql) each adapter applies: db/migrations for SQLite,
db/migrations_pg for PostgreSQL, the same numbers with the same meaning."""

from __future__ import annotations

import re
from importlib import resources

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files(folder: str = "migrations") -> list[tuple[int, str, str]]:
    """The numbered migrations shipped in ``db/<folder>``, in order: (version, name, sql)."""
    found = []
    for entry in resources.files("db").joinpath(folder).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {[n for _, n, _ in found]}")
    return found
