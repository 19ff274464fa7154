"""Pixel-level sanitizing: upright orientation, a few plain modes, no hidden low bits, thumbnails.

Everything here works on decoded pixels. It decides what the stored picture looks like; it does
not read files or write bytes (that is the pipeline's job).
"""

import math
from typing import Final, cast

from PIL import ExifTags, Image

THUMBNAIL_SIDE: Final = 512
# A thumbnail this close to THUMBNAIL_SIDE is accepted as is (see shrink_for_thumbnail).
_CLOSE_ENOUGH: Final = 7 / 8

# The transpose that undoes each EXIF orientation (values 2-8; 1 means "already upright").
_UPRIGHT: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Alpha at or above this is treated as fully opaque. 254 only differs from 255 in the low bit,
# which is exactly where stealth payloads live, and the low-bit scrub below maps it to 255.
_OPAQUE_ALPHA: Final = 254

# Lookup tables for Image.point, one 256-entry table per band.
# Colour: zero the least significant bit, which destroys LSB payloads (A1111 stealth_rgbinfo and
# the like) at a cost of at most 1/255 per channel, invisible to the eye.
_COLOUR_LUT: Final = [value & 0xFE for value in range(256)]
# Alpha: force the low bit to equal the top bit instead of zeroing it, so 0 (transparent) and
# 255 (opaque) survive unchanged. The low bit then repeats what the picture already shows and
# can carry nothing of its own, which defeats stealth_pnginfo/stealth_pngcomp.
_ALPHA_LUT: Final = [value | 1 if value >= 128 else value & 0xFE for value in range(256)]
_LOW_BIT_LUTS: Final[dict[str, list[int]]] = {
    "L": _COLOUR_LUT,
    "RGB": _COLOUR_LUT * 3,
    "RGBA": _COLOUR_LUT * 3 + _ALPHA_LUT,
}

# Colour under transparency. An editor's eraser often only lowers alpha and leaves the colour
# values in place, so a "blank" region can still spell a name once the alpha is dropped. What
# the picture shows of a pixel is its colour times alpha/255 over whatever lies behind it:
# - alpha 0 shows nothing, so its colour becomes one constant, black, the value premultiplied
#   storage would hold (and the cheapest to compress);
# - alpha 1 to FAINT_ALPHA shows at most 8/255 (3%) of its colour, barely there on screen,
#   yet the colour underneath can carry an "erased" text at full contrast.
#   Any quantisation that keeps two levels keeps dark text on light paper legible, so these
#   pixels are quantised to one level: all take the mean colour of the image's faint pixels.
#   A fading shadow or glow is usually one colour and keeps it exactly; the shown picture
#   moves by at most 8/255 anywhere; and the hidden region has no variance left to read.
# Run after the low-bit scrub, whose alpha table maps 1 to 0 and 9 to 8.
FAINT_ALPHA: Final = 8
_TRANSPARENT_COLOUR: Final = (0, 0, 0)
# Rows handled at a time, so that scrubbing a 40-megapixel image needs a few megabytes more
# rather than another copy of it, and no single call holds the GIL for long (see work.py).
_STRIP_ROWS: Final = 256
_FAINT_MASK_LUT: Final = [255 if value <= FAINT_ALPHA else 0 for value in range(256)]
_FAINT_ONLY_LUT: Final = [255 if 0 < value <= FAINT_ALPHA else 0 for value in range(256)]


def upright(im: Image.Image, xmp_orientation: int | None = None) -> Image.Image:
    """Rotate or flip the pixels as the EXIF orientation asks, so that dropping EXIF is safe.

    ``xmp_orientation``, read from XMP the decoder no longer sees (a PNG's iTXt), applies when
    the EXIF gives none, as Pillow and viewers do. Pillow's ImageOps.exif_transpose would also
    rewrite the EXIF we are about to discard and copy the whole image when there is nothing to
    do; we only need the transpose.
    """
    fallback = xmp_orientation or 1
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, fallback)
    except Exception:
        # The EXIF is untrusted and is thrown away; a block too broken to parse simply gives no
        # orientation, which is no reason to refuse otherwise good pixels.
        orientation = fallback
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return im if method is None else im.transpose(method)


def plain_mode(im: Image.Image) -> Image.Image:
    """Convert to "L", "RGB" or "RGBA", the only modes we store.

    Fewer modes mean fewer encoder paths to get right, and every output can be checked the same
    way. An alpha channel that is opaque everywhere is dropped.
    """
    mode = im.mode
    if mode in ("L", "RGB"):
        if "transparency" in im.info:
            # A colour key (PNG tRNS): pixels of that one colour are transparent. The info dict
            # is dropped before encoding, so the key becomes a real alpha channel here.
            return _without_opaque_alpha(im.convert("RGBA"))
        return im
    if mode == "RGBA":
        return _without_opaque_alpha(im)
    if mode == "1":
        return im.convert("L")
    if mode == "I" or mode.startswith("I;16"):
        return _sixteen_bit_to_grey(im)
    if mode == "CMYK":
        return im.convert("RGB")
    if mode == "LA":
        return im.convert("L") if _alpha_is_opaque(im) else im.convert("RGBA")
    if mode in ("P", "PA"):
        if not im.has_transparency_data:
            return im.convert("RGB")
        return _without_opaque_alpha(im.convert("RGBA"))
    # Anything else a decoder may hand us (premultiplied RGBa/La, YCbCr, ...) goes the same way.
    if "A" in im.getbands() or "a" in im.getbands():
        return _without_opaque_alpha(im.convert("RGBA"))
    return im.convert("RGB")


def scrub_low_bits(im: Image.Image) -> Image.Image:
    """Make the least significant bit of every channel carry no hidden data (see the tables).

    Changes ``im`` in place, a strip of rows at a time (Image.point would make a whole second
    copy), and returns it.
    """
    table = _LOW_BIT_LUTS[im.mode]
    for box in _strips(im):
        im.paste(im.crop(box).point(table), box)
    return im


def clear_hidden_colour(im: Image.Image) -> Image.Image:
    """Make the colour of invisible and nearly invisible RGBA pixels carry nothing (see above).

    Changes ``im`` in place, a strip of rows at a time, and returns it.
    """
    if im.mode != "RGBA":
        return im
    # First pass: which strips hold hidden pixels, and the mean colour of the faint ones.
    sums, count, touched = [0, 0, 0], 0, []
    for box in _strips(im):
        strip = im.crop(box)
        alpha = strip.getchannel("A")
        if _lowest(alpha) > FAINT_ALPHA:
            continue
        touched.append(box)
        faint = sum(alpha.histogram()[1 : FAINT_ALPHA + 1])
        if faint:
            colours = strip.histogram(mask=alpha.point(_FAINT_ONLY_LUT))
            for band in range(3):
                counts = colours[band * 256 : band * 256 + 256]
                sums[band] += sum(value * n for value, n in enumerate(counts))
            count += faint
    if not touched:
        return im
    # Low bit cleared, like every other colour a PNG output may hold.
    faint_colour = [(round(total / count) & 0xFE) if count else 0 for total in sums]
    # Second pass: every hidden pixel takes its constant; alpha stays as it is.
    tables: list[int] = []
    for band in range(3):
        tables += [_TRANSPARENT_COLOUR[band] if a == 0 else faint_colour[band] for a in range(256)]
    tables += list(range(256))
    for box in touched:
        strip = im.crop(box)
        alpha = strip.getchannel("A")
        fill = Image.merge("RGBA", (alpha, alpha, alpha, alpha)).point(tables)
        strip.paste(fill, mask=alpha.point(_FAINT_MASK_LUT))
        im.paste(strip, box)
    return im


def shrink_for_thumbnail(im: Image.Image) -> Image.Image | None:
    """A smaller copy whose longest side is at most THUMBNAIL_SIDE, or None if it already fits.

    A box reduce by a whole factor reads the big image once and is the cheapest good
    downscale Pillow has (a fraction of a Lanczos resize, or of decoding a JPEG again at a draft
    scale). When the smallest factor that fits lands within an eighth of THUMBNAIL_SIDE, that
    is the thumbnail; 2048 and 4096 pixel images land exactly on 512. Otherwise reduce by the
    largest factor that stays above the target, then resize the remainder with bicubic.
    """
    width, height = im.size
    longest = max(width, height)
    if longest <= THUMBNAIL_SIDE:
        return None
    fitting_factor = math.ceil(longest / THUMBNAIL_SIDE)
    if math.ceil(longest / fitting_factor) >= THUMBNAIL_SIDE * _CLOSE_ENOUGH:
        return im.reduce(fitting_factor)
    scale = THUMBNAIL_SIDE / longest
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = longest // THUMBNAIL_SIDE
    small = im.reduce(factor) if factor > 1 else im
    return small.resize(target, Image.Resampling.BICUBIC)


def _strips(im: Image.Image) -> list[tuple[int, int, int, int]]:
    width, height = im.size
    return [
        (0, top, width, min(height, top + _STRIP_ROWS)) for top in range(0, height, _STRIP_ROWS)
    ]


def _alpha_is_opaque(im: Image.Image) -> bool:
    # Strip by strip: getextrema holds the GIL for its whole pass (60 ms on 40 megapixels,
    # measured), which would stall the event loop; a strip takes a few milliseconds.
    return all(
        _lowest(im.crop(box).getchannel("A")) >= _OPAQUE_ALPHA for box in _strips(im)
    )


def _without_opaque_alpha(im: Image.Image) -> Image.Image:
    return im.convert("RGB") if _alpha_is_opaque(im) else im


def _sixteen_bit_to_grey(im: Image.Image) -> Image.Image:
    # Image.convert("L") clips 16-bit values at 255 instead of scaling them, which turns most
    # of the picture white; divide by 257 first so that 65535 maps to 255 and 0 to 0.
    wide = im if im.mode == "I" else im.convert("I")
    return wide.point(lambda value: value / 257).convert("L")


def _lowest(band: Image.Image) -> int:
    """The smallest value in a one-band image (getextrema gives (lowest, highest) for one band)."""
    lowest, _ = cast(tuple[int, int], band.getextrema())
    return lowest
