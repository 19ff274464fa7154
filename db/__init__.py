"""Schema, migrations (plain numbered .sql files) and the aiosqlite access layer."""

from db.database import Database, Row, Transaction

__all__ = ["Database", "Row", "Transaction"]
