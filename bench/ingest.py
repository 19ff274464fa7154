"""Ingest (issue 6, item 2): Veil's image path against bare Pillow on the same file.

Veil's side, two figures:
  * sanitize: ``bot.images.sanitize_image`` (limits, sniff, decode, upright, plain mode, low-bit
    scrub for PNG, encode without metadata, thumbnail on a second thread), synchronous;
  * create: ``veil.images.create`` (sanitize on the image workers, the thumbnail made on a
    second thread while the full size encodes, AES-GCM seal of image and thumbnail, staged
    blob files with fsync, SQLite transactions, publish), awaited.
Bare Pillow: ``Image.open`` + ``load`` + ``save`` to memory in the same format, with the
settings our pipeline uses (JPEG quality 90, optimize off; PNG compress_level 4, the level set
in bot/images/pipeline.py) and nothing else: no thumbnail, no scrub, no encryption, no disk.

Inputs are generated deterministically (bench/_images.py): a 4000x3000 camera-like JPEG with
EXIF (GPS, camera, comment) and a 2048x2048 photo-like PNG with a ``parameters`` chunk.
The three cases run interleaved (order rotated each repetition), median of 5.

    python -m bench.ingest [--quick]
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import tempfile
from pathlib import Path

from PIL import Image

from bench._common import CACHE, Figure, Report, header, interleaved, median, run_main
from bench._images import jpeg_with_exif, png_photo

BAR = 1.10
# Issue 12's bars for veil.images.create: JPEG within 10% of bare Pillow, PNG no slower.
CREATE_BAR = {"JPEG": 1.10, "PNG": 1.00}
BASELINE_OPTIONS = {"JPEG": {"quality": 90, "optimize": False}, "PNG": {"compress_level": 4}}


def bare_pillow(data: bytes, fmt: str) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.load()
    out = io.BytesIO()
    image.save(out, fmt, **BASELINE_OPTIONS[fmt])
    return out.getvalue()


def check_options_match_pipeline(report: Report) -> None:
    """The baseline must encode exactly as our pipeline does, or the ratio means nothing."""
    from bot.images import pipeline

    ours = getattr(pipeline, "_SAVE_OPTIONS", None)
    for fmt, options in BASELINE_OPTIONS.items():
        if ours is not None and ours.get(fmt) != options:
            report.note(f"WARNING: pipeline encodes {fmt} with {ours.get(fmt)}, the baseline "
                        f"with {options}: update BASELINE_OPTIONS in bench/ingest.py")


def main(args) -> Report:
    from bot.core.veil import Veil
    from bot.images import sanitize_image

    header("ingest: veil.images.create vs bare Pillow decode+encode")
    logging.getLogger("bot.core.veil").setLevel(logging.ERROR)  # "new master key" notice
    report = Report("ingest")
    check_options_match_pipeline(report)
    reps = 3 if args.quick else 5
    inputs = [("4000x3000 JPEG+EXIF", jpeg_with_exif(), "JPEG"),
              ("2048x2048 PNG", png_photo(), "PNG")]
    CACHE.mkdir(parents=True, exist_ok=True)
    # The data folder sits on the same disk as a real one would (not a tmpfs), fsync included.
    folder = Path(tempfile.mkdtemp(prefix="ingest-", dir=CACHE))
    loop = asyncio.new_event_loop()
    try:
        veil = loop.run_until_complete(Veil.open(folder / "data"))
        try:
            for label, data, fmt in inputs:
                clean = sanitize_image(data)
                assert clean.format == fmt, (clean.format, fmt)

                def create(data=data):
                    loop.run_until_complete(
                        veil.images.create(1001, data, guild_id=2002, source="upload"))

                cases = {"bare Pillow": lambda data=data, fmt=fmt: bare_pillow(data, fmt),
                         "sanitize": lambda data=data: sanitize_image(data),
                         "create": create}
                for case in cases.values():  # warm-up: imports, code paths, page cache
                    case()
                times = interleaved(cases, reps)
                base = median(times["bare Pillow"])
                ms = ", ".join(f"{k} {median(v) * 1000:.0f} ms" for k, v in times.items())
                report.note(f"{label} ({len(data) / 1e6:.1f} MB in, {len(clean.data) / 1e6:.1f} "
                            f"MB out, thumbnail {len(clean.thumbnail) / 1e3:.0f} KB): {ms}")
                report.add(Figure(f"ingest {label}: sanitize_image", median(times["sanitize"]) /
                                  base, BAR, "<=", detail="bare Pillow"))
                report.add(Figure(f"ingest {label}: veil.images.create", median(times["create"]) /
                                  base, CREATE_BAR[fmt], "<=", detail="bare Pillow"))
        finally:
            loop.run_until_complete(veil.close())
    finally:
        loop.close()
        shutil.rmtree(folder, ignore_errors=True)
    return report


if __name__ == "__main__":
    run_main(main, __doc__.splitlines()[0])
