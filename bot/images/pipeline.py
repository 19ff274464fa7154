"""The image pipeline: untrusted bytes in, a sanitized image and its thumbnail out.

This module owns the limits checked before decoding, the decode itself (every way Pillow can
fail becomes a BadImage a user can read) and the encoding of clean pixels, which carries no
metadata at all. Pixel rules live in ``pixels.py``, format recognition in ``formats.py``.
Nothing here touches the disk or ever sees the file's original name.
"""

import asyncio
import io
import math
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from PIL import Image, ImageFile

from bot.core.errors import BadImage
from bot.images.formats import (
    ACCEPTED_FORMATS_TEXT,
    MIME_TYPE,
    OUTPUT_FORMAT,
    declared_size,
    name_refused_type,
    sniff_format,
)
from bot.images.pixels import plain_mode, scrub_low_bits, shrink_for_thumbnail, upright

_MEGABYTE: Final = 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """What an input may be at most; checked before any pixel is decoded."""

    max_bytes: int = 25 * _MEGABYTE
    max_pixels: int = 40_000_000
    max_side: int = 16_384


DEFAULT_LIMITS: Final = ImageLimits()


@dataclass(frozen=True)
class CleanImage:
    """A sanitized image ready to encrypt and store: pixels only, no metadata of any kind."""

    # The bytes stay out of repr so that a log line or a test failure never dumps an image.
    data: bytes = field(repr=False)
    format: str
    mime: str
    width: int
    height: int
    thumbnail: bytes = field(repr=False)


# Encoder settings. Only these keys ever reach Image.save: never exif, icc_profile, pnginfo,
# xmp or comment, so no metadata can be written even by mistake.
_SAVE_OPTIONS: Final[dict[str, dict[str, Any]]] = {
    "JPEG": {"quality": 90, "optimize": False},
    # Level 4 rather than zlib's default 6: measured on a 2048x2048 photo with the zlib-ng that
    # Pillow wheels ship, it is about 3x faster than 6 for files about 8% larger, and 7-9 cost
    # 2-12x more time for a few percent. Ingest latency matters more than that last 8%.
    "PNG": {"compress_level": 4},
    # Lossy WebP re-encoding scrambles colour low bits by itself; its alpha plane is stored
    # losslessly, which is why RGBA WebP output still goes through scrub_low_bits.
    "WEBP": {"quality": 90, "lossless": False},
}

# What Pillow raises for a file that is truncated, corrupt or lies about its own structure.
_DECODE_FAILURES: Final = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)

_DAMAGED: Final = "The image is damaged or incomplete, so it could not be read."
_TOO_LARGE_TO_OPEN: Final = (
    "The image declares a size too large to open safely (it may be a decompression bomb)."
)

# warnings.catch_warnings swaps process-wide filter state, so two threads using it at once can
# restore each other's filters in the wrong order. Serialise it; only Image.open runs inside,
# which parses headers and takes microseconds, so decoding itself still runs in parallel.
_OPEN_LOCK: Final = threading.Lock()


def sanitize_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> CleanImage:
    """Check, decode and re-encode an untrusted image, or raise BadImage saying why not.

    CPU-bound and blocking: from async code use sanitize_image_async.
    """
    _check_file_size(data, limits)
    source_format = sniff_format(data)
    if source_format is None:
        raise BadImage(_refused_type_message(data))
    size = declared_size(data, source_format)
    if size is not None:
        _check_dimensions(size, limits)

    image = _open(data, source_format, limits)
    with _reading_untrusted_pixels():
        image.load()
        _check_decoded(image)
        # Still the file's own structures at work here (EXIF, palette, transparency), so a
        # failure is the file's fault too.
        clean = plain_mode(upright(image))

    output_format = OUTPUT_FORMAT[source_format]
    # Some encoders fall back to the source's info for icc_profile, transparency or comment
    # when no argument is given, so the info dict goes before anything is encoded.
    clean.info = {}
    if _keeps_low_bits(output_format, clean.mode):
        clean = scrub_low_bits(clean)
    full = _encode(clean, output_format)

    small = shrink_for_thumbnail(clean)
    if small is None:
        # Already thumbnail-sized: the thumbnail is the image itself, no second encode.
        thumbnail = full
    else:
        if _keeps_low_bits(output_format, small.mode):
            small = scrub_low_bits(small)
        thumbnail = _encode(small, output_format)

    return CleanImage(
        data=full,
        format=output_format,
        mime=MIME_TYPE[output_format],
        width=clean.width,
        height=clean.height,
        thumbnail=thumbnail,
    )


async def sanitize_image_async(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> CleanImage:
    """sanitize_image in the default executor, so the event loop keeps serving others."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, sanitize_image, data, limits)


def check_declared_size(
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    byte_count: int | None = None,
    width: int | None = None,
    height: int | None = None,
) -> None:
    """Refuse, before downloading anything, a file whose announced size breaks the limits.

    For callers that are told a file's byte count and dimensions before they have its bytes
    (Discord announces both for an attachment). The messages are the pipeline's own, so a user
    reads the same refusal whichever check catches the file; sanitize_image checks the real
    bytes again afterwards, as announced numbers prove nothing.
    """
    if byte_count is not None and byte_count > 0:
        _check_byte_count(byte_count, limits)
    if width and height:
        _check_dimensions((width, height), limits)


def _check_file_size(data: bytes, limits: ImageLimits) -> None:
    if not data:
        raise BadImage("The file is empty.")
    _check_byte_count(len(data), limits)


def _check_byte_count(count: int, limits: ImageLimits) -> None:
    if count > limits.max_bytes:
        raise BadImage(
            # Rounded up, so a file just over the limit never reads as equal to it.
            f"The file is {_describe_bytes(count, round_up=True)}; "
            f"the limit is {_describe_bytes(limits.max_bytes)}."
        )


def _check_dimensions(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise BadImage(
            f"The image is {width}×{height} pixels ({_describe_pixels(width * height)}); "
            f"the limit is {_describe_pixels(limits.max_pixels)}."
        )
    if max(width, height) > limits.max_side:
        raise BadImage(
            f"The image is {width}×{height} pixels; "
            f"each side may be at most {limits.max_side} pixels."
        )


def _refused_type_message(data: bytes) -> str:
    kind = name_refused_type(data)
    if kind is None:
        return f"This file is not an image Veil accepts. Send a {ACCEPTED_FORMATS_TEXT}."
    return f"{kind} files are not accepted. Send a {ACCEPTED_FORMATS_TEXT}."


def _open(data: bytes, source_format: str, limits: ImageLimits) -> ImageFile.ImageFile:
    """Parse the header only (Image.open is lazy) and check the size Pillow found there.

    Pillow is told which single format to expect, so no other parser ever sees these bytes.
    Its DecompressionBombWarning becomes an error here; our own limits are checked as well,
    because Image.MAX_IMAGE_PIXELS is global and any code may raise it or set it to None.
    """
    with _reading_untrusted_pixels(), _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=[source_format])
    # A GIF grows to fit a first frame larger than its screen, so this can differ from the
    # declared size checked earlier.
    _check_dimensions(image.size, limits)
    return image


def _check_decoded(image: Image.Image) -> None:
    """Refuse a decode that Pillow completed without all it needs to give the pixels meaning.

    A palette image whose palette never arrived (a PNG without PLTE, or with PLTE after the
    image data, both invalid) decodes to bare indices; Pillow then asserts deep inside its own
    code, an error no user could read. Found by fuzzing (tests/test_assurance_files.py).
    """
    if image.mode in ("P", "PA") and image.palette is None:
        raise BadImage(_DAMAGED)


@contextmanager
def _reading_untrusted_pixels() -> Iterator[None]:
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImage(_TOO_LARGE_TO_OPEN) from error
    except _DECODE_FAILURES as error:
        raise BadImage(_DAMAGED) from error


def _keeps_low_bits(output_format: str, mode: str) -> bool:
    """Whether the encoder would store pixel low bits exactly, so they must be scrubbed first."""
    return output_format == "PNG" or (output_format == "WEBP" and mode == "RGBA")


def _encode(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=output_format, **_SAVE_OPTIONS[output_format])
    return buffer.getvalue()


def _describe_bytes(count: int, *, round_up: bool = False) -> str:
    for unit, size in (("MB", _MEGABYTE), ("KB", 1024)):
        if count >= size:
            return f"{_one_decimal(count / size, round_up=round_up)} {unit}"
    return f"{count} bytes"


def _describe_pixels(count: int) -> str:
    if count >= 1_000_000:
        return f"{_one_decimal(count / 1_000_000)} megapixels"
    return f"{count} pixels"


def _one_decimal(value: float, *, round_up: bool = False) -> str:
    if round_up:
        value = math.ceil(value * 10) / 10
    return f"{value:.1f}".removesuffix(".0")
