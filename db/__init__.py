"""Schema, migrations (plain numbered .sql files) and the SQLite adapter (stdlib sqlite3)."""

from db.database import Database, Row, Transaction

__all__ = ["Database", "Row", "Transaction"]
