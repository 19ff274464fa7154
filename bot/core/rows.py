"""Which columns a query selects for a record, and how its rows become that record.

A record's columns are declared once: ``Columns(ImageRecord)`` takes the record's fields in their
order, each read from the column of the same name unless the declaration gives another SQL
expression for it. Both the SELECT list (``.columns``, with a table alias from ``.on("i")``)
and the mapping (calling the declaration on a row) come from that one declaration, so nobody
counts offsets by hand. A joined query lines several declarations and single values up in a
``Select`` subclass; each part knows where it starts in the row.

Rows are read by position, at offsets fixed when the module loads: sqlite3.Row and
asyncpg.Record both allow it, and reading a record by column name costs about twice as much,
on the path of every view (``python -m bench.rows``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast

from db.port import Row

R = TypeVar("R")


class Columns(Generic[R]):
    """The columns of one record (a dataclass), in the order of its fields.

    ``sql`` gives the expression for a field that is not simply the column of its name (written
    out in full, alias included); ``omit`` leaves out trailing fields that have defaults and
    are filled another way. A field typed ``bool`` is read with ``bool()``: SQLite answers 0/1.
    """

    def __init__(self, record: type[R], *, alias: str = "", omit: Sequence[str] = (),
                 sql: dict[str, str] | None = None) -> None:
        fields = [f for f in dataclasses.fields(record) if f.init]  # type: ignore[arg-type]
        names = tuple(f.name for f in fields)
        exprs = dict(sql or {})
        unknown = (set(exprs) | set(omit)) - set(names)
        if unknown:
            raise TypeError(f"{record.__name__} has no field {', '.join(sorted(unknown))}")
        kept = len(names) - len(omit)
        if set(names[kept:]) != set(omit) or any(
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                for f in fields[kept:]):
            raise TypeError(f"{record.__name__}: only trailing fields with defaults can be"
                            " omitted")
        self.record = record
        self.alias = alias
        self.omit = tuple(omit)
        self.names = names[:kept]
        self._sql = exprs
        prefix = f"{alias}." if alias else ""
        self.exprs = tuple(exprs.get(n, prefix + n) for n in self.names)
        self.columns = ", ".join(self.exprs)
        self.start = 0
        self.stop = kept
        self._convert = _converter(record, [f.type in ("bool", bool) for f in fields[:kept]])

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Columns({self.record.__name__}: {self.columns} @ {self.start})"

    def on(self, alias: str) -> Columns[R]:
        """The same declaration, its plain columns read from the table called ``alias``."""
        return Columns(self.record, alias=alias, omit=self.omit, sql=self._sql).at(self.start)

    def at(self, start: int) -> Columns[R]:
        """The same declaration, read from ``start`` in a wider row."""
        placed = copy.copy(self)
        placed.start, placed.stop = start, start + len(self.names)
        return placed

    def field(self, name: str) -> Value:
        """One field's column alone, read where it stands in this declaration's row."""
        at = self.names.index(name)
        return Value(self.exprs[at], self.start + at)

    def __call__(self, row: Row | Sequence[Any]) -> R:
        if self._convert is None:
            return self.record(*row[self.start:self.stop])
        return self._convert(row[self.start:self.stop])


def _converter(record: type[R], bools: list[bool]) -> Callable[[Sequence[Any]], R] | None:
    """None when every value goes in as it comes; otherwise a function written out for this
    record (as dataclasses writes ``__init__``), ``bool()`` around the fields typed bool.
    Converting value by value in a loop made a link row a third slower than the hand-written
    mapping it replaced (``python -m bench.rows``)."""
    if not any(bools):
        return None
    args = ", ".join(f"bool(v[{i}])" if b else f"v[{i}]" for i, b in enumerate(bools))
    namespace: dict[str, Any] = {"record": record}
    exec(f"def convert(v):\n    return record({args})\n", namespace)  # noqa: S102
    return cast("Callable[[Sequence[Any]], R]", namespace["convert"])


class Value:
    """One expression in a ``Select``: read as it comes."""

    def __init__(self, sql: str, _start: int = 0) -> None:
        self.columns = sql
        self.start = _start

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"Value({self.columns} @ {self.start})"

    def at(self, start: int) -> Value:
        return Value(self.columns, start)

    def __call__(self, row: Row | Sequence[Any]) -> Any:
        return row[self.start]


class Select:
    """The SELECT list of a joined query, from its parts (``Columns`` and ``Value``
    attributes) in the order the class names them, a base class's parts first. Each part,
    called on a row, reads its own place in it; ``columns`` is the list to put after SELECT.

        class _Facts(Select):
            image = IMAGE.on("i")
            grant = Value("(SELECT ...)")

        row = await db.fetchone(f"SELECT {_Facts.columns} FROM images i ...")
        image, grant = _Facts.image(row), _Facts.grant(row)
    """

    columns: ClassVar[str] = ""
    width: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        at, exprs = cls.width, [cls.columns] if cls.columns else []
        for name, part in list(vars(cls).items()):
            if isinstance(part, Columns | Value):
                placed = part.at(at)
                setattr(cls, name, placed)
                at += len(placed)
                exprs.append(placed.columns)
        cls.columns = ", ".join(exprs)
        cls.width = at
