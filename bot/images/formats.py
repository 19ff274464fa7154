"""Which image formats Veil accepts, recognised by their bytes alone.

A file's name and extension come from the uploader and prove nothing, so the type is read from
the magic bytes at the start of the data. This module owns the allow-list, the mapping from an
accepted input format to the format we store, and the names used to tell a user why a file of
another type was refused.
"""

import re
import zlib
from dataclasses import dataclass
from typing import Final

ACCEPTED_FORMATS_TEXT: Final = "PNG, JPEG, WebP or GIF"

# Pillow format name of the input -> format of the sanitized output. GIF becomes PNG because we
# keep only the first frame, and PNG stores that frame losslessly without GIF's 256-colour limit.
OUTPUT_FORMAT: Final[dict[str, str]] = {
    "PNG": "PNG",
    "JPEG": "JPEG",
    "WEBP": "WEBP",
    "GIF": "PNG",
}

MIME_TYPE: Final[dict[str, str]] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# Types people commonly try to send, named so that the refusal can say what the file was.
# Each entry is (offset, magic, name).
_REFUSED_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"%PDF", "PDF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"PK\x03\x04", "ZIP archive"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypavis", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
)


def sniff_format(data: bytes) -> str | None:
    """Return "PNG", "JPEG", "WEBP" or "GIF" if the bytes start like one of those, else None.

    Only accepted formats are reported; anything else, however well known, is None.
    """
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def name_refused_type(data: bytes) -> str | None:
    """Name a well-known type we refuse (for the error message), or None if unrecognised."""
    for offset, magic, name in _REFUSED_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    # SVG is XML text, so look for its root element near the start rather than a fixed magic.
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) and b"<svg" in head:
        return "SVG"
    return None


def declared_size(data: bytes, source_format: str) -> tuple[int, int] | None:
    """Width and height as the file's header declares them, read without decoding anything.

    Returns None when the header is too short or unusual to read here; the caller then relies on
    the size Pillow reports after its own (lazy) header parse.
    """
    if source_format == "PNG":
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if source_format == "GIF":
        if len(data) < 10:
            return None
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if source_format == "WEBP":
        return _webp_size(data)
    if source_format == "JPEG":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        # Extended format: the canvas size, each stored minus one in 24 bits.
        return (
            1 + int.from_bytes(data[24:27], "little"),
            1 + int.from_bytes(data[27:30], "little"),
        )
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a" and len(data) >= 30:
        # Lossy key frame: 14-bit width and height after the start code.
        return (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        # Lossless: two 14-bit fields, each minus one, after the 0x2F signature byte.
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF_MARKERS: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM and RST0-7 (and SOI).
_JPEG_STANDALONE_MARKERS: Final = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = _jpeg_frame_offset(data)
    if position is None or position + 9 > len(data):
        return None
    height = int.from_bytes(data[position + 5 : position + 7], "big")
    width = int.from_bytes(data[position + 7 : position + 9], "big")
    return width, height


def _jpeg_frame_header(data: bytes) -> tuple[int, int] | None:
    """The first frame header's marker and its sample precision in bits, or None."""
    position = _jpeg_frame_offset(data)
    if position is None or position + 5 > len(data):
        return None
    return data[position + 1], data[position + 4]


def _jpeg_frame_offset(data: bytes) -> int | None:
    """Where the first start-of-frame marker segment begins, walking the segments from SOI."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:
            # Fill byte before a marker.
            position += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            position += 2
            continue
        if marker in (0xD9, 0xDA):
            # End of image or start of scan before any frame header: nothing to read here.
            return None
        if marker in _JPEG_SOF_MARKERS:
            return position
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2:
            return None
        position += 2 + length
    return None


# What decoding a PNG needs: the header, the palette and its transparency, the pixel data and
# the end, plus the two ancillary chunks whose meaning we apply to the pixels before dropping
# them (the colour profile and the EXIF orientation). Every other chunk is cut before Pillow
# parses the file: text (whose compressed forms may inflate past Pillow's 1 MB safety limit
# and get an honest file refused), timestamps, C2PA, animation control (we keep the still
# default image) and anything private, so the parser sees less of what it need not read.
_PNG_CHUNKS_FOR_DECODING: Final = frozenset(
    {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"iCCP", b"eXIf"}
)


def png_without_ancillary_chunks(data: bytes) -> bytes:
    """The PNG with only the chunks decoding needs, in their order, each copied byte for byte.

    Structure problems are left for Pillow to find (so they are reported as damage in one
    place): a chunk whose length runs past the end is kept as it is, truncated, and stops the
    walk; bytes after IEND are dropped, as nothing reads them.
    """
    view = memoryview(data)
    kept = [view[: len(_PNG_SIGNATURE)]]
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = bytes(data[position + 4 : position + 8])
        end = position + 12 + length
        if end > len(data):
            kept.append(view[position:])
            break
        if chunk_type in _PNG_CHUNKS_FOR_DECODING:
            kept.append(view[position:end])
        if chunk_type == b"IEND":
            break
        position = end
    else:
        kept.append(view[position:])
    return b"".join(kept)


@dataclass(frozen=True)
class PngHints:
    """What chunks the filter drops say about the pixels, read before they are dropped.

    ``gamma`` is gAMA's encoding exponent (0.45455 for a 2.2 display); ``chromaticities`` is
    cHRM's white, red, green and blue as (x, y) pairs; ``has_colour_chunk`` is whether an sRGB
    or iCCP chunk says more (a decoder then ignores gAMA and cHRM, as the PNG spec asks);
    ``xmp_orientation`` is the orientation an XMP packet in an iTXt chunk gives (tiff:Orientation),
    which viewers honour like the EXIF one when the file has no EXIF.
    """

    gamma: float | None = None
    chromaticities: tuple[tuple[float, float], ...] | None = None
    has_colour_chunk: bool = False
    xmp_orientation: int | None = None


# An XMP packet is a few kilobytes; a compressed one is inflated up to this much, no further.
_MAX_XMP_BYTES: Final = 1024 * 1024
_XMP_KEYWORD: Final = b"XML:com.adobe.xmp"
# Attribute (tiff:Orientation="6") or element (<tiff:Orientation>6<...) form, as Pillow reads it.
_XMP_ORIENTATION: Final = re.compile(rb'tiff:Orientation(?:="|>)\s*([1-8])\b')


def png_hints(data: bytes) -> PngHints:
    """Read gAMA, cHRM, sRGB/iCCP presence and an XMP orientation from a PNG's chunk list.

    Chunks are walked like png_without_ancillary_chunks does; anything malformed here is
    ignored (the decoder judges the structure), so a hint is either well formed or absent.
    """
    gamma: float | None = None
    chromaticities: tuple[tuple[float, float], ...] | None = None
    has_colour_chunk = False
    orientation: int | None = None
    before_image_data = True
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = bytes(data[position + 4 : position + 8])
        end = position + 12 + length
        if end > len(data) or chunk_type == b"IEND":
            break
        payload = b"" if chunk_type == b"IDAT" else data[position + 8 : position + 8 + length]
        # Colour chunks count only before the image data, where the PNG spec puts them.
        if chunk_type == b"IDAT":
            before_image_data = False
        elif chunk_type == b"gAMA" and length == 4 and before_image_data:
            value = int.from_bytes(payload, "big")
            gamma = value / 100_000 if value else None
        elif chunk_type == b"cHRM" and length == 32 and before_image_data:
            values = [int.from_bytes(payload[i : i + 4], "big") / 100_000 for i in range(0, 32, 4)]
            chromaticities = tuple(zip(values[0::2], values[1::2], strict=True))
        elif chunk_type in (b"sRGB", b"iCCP") and before_image_data:
            has_colour_chunk = True
        elif chunk_type == b"iTXt" and orientation is None:
            orientation = _xmp_orientation(payload)
        position = end
    return PngHints(gamma, chromaticities, has_colour_chunk, orientation)


def _xmp_orientation(itxt: bytes) -> int | None:
    keyword, separator, rest = itxt.partition(b"\x00")
    if keyword != _XMP_KEYWORD or not separator or len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    # Then a language tag and a translated keyword, each ending with a zero byte, then the text.
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        return None
    text = parts[2]
    if compressed:
        if method != 0:
            return None
        try:
            text = zlib.decompressobj().decompress(text, _MAX_XMP_BYTES)
        except zlib.error:
            return None
    match = _XMP_ORIENTATION.search(text)
    return int(match[1]) if match else None


def jpeg_unsupported_feature(data: bytes) -> str | None:
    """Name what makes this JPEG undecodable by Pillow (samples of other than 8 bits), if so.

    Pillow reads JPEG through libjpeg-turbo's 8-bit interface, which refuses 12- and 16-bit
    samples (medical, scientific and some raw workflows write them) before reading a pixel.
    Read here from the frame header without decoding anything, so that an honest file gets an
    honest refusal instead of "damaged". None when the header is 8-bit or cannot be found.
    """
    header = _jpeg_frame_header(data)
    if header is None or header[1] == 8:
        return None
    return f"{header[1]}-bit samples"
