"""Export memory (issue 15): peak resident size of the process that prepares and serves a
500-image export through its one-time link, against the old in-memory /export.

A library of 500 photo-like images (JPEG, about 150 KB each, stored through the real pipeline)
is built once into bench/.cache. Then, each in a fresh child process so that peaks do not mix:

- **baseline**: open Veil and start the real link server, nothing else;
- **streamed** (Veil now): ``exports.start`` + ``prepare`` (the zip streamed into a sealed file),
  then this parent downloads it through ``POST /x/<token>`` on 127.0.0.1 while the child serves
  it; the child reports its peak (VmHWM) after the download, and whether the file is gone;
- **in memory** (the competitor, Veil before issue 15): decrypt every image into a list and zip
  them into one ``BytesIO``, as ``PrivacyService.export`` did.

The bar: the streamed export adds at most ``BAR_MB`` over the baseline's peak, whatever the
library size (a 100-image run shows it does not grow with the library).

    python -m bench.export [--quick]
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from bench._common import CACHE, ROOT, Figure, Report, header, run_main
from bench._images import photo

OWNER = 4242
BAR_MB = 48.0  # over the baseline's peak
MASTER_KEY = bytes(range(32))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _library(data: Path, count: int) -> None:
    from bot.core.veil import Veil

    async with await Veil.open(data, master_key=MASTER_KEY) as veil:
        have = await veil.ctx.db.fetchval("SELECT count(*) FROM images")
        for n in range(have, count):
            out = io.BytesIO()
            photo(640, 480, seed=n, noise=0.12).save(out, "JPEG", quality=95)
            await veil.images.create(OWNER, out.getvalue(), guild_id=None, source="upload",
                                     prompt=f"picture {n}")


def library(count: int) -> Path:
    data = CACHE / f"export-library-{count}"
    if not (data / ".complete").exists():
        shutil.rmtree(data, ignore_errors=True)
        asyncio.run(_library(data, count))
        (data / ".complete").write_text("ok")
    return data


async def child(mode: str, data: str) -> None:
    """One measured process; prints JSON lines for the parent."""
    from bot.core.veil import Veil
    from bot.web import create_app, start_web

    copy = Path(data + f"-run-{os.getpid()}")
    shutil.copytree(data, copy)
    try:
        async with await Veil.open(copy, master_key=MASTER_KEY) as veil:
            server = await start_web(create_app(veil, public_url="http://127.0.0.1"),
                                     "127.0.0.1", 0)
            try:
                result: dict[str, object] = {"mode": mode}
                started = time.perf_counter()
                if mode == "streamed":
                    new = await veil.exports.prepare(await veil.exports.start(OWNER))
                    result["prepare_s"] = time.perf_counter() - started
                    result["bytes"] = new.byte_size
                    print(json.dumps({"url": f"{server.url}/x/{new.token}"}), flush=True)
                    await asyncio.to_thread(sys.stdin.readline)  # the parent has downloaded
                    result["files_left"] = len(list((copy / "exports").iterdir()))
                elif mode == "in-memory":
                    result["bytes"] = len(await _old_export(veil))
                    result["prepare_s"] = time.perf_counter() - started
                result["peak_mb"] = _peak_mb()
                print(json.dumps(result), flush=True)
            finally:
                await server.stop()
    finally:
        shutil.rmtree(copy, ignore_errors=True)


async def _old_export(veil) -> bytes:
    """What /export did before issue 15 (bot/core/users.py at main 222d7d0), images part."""
    images = await veil.images.owned(OWNER, limit=501)
    files = []
    for image in images[:500]:
        content = await veil.images.decrypt_unchecked(image)
        files.append((f"images/{content.filename}", content.data))

    def build() -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("veil-export.json", json.dumps({"images": len(files)}))
            for name, payload in files:
                archive.writestr(name, payload)
        return buf.getvalue()

    return await asyncio.to_thread(build)


async def _download(url: str) -> tuple[int, int]:
    import aiohttp

    size = 0
    async with aiohttp.ClientSession() as session, session.post(url) as response:
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
        return response.status, size


def run_child(mode: str, data: Path) -> dict:
    process = subprocess.Popen([sys.executable, "-m", "bench.export", "--child", mode, str(data)],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdin is not None
    line = json.loads(process.stdout.readline())
    downloaded = None
    if "url" in line:
        downloaded = asyncio.run(_download(line["url"]))
        process.stdin.write("done\n")
        process.stdin.flush()
        line = json.loads(process.stdout.readline())
    process.wait(timeout=120)
    if downloaded is not None:
        line["download_status"], line["downloaded_bytes"] = downloaded
    return line


def main(args) -> Report:
    header("export: peak memory of a 500-image export through its one-time link")
    report = Report("export")
    sizes = (100, 500) if not args.quick else (50, 100)
    runs = {}
    for count in sizes:
        data = library(count)
        stored = sum(p.stat().st_size for p in (data / "blobs").rglob("*.full"))
        report.note(f"library of {count} images: {stored / 1e6:.1f} MB stored")
        for mode in ("baseline", "streamed", "in-memory"):
            runs[count, mode] = run_child(mode, data)
        streamed, old = runs[count, "streamed"], runs[count, "in-memory"]
        base = runs[count, "baseline"]["peak_mb"]
        report.note(
            f"  {count} images: baseline peak {base:.1f} MB; streamed peak "
            f"{streamed['peak_mb']:.1f} MB (zip {streamed['bytes'] / 1e6:.1f} MB, prepared in "
            f"{streamed['prepare_s']:.1f} s, downloaded {streamed['downloaded_bytes'] / 1e6:.1f} "
            f"MB with status {streamed['download_status']}, {streamed['files_left']} files left "
            f"after); in-memory peak {old['peak_mb']:.1f} MB (zip {old['bytes'] / 1e6:.1f} MB)")
    big = sizes[-1]
    streamed, old = runs[big, "streamed"], runs[big, "in-memory"]
    base = runs[big, "baseline"]["peak_mb"]
    added = streamed["peak_mb"] - base
    report.add(Figure(f"streamed export of {big} images: peak RSS over the baseline", added,
                      BAR_MB, "<=", "MB",
                      detail=f"(peak {streamed['peak_mb']:.1f} MB, baseline {base:.1f} MB)"))
    report.add(Figure("in-memory export (old /export) peak / streamed peak",
                      old["peak_mb"] / streamed["peak_mb"], 1.0, ">=", "x",
                      detail=f"({old['peak_mb']:.1f} MB vs {streamed['peak_mb']:.1f} MB)"))
    small = sizes[0]
    growth = runs[big, "streamed"]["peak_mb"] - runs[small, "streamed"]["peak_mb"]
    report.add(Figure(f"streamed peak growth from {small} to {big} images", growth, 16.0, "<=",
                      "MB"))
    report.add(Figure("download works once and leaves no file",
                      float(streamed["download_status"] == 200
                            and streamed["downloaded_bytes"] == streamed["bytes"]
                            and streamed["files_left"] == 0), 1.0, ">=", "ok"))
    return report


if __name__ == "__main__":
    if "--child" in sys.argv:
        mode, data = sys.argv[sys.argv.index("--child") + 1:][:2]
        asyncio.run(child(mode, data))
        os._exit(0)
    run_main(main, __doc__.splitlines()[0])
