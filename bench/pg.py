"""The access, gallery and link-fetch benchmarks on PostgreSQL, as ratios to SQLite (issue 13).

Same work as bench.access and bench.link, on both databases in the same run:
  * can-view (``veil.images.check_view``) and the gallery (``veil.images.gallery``): bench.access's
    million-image data set (--quick: its 1/100 twin), copied row for row into a throwaway
    PostgreSQL 15 cluster (tests/pgserver.py, on 127.0.0.1, then VACUUM ANALYZE), probed with
    the same viewers, 3 rounds interleaved; the figure is the median over rounds of each
    round's p99.
  * link fetch (``GET /l/<token>/image``): one image and one link, served by Veil on SQLite and by
    Veil on PostgreSQL (each a process of its own), loaded by wrk as in bench.link.
The cluster runs as a durable server would (fsync on, full-page writes on) with
synchronous_commit off, which is what SQLite's synchronous=NORMAL in WAL mode gives Veil: a
commit is not waited for on disk, a crash loses at most the last moments and never corrupts.
Each PostgreSQL query is a round trip over TCP loopback to another process; SQLite runs in the
bot's own process. EXPLAIN ANALYZE of the three queries on PostgreSQL is printed.

    python -m bench.pg [--quick]
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench._common import CACHE, Figure, Report, header, median, percentile, run_main

COPIED = ("users", "images", "groups", "group_members", "grants")
# Bars: PostgreSQL answers within these multiples of SQLite's figure (p99, or req/s for links).
BAR_CHECK = 5.0
BAR_GALLERY = 5.0
BAR_LINK = 0.5


def start_cluster():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.pgserver import PgServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        return None
    return PgServer.start(bindir, durable=True)


async def copy_dataset(data: Path, url: str, log) -> None:
    """The SQLite data set's rows into a PostgreSQL database migrated by Veil.open, by COPY."""
    import asyncpg

    from bot.core.veil import Veil

    await (await Veil.open(data, database_url=url)).close()  # schema + the same master key id
    started = time.perf_counter()
    src = sqlite3.connect(f"file:{data / 'veil.db'}?mode=ro", uri=True)
    conn = await asyncpg.connect(url)
    try:
        for table in COPIED:
            columns = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            cursor = src.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := cursor.fetchmany(50_000):
                await conn.copy_records_to_table(table, records=rows, columns=columns)
            if "id" in columns:
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                                   f" (SELECT max(id) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
        size = await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()
        src.close()
    log(f"  copied into PostgreSQL in {time.perf_counter() - started:.0f} s "
        f"({size / 1e6:.0f} MB)")


async def explain(url: str, report: Report, check_sample, gallery_sample) -> None:
    import asyncpg

    from bot.core.context import IMAGE, live_grant_sql, roles_json
    from bot.core.images import gallery_sql
    from db.postgres import _bind

    conn = await asyncpg.connect(url)
    try:
        _, pid, viewer = check_sample
        owner, image_id = await conn.fetchrow(
            "SELECT owner_id, id FROM images WHERE public_id = $1", pid)
        queries = [
            ("image by public id", f"SELECT {IMAGE.columns} FROM images WHERE public_id = ?",
             (pid,)),
            ("live grant", live_grant_sql("postgresql"), {
                "owner": owner, "image": image_id, "now": time.time(),
                "user": viewer.user_id, "roles": roles_json(viewer.role_ids)}),
            ("gallery", gallery_sql("postgresql"), {
                "user": gallery_sample[1].user_id,
                "roles": roles_json(gallery_sample[1].role_ids), "now": time.time(),
                "upto": 26, "limit": 26, "offset": 0}),
        ]
        for name, sql, params in queries:
            text, args = _bind(sql, params)
            report.note(f"EXPLAIN ANALYZE on PostgreSQL ({name}):")
            for row in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + text, *args):
                report.note(f"    {row[0]}")
    finally:
        await conn.close()


async def measure_access(report: Report, server, quick: bool) -> None:
    from bench._dataset import dataset
    from bench.access import _all, _time_checks, _time_galleries, probes
    from bot.core.veil import Veil

    rounds = 3
    count = 600 if quick else 3000
    scale = 0.01 if quick else 1.0
    label = "10k" if quick else "1M"
    data = dataset(scale, log=report.note)
    url = server.url("veil_bench")
    import asyncpg

    admin = await asyncpg.connect(server.url())
    await admin.execute("CREATE DATABASE veil_bench")
    await admin.close()
    await copy_dataset(data, url, report.note)
    checks, galleries = probes(data, scale, count)
    # At 1M the gallery's all-images branch takes ~0.4 s on PostgreSQL (its plan is printed
    # below): 200 gallery probes keep the run within minutes.
    galleries = galleries[:600 if quick else 200]
    await explain(url, report, checks[0], galleries[0])
    veils = {"sqlite": await Veil.open(data), "postgresql": await Veil.open(data, database_url=url)}
    p99 = {(b, q): [] for b in veils for q in ("check", "gallery")}
    p50 = {(b, q): [] for b in veils for q in ("check", "gallery")}
    try:
        for veil in veils.values():  # warm caches (page cache, buffers, statement caches)
            await _time_checks(veil, checks)
            await _time_galleries(veil, galleries)
        names = list(veils)
        for r in range(rounds):
            for backend in names[r % 2:] + names[:r % 2]:
                for query, timer, items in (("check", _time_checks, checks),
                                            ("gallery", _time_galleries, galleries)):
                    flat = _all(await timer(veils[backend], items))
                    p99[(backend, query)].append(percentile(flat, 99))
                    p50[(backend, query)].append(median(flat))
    finally:
        for veil in veils.values():
            await veil.close()

    def fig(backend: str, query: str) -> tuple[float, float]:
        return median(p99[(backend, query)]), median(p50[(backend, query)])

    for query, label_q, bar in (("check", "can V see I (check_view)", BAR_CHECK),
                                ("gallery", "gallery (newest 25)", BAR_GALLERY)):
        pg99, pg50 = fig("postgresql", query)
        sq99, sq50 = fig("sqlite", query)
        report.add(Figure(f"{label_q} at {label} images: PostgreSQL p99 / SQLite p99",
                          pg99 / sq99, bar, "<=",
                          detail=f"({pg99 * 1e6:.0f} µs / {sq99 * 1e6:.0f} µs; medians "
                                 f"{pg50 * 1e6:.0f} µs / {sq50 * 1e6:.0f} µs)"))


async def _serve(data: str, url: str) -> None:
    from bench.link import _announce_and_wait
    from bot.core.veil import Veil
    from bot.web import RateLimit, create_app, start_web

    logging.basicConfig(level=logging.WARNING)
    veil = await Veil.open(data, database_url=url or None)
    app = create_app(veil, public_url="http://127.0.0.1", rate_limit=RateLimit(10_000))
    server = await start_web(app, "127.0.0.1", 0)
    await _announce_and_wait(server.port)
    await server.stop()
    await veil.close()


async def _prepare(folder: Path, url: str | None) -> str:
    from bench._images import small_jpeg
    from bot.core.models import Viewer
    from bot.core.veil import Veil

    owner = Viewer(1001)
    async with await Veil.open(folder, database_url=url) as veil:
        image = await veil.images.create(owner.user_id, small_jpeg(), guild_id=None,
                                         source="upload")
        return (await veil.links.create(image.public_id, owner, expires_in=6 * 86400.0)).token


def measure_link(report: Report, server, quick: bool) -> None:
    from bench.link import CONNECTIONS, Server, ensure_tools, interleaved_rounds, wrk

    why = ensure_tools(report)
    if why is not None:
        report.add(Figure("link fetch on PostgreSQL", None, BAR_LINK, ">=", skipped=why))
        return
    runs, seconds = (3, 2) if quick else (5, 5)
    root = Path(tempfile.mkdtemp(prefix="pglink-", dir=CACHE))
    url = server.url("veil_link")

    async def setup() -> dict[str, str]:
        import asyncpg

        admin = await asyncpg.connect(server.url())
        await admin.execute("CREATE DATABASE veil_link")
        await admin.close()
        return {"sqlite": await _prepare(root / "sqlite", None),
                "postgresql": await _prepare(root / "postgresql", url)}

    tokens = asyncio.run(setup())
    py = [sys.executable, "-m", "bench.pg", "--serve"]
    servers = {"sqlite": Server("veil-sqlite", py + [str(root / "sqlite"), ""]),
               "postgresql": Server("veil-postgresql", py + [str(root / "postgresql"), url])}
    try:
        target = {name: f"http://127.0.0.1:{s.port}/l/{tokens[name]}/image"
                  for name, s in servers.items()}
        for name in servers:
            wrk(target[name], 1)
        results = interleaved_rounds(servers, target, runs, seconds)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(root, ignore_errors=True)
    summary = {name: {k: median([r[k] for r in rs]) for k in ("rps", "p99_ms", "cpu_us")}
               for name, rs in results.items()}
    for name, s in summary.items():
        bad = sum(r["non2xx"] for r in results[name])
        report.note(f"link fetch, Veil on {name:10s} {s['rps']:7.0f} req/s, p99 "
                    f"{s['p99_ms']:6.1f} ms, bot CPU {s['cpu_us']:5.0f} µs/request"
                    + (f", NON-2xx: {bad}" if bad else ""))
    pg, sq = summary["postgresql"], summary["sqlite"]
    report.add(Figure(f"link fetch at {CONNECTIONS} connections: PostgreSQL req/s / SQLite req/s",
                      pg["rps"] / sq["rps"], BAR_LINK, ">=",
                      detail=f"(p99 {pg['p99_ms']:.1f} ms / {sq['p99_ms']:.1f} ms)"))


def main(args) -> Report:
    header("access, gallery and link fetch: PostgreSQL against SQLite")
    logging.getLogger("bot.core.veil").setLevel(logging.ERROR)
    report = Report("pg")
    server = start_cluster()
    if server is None:
        report.add(Figure("PostgreSQL benchmarks", None, 1.0, "<=",
                          skipped="no PostgreSQL server binaries (apt-get install postgresql-15)"))
        return report
    try:
        asyncio.run(measure_access(report, server, args.quick))
        measure_link(report, server, args.quick)
    finally:
        server.stop()
    return report


def _extra(parser) -> None:
    parser.add_argument("--serve", nargs="+", help="(internal) run Veil's link server")


if __name__ == "__main__":
    if "--serve" in sys.argv:
        data, url = sys.argv[sys.argv.index("--serve") + 1:][:2]
        asyncio.run(_serve(data, url))
        sys.exit(0)
    run_main(main, __doc__.splitlines()[0], _extra)
