"""Mapping a row to a record alone (issue 17): CPU time per record, with the ways it replaced
and the way it avoids measured side by side on the same rows.

The rows are real ``sqlite3.Row`` objects of the core's own queries (an image row, the
view-decision row of ``Context.view_facts``, a link row) on a small database made here. Each
case maps the same 2,000 rows; the cases run interleaved (order rotated each round), and the
figure is the median over the rounds of the calling thread's CPU time (``time.thread_time``)
per record. "by name" reads every field by column name, the way that would need no
positions: the reason the declarations give positions instead.

    python -m bench.rows [--quick]
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench._common import Figure, Report, header, median, run_main
from bot.core.context import IMAGE, _ViewFacts
from bot.core.links import SHARE_LINK
from bot.core.models import ImageRecord, ShareLink

ROWS = 2000


def _images(conn: sqlite3.Connection) -> None:
    conn.executescript("""
        CREATE TABLE images (id INTEGER PRIMARY KEY, public_id TEXT, owner_id INTEGER,
            guild_id INTEGER, visibility TEXT, source TEXT, created_at REAL, expires_at REAL,
            byte_size INTEGER, format TEXT, width INTEGER, height INTEGER, blob_name TEXT);
        CREATE TABLE links (id INTEGER PRIMARY KEY, public_id TEXT, image_id INTEGER,
            created_at REAL, expires_at REAL, max_views INTEGER, views INTEGER, revoked_at REAL,
            allow_download INTEGER, watermark INTEGER, password_hash BLOB,
            password_failures INTEGER);
    """)
    conn.executemany(
        "INSERT INTO images VALUES (?, ?, ?, ?, 'private', 'upload', ?, NULL, 1000, 'PNG', 768,"
        " 768, ?)", [(n, f"pub{n:07d}", 10**18 + n % 97, 10**18, 1.7e9 + n, f"blob{n}")
                     for n in range(1, ROWS + 1)])
    conn.executemany(
        "INSERT INTO links VALUES (?, ?, ?, 1.7e9, 1.8e9, NULL, 0, NULL, 1, 0, NULL, 0)",
        [(n, f"lnk{n:07d}", n) for n in range(1, ROWS + 1)])


# The mappings the declarations replaced, as they were in bot/core (main before issue 17).
def _old_image(row: Any) -> ImageRecord:
    return ImageRecord(*(row[i] for i in range(13)))


def _old_link(row: Any) -> ShareLink:
    return ShareLink(row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), bool(row[8]),
                     bool(row[9]), bool(row[11]), row[12])


def _by_name(record: Any) -> Callable[[Any], Any]:
    fields = [(f.name, f.type in ("bool", bool)) for f in dataclasses.fields(record)]

    def read(row: Any) -> Any:
        return record(**{n: bool(row[n]) if b else row[n] for n, b in fields})
    return read


def _per_record(cases: dict[str, Callable[[Sequence[Any]], object]], rows: Sequence[Any],
                rounds: int) -> dict[str, float]:
    """Median CPU µs per record of each case, interleaved and rotated."""
    names = list(cases)
    spent: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.thread_time()
            cases[name](rows)
            spent[name].append((time.thread_time() - start) / len(rows) * 1e6)
    return {n: median(v) for n, v in spent.items()}


def _loop(mapping: Callable[[Any], object]) -> Callable[[Sequence[Any]], object]:
    def run(rows: Sequence[Any]) -> object:
        for row in rows:
            mapping(row)
        return None
    return run


def main(args: Any) -> Report:
    header("row to record mapping alone (sqlite3.Row)")
    report = Report("rows")
    rounds = 21 if args.quick else 101
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    _images(conn)

    images = conn.execute(f"SELECT {IMAGE.columns} FROM images").fetchall()
    # The view-decision row's layout: an image, then the grant and the report (no grants here).
    assert _ViewFacts.width == len(IMAGE) + 2
    facts = conn.execute(f"SELECT {IMAGE.on('i').columns}, NULL, 7 FROM images i").fetchall()
    old_links = conn.execute(
        "SELECT l.id, l.public_id, i.public_id, l.created_at, l.expires_at, l.max_views,"
        " l.views, l.revoked_at IS NOT NULL, l.allow_download, l.watermark, NULL,"
        " l.password_hash IS NOT NULL, l.password_failures"
        " FROM links l JOIN images i ON i.id = l.image_id").fetchall()
    link_at_0 = conn.execute(f"SELECT {SHARE_LINK.columns} FROM links l"
                             " JOIN images i ON i.id = l.image_id").fetchall()
    assert [IMAGE(r) for r in images] == [_old_image(r) for r in images]
    assert [SHARE_LINK(r) for r in link_at_0] == [_old_link(r) for r in old_links]

    named = _by_name(ImageRecord)
    image_cases = {"before": _loop(_old_image), "now": _loop(IMAGE), "by name": _loop(named)}
    got = _per_record(image_cases, images, rounds)
    facts_got = _per_record({
        "before": _loop(lambda r: (_old_image(r), r[13], r[14])),
        "now": _loop(lambda r: (_ViewFacts.image(r), _ViewFacts.grant(r), _ViewFacts.report(r))),
    }, facts, rounds)
    link_named = _by_name(ShareLink)
    link_got = _per_record({"before": _loop(_old_link), "now": _loop(SHARE_LINK)},
                           old_links, rounds)
    link_got["by name"] = _per_record({"by name": _loop(link_named)}, conn.execute(
        "SELECT l.public_id, i.public_id AS image_public_id, l.created_at, l.expires_at,"
        " l.max_views, l.views, l.revoked_at IS NOT NULL AS revoked, l.allow_download,"
        " l.watermark, l.password_hash IS NOT NULL AS has_password, l.password_failures"
        " FROM links l JOIN images i ON i.id = l.image_id").fetchall(), rounds)["by name"]

    for what, figures in (("image row", got), ("view-decision row", facts_got),
                          ("link row", link_got)):
        detail = ", ".join(f"{k} {v:.2f} µs" for k, v in figures.items())
        report.add(Figure(f"{what} to record, CPU per record now / before",
                          figures["now"] / figures["before"], 1.0, "<=", detail=f"({detail})"))
        if "by name" in figures:
            report.add(Figure(f"{what} to record, CPU now / by name",
                              figures["now"] / figures["by name"], 1.0, "<="))
    return report


if __name__ == "__main__":
    run_main(main, __doc__.splitlines()[0])
