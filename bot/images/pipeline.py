"""The image pipeline: untrusted bytes in, a sanitized image and its thumbnail out.

This module owns the limits checked before decoding, the decode itself (every way Pillow can
fail becomes a BadImage a user can read) and the encoding of clean pixels, which carries no
metadata at all. Pixel rules live in ``pixels.py``, format recognition in ``formats.py``.
Nothing here touches the disk or ever sees the file's original name.
"""

import io
import math
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from concurrent.futures import wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from PIL import (
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
)

from bot.core.errors import BadImage
from bot.images.colour import grey_to_srgb, png_chunks_profile, to_srgb
from bot.images.formats import (
    ACCEPTED_FORMATS_TEXT,
    MIME_TYPE,
    OUTPUT_FORMAT,
    PngHints,
    declared_size,
    jpeg_unsupported_feature,
    name_refused_type,
    png_hints,
    png_without_ancillary_chunks,
    sniff_format,
)
from bot.images.pixels import (
    clear_hidden_colour,
    plain_mode,
    scrub_low_bits,
    shrink_for_thumbnail,
    upright,
)
from bot.images.work import IMAGE_WORK, THUMBNAIL_WORK, ImageWork

# The decoders for the four accepted formats, registered at import rather than by Pillow on the
# first Image.open, which would import them on a worker thread while holding the GIL (a 176 ms
# stall of the event loop on the first upload, measured); WebP is not in Pillow's first batch.
_DECODERS: Final = (GifImagePlugin, JpegImagePlugin, PngImagePlugin, WebPImagePlugin)

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
_UNSUPPORTED_JPEG: Final = (
    "This JPEG uses {}, which Veil cannot decode. "
    "Export it as a standard 8-bit JPEG or as a PNG and send it again."
)

# warnings.catch_warnings swaps process-wide filter state, so two threads using it at once can
# restore each other's filters in the wrong order. Serialise it; only Image.open runs inside,
# which parses headers and takes microseconds, so decoding itself still runs in parallel.
_OPEN_LOCK: Final = threading.Lock()


def sanitize_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> CleanImage:
    """Check, decode and re-encode an untrusted image, or raise BadImage saying why not.

    CPU-bound and blocking: from async code use sanitize_image_async.
    """
    source_format = _check_before_decoding(data, limits)
    hints = PngHints()
    if source_format == "PNG":
        # What the dropped chunks say about the pixels is read first, and applied in _decode.
        hints = png_hints(data)
        data = png_without_ancillary_chunks(data)

    clean = _decode(data, source_format, limits, hints)
    output_format = OUTPUT_FORMAT[source_format]
    _scrub(clean, output_format)
    # The thumbnail is made on a second thread while this one encodes the full size: both only
    # read ``clean``, and both release the GIL while they work on pixels. Made after the full
    # size, it added 10-20% to a 12-megapixel JPEG's ingest (bench/ingest.py, issue 12).
    thumbnail_job = THUMBNAIL_WORK.submit(_thumbnail, clean, output_format)
    try:
        full = _encode(clean, output_format)
    except BaseException:
        # The thumbnail must be done with ``clean`` before the failure goes up.
        wait([thumbnail_job])
        raise
    thumbnail = thumbnail_job.result()
    if thumbnail is None:
        # Already thumbnail-sized: the thumbnail is the image itself, no second encode.
        thumbnail = full

    return CleanImage(
        data=full,
        format=output_format,
        mime=MIME_TYPE[output_format],
        width=clean.width,
        height=clean.height,
        thumbnail=thumbnail,
    )


def _thumbnail(clean: Image.Image, output_format: str) -> bytes | None:
    """The encoded thumbnail, or None if the image is already thumbnail-sized."""
    small = shrink_for_thumbnail(clean)
    if small is None:
        return None
    # Resampling mixes neighbours into new values, so the thumbnail is scrubbed on its own.
    _scrub(small, output_format)
    return _encode(small, output_format)


def _check_before_decoding(data: bytes, limits: ImageLimits) -> str:
    """Every refusal that needs no decoding (size, type, declared dimensions, JPEG precision).

    Returns the sniffed format. Cheap (header bytes only), so the async entry point runs it on
    the event loop too, and a file refused here never takes a place in the workers' queue.
    """
    _check_file_size(data, limits)
    source_format = sniff_format(data)
    if source_format is None:
        raise BadImage(_refused_type_message(data))
    size = declared_size(data, source_format)
    if size is not None:
        _check_dimensions(size, limits)
    if source_format == "JPEG" and (feature := jpeg_unsupported_feature(data)) is not None:
        raise BadImage(_UNSUPPORTED_JPEG.format(feature))
    return source_format


def _decode(
    data: bytes, source_format: str, limits: ImageLimits, hints: PngHints
) -> Image.Image:
    """The file's pixels upright, in sRGB and in a plain mode, with an empty info dict.

    Its own function so that the decoded image and its intermediates are freed on return,
    before anything is encoded: a 40-megapixel image is 120 MB per copy.
    """
    image = _open(data, source_format, limits)
    _allocate_without_the_gil(image)
    with _reading_untrusted_pixels(limits):
        image.load()
        _check_decoded(image)
        profile = image.info.get("icc_profile")
        # Still the file's own structures at work here (EXIF, palette, transparency), so a
        # failure is the file's fault too.
        pixels = upright(image, hints.xmp_orientation)
        grey = pixels.mode in _GREY_MODES
        if pixels.mode == "CMYK":
            # Only a CMYK profile can say what the inks look like; without one (or with one
            # littlecms refuses), plain_mode falls back to the textbook formula.
            pixels = to_srgb(pixels, profile)
            profile = None
        clean = plain_mode(pixels)
    if profile is None and not hints.has_colour_chunk:
        profile = png_chunks_profile(hints.gamma, hints.chromaticities, grey=grey)
    # A grey source is converted through its grey profile even when it became RGBA (grey with
    # transparency); an RGB profile on a grey image, or the reverse, is ignored.
    clean = grey_to_srgb(clean, profile) if grey else to_srgb(clean, profile)
    # Some encoders fall back to the source's info for icc_profile, transparency or comment
    # when no argument is given, so the info dict goes before anything is encoded.
    clean.info = {}
    return clean


# Decoded modes that hold grey, whatever plain_mode stores them as.
_GREY_MODES: Final = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L"})


# Modes whose pixel memory can be made ahead of decoding without changing what is decoded
# (no palette for the decoder to attach), and the formats whose decoders write into it.
_PREALLOCATED_MODES: Final = frozenset({"L", "LA", "RGB", "RGBA", "CMYK"})
_PREALLOCATED_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP"})


def _allocate_without_the_gil(image: ImageFile.ImageFile) -> None:
    """Give the decoder its pixel memory now, zeroed by a fill that releases the GIL.

    Left to itself, ImageFile.load allocates with Image.core.new, which zero-fills while holding
    the GIL: 50 ms for a 40-megapixel image, measured, during which the event loop cannot run
    (the longest loop stall while decoding went from 88-104 ms to 12-16 ms with this).
    Image.new with a colour fills the same memory with the GIL released. Only after _open has
    checked the size, and only where the decoder simply writes into the image it is given.
    """
    if image.format in _PREALLOCATED_FORMATS and image.mode in _PREALLOCATED_MODES:
        image.im = Image.new(image.mode, image.size, 0).im


def _scrub(image: Image.Image, output_format: str) -> None:
    """Remove, in place, what the pixels could carry that the picture does not show.

    Low bits first: its alpha table turns alpha 1 into 0, whose colour the second step clears.
    """
    if _keeps_low_bits(output_format, image.mode):
        scrub_low_bits(image)
    clear_hidden_colour(image)


async def sanitize_image_async(
    data: bytes, limits: ImageLimits = DEFAULT_LIMITS, *, work: ImageWork = IMAGE_WORK
) -> CleanImage:
    """sanitize_image on the image workers (bot/images/work.py), off the event loop.

    At most one image per core is decoded at once, which bounds the memory that uploads can
    take together; a few more wait their turn, and beyond that RateLimited says to retry soon.
    Files that can be refused from their header alone are refused here without queueing.
    """
    _check_before_decoding(data, limits)
    return await work.run(sanitize_image, data, limits)


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
    if width * height > (limit := _pixel_limit(limits)):
        raise BadImage(
            f"The image is {width}×{height} pixels ({_describe_pixels(width * height)}); "
            f"the limit is {_describe_pixels(limit)}."
        )
    if max(width, height) > limits.max_side:
        raise BadImage(
            f"The image is {width}×{height} pixels; "
            f"each side may be at most {limits.max_side} pixels."
        )


def _pixel_limit(limits: ImageLimits) -> int:
    """Ours, or Pillow's own bomb limit if some code lowered it below ours.

    Pillow only warns between MAX_IMAGE_PIXELS and twice that, but _open makes the warning an
    error, so its limit is MAX_IMAGE_PIXELS itself. Checking it here, with the file's size in
    hand, gives the same message with numbers as our own limit instead of Pillow's jargon.
    """
    pillow = Image.MAX_IMAGE_PIXELS
    return limits.max_pixels if not pillow else min(limits.max_pixels, int(pillow))


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
    with _reading_untrusted_pixels(limits), _OPEN_LOCK, warnings.catch_warnings():
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
def _reading_untrusted_pixels(limits: ImageLimits) -> Iterator[None]:
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Only reached when Pillow found a size that our own reading of the header could not
        # (a GIF frame larger than its screen, an unusual JPEG), so the size is not at hand.
        raise BadImage(
            f"The image has more pixels than the limit of {_describe_pixels(_pixel_limit(limits))}."
        ) from error
    except _DECODE_FAILURES as error:
        raise BadImage(_DAMAGED) from error


def _keeps_low_bits(output_format: str, mode: str) -> bool:
    """Whether the encoder would store pixel low bits exactly, so they must be scrubbed first."""
    return output_format == "PNG" or (output_format == "WEBP" and mode == "RGBA")


def _encode(image: Image.Image, output_format: str) -> bytes:
    if output_format == "JPEG" and hasattr(os, "memfd_create"):
        return _encode_jpeg_to_memory_file(image)
    buffer = io.BytesIO()
    image.save(buffer, format=output_format, **_SAVE_OPTIONS[output_format])
    return buffer.getvalue()


def _encode_jpeg_to_memory_file(image: Image.Image) -> bytes:
    """Encode a JPEG into an anonymous in-memory file instead of a BytesIO.

    Into a Python stream, Pillow's JPEG encoder runs holding the GIL and lets go only between
    64 KB pieces of output: measured on a 40-megapixel image, the event loop then got a turn
    about every 12 ms (50 turns in 0.5 s), and ten uploads at once blocked it for far longer
    than 20 ms. Given a file descriptor, Pillow encodes with the GIL released (500 turns).
    memfd_create gives a descriptor for memory with no name in any folder: nothing of the
    image touches the disk, which guarantee 9 forbids.
    """
    descriptor = os.memfd_create("veil-encode", os.MFD_CLOEXEC)
    with os.fdopen(descriptor, "w+b") as memory:
        image.save(memory, format="JPEG", **_SAVE_OPTIONS["JPEG"])
        memory.flush()
        memory.seek(0)
        return memory.read()


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
