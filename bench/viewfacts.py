"""The view-facts query alone (issue 12, can-view), through the stdlib sqlite3: CPU time of the
query ``check_view`` runs, with the text it replaced measured side by side on one connection.

bench.access's check probes at 1M images (the owner, a per-image grantee, an all-images
grantee, a role, a group, a stranger), each run through both texts in alternating order, after
a round that warms the 32 MiB page cache (the reader's); both texts must answer the same row.
Beside them, the image lookup alone (the part no grant changes). CPU time of the calling
thread (``time.thread_time``), which on a shared machine does not count waiting for a core.

    python -m bench.viewfacts [--quick]
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict

from bench._common import Figure, Report, header, median, percentile, run_main
from bench._dataset import dataset

# The live-grant part this replaced (main before this round), kept here only as the comparison:
# the viewer's groups listed first, both kinds of grant in one search, sorted for the first.
_OLD_LIVE_GRANT = """
SELECT g.id FROM grants g
WHERE g.owner_id = i.owner_id AND coalesce(g.image_id, 0) IN (0, i.id)
  AND (g.expires_at IS NULL OR g.expires_at > :now)
  AND (   (g.grantee_kind = 'user' AND g.grantee_id = :user)
       OR (g.grantee_kind = 'role' AND g.grantee_id IN (SELECT value FROM json_each(:roles)))
       OR (g.grantee_kind = 'group' AND g.grantee_id IN
              (SELECT group_id FROM group_members WHERE user_id = :user)))
ORDER BY g.image_id IS NULL, g.id
LIMIT 1
"""


def _texts() -> dict[str, str]:
    from bot.core.context import IMAGE, REPORT_IN_FORCE_SQL, view_facts_sql

    columns = IMAGE.on("i").columns
    before = f"""
SELECT {columns},
       CASE WHEN i.owner_id = :user THEN NULL ELSE ({_OLD_LIVE_GRANT}) END,
       CASE WHEN :moderator = 1 THEN ({REPORT_IN_FORCE_SQL} ORDER BY r.id LIMIT 1) END
FROM images i WHERE i.public_id = :public_id
"""
    return {"before": before, "now": view_facts_sql("sqlite"),
            "image alone": f"SELECT {columns} FROM images i WHERE i.public_id = :public_id"}


def measure(report: Report, quick: bool) -> None:
    from bench.access import probes
    from bot.core.context import roles_json

    data = dataset(1.0, log=report.note)
    checks, _ = probes(data, 1.0, 600 if quick else 3000)
    texts = _texts()
    names = list(texts)
    con = sqlite3.connect(f"file:{data / 'veil.db'}?mode=ro", uri=True)
    con.execute("PRAGMA cache_size = -32768")
    now = time.time()
    cpu: dict[str, list[float]] = defaultdict(list)
    by_kind: dict[tuple[str, str], list[float]] = defaultdict(list)
    try:
        for rnd in range(4 if quick else 6):  # round 0 warms the page cache, not counted
            for k, (kind, pid, viewer) in enumerate(checks):
                params = {"public_id": pid, "user": viewer.user_id,
                          "roles": roles_json(viewer.role_ids), "now": now, "moderator": 0}
                rows = {}
                for j in range(len(names)):
                    name = names[(j + k + rnd) % len(names)]
                    start = time.thread_time()
                    cursor = con.execute(texts[name], params)
                    rows[name] = cursor.fetchone()
                    cursor.close()
                    spent = time.thread_time() - start
                    if rnd:
                        cpu[name].append(spent)
                        by_kind[(name, kind)].append(spent)
                if rows["before"] != rows["now"]:
                    raise AssertionError(f"the two texts disagree for {kind} {pid}")
    finally:
        con.close()
    for name in names:
        report.note(f"view-facts SQL ({name}) at 1M: CPU median {median(cpu[name]) * 1e6:.1f} "
                    f"µs, p90 {percentile(cpu[name], 90) * 1e6:.1f} µs, "
                    f"p99 {percentile(cpu[name], 99) * 1e6:.1f} µs")
    kinds = sorted({kind for _, kind in by_kind})
    report.note("median CPU by probe kind (before / now), µs:")
    for kind in kinds:
        report.note(f"    {kind:24s} {median(by_kind[('before', kind)]) * 1e6:6.1f} / "
                    f"{median(by_kind[('now', kind)]) * 1e6:6.1f}")
    report.add(Figure("view-facts SQL at 1M, CPU median now / before",
                      median(cpu["now"]) / median(cpu["before"]), 1.0, "<=",
                      detail=f"({median(cpu['now']) * 1e6:.1f} µs / "
                             f"{median(cpu['before']) * 1e6:.1f} µs)"))
    report.add(Figure("view-facts SQL at 1M, CPU p99 now / before",
                      percentile(cpu["now"], 99) / percentile(cpu["before"], 99), 1.0, "<=",
                      detail=f"({percentile(cpu['now'], 99) * 1e6:.0f} µs / "
                             f"{percentile(cpu['before'], 99) * 1e6:.0f} µs)"))


def main(args) -> Report:
    header("the view-facts query alone, before and now")
    report = Report("viewfacts")
    measure(report, args.quick)
    return report


if __name__ == "__main__":
    run_main(main, __doc__.splitlines()[0])
