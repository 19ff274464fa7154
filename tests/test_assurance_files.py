"""Assurance: hostile files through both doors, the core and `/upload` (DESIGN 2.4, 2.9 and 6).

A corpus of hostile and awkward files, all generated here (tests/imagefactory.py), goes through
``veil.images.create`` and through `/upload` on the Discord double. Each case is either refused
with the message a user reads, leaving nothing behind (no row, no blob, nothing staged, no
plaintext in the data folder), or stored with none of its metadata or hidden payload left, which
is checked by parsing the bytes that were stored (decrypted) and the bytes Discord received.

Then fuzzing: random bytes and mutated valid files through ``sanitize_image`` (only BadImage
may escape, no output carries a text chunk, no file is written) and, fewer of them, through
``veil.images.create`` (a refusal leaves the data folder as it was).
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.core.errors import BadImage
from bot.core.veil import Veil
from bot.images import check_declared_size, sanitize_image, sniff_format
from bot.images.pixels import FAINT_ALPHA
from tests import colourmodel, e2e
from tests import imagefactory as factory
from tests.conftest import ALICE, GUILD

# The real bot against the Discord double, as a fixture of this module.

# ---------------------------------------------------------------- what users are told

ACCEPTED = "Send a PNG, JPEG, WebP or GIF."
DAMAGED = "The image is damaged or incomplete, so it could not be read."
NOT_AN_IMAGE = f"This file is not an image Veil accepts. {ACCEPTED}"


def refused_type(kind: str) -> str:
    return f"{kind} files are not accepted. {ACCEPTED}"


def too_many_pixels(width: int, height: int, megapixels: str) -> str:
    return (
        f"The image is {width}×{height} pixels ({megapixels} megapixels); "
        "the limit is 40 megapixels."
    )


# ---------------------------------------------------------------- what clean bytes look like

PNG_IMAGE_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
PNG_PALETTE_COLOUR_TYPE = 3
JPEG_IMAGE_MARKERS = {
    factory.SOI,
    factory.APP0,  # the JFIF header libjpeg writes: version and a zero density, nothing else
    0xDB,  # DQT
    0xC0,  # SOF0 baseline
    0xC2,  # SOF2 progressive
    0xC4,  # DHT
    0xDD,  # DRI
    *range(0xD0, 0xD8),  # RST0-7
    factory.SOS,
    factory.EOI,
}
JPEG_METADATA_MARKERS = {factory.APP1, factory.APP2, factory.APP11, factory.APP13, factory.COM}
WEBP_IMAGE_CHUNKS = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH"}
WEBP_VP8X_ICC_EXIF_XMP_ANIMATION = 0x20 | 0x08 | 0x04 | 0x02

# Nothing of these may appear anywhere in stored or delivered bytes.
TELLTALES = (
    factory.SECRET,
    b"parameters",
    b"prompt",
    b"workflow",
    b"Comment",
    b"Description",
    b"GPS",
    b"Exif",
    b"xmp",
    b"XMP",
    b"stealth_",
    b"tEXt",
    b"zTXt",
    b"iTXt",
    b"eXIf",
    b"iCCP",
    b"caBX",
    b"c2pa",
    b"jumb",
    b"ICC_PROFILE",
    b"Photoshop",
    b"8BIM",
    b"PK\x03\x04",
    b"<script",
    b"<svg",
)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def metadata_structures(data: bytes) -> list[str]:
    """What in these bytes is not needed to show the pixels, read from the bytes themselves.

    Empty for a clean output; otherwise one readable entry per offending structure.
    """
    kind = sniff_format(data)
    found: list[str] = []
    if kind == "PNG":
        chunks = factory.png_chunks(data)
        allowed = set(PNG_IMAGE_CHUNKS)
        if chunks[0][0] == b"IHDR" and chunks[0][1][9] == PNG_PALETTE_COLOUR_TYPE:
            allowed.add(b"tRNS")  # a palette's transparency is part of the picture
        found += [f"PNG chunk {t!r}" for t, _ in chunks if t not in allowed]
        if factory.bytes_after_png_end(data):
            found.append("bytes after IEND")
    elif kind == "JPEG":
        segments = factory.jpeg_segments(data)
        found += [f"JPEG marker {m:#x}" for m, _ in segments if m not in JPEG_IMAGE_MARKERS]
        found += [
            "APP0 that is not a bare JFIF header"
            for m, payload in segments
            if m == factory.APP0 and (not payload.startswith(b"JFIF\x00") or len(payload) > 14)
        ]
        if segments[-1][0] != factory.EOI or not data.endswith(b"\xff\xd9"):
            found.append("bytes after EOI")
    elif kind == "WEBP":
        chunks = factory.webp_chunks(data)
        found += [f"WebP chunk {c!r}" for c, _ in chunks if c not in WEBP_IMAGE_CHUNKS]
        for fourcc, payload in chunks:
            if fourcc == b"VP8X" and payload[0] & WEBP_VP8X_ICC_EXIF_XMP_ANIMATION:
                found.append("VP8X flags announce ICC, EXIF, XMP or animation")
        if int.from_bytes(data[4:8], "little") + 8 != len(data):
            found.append("RIFF size does not cover the file exactly")
    else:
        found.append(f"not a PNG, JPEG or WebP: {data[:12]!r}")
    return found


def assert_clean(data: bytes) -> None:
    """Parse an output down to its structures and pixels and find nothing but a picture."""
    assert metadata_structures(data) == []
    assert [word for word in TELLTALES if word in data] == []
    image = decode(data)
    assert image.mode in ("L", "RGB", "RGBA")
    assert not getattr(image, "is_animated", False)
    assert factory.read_stealth_payload(data) is None
    if image.format == "PNG":
        # Lossless output: every colour low bit is zero, so no LSB layout can hold anything.
        for name, band in zip(image.getbands(), image.split(), strict=True):
            if name != "A":
                assert band.point(lambda value: value & 1).getextrema() == (0, 0), name
    if image.mode == "RGBA":
        # Alpha low bits only repeat the top bit: 0 and 255 survive, nothing else is carried.
        assert all((a & 1) == (a >> 7) for a in image.getchannel("A").tobytes())
    if image.mode == "RGBA" and image.format == "PNG":
        # Nothing under transparency: black under alpha 0, one colour under all faint alphas.
        hidden: dict[bool, set[tuple[int, ...]]] = {False: set(), True: set()}
        for *colour, alpha in image.get_flattened_data():
            if alpha <= FAINT_ALPHA:
                hidden[alpha > 0].add(tuple(colour))
        assert hidden[False] <= {(0, 0, 0)} and len(hidden[True]) <= 1


# ---------------------------------------------------------------- the corpus


def _png_text(keyword: str, kind: bytes) -> Callable[[bytes], bool]:
    def carries(source: bytes) -> bool:
        chunks = factory.png_chunks(source)
        has_chunk = any(t == kind and p.startswith(keyword.encode()) for t, p in chunks)
        text = getattr(decode(source), "text", {}).get(keyword, "")
        return has_chunk and factory.SECRET.decode() in text

    return carries


def _png_chunk(*kinds: bytes) -> Callable[[bytes], bool]:
    return lambda source: set(kinds) <= {t for t, _ in factory.png_chunks(source)}


def _jpeg_markers(*markers: int) -> Callable[[bytes], bool]:
    return lambda source: set(markers) <= {m for m, _ in factory.jpeg_segments(source)}


def _contains(*words: bytes) -> Callable[[bytes], bool]:
    return lambda source: all(word in source for word in words)


def _pillow_mode(mode: str) -> Callable[[bytes], bool]:
    return lambda source: decode(source).mode == mode


def _frames(count: int) -> Callable[[bytes], bool]:
    return lambda source: getattr(Image.open(io.BytesIO(source)), "n_frames", 1) == count


def _sniffed_as(kind: str | None) -> Callable[[bytes], bool]:
    return lambda source: sniff_format(source) == kind


def _has_profile(source: bytes) -> bool:
    return "icc_profile" in decode(source).info


def _anything(source: bytes) -> bool:
    return True


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    # The name the uploader gives it (Discord guesses the content type from it); a lie at times.
    filename: str
    # The exact message a refusal shows; None means the file must be stored, cleaned.
    refusal: str | None = None
    # Checked on the source first, so that a builder that lost its hostile part fails loudly
    # instead of letting the case pass for nothing.
    carries: Callable[[bytes], bool] = field(default=_anything)
    # A stealth payload the source hides, which the reader must get back from the source.
    hidden: bytes | None = None
    # Whether something the picture does not show (erased text) can be read from these bytes:
    # true of the source, false of every stored and delivered output.
    legible: Callable[[bytes], bool] | None = None
    # What the Discord answer must say when it is not the core's exact message: the cog may
    # refuse a declared giant before downloading it, in its own words.
    says: tuple[str, ...] = ()

    def refusal_fragments(self) -> tuple[str, ...]:
        assert self.refusal is not None
        return self.says or (self.refusal,)


STEALTH_PAYLOAD = b"Steps: 20, Sampler: Euler a, Seed: 1234, " + factory.SECRET

CASES: list[Case] = [
    # -- broken files
    *(
        Case(
            f"{fmt.lower()}-truncated",
            functools.partial(factory.truncated, fmt),
            name,
            DAMAGED,
            _sniffed_as(fmt),
        )
        for fmt, name in (
            ("PNG", "cut.png"),
            ("JPEG", "cut.jpg"),
            ("WEBP", "cut.webp"),
            ("GIF", "cut.gif"),
        )
    ),
    Case(
        "png-really-a-jpeg",
        factory.png_that_is_really_a_jpeg,
        "odd.png",
        DAMAGED,
        _sniffed_as("PNG"),
    ),
    *(
        Case(
            f"png-palette-{where}",
            functools.partial(factory.palette_png_without_palette, palette_after_data=after),
            "indexed.png",
            DAMAGED,
            _pillow_mode("P"),
        )
        for where, after in (("missing", False), ("after-data", True))
    ),
    Case("empty", lambda: b"", "empty.png", "The file is empty.", lambda source: source == b""),
    # -- bombs and huge declared sizes in tiny files
    Case(
        "png-decompression-bomb",
        factory.decompression_bomb_png,
        "bomb.png",
        too_many_pixels(50_000, 50_000, "2500"),
        lambda source: len(source) < 200,
        says=("50000×50000 pixels", "40 megapixels"),
    ),
    *(
        Case(
            f"{fmt}-huge-dimensions",
            functools.partial(factory.with_declared_size, build(), 50_000, 50_000),
            f"huge.{fmt}",
            too_many_pixels(50_000, 50_000, "2500"),
            lambda source: len(source) < 10_000,
            says=("50000×50000 pixels", "40 megapixels"),
        )
        for fmt, build in (("jpeg", factory.plain_jpeg), ("gif", factory.animated_gif))
    ),
    Case(
        "webp-huge-dimensions",
        functools.partial(
            factory.with_declared_size, factory.webp_image(lossless=True), 16_384, 16_384
        ),
        "huge.webp",
        too_many_pixels(16_384, 16_384, "268.4"),
        lambda source: len(source) < 10_000,
        says=("16384×16384 pixels", "40 megapixels"),
    ),
    Case(
        "png-side-too-long",
        functools.partial(factory.with_declared_size, factory.plain_png(), 20_000, 10),
        "strip.png",
        "The image is 20000×10 pixels; each side may be at most 16384 pixels.",
        says=("20000×10 pixels", "16384 pixels"),
    ),
    Case(
        "gif-frame-larger-than-screen",
        functools.partial(factory.gif_with_first_frame_larger_than_screen, 7_000, 7_000),
        "tiny.gif",
        too_many_pixels(7_000, 7_000, "49"),
        lambda source: len(source) < 100,
    ),
    # Text chunks are cut before Pillow parses the file, so a text bomb is never inflated.
    Case(
        "png-ztxt-bomb",
        factory.png_with_text_bomb,
        "bomb.png",
        carries=lambda source: len(source) < 100_000 and b"zTXt" in source,
    ),
    # -- polyglots: the image is kept, whatever rides behind it is not
    Case(
        "png-zip-polyglot",
        factory.png_zip_polyglot,
        "cat.png",
        carries=_contains(b"PK\x03\x04", factory.SECRET),
    ),
    Case(
        "jpeg-zip-polyglot",
        lambda: factory.with_zip_appended(factory.plain_jpeg()),
        "cat.jpg",
        carries=_contains(b"PK\x03\x04", factory.SECRET),
    ),
    Case(
        "gif-html-polyglot",
        lambda: factory.with_trailer(factory.animated_gif(), factory.html_document()),
        "cat.gif",
        carries=_contains(b"<script>", factory.SECRET),
    ),
    # -- metadata of every kind
    Case(
        "jpeg-exif-gps-xmp-iptc-icc-jumbf",
        factory.jpeg_with_metadata,
        "IMG_0001.jpg",
        carries=_jpeg_markers(*JPEG_METADATA_MARKERS),
    ),
    Case(
        "webp-exif-xmp-icc",
        factory.webp_with_metadata,
        "photo.webp",
        carries=lambda source: (
            {b"EXIF", b"XMP ", b"ICCP"} <= {c for c, _ in factory.webp_chunks(source)}
        ),
    ),
    *(
        Case(
            f"png-{keyword.lower()}-{kind.decode().lower()}",
            functools.partial(factory.png_with_text, keyword, kind),
            "generated.png",
            carries=_png_text(keyword, kind),
        )
        for keyword in ("parameters", "prompt", "workflow", "Comment", "Description")
        for kind in factory.TEXT_CHUNK_KINDS
    ),
    Case("png-exif-chunk", factory.png_with_exif_chunk, "phone.png", carries=_png_chunk(b"eXIf")),
    Case("png-cabx-chunk", factory.png_with_cabx_chunk, "signed.png", carries=_png_chunk(b"caBX")),
    Case(
        "png-every-metadata-chunk",
        factory.png_with_text_chunks,
        "comfy.png",
        carries=_png_chunk(b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"caBX", b"tIME"),
    ),
    Case(
        "gif-comment", factory.gif_with_comment, "reaction.gif", carries=_contains(factory.SECRET)
    ),
    # -- payloads in the pixels' low bits (A1111 stealth_pnginfo and friends)
    Case(
        "png-stealth-pnginfo",
        functools.partial(factory.png_with_alpha_stealth, STEALTH_PAYLOAD),
        "stealth.png",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "png-stealth-pngcomp",
        functools.partial(factory.png_with_alpha_stealth, STEALTH_PAYLOAD, gzipped=True),
        "stealth.png",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "png-stealth-pngcomp-translucent",
        functools.partial(
            factory.png_with_alpha_stealth, STEALTH_PAYLOAD, base_alpha=200, gzipped=True
        ),
        "stealth.png",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "png-stealth-rgbinfo",
        functools.partial(factory.png_with_rgb_stealth, STEALTH_PAYLOAD),
        "stealth.png",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "png-stealth-rgbcomp",
        functools.partial(factory.png_with_rgb_stealth, STEALTH_PAYLOAD, gzipped=True),
        "stealth.png",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "webp-lossless-stealth-pnginfo",
        functools.partial(factory.webp_with_alpha_stealth, STEALTH_PAYLOAD),
        "stealth.webp",
        hidden=STEALTH_PAYLOAD,
    ),
    Case(
        "webp-lossless-stealth-rgbcomp",
        functools.partial(factory.webp_with_rgb_stealth, STEALTH_PAYLOAD, gzipped=True),
        "stealth.webp",
        hidden=STEALTH_PAYLOAD,
    ),
    # -- what the picture does not show: colour under (near-)transparency
    *(
        Case(
            f"png-erased-text-{label}",
            functools.partial(factory.erased_text_png, alphas),
            "redacted.png",
            carries=factory.erased_text_is_legible,
            legible=factory.erased_text_is_legible,
        )
        for label, alphas in (("alpha-0", (0,)), ("alpha-1-to-8", tuple(range(1, 9))))
    ),
    Case(
        "webp-erased-text",
        functools.partial(factory.erased_text_webp, (0, 4, 8)),
        "redacted.webp",
        carries=factory.erased_text_is_legible,
        legible=factory.erased_text_is_legible,
    ),
    # -- colour and orientation said by chunks and profiles that are dropped once applied
    Case(
        "png-xmp-orientation-itxt",
        functools.partial(factory.png_with_xmp_orientation, 6, compressed=True),
        "edited.png",
        carries=lambda source: (_png_chunk(b"iTXt")(source)
                                and decode(source).getexif().get(0x0112) == 6),
    ),
    Case(
        "png-gama-chrm-without-profile",
        functools.partial(factory.png_with_gamma, 1.0, [colourmodel.D65,
                                                        *colourmodel.DISPLAY_P3_PRIMARIES]),
        "render.png",
        carries=_png_chunk(b"gAMA", b"cHRM"),
    ),
    *(
        Case(
            f"{fmt.lower()}-grey-with-grey-profile",
            functools.partial(factory.grey_patches, colourmodel.grey_profile("scan", 1.8), fmt),
            f"scan.{fmt.lower()}",
            carries=_has_profile,
        )
        for fmt in ("PNG", "JPEG")
    ),
    # -- unusual but honest images
    *(
        Case(
            f"png-workflow-{kind.decode().lower()}-over-1mb",
            functools.partial(factory.png_with_large_workflow, kind),
            "ComfyUI_00001_.png",
            carries=_png_chunk(kind),
        )
        for kind in (b"zTXt", b"iTXt")
    ),
    *(
        Case(
            f"{fmt.lower()}-{name}",
            functools.partial(factory.profiled_patches, build(), fmt),
            f"photo.{fmt.lower()}",
            carries=_has_profile,
        )
        for name, build in (
            ("display-p3", colourmodel.display_p3_profile),
            ("adobe-rgb", colourmodel.adobe_rgb_profile),
        )
        for fmt in ("PNG", "JPEG")
    ),
    Case(
        "jpeg-cmyk-press-profile",
        lambda: factory.cmyk_press_jpeg(colourmodel.press_cmyk_profile()),
        "press.jpg",
        carries=lambda source: _pillow_mode("CMYK")(source) and _has_profile(source),
    ),
    Case(
        "jpeg-12-bit",
        functools.partial(factory.unusual_jpeg, "12-bit"),
        "scan.jpg",
        "This JPEG uses 12-bit samples, which Veil cannot decode. "
        "Export it as a standard 8-bit JPEG or as a PNG and send it again.",
        _sniffed_as("JPEG"),
    ),
    Case(
        "jpeg-lossless",
        functools.partial(factory.unusual_jpeg, "lossless"),
        "scan.jpg",
        carries=lambda source: b"\xff\xc3" in source,
    ),
    *(
        Case(
            f"png-{mode.lower()}-colour-key",
            functools.partial(factory.colour_key_png, mode),
            "logo.png",
            carries=_png_chunk(b"tRNS"),
        )
        for mode in ("RGB", "L")
    ),
    Case("gif-animated", factory.animated_gif, "dance.gif", carries=_frames(3)),
    Case(
        "png-animated", functools.partial(factory.animation, "PNG"), "dance.png", carries=_frames(3)
    ),
    Case(
        "webp-animated",
        functools.partial(factory.animation, "WEBP"),
        "dance.webp",
        carries=_frames(3),
    ),
    Case("jpeg-cmyk", factory.cmyk_jpeg, "print.jpg", carries=_pillow_mode("CMYK")),
    Case(
        "png-16bit",
        factory.png_16bit,
        "scan.png",
        carries=lambda source: decode(source).mode.startswith("I"),
    ),
    Case(
        "jpeg-multi-picture",
        factory.multi_picture_jpeg,
        "dual.jpg",
        carries=lambda source: source.count(b"\xff\xd8\xff") == 2,
    ),
    # -- lying extensions: the bytes decide, never the name
    Case("png-named-jpg", factory.png_with_text_chunks, "photo.jpg", carries=_sniffed_as("PNG")),
    Case("gif-named-png", factory.gif_with_comment, "still.png", carries=_sniffed_as("GIF")),
    Case("jpeg-named-webp", factory.jpeg_with_metadata, "photo.webp", carries=_sniffed_as("JPEG")),
    Case(
        "svg-named-png",
        factory.svg_document,
        "image.png",
        refused_type("SVG"),
        _contains(b"<script>"),
    ),
    Case(
        "html-named-png", factory.html_document, "image.png", NOT_AN_IMAGE, _contains(b"<script>")
    ),
    # -- other types, refused by name
    Case("text", factory.text_file, "notes.txt", NOT_AN_IMAGE),
    Case("html-script", factory.html_document, "page.html", NOT_AN_IMAGE, _contains(b"<script>")),
    Case("svg", factory.svg_document, "drawing.svg", refused_type("SVG"), _contains(b"<script>")),
    Case("pdf-header", factory.pdf_header, "scan.pdf", refused_type("PDF"), _contains(b"%PDF-")),
    Case(
        "pdf-document", factory.pdf_document, "scan.pdf", refused_type("PDF"), _contains(b"%PDF-")
    ),
    Case("bmp", factory.bmp_image, "paint.bmp", refused_type("BMP"), _pillow_mode("RGB")),
    Case("tiff", factory.tiff_image, "scan.tiff", refused_type("TIFF"), _pillow_mode("RGB")),
    Case(
        "zip",
        factory.zip_archive,
        "images.zip",
        refused_type("ZIP archive"),
        _contains(factory.SECRET),
    ),
]
CORPUS = [pytest.param(case, id=case.name) for case in CASES]


@functools.cache
def source_of(case: Case) -> bytes:
    return case.build()


def test_the_corpus_is_real_and_has_both_outcomes() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    for case in CASES:
        source = source_of(case)
        assert case.carries(source), case.name
        if case.hidden is not None:
            assert factory.read_stealth_payload(source) == case.hidden, case.name
        if case.refusal is None:
            # A case meant to be cleaned must have something to clean, or the checks on its
            # output prove nothing.
            dirty = metadata_structures(source) or [w for w in TELLTALES if w in source]
            assert dirty or case.hidden or case.legible or case.name in _CLEAN_BY_DESIGN, case.name
    refused = sum(case.refusal is not None for case in CASES)
    assert 0 < refused < len(CASES)


# Accepted cases whose point is an unusual picture rather than something hidden in it.
_CLEAN_BY_DESIGN = {
    "png-16bit",
    "jpeg-cmyk",
    "gif-animated",
    "png-animated",
    "webp-animated",
    "jpeg-multi-picture",
    "jpeg-lossless",
}


# ---------------------------------------------------------------- the data folder afterwards


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _distinctive_windows(data: bytes, size: int = 24, most: int = 200) -> list[bytes]:
    """Slices of data varied enough that finding one elsewhere cannot be a coincidence."""
    windows = [data[i : i + size] for i in range(0, len(data) - size + 1, size)]
    varied = [window for window in windows if len(set(window)) >= 10]
    step = max(1, len(varied) // most)
    return varied[::step]


async def assert_no_plaintext_on_disk(veil: Veil, *plaintexts: bytes,
                                      at_rest: Callable[[], Awaitable[bytes]] | None = None
                                      ) -> None:
    """at_rest: the conftest fixture (which also reads PostgreSQL's files); default the data
    folder alone."""
    await veil.ctx.db.checkpoint()
    if at_rest is not None:
        on_disk = await at_rest()
    else:
        on_disk = b"".join(path.read_bytes() for path in _files(veil.data_dir))
    assert factory.SECRET not in on_disk
    for plaintext in plaintexts:
        leaked = [window for window in _distinctive_windows(plaintext) if window in on_disk]
        assert leaked == []


async def _table_counts(veil: Veil) -> dict[str, int]:
    # Leases are the bot's own bookkeeping (its periodic jobs take them as they come round),
    # not something a user's input left behind.
    tables = await veil.ctx.db.fetchall(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        " AND tablename != 'leases'"
        if veil.ctx.db.dialect == "postgresql" else
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'leases'"
    )
    return {
        row[0]: await veil.ctx.db.fetchval(f'SELECT count(*) FROM "{row[0]}"') for row in tables
    }


@dataclass(frozen=True)
class Footprint:
    rows: dict[str, int]
    blobs: list[str]
    staged: list[str]


async def footprint(veil: Veil) -> Footprint:
    return Footprint(
        rows=await _table_counts(veil),
        blobs=[path.name for path in _files(veil.data_dir / "blobs")],
        staged=[path.name for path in _files(veil.data_dir / "tmp")],
    )


async def assert_nothing_left(veil: Veil, before: Footprint, source: bytes,
                              at_rest: Callable[[], Awaitable[bytes]] | None = None) -> None:
    after = await footprint(veil)
    assert after.rows["images"] == 0
    assert after.blobs == [] and after.staged == []
    assert after == before
    await assert_no_plaintext_on_disk(veil, source, at_rest=at_rest)


async def assert_stored_clean(veil: Veil, public_id: str) -> bytes:
    """Decrypt what is stored for the image (full size and thumbnail) and check both."""
    record = await veil.ctx.image(public_id)
    assert record is not None
    full = (await veil.images.decrypt_unchecked(record)).data
    thumbnail = (await veil.images.decrypt_unchecked(record, thumbnail=True)).data
    for data in (full, thumbnail):
        assert_clean(data)
    assert decode(full).size == (record.width, record.height)
    blobs = [path.name for path in _files(veil.data_dir / "blobs")]
    assert blobs == [f"{record.blob_name}.img"]  # one object: both sealed parts
    assert _files(veil.data_dir / "tmp") == []
    return full


def _precondition(case: Case) -> bytes:
    source = source_of(case)
    assert case.carries(source)
    if case.hidden is not None:
        assert factory.read_stealth_payload(source) == case.hidden
    if case.legible is not None:
        assert case.legible(source)
    return source


def assert_nothing_hidden(case: Case, *outputs: bytes) -> None:
    if case.legible is not None:
        assert [case.legible(output) for output in outputs] == [False] * len(outputs)


# ---------------------------------------------------------------- path 1: the core


@pytest.mark.sqlite_only("the corpus is about the image pipeline: on PostgreSQL a sample runs")
@pytest.mark.parametrize("case", CORPUS)
async def test_hostile_file_in_the_core_is_refused_or_cleaned(case: Case, veil: Veil,
                                                             at_rest) -> None:
    await _refused_or_cleaned_in_the_core(case, veil, at_rest)


# Refusals and clean-ups of each kind: what they leave in PostgreSQL's files and WAL.
PG_SAMPLE = ("png-truncated", "png-decompression-bomb", "svg", "png-parameters-itxt",
             "png-stealth-pnginfo", "jpeg-exif-gps-xmp-iptc-icc-jumbf")


@pytest.mark.postgresql_only("a sample of the corpus above")
@pytest.mark.parametrize("case", [p for p in CORPUS if p.id in PG_SAMPLE])
async def test_hostile_file_in_the_core_leaves_nothing_in_postgresql(case: Case, veil: Veil,
                                                                     at_rest) -> None:
    await _refused_or_cleaned_in_the_core(case, veil, at_rest)


async def _refused_or_cleaned_in_the_core(case: Case, veil: Veil, at_rest) -> None:
    source = _precondition(case)
    before = await footprint(veil)

    if case.refusal is not None:
        with pytest.raises(BadImage) as refused:
            await veil.images.create(ALICE, source, guild_id=GUILD, source="upload")
        assert refused.value.message == case.refusal
        await assert_nothing_left(veil, before, source, at_rest)
        return

    record = await veil.images.create(ALICE, source, guild_id=GUILD, source="upload")

    full = await assert_stored_clean(veil, record.public_id)
    assert_nothing_hidden(case, full)
    await assert_no_plaintext_on_disk(veil, source, full, at_rest=at_rest)


# ---------------------------------------------------------------- path 2: /upload on Discord


@pytest.mark.slow  # the whole corpus again, each through a bot started for it
@pytest.mark.parametrize("case", CORPUS)
async def test_hostile_upload_is_refused_or_cleaned(case: Case, veil_app) -> None:
    app = veil_app
    source = _precondition(case)
    before = await footprint(app.veil)
    upload = app.double.upload(source, case.filename, user=app.world.alice)

    handle = await app.run("upload", user=app.world.alice, options={"image": upload})

    # Whatever happened, the channel saw nothing and every answer was for alice alone.
    assert app.double.all_guild_channel_messages() == []
    assert handle.ephemeral and all(message.ephemeral for message in handle.messages)
    texts = [message.content or "" for message in handle.messages]
    dms = app.double.dm_messages(app.world.alice)

    if case.refusal is not None:
        fragments = case.refusal_fragments()
        assert any(all(fragment in text for fragment in fragments) for text in texts), texts
        assert dms == []
        assert [a for message in handle.messages for a in message.attachments] == []
        await assert_nothing_left(app.veil, before, source)
        return

    [delivered] = e2e.image_attachments(dms)
    [public_id] = [row[0] for row in await app.veil.ctx.db.fetchall("SELECT public_id FROM images")]
    assert any(public_id in text for text in texts), texts
    # Named by Veil after what the bytes really are, never after what the uploader claimed.
    extension = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[sniff_format(delivered.data)]
    assert delivered.filename == f"veil-{public_id}{extension}"
    assert all(case.filename not in text for text in [*texts, *(dm.content or "" for dm in dms)])
    assert_clean(delivered.data)
    stored = await assert_stored_clean(app.veil, public_id)
    assert delivered.data == stored
    assert_nothing_hidden(case, delivered.data)
    await assert_no_plaintext_on_disk(app.veil, source, stored)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_colour_key_becomes_real_transparency_rather_than_a_visible_colour(mode: str) -> None:
    # Found while building this corpus: the tRNS key lived in Pillow's info dict, which is
    # dropped before encoding, so the "transparent" colour used to come out opaque.
    source = factory.colour_key_png(mode)
    assert decode(source).mode == mode and "transparency" in decode(source).info

    image = decode(sanitize_image(source).data)

    assert image.mode == "RGBA"
    assert image.getpixel((4, 4))[3] == 0
    assert image.getpixel((28, 4))[3] == 255


# ---------------------------------------------------------------- before the download


def _case(name: str) -> Case:
    [case] = [case for case in CASES if case.name == name]
    return case


@pytest.mark.parametrize(
    ("name", "width", "height"),
    [("png-decompression-bomb", 50_000, 50_000), ("png-side-too-long", 20_000, 10)],
)
def test_the_pre_download_check_refuses_a_declared_giant_in_the_pipelines_words(
    name: str, width: int, height: int
) -> None:
    # A cog that refuses from Discord's announced numbers should say what the core would say.
    with pytest.raises(BadImage) as refused:
        check_declared_size(width=width, height=height)
    assert refused.value.message == _case(name).refusal


def test_the_pre_download_check_refuses_a_declared_byte_count_in_the_pipelines_words() -> None:
    too_big = 25 * 1024 * 1024 + 1
    with pytest.raises(BadImage) as announced:
        check_declared_size(byte_count=too_big)
    with pytest.raises(BadImage) as downloaded:
        sanitize_image(bytes(too_big))
    assert (
        announced.value.message
        == downloaded.value.message
        == ("The file is 25.1 MB; the limit is 25 MB.")
    )


def test_the_pre_download_check_lets_through_what_it_cannot_judge() -> None:
    # Unknown numbers (not an image to Discord, or no size given) are left to the pipeline.
    check_declared_size()
    check_declared_size(byte_count=0, width=None, height=None)
    check_declared_size(byte_count=1024, width=4096, height=4096)


# ---------------------------------------------------------------- fuzzing sanitize_image

FUZZ_SEEDS = (
    factory.plain_png(),
    factory.png_with_text_chunks(),
    factory.png_with_text("workflow", b"zTXt"),
    factory.palette_png(transparent=True),
    factory.png_16bit(),
    factory.png_with_alpha_stealth(STEALTH_PAYLOAD, base_alpha=200, gzipped=True),
    factory.animation("PNG"),
    factory.jpeg_with_metadata(orientation=6),
    factory.cmyk_jpeg(),
    factory.encode(factory.gradient(), "JPEG", progressive=True),
    factory.webp_with_metadata(),
    factory.webp_with_alpha_stealth(STEALTH_PAYLOAD),
    factory.animation("WEBP"),
    factory.animated_gif(),
    factory.gif_with_comment(),
)

_MAGICS = (
    factory.PNG_SIGNATURE,
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"RIFF\x00\x10\x00\x00WEBPVP8X",
    b"GIF89a",
    b"GIF87a",
)

# Chunk types worth splicing into a PNG: text and metadata, animation, and damage to the
# critical ones.
_PNG_SPLICE_TYPES = (
    b"tEXt",
    b"zTXt",
    b"iTXt",
    b"eXIf",
    b"iCCP",
    b"caBX",
    b"acTL",
    b"fcTL",
    b"fdAT",
    b"IHDR",
    b"PLTE",
    b"tRNS",
    b"IDAT",
    b"IEND",
    b"sBIT",
    b"pHYs",
)


def _boundaries(data: bytes) -> list[int]:
    """Offsets where a structure starts: PNG chunks, JPEG segments, RIFF chunks, else none."""
    try:
        if data.startswith(factory.PNG_SIGNATURE):
            offsets, position = [], 8
            for _, payload in factory.png_chunks(data):
                offsets.append(position)
                position += 12 + len(payload)
            return offsets + [position]
        if data.startswith(b"RIFF"):
            offsets, position = [], 12
            for _, payload in factory.webp_chunks(data):
                offsets.append(position)
                position += 8 + len(payload) + (len(payload) & 1)
            return offsets
        if data.startswith(b"\xff\xd8"):
            return [i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] >= 0xC0]
    except (ValueError, IndexError):
        pass
    return []


@st.composite
def _spliced_structure(draw: st.DrawFn, data: bytearray) -> bytes:
    """A structure (chunk or segment) to insert: made up, or copied from another seed."""
    if draw(st.booleans()):
        donor = draw(st.sampled_from(FUZZ_SEEDS))
        cuts = _boundaries(donor)
        if len(cuts) >= 2:
            start = draw(st.integers(0, len(cuts) - 2))
            return donor[cuts[start] : cuts[start + 1]]
    payload = draw(st.binary(max_size=64))
    if data.startswith(factory.PNG_SIGNATURE):
        kind = draw(st.sampled_from(_PNG_SPLICE_TYPES))
        if kind in (b"zTXt", b"IDAT", b"iCCP") and draw(st.booleans()):
            payload = payload[:8] + b"\x00\x00" + zlib.compress(payload * draw(st.integers(1, 50)))
        chunk = factory.png_chunk(kind, payload)
        return chunk if draw(st.booleans()) else chunk[:-4] + bytes(4)  # good or bad CRC
    if data.startswith(b"\xff\xd8"):
        marker = draw(st.integers(0xC0, 0xFE))
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
    if data.startswith(b"RIFF"):
        fourcc = draw(st.sampled_from([b"EXIF", b"XMP ", b"ICCP", b"ALPH", b"VP8 ", b"ANMF"]))
        return fourcc + len(payload).to_bytes(4, "little") + payload + b"\x00" * (len(payload) & 1)
    return payload


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid, often metadata-laden file damaged by a few bit flips, cuts and splices."""
    data = bytearray(draw(st.sampled_from(FUZZ_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(
            st.sampled_from(
                ("flip", "flip", "byte", "truncate", "splice", "drop", "duplicate", "overwrite")
            )
        )
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif operation == "byte":
            data[where] = draw(st.integers(0, 255))
        elif operation == "truncate":
            del data[max(1, where) :]
        elif operation == "overwrite":
            junk = draw(st.binary(min_size=1, max_size=32))
            data[where : where + len(junk)] = junk
        else:
            cuts = _boundaries(bytes(data))
            if len(cuts) < 2:
                continue
            index = draw(st.integers(0, len(cuts) - 2))
            start, end = cuts[index], cuts[index + 1]
            if operation == "splice":
                data[start:start] = draw(_spliced_structure(data))
            elif operation == "drop":
                del data[start:end]
            else:
                data[start:start] = data[start:end]
    return bytes(data)


@st.composite
def plausible_headers(draw: st.DrawFn) -> bytes:
    """Random pixels behind a valid PNG header, so the decoders themselves get the noise."""
    width, height = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    depth, colour = draw(
        st.sampled_from(
            [(8, 0), (8, 2), (8, 3), (8, 4), (8, 6), (16, 2), (16, 6), (1, 0), (4, 3), (2, 0)]
        )
    )
    interlace = draw(st.sampled_from([0, 1]))
    header = (
        width.to_bytes(4, "big")
        + height.to_bytes(4, "big")
        + bytes([depth, colour, 0, 0, interlace])
    )
    pixels = draw(st.binary(max_size=2048))
    chunks = [factory.png_chunk(b"IHDR", header)]
    if colour == 3:
        chunks.append(factory.png_chunk(b"PLTE", draw(st.binary(min_size=3, max_size=48))))
    chunks.append(factory.png_chunk(b"IDAT", zlib.compress(pixels)))
    return factory.PNG_SIGNATURE + b"".join(chunks) + factory.png_chunk(b"IEND", b"")


random_files = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(_MAGICS), st.binary(max_size=4096)),
    plausible_headers(),
)
any_fuzz_input = st.one_of(random_files, mutated_files(), mutated_files())


_watched_threads: set[int] = set()
_writes: list[tuple[str, tuple[object, ...]]] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_EVENTS = frozenset(
    {
        "os.mkdir",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.truncate",
        "os.symlink",
        "os.link",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
        "shutil.copyfile",
        "shutil.move",
    }
)


def _is_memory_file(path: object) -> bool:
    """An anonymous memfd, where the pipeline encodes JPEGs (see pipeline.py): memory with no
    name in any folder, so writing there puts nothing on disk. Anything else still counts."""
    if not isinstance(path, int):
        return False
    try:
        return os.readlink(f"/proc/self/fd/{path}").startswith("/memfd:veil-encode")
    except OSError:
        return False


def _audit_writes(event: str, args: tuple[object, ...]) -> None:
    if threading.get_ident() not in _watched_threads:
        return
    if event == "open":
        if _is_memory_file(args[0]):
            return
        mode, flags = args[1], args[2]
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        if writing or (isinstance(flags, int) and flags & _WRITE_FLAGS):
            _writes.append((event, args))
    elif event in _WRITE_EVENTS:
        _writes.append((event, args))


_install_lock = threading.Lock()
_installed: list[bool] = []


def _install_audit_hook() -> None:
    # Audit hooks cannot be removed, so this one is installed once and stays idle unless a
    # thread is being watched.
    with _install_lock:
        if not _installed:
            sys.addaudithook(_audit_writes)
            _installed.append(True)


@contextmanager
def watching_file_writes() -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    """Record every file write, rename or removal this thread attempts meanwhile."""
    _install_audit_hook()
    _writes.clear()
    _watched_threads.add(threading.get_ident())
    try:
        yield _writes
    finally:
        _watched_threads.discard(threading.get_ident())


@pytest.fixture
def private_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp dir of our own, so that nobody else's files can make the check flaky."""
    temp_dir = tmp_path / "temp"
    temp_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    return temp_dir


def check_sanitized_or_refused(data: bytes) -> str:
    """Sanitize; only BadImage may escape, no file is touched, an output is a clean picture."""
    try:
        with watching_file_writes() as writes:
            clean = sanitize_image(data)
    except BadImage as refused:
        assert writes == []
        assert refused.message  # always something a user can read
        return "refused"
    assert writes == []
    for output in (clean.data, clean.thumbnail):
        assert metadata_structures(output) == []
        assert factory.SECRET not in output
    image = decode(clean.data)
    assert image.size == (clean.width, clean.height)
    assert image.mode in ("L", "RGB", "RGBA")
    return "stored"


SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
# An example costs about a millisecond, so the fuzz takes some 20-30 s in CI; set
# VEIL_FUZZ_EXAMPLES for a longer run (150 000 found nothing more than the palette bug).
FUZZ_EXAMPLES = int(os.environ.get("VEIL_FUZZ_EXAMPLES", "20000"))
CORE_FUZZ_EXAMPLES = 400


# Pillow warns (UserWarning) about the corrupt EXIF blocks and APNG headers fuzzing makes.
IGNORE_PILLOW_COMPLAINTS = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.slow
@IGNORE_PILLOW_COMPLAINTS
def test_fuzzed_bytes_are_sanitized_or_refused_and_nothing_is_written(
    private_temp_dir: Path,
) -> None:
    outcomes: dict[str, int] = {"refused": 0, "stored": 0}
    started = time.monotonic()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=SLOW_IS_FINE)
    @given(data=any_fuzz_input)
    def fuzz(data: bytes) -> None:
        outcomes[check_sanitized_or_refused(data)] += 1

    temp_before = sorted(private_temp_dir.rglob("*"))
    fuzz()
    assert sorted(private_temp_dir.rglob("*")) == temp_before
    # Both outcomes happen, so the fuzzer reaches the encoders and not only the refusals.
    assert outcomes["refused"] > 0 and outcomes["stored"] > 0, outcomes
    print(f"fuzz: {outcomes} in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@IGNORE_PILLOW_COMPLAINTS
def test_fuzzed_files_through_the_core_leave_nothing_after_a_refusal(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    veil = loop.run_until_complete(Veil.open(tmp_path / "data"))
    outcomes = {"refused": 0, "stored": 0}

    async def one(data: bytes) -> None:
        before = await footprint(veil)
        try:
            record = await veil.images.create(ALICE, data, guild_id=GUILD, source="upload")
        except BadImage:
            outcomes["refused"] += 1
            after = await footprint(veil)
            assert after == before
            return
        outcomes["stored"] += 1
        assert (await footprint(veil)).rows["images"] == before.rows["images"] + 1
        for thumbnail in (False, True):
            stored = (await veil.images.decrypt_unchecked(record, thumbnail=thumbnail)).data
            assert metadata_structures(stored) == []
            assert factory.SECRET not in stored
        assert _files(veil.data_dir / "tmp") == []

    @settings(max_examples=CORE_FUZZ_EXAMPLES, deadline=None, suppress_health_check=SLOW_IS_FINE)
    @given(data=any_fuzz_input)
    def fuzz(data: bytes) -> None:
        loop.run_until_complete(one(data))

    try:
        fuzz()
        loop.run_until_complete(assert_no_plaintext_on_disk(veil))
    finally:
        loop.run_until_complete(veil.close())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    assert outcomes["refused"] > 0 and outcomes["stored"] > 0, outcomes
