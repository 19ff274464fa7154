"""The few SQL fragments that differ between SQLite and PostgreSQL, chosen by ``db.dialect``.

Everything else in the core's SQL is one text for both databases.
"""

from __future__ import annotations

from db.port import Dialect


def ids_in(param: str, dialect: Dialect) -> str:
    """A SELECT of the integer ids (one column, ``value``) in a JSON array parameter
    (``json.dumps([1, 2])``): the role ids a viewer holds on this request. Use it as
    ``x IN (<fragment>)`` or ``FROM (<fragment>) AS alias``."""
    if dialect == "postgresql":
        return (f"SELECT CAST(value AS bigint) AS value"
                f" FROM jsonb_array_elements_text(CAST({param} AS jsonb))")
    return f"SELECT value FROM json_each({param})"


def greatest(a: str, b: str, dialect: Dialect) -> str:
    """The larger of two values (SQLite's two-argument max() is PostgreSQL's greatest())."""
    if dialect == "postgresql":
        return f"greatest({a}, {b})"
    return f"max({a}, {b})"
