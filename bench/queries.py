"""The gallery and retention queries alone (issue 12), through the stdlib sqlite3: CPU time of
each, with the query they replaced measured side by side on the same connection.

Gallery: the newest 25 of each probe viewer of bench.access, interleaved (order alternating),
with the same 32 MiB page cache as the reader; both texts must return the same ids. The figure
is CPU time of the calling thread (``time.thread_time``), which on a shared machine, unlike
wall time, does not count waiting for a core; beside it SQLite's own counters of the same
statements on a second connection (B-tree pages visited, pages read from the file, VM steps),
which do not move with the machine's load. Retention: the sweep's query at 1M images with
no policy set, and the resident memory it leaves behind in a reader with that page cache.

    python -m bench.queries [--quick]
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from bench._common import Figure, Report, header, median, percentile, run_main
from bench._dataset import dataset
from bench._sqlite_counters import Counter, Counts

# The texts these replaced (main before issue 12), kept here only as the comparison.
_OLD_GALLERY = """
WITH me (kind, gid) AS (
    SELECT 'user', :user
    UNION ALL SELECT 'role', value FROM json_each(:roles)
    UNION ALL SELECT 'group', group_id FROM group_members WHERE user_id = :user
),
candidates (id, mine) AS (
    SELECT * FROM (SELECT id, 1 FROM images
                   WHERE owner_id = :user AND (expires_at IS NULL OR expires_at > :now)
                   ORDER BY id DESC LIMIT :upto)
    UNION ALL
    SELECT * FROM (SELECT DISTINCT i.id, 0
                   FROM me JOIN grants g ON g.grantee_kind = me.kind AND g.grantee_id = me.gid
                   JOIN images i ON i.id = g.image_id
                   WHERE (g.expires_at IS NULL OR g.expires_at > :now)
                     AND (i.expires_at IS NULL OR i.expires_at > :now)
                   ORDER BY i.id DESC LIMIT :upto)
    UNION ALL
    SELECT * FROM (SELECT DISTINCT i.id, 0
                   FROM me JOIN grants g ON g.grantee_kind = me.kind AND g.grantee_id = me.gid
                        AND g.image_id IS NULL
                   JOIN images i ON i.owner_id = g.owner_id
                   WHERE (g.expires_at IS NULL OR g.expires_at > :now)
                     AND (i.expires_at IS NULL OR i.expires_at > :now)
                   ORDER BY i.id DESC LIMIT :upto)
),
page (id, mine) AS (
    SELECT id, max(mine) FROM candidates GROUP BY id ORDER BY id DESC LIMIT :limit OFFSET :offset
)
SELECT page.id FROM page JOIN images i ON i.id = page.id ORDER BY i.id DESC
"""
_OLD_SWEEP = """
SELECT {columns} FROM images i WHERE i.expires_at IS NOT NULL AND i.expires_at <= :now
UNION SELECT {columns} FROM images i JOIN guild_policy p ON p.guild_id = i.guild_id
WHERE p.retention_days IS NOT NULL AND i.created_at <= :now - p.retention_days * 86400.0
LIMIT :batch
"""
CACHE_KIB = 32768  # db/database.py's reader


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _connect(data: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{data / 'veil.db'}?mode=ro", uri=True)
    con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return con


def gallery(report: Report, quick: bool) -> None:
    from bench.access import probes
    from bot.core.context import roles_json
    from bot.core.images import gallery_sql

    count = 500 if quick else 1500
    cpu: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], list[Counts]] = {}
    for size, scale in (("1M", 1.0), ("10k", 0.01)):
        data = dataset(scale, log=report.note)
        _, viewers = probes(data, scale, count)
        con = _connect(data)
        counter = Counter.open(data / "veil.db", CACHE_KIB)
        now = time.time()
        for rnd in range(3):  # the first round warms the page cache and is not counted
            for _, viewer in viewers:
                params = {"user": viewer.user_id, "roles": roles_json(viewer.role_ids),
                          "now": now, "upto": 26, "limit": 26, "offset": 0}
                texts = [("before", _OLD_GALLERY), ("now", gallery_sql("sqlite"))]
                ids = {}
                for name, sql in (texts if rnd % 2 else texts[::-1]):
                    start = time.thread_time()
                    rows = con.execute(sql, params).fetchall()
                    spent = time.thread_time() - start
                    ids[name] = [r[0] for r in rows]
                    if rnd:
                        cpu.setdefault((size, name), []).append(spent)
                    if rnd and counter is not None:
                        counted = counter.run(sql, params)
                        if counted.first_column != ids[name]:
                            raise AssertionError("the counting connection answered otherwise")
                        counts.setdefault((size, name), []).append(counted)
                if ids["before"] != ids["now"]:
                    raise AssertionError(f"the two gallery texts disagree for {viewer}")
        con.close()
        if counter is not None:
            counter.close()
    for (size, name), values in sorted(cpu.items()):
        report.note(f"gallery SQL {name:6s} at {size}: CPU median {median(values) * 1e6:.0f} µs, "
                    f"p95 {percentile(values, 95) * 1e6:.0f} µs, "
                    f"p99 {percentile(values, 99) * 1e6:.0f} µs")
    for name in ("before", "now"):
        big, small = cpu[("1M", name)], cpu[("10k", name)]
        report.note(f"gallery SQL ({name}), CPU at 1M / at 10k: median "
                    f"{median(big) / median(small):.2f}x, p95 "
                    f"{percentile(big, 95) / percentile(small, 95):.2f}x")
        report.add(Figure(f"gallery SQL ({name}), CPU p99 at 1M / at 10k",
                          percentile(big, 99) / percentile(small, 99), 1.5, "<=",
                          detail=f"({percentile(big, 99) * 1e6:.0f} µs / "
                                 f"{percentile(small, 99) * 1e6:.0f} µs)"))
    for (size, name), runs in sorted(counts.items()):
        visited = [c.pages_visited for c in runs]
        read = [c.pages_read for c in runs]
        steps = [c.vm_steps for c in runs]
        report.note(f"gallery SQL {name:6s} at {size}: B-tree pages visited median "
                    f"{median(visited):.0f}, p99 {percentile(visited, 99):.0f}; read from the file "
                    f"median {median(read):.0f}, p99 {percentile(read, 99):.0f}; VM steps median "
                    f"{median(steps):.0f}, p99 {percentile(steps, 99):.0f}")
    if not counts:
        report.note("(SQLite's counters unavailable: libsqlite3 not found through ctypes)")
    report.add(Figure("gallery SQL at 1M, CPU median now / before",
                      median(cpu[("1M", "now")]) / median(cpu[("1M", "before")]), 1.0, "<="))


def sweep(report: Report) -> None:
    from bot.core.context import IMAGE
    from bot.core.retention import DUE_SQL

    columns = IMAGE.on("i").columns
    data = dataset(1.0, log=report.note)
    for name, sql in (("now", DUE_SQL), ("before", _OLD_SWEEP.format(columns=columns))):
        con = _connect(data)
        rss = _rss_mb()
        start, start_cpu = time.perf_counter(), time.thread_time()
        con.execute(sql, {"now": time.time(), "batch": 1000}).fetchall()
        wall, spent = time.perf_counter() - start, time.thread_time() - start_cpu
        grown = _rss_mb() - rss
        con.close()
        report.note(f"retention query ({name}) at 1M, no policy set: CPU {spent * 1e3:.2f} ms "
                    f"(wall {wall * 1e3:.1f} ms), resident memory +{grown:.1f} MB")
        if name == "now":
            report.add(Figure("retention query at 1M images, CPU", spent * 1e3, 1.0, "<", "ms",
                              detail=f"(resident memory +{grown:.1f} MB)"))


def main(args) -> Report:
    header("the gallery and retention queries alone")
    report = Report("queries")
    sweep(report)
    gallery(report, args.quick)
    return report


if __name__ == "__main__":
    run_main(main, __doc__.splitlines()[0])
