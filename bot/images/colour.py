"""Colour management: pixels described by an embedded ICC profile become sRGB pixels.

Stored images carry no profile (it is metadata, and some profiles name the device or person
that made them), and a viewer shows untagged pixels as sRGB. Dropping a Display-P3, Adobe RGB
or CMYK profile without converting would show every colour wrong (a phone photo's reds turn
dull), so the pixels are converted here first, with littlecms through Pillow's ImageCms.

The profile is untrusted input like the rest of the file. A profile littlecms cannot parse, or
one that does not describe the image's mode, is ignored: the pixels are then kept as they are
(the colours may be off, nothing is leaked), just as an unreadable EXIF orientation is.
"""

import io
import struct
from collections.abc import Sequence
from typing import Final

from PIL import Image, ImageCms

# Relative colorimetric keeps every in-gamut colour as it is and clips the rest to the nearest
# sRGB colour; for the matrix profiles of cameras and phones it is what littlecms would use for
# perceptual anyway, and for print profiles it maps the paper to white. No black point
# compensation: it would make the result depend on how littlecms estimates a press's black,
# and an exact, checkable conversion matters more here than deeper print shadows.
_INTENT: Final = ImageCms.Intent.RELATIVE_COLORIMETRIC
# Real profiles are a few kilobytes (matrix) to about 2 MB (the largest press CMYK tables).
_MAX_PROFILE_BYTES: Final = 8 * 1024 * 1024
# Image mode -> the profile colour space that can describe it, and the mode converted to.
_CONVERTIBLE: Final[dict[str, tuple[str, str]]] = {
    "RGB": ("RGB", "RGB"),
    "RGBA": ("RGB", "RGBA"),
    "CMYK": ("CMYK", "RGB"),
}
# Profile descriptions of sRGB itself, for which a conversion would cost time and change
# nothing (see skip_for_srgb).
_SRGB_NAMES: Final = ("sRGB IEC61966-2.1", "sRGB IEC61966-2-1", "sRGB built-in", "sRGB")


def to_srgb(im: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """``im`` converted from its profile to sRGB, or ``im`` itself if there is nothing to do.

    RGB and RGBA are converted in place (alpha untouched); CMYK becomes a new RGB image.
    """
    if not icc_profile or len(icc_profile) > _MAX_PROFILE_BYTES or im.mode not in _CONVERTIBLE:
        return im
    space, output_mode = _CONVERTIBLE[im.mode]
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if source.profile.xcolor_space.strip() != space or _is_srgb(source):
            return im
        # A fresh sRGB profile per call: littlecms profile handles read their tags lazily and
        # are not safe to share between the threads that sanitize images at once.
        transform = ImageCms.buildTransform(
            source,
            ImageCms.createProfile("sRGB"),
            im.mode,
            output_mode,
            renderingIntent=_INTENT,
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    if output_mode == im.mode:
        ImageCms.applyTransform(im, transform, inPlace=True)
        return im
    converted = ImageCms.applyTransform(im, transform)
    assert converted is not None  # only None when converting in place
    return converted


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    """Whether the profile says it is sRGB, so that converting would be an expensive no-op.

    A profile could lie about its name; the cost of believing it is colours as the file's
    author tagged them under a false name, never a leak.
    """
    description = (profile.profile.profile_description or "").strip()
    return description in _SRGB_NAMES


# ---------------------------------------------------------------- grey


def grey_to_srgb(im: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Pixels of a grey source, converted from its grey profile to sRGB greys, in place.

    ``im`` is "L", or "RGB"/"RGBA" made from grey (equal colour bands, as plain_mode makes
    from grey with transparency). A grey profile's tone curve is often not sRGB's (a linear
    scan, a Mac's gamma 1.8, a press's dot gain), and viewers apply it. littlecms turns grey
    into neutral sRGB, whose green band is taken as the grey; a strip at a time, so that a
    40-megapixel image needs no second copy.
    """
    if not icc_profile or len(icc_profile) > _MAX_PROFILE_BYTES or im.mode not in _GREY_STORED:
        return im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if source.profile.xcolor_space.strip() != "GRAY":
            return im
        transform = ImageCms.buildTransform(
            source, ImageCms.createProfile("sRGB"), "L", "RGB", renderingIntent=_INTENT
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    width, height = im.size
    for top in range(0, height, _STRIP_ROWS):
        box = (0, top, width, min(height, top + _STRIP_ROWS))
        strip = im.crop(box)
        grey = strip if im.mode == "L" else strip.getchannel("R")
        converted = ImageCms.applyTransform(grey, transform)
        assert converted is not None  # only None when converting in place
        level = converted.getchannel("G")
        if im.mode == "L":
            im.paste(level, box)
        else:
            alpha = [strip.getchannel("A")] if im.mode == "RGBA" else []
            im.paste(Image.merge(im.mode, [level, level, level, *alpha]), box)
    return im


_GREY_STORED: Final = frozenset({"L", "RGB", "RGBA"})
_STRIP_ROWS: Final = 256


# ---------------------------------------------------------------- PNG gAMA and cHRM
#
# A PNG without an ICC profile (iCCP) or an sRGB chunk may still say what its numbers mean:
# gAMA gives the tone curve, cHRM the primaries and white. Browsers (and so Discord's clients)
# apply them, so a file with gAMA 1.0 (linear light, as some renderers and scientific tools
# write) shows far darker midtones there than its numbers read as sRGB: dropping the chunks
# without converting would change how the picture looks. They are turned into the ICC profile
# they describe, and converted like any other.
# Except where they say sRGB near enough: gAMA 0.45455 (a 2.2 display, what libpng and many
# tools write by default) with sRGB's primaries or none differs from sRGB's own curve by a mean
# CIE76 delta E of 0.77 over the 256 grey levels (at most 3.5, in the darkest shadows): less
# than anyone notices, so such files, the most common case by far, skip a conversion.
_SRGB_PRIMARIES: Final = ((0.3127, 0.3290), (0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
_NEAR_SRGB_GAMMA: Final = (0.45, 0.4592)  # 1/2.2 within 1%
_NEAR: Final = 0.002  # chromaticity coordinates written to five decimals, rounded differently
_D50: Final = (0.9642, 1.0, 0.8249)
_BRADFORD: Final = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))

Matrix = tuple[tuple[float, float, float], ...]


def png_chunks_profile(
    gamma: float | None, chromaticities: Sequence[tuple[float, float]] | None, *, grey: bool
) -> bytes | None:
    """The ICC profile that gAMA and cHRM describe, or None when they say (near) sRGB or nothing.

    ``grey``: the image is grey, so only the tone curve applies (a grey profile).
    """
    primaries = tuple(chromaticities) if chromaticities is not None else None
    if primaries is not None and not _plausible(primaries):
        primaries = None
    srgb_primaries = primaries is None or all(
        abs(a - b) <= _NEAR for p, q in zip(primaries, _SRGB_PRIMARIES, strict=True)
        for a, b in zip(p, q, strict=True)
    )
    near_srgb_gamma = gamma is None or _NEAR_SRGB_GAMMA[0] <= gamma <= _NEAR_SRGB_GAMMA[1]
    if near_srgb_gamma and (grey or srgb_primaries):
        return None
    # A decoding exponent the curv tag can hold (unsigned 8.8 fixed point).
    curve = _srgb_curve() if gamma is None else _gamma_curve(min(255.0, 1 / gamma))
    if grey:
        return _profile(b"GRAY", [(b"desc", _desc("PNG gAMA grey")), (b"wtpt", _xyz(_D50)),
                                  (b"kTRC", curve)])
    white, *rgb = primaries or _SRGB_PRIMARIES
    colorants = _matmul(_adapt_to_d50(white), _rgb_to_xyz(rgb, white))
    return _profile(b"RGB ", [
        (b"desc", _desc("PNG gAMA and cHRM")), (b"wtpt", _xyz(_D50)),
        (b"rXYZ", _xyz([row[0] for row in colorants])),
        (b"gXYZ", _xyz([row[1] for row in colorants])),
        (b"bXYZ", _xyz([row[2] for row in colorants])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ])


def _plausible(primaries: Sequence[tuple[float, float]]) -> bool:
    """Chromaticities that describe real colours and a solvable matrix, not arbitrary numbers."""
    if any(not (0 < x < 1 and 0 < y < 1 and x + y <= 1) for x, y in primaries):
        return False
    _, *rgb = primaries
    (xr, yr), (xg, yg), (xb, yb) = rgb
    return abs((xg - xr) * (yb - yr) - (xb - xr) * (yg - yr)) > 1e-3


def _xyz_of(xy: tuple[float, float]) -> tuple[float, float, float]:
    x, y = xy
    return (x / y, 1.0, (1 - x - y) / y)


def _mul(m: Matrix, v: Sequence[float]) -> tuple[float, float, float]:
    return (
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    )


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    columns = [_mul(a, (b[0][j], b[1][j], b[2][j])) for j in range(3)]
    return tuple((columns[0][i], columns[1][i], columns[2][i]) for i in range(3))


def _inverse(m: Matrix) -> Matrix:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return (
        ((e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det),
        ((f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det),
        ((d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det),
    )


def _rgb_to_xyz(rgb: Sequence[tuple[float, float]], white: tuple[float, float]) -> Matrix:
    columns = [_xyz_of(p) for p in rgb]
    m = tuple((columns[0][i], columns[1][i], columns[2][i]) for i in range(3))
    scale = _mul(_inverse(m), _xyz_of(white))
    return tuple((row[0] * scale[0], row[1] * scale[1], row[2] * scale[2]) for row in m)


def _adapt_to_d50(white: tuple[float, float]) -> Matrix:
    """Bradford chromatic adaptation from ``white`` to the ICC connection space's D50."""
    source = _mul(_BRADFORD, _xyz_of(white))
    target = _mul(_BRADFORD, _D50)
    scale = tuple(t / s for t, s in zip(target, source, strict=True))
    diagonal = tuple(tuple(scale[i] if i == j else 0.0 for j in range(3)) for i in range(3))
    return _matmul(_inverse(_BRADFORD), _matmul(diagonal, _BRADFORD))  # type: ignore[arg-type]


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: Sequence[float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in values)


def _desc(text: str) -> bytes:
    ascii_text = text.encode() + b"\x00"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text + bytes(8 + 70)


def _gamma_curve(exponent: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(exponent * 256)) + bytes(2)


def _srgb_curve() -> bytes:
    # Parametric curve type 3, IEC 61966-2-1: Y = (aX + b)^g for X >= d, else cX.
    parameters = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return (b"para" + bytes(4) + struct.pack(">H", 3) + bytes(2)
            + b"".join(_s15(p) for p in parameters))


def _profile(space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2 display profile with these tags (header, tag table, tag data)."""
    offset = 128 + 4 + 12 * len(tags)
    entries, body = [], b""
    for signature, data in tags:
        entries.append(struct.pack(">4sII", signature, offset + len(body), len(data)))
        body += data + bytes(-len(data) % 4)
    header = (
        struct.pack(">I", offset + len(body)) + bytes(4) + struct.pack(">I", 0x02100000)
        + b"mntr" + space + b"XYZ " + bytes(12) + b"acsp" + bytes(24) + bytes(4)
        + b"".join(_s15(v) for v in _D50) + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body

