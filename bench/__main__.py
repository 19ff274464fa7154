"""Run every benchmark, each in its own process, then print every figure against its bar.

    python -m bench [--quick] [--only ingest,access,...]      (make bench)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench._common import RESULTS, ROOT, header

# Cheapest first; access builds the cached million-image database that memory reuses.
BENCHMARKS = ("rows", "ingest", "uploads", "access", "queries", "memory", "link", "interaction",
              "export", "pg")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--only", default="", help="comma-separated subset of: "
                        + ", ".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or b in args.only.split(",")]
    header("Veil benchmarks: " + ", ".join(chosen))
    started = time.perf_counter()
    failed = []
    for name in chosen:
        print(f"\n--- python -m bench.{name}{' --quick' if args.quick else ''}", flush=True)
        result = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, cwd=ROOT).returncode != 0 or not result.exists():
            failed.append(name)
    print(f"\n=== summary ({time.perf_counter() - started:.0f} s) ===")
    for name in chosen:
        result = RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
        if name in failed:
            print(f"{name}: FAILED to run (see above)")
            continue
        for figure in json.loads(result.read_text())["figures"]:
            print(figure["line"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
