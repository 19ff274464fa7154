"""Concurrent uploads (issue 11): ten 40-megapixel uploads at once, peak memory and loop blocking.

Each run is a fresh child process, so that its peak resident size (VmHWM in /proc/self/status)
is its own. The same input in every run: an 8000x5000 camera-like JPEG (bench/_images.py,
quality 92), ten separate copies of its bytes, as ten uploads would each hold their own.
  * Veil: ten concurrent ``veil.images.create`` (the header checks on the loop, sanitizing on
    the bounded image workers of bot/images/work.py, AES-GCM sealing, staged blob files with
    fsync, one SQLite transaction each, publish).
  * bare Pillow: ten concurrent ``loop.run_in_executor(None, ...)`` (the loop's default
    executor, as the pipeline used before), each doing the same pixel work with nothing else:
    open, load, save as JPEG quality 90, reduce to a 512-pixel thumbnail, save that. No bound,
    no scrub, no colour conversion, no encryption, no disk.
  * one Veil upload alone, to measure what a single 40-megapixel image costs;
  * idle: the same child, no upload, the ticker alone for 5 s: the floor this machine sets
    (on a shared machine the loop thread waits for a core now and then whatever we do).
While the uploads run, a task that sleeps 1 ms at a time records how late it wakes: the longest
lateness is the longest the event loop was blocked. Runs are interleaved (Veil, bare, one,
idle), 3 repetitions (1 with --quick), medians reported.

    python -m bench.uploads [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import CACHE, ROOT, Figure, Report, header, median, run_main

UPLOADS = 10
WIDTH, HEIGHT = 8000, 5000  # 40.0 megapixels, the pipeline's limit
TICK = 0.001
# The bar for Veil's peak: what the process holds before any upload (interpreter, libraries,
# the ten inputs: about 200 MB) plus one 40-megapixel image per worker at its measured peak
# (about 135 MB each on this 2-core machine), with room to spare. The old pipeline went past
# a gigabyte here.
BAR_PEAK_MB = 600.0
BAR_BLOCK_MS = 20.0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _input() -> Path:
    """The 40-megapixel JPEG, built once and cached (building it takes some seconds)."""
    from bench._images import photo

    path = CACHE / f"upload-{WIDTH}x{HEIGHT}.jpg"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        photo(WIDTH, HEIGHT, seed=11).save(buffer, "JPEG", quality=92)
        path.write_bytes(buffer.getvalue())
    return path


def _bare_pillow(data: bytes) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    full = io.BytesIO()
    image.save(full, "JPEG", quality=90)
    small = image.reduce(-(-max(image.size) // 512))
    thumbnail = io.BytesIO()
    small.save(thumbnail, "JPEG", quality=90)
    return len(full.getvalue()) + len(thumbnail.getvalue())


async def _watch_loop(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    # Each window runs from one wake-up to the next, so time the loop spends anywhere in an
    # iteration (its own callbacks, waiting for the GIL) counts, not only an oversleep.
    then = loop.time()
    while not stop.is_set():
        await asyncio.sleep(TICK)
        now = loop.time()
        lags.append(now - then - TICK)
        then = now


async def _child(side: str, inputs: list[bytes]) -> dict:
    logging.basicConfig(level=logging.ERROR)
    if side == "veil":
        from bot.core.veil import Veil

        folder = Path(tempfile.mkdtemp(prefix="uploads-", dir=CACHE))
        veil = await Veil.open(folder / "data")
    else:
        from PIL import Image  # noqa: F401  (imported before the baseline, as on Veil's side)
    before = _status_mb("VmRSS")
    stop, lags = asyncio.Event(), []
    watcher = asyncio.create_task(_watch_loop(stop, lags))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    try:
        if side == "idle":
            await asyncio.sleep(5)
        elif side == "veil":
            await asyncio.gather(*(
                veil.images.create(1001, one, guild_id=2002, source="upload") for one in inputs))
        else:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, _bare_pillow, one)
                                   for one in inputs))
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        await watcher
        if side == "veil":
            await veil.close()
            shutil.rmtree(folder, ignore_errors=True)
    return {"before_mb": before, "peak_mb": _status_mb("VmHWM"), "seconds": seconds,
            "block_ms": max(lags) * 1000, "ticks": len(lags)}


def _run_child(side: str, source: Path, count: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.uploads", "--child", side, "--source", str(source),
         "--count", str(count)], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> Report:
    header(f"uploads: {UPLOADS} concurrent {WIDTH}x{HEIGHT} JPEG uploads, Veil vs bare Pillow")
    from bot.images.work import IMAGE_WORK

    report = Report("uploads")
    source = _input()
    report.note(f"input: {WIDTH}x{HEIGHT} JPEG, {source.stat().st_size / 1e6:.1f} MB; Veil's "
                f"image workers: {IMAGE_WORK.workers}, waiting list {IMAGE_WORK.max_waiting}")
    runs: dict[str, list[dict]] = {"veil": [], "bare": [], "one": []}
    runs["idle"] = []
    for rep in range(1 if args.quick else 3):
        for name, side, count in (("veil", "veil", UPLOADS), ("bare", "bare", UPLOADS),
                                  ("one", "veil", 1), ("idle", "idle", 0)):
            result = _run_child(side, source, count)
            runs[name].append(result)
            report.note(f"  run {rep + 1} {name}: peak {result['peak_mb']:.0f} MB (before the "
                        f"uploads {result['before_mb']:.0f} MB), {result['seconds']:.1f} s, "
                        f"loop blocked at most {result['block_ms']:.1f} ms")

    def med(name: str, key: str) -> float:
        return median([run[key] for run in runs[name]])

    one_image = med("one", "peak_mb") - med("one", "before_mb")
    report.note(f"one 40-megapixel upload alone adds {one_image:.0f} MB at its peak; "
                f"ten bare-Pillow jobs in the default executor add "
                f"{med('bare', 'peak_mb') - med('bare', 'before_mb'):.0f} MB, "
                f"ten Veil uploads {med('veil', 'peak_mb') - med('veil', 'before_mb'):.0f} MB")
    report.add(Figure(f"uploads: peak RSS, {UPLOADS} concurrent 40 MP uploads (Veil)",
                      med("veil", "peak_mb"), BAR_PEAK_MB, "<", "MB"))
    report.add(Figure("uploads: peak RSS, Veil / bare Pillow",
                      med("veil", "peak_mb") / med("bare", "peak_mb"), 1.0, "<=",
                      detail=f"(bare Pillow {med('bare', 'peak_mb'):.0f} MB)"))
    report.add(Figure("uploads: longest event-loop block (Veil)", med("veil", "block_ms"),
                      BAR_BLOCK_MS, "<", "ms",
                      detail=f"(one upload alone {med('one', 'block_ms'):.1f} ms, no upload "
                             f"at all {med('idle', 'block_ms'):.1f} ms)"))
    report.add(Figure("uploads: longest event-loop block, Veil / bare Pillow",
                      med("veil", "block_ms") / med("bare", "block_ms"), 1.5, "<=",
                      detail=f"(bare Pillow {med('bare', 'block_ms'):.1f} ms)"))
    report.add(Figure("uploads: time for all ten, Veil / bare Pillow",
                      med("veil", "seconds") / med("bare", "seconds"), 1.5, "<=",
                      detail=f"({med('veil', 'seconds'):.1f} s vs {med('bare', 'seconds'):.1f} s)"))
    return report


if __name__ == "__main__":
    if "--child" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", required=True)
        parser.add_argument("--source", required=True)
        parser.add_argument("--count", type=int, required=True)
        child_args = parser.parse_args()
        data = Path(child_args.source).read_bytes()
        # Separate copies: ten uploads each hold their own bytes.
        inputs = [bytes(bytearray(data)) for _ in range(child_args.count)]
        print(json.dumps(asyncio.run(_child(child_args.child, inputs))), flush=True)
    else:
        run_main(main, __doc__.splitlines()[0])
