"""Shared helpers: timing (interleaved runs, medians, percentiles), verdict lines, the cache
folder, the machine description and the results file each benchmark leaves for ``__main__``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = CACHE / "results"


@dataclass
class Figure:
    """One measured figure against its bar. ``op`` is "<=", "<" or ">="."""

    name: str
    value: float | None
    bar: float
    op: str
    unit: str = "x"
    detail: str = ""
    skipped: str | None = None

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        return {"<=": self.value <= self.bar, "<": self.value < self.bar,
                ">=": self.value >= self.bar}[self.op]

    def line(self) -> str:
        if self.value is None:
            return f"{self.name}: SKIPPED ({self.skipped})"
        verdict = "PASS" if self.passed else "MISS"
        detail = f" {self.detail}" if self.detail else ""
        return (f"{self.name}: {fmt(self.value, self.unit)}{detail} "
                f"(bar {self.op} {fmt(self.bar, self.unit)}) {verdict}")


@dataclass
class Report:
    bench: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def save(self, quick: bool) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.bench}{'-quick' if quick else ''}.json"
        path.write_text(json.dumps({
            "bench": self.bench, "quick": quick, "seconds": round(time.time() - self.started, 1),
            "machine": machine(), "figures": [asdict(f) | {"passed": f.passed, "line": f.line()}
                                              for f in self.figures],
            "notes": self.notes}, indent=2))
        return path

    def exit_code(self) -> int:
        """0 even on a miss: a benchmark reports, it does not fail a build."""
        return 0


def fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "us":
        return f"{value:.0f} µs" if value >= 100 else f"{value:.1f} µs"
    if unit == "ms":
        return f"{value:.1f} ms" if value >= 10 else f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:g} {unit}"


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller runs (a smoke test, not figures)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 1000 samples is the 990th smallest)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def interleaved(cases: dict[str, Callable[[], object]], reps: int = 5) -> dict[str, list[float]]:
    """Run every case once per repetition, rotating the order each time, so that drift of the
    machine (other load, thermal, page cache) hits all cases alike. Returns seconds per run."""
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": str(os.cpu_count()), "cpu": model,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    except ImportError:
        pass
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["memory"] = f"{int(fh.readline().split()[1]) // 1024} MB"
    except OSError:
        pass
    return info


def header(title: str) -> None:
    m = machine()
    print(f"== {title} ==  ({m['nproc']} cores, {m['cpu']}, Python {m['python']}, "
          f"SQLite {m.get('sqlite')}, Pillow {m.get('pillow')})", flush=True)


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size (VmRSS) of a process in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_main(main: Callable[[argparse.Namespace], Report], description: str,
             extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    args = parse_args(description, extra)
    report = main(args)
    path = report.save(args.quick)
    print(f"(results written to {path.relative_to(ROOT)})", flush=True)
    sys.exit(report.exit_code())
