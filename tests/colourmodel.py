"""Colour spaces built here, and a reference conversion written from their definitions.

The pipeline converts profiled pixels to sRGB with littlecms. To test that without trusting
littlecms to grade itself, this module builds the ICC profiles byte by byte from published
definitions (Display P3 and Adobe RGB (1998) primaries and tone curves; a made-up press whose
CMYK inks are modelled in linear light) and computes what each colour must become in sRGB
straight from those definitions, in plain Python: decode the tone curve, go to XYZ, come back
through sRGB's matrix and curve, clip. The profile is only the file's way of saying which
space it is in; the reference never reads it.

The comparison is in CIELAB (D65) as CIE76 delta E, where about 2.3 is the smallest difference
an observer notices side by side (Sharma, Digital Color Imaging Handbook, 2003).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Final

Matrix = tuple[tuple[float, float, float], ...]
Colour = tuple[float, float, float]

D65: Final = (0.3127, 0.3290)
D50_XYZ: Final = (0.9642, 1.0, 0.8249)
# Bradford cone response (Lindbloom), used to adapt D65 colorants to the ICC's D50 PCS.
_BRADFORD: Final[Matrix] = (
    (0.8951, 0.2664, -0.1614),
    (-0.7502, 1.7135, 0.0367),
    (0.0389, -0.0685, 1.0296),
)

SRGB_PRIMARIES: Final = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
DISPLAY_P3_PRIMARIES: Final = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_RGB_PRIMARIES: Final = ((0.64, 0.33), (0.21, 0.71), (0.15, 0.06))
# Adobe RGB (1998) specification: gamma 563/256 (2.19921875), exactly representable in ICC.
ADOBE_RGB_GAMMA: Final = 563 / 256


# ---------------------------------------------------------------- small linear algebra


def _mul(m: Matrix, v: Sequence[float]) -> Colour:
    return (
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    )


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    columns = [_mul(a, (b[0][j], b[1][j], b[2][j])) for j in range(3)]
    return tuple(tuple(columns[j][i] for j in range(3)) for i in range(3))


def _inverse(m: Matrix) -> Matrix:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return (
        ((e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det),
        ((f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det),
        ((d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det),
    )


def _xyz(xy: tuple[float, float]) -> Colour:
    x, y = xy
    return (x / y, 1.0, (1 - x - y) / y)


def rgb_to_xyz_matrix(
    primaries: Sequence[tuple[float, float]], white: tuple[float, float]
) -> Matrix:
    """Linear RGB -> XYZ for these primaries and white (the textbook derivation)."""
    columns = [_xyz(p) for p in primaries]
    m = tuple(tuple(columns[j][i] for j in range(3)) for i in range(3))
    scale = _mul(_inverse(m), _xyz(white))
    return tuple(tuple(m[i][j] * scale[j] for j in range(3)) for i in range(3))


def _adapt_d65_to_d50() -> Matrix:
    source = _mul(_BRADFORD, _xyz(D65))
    target = _mul(_BRADFORD, D50_XYZ)
    diagonal = tuple(
        tuple(target[i] / source[i] if i == j else 0.0 for j in range(3)) for i in range(3)
    )
    return _matmul(_inverse(_BRADFORD), _matmul(diagonal, _BRADFORD))


# ---------------------------------------------------------------- tone curves


def srgb_decode(value: float) -> float:
    return value / 12.92 if value <= 0.04045 else ((value + 0.055) / 1.055) ** 2.4


def srgb_encode(value: float) -> float:
    value = min(1.0, max(0.0, value))
    return value * 12.92 if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055


def gamma_decode(gamma: float) -> Callable[[float], float]:
    return lambda value: value**gamma


# ---------------------------------------------------------------- the reference conversions


def rgb_to_srgb(
    pixel: Sequence[int],
    primaries: Sequence[tuple[float, float]],
    decode: Callable[[float], float],
) -> tuple[int, int, int]:
    """An 8-bit pixel of an RGB space (D65 white) in 8-bit sRGB, relative colorimetric.

    Both spaces share the D65 white, so no adaptation is needed: relative colorimetric through
    a D50 PCS adapts there and back with the same Bradford matrix, which cancels.
    """
    to_srgb = _matmul(
        _inverse(rgb_to_xyz_matrix(SRGB_PRIMARIES, D65)), rgb_to_xyz_matrix(primaries, D65)
    )
    linear = _mul(to_srgb, [decode(channel / 255) for channel in pixel])
    return tuple(round(srgb_encode(channel) * 255) for channel in linear)  # type: ignore[return-value]


# A made-up press in linear-light transmittance: paper slightly warm, four inks that each
# absorb part of each sRGB primary, multiplied (Beer-Lambert) by coverage. Not any real press,
# but with the three things that make naive CMYK -> RGB wrong: tinted paper, impure inks and
# inks that do not add up like RGB complements.
PAPER: Final = (0.90, 0.88, 0.80)
INKS: Final = (
    (0.06, 0.45, 0.80),  # cyan
    (0.75, 0.07, 0.35),  # magenta
    (0.92, 0.82, 0.05),  # yellow
    (0.05, 0.05, 0.06),  # black
)


def press_linear(cmyk: Sequence[float]) -> Colour:
    """Linear sRGB reflectance of the press for coverages 0..1, relative to its paper."""
    reflected = list(PAPER)
    for coverage, ink in zip(cmyk, INKS, strict=True):
        for band in range(3):
            reflected[band] *= ink[band] ** coverage
    # Relative colorimetric: the paper is the white, so divide it out.
    return (reflected[0] / PAPER[0], reflected[1] / PAPER[1], reflected[2] / PAPER[2])


def grey_to_srgb(level: int, decode: Callable[[float], float]) -> tuple[int, int, int]:
    """An 8-bit grey of a grey space (D50-relative, so white is white) as an sRGB grey."""
    value = round(srgb_encode(decode(level / 255)) * 255)
    return (value, value, value)


def cmyk_to_srgb(pixel: Sequence[int]) -> tuple[int, int, int]:
    linear = press_linear([channel / 255 for channel in pixel])
    return tuple(round(srgb_encode(channel) * 255) for channel in linear)  # type: ignore[return-value]


def naive_cmyk_to_rgb(pixel: Sequence[int]) -> tuple[int, int, int]:
    """What a converter without the profile does (Pillow's formula)."""
    c, m, y, k = pixel
    return tuple(round((255 - v) * (255 - k) / 255) for v in (c, m, y))  # type: ignore[return-value]


# ---------------------------------------------------------------- difference


def srgb_to_lab(pixel: Sequence[int]) -> Colour:
    x, y, z = _mul(rgb_to_xyz_matrix(SRGB_PRIMARIES, D65), [srgb_decode(c / 255) for c in pixel])
    white = _xyz(D65)

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = f(x / white[0]), f(y / white[1]), f(z / white[2])
    return (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))


def delta_e(a: Sequence[int], b: Sequence[int]) -> float:
    """CIE76 difference of two 8-bit sRGB colours."""
    return math.dist(srgb_to_lab(a), srgb_to_lab(b))


# ---------------------------------------------------------------- ICC profiles, byte by byte


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in xyz)


def _text_tag(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode() + b"\x00"


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode() + b"\x00"
    return (
        b"desc" + bytes(4) + struct.pack(">I", len(ascii_text)) + ascii_text
        + bytes(8)  # no Unicode description
        + bytes(3) + bytes(67)  # no ScriptCode description
    )


def _gamma_curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _srgb_curve() -> bytes:
    # Parametric curve type 3: Y = (aX + b)^g for X >= d, else cX.
    params = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
    return b"para" + bytes(4) + struct.pack(">H", 3) + bytes(2) + b"".join(_s15(p) for p in params)


def _profile(
    device_class: bytes, space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]
) -> bytes:
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, body = [], b""
    for signature, data in tags:
        padded = data + bytes(-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, offset + len(body), len(data)))
        body += padded
    size = offset + len(body)
    header = (
        struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + device_class + space
        + pcs + bytes(12) + b"acsp" + bytes(4 + 4 + 4 + 4 + 8) + struct.pack(">I", 0)
        + b"".join(_s15(v) for v in D50_XYZ) + bytes(4) + bytes(16) + bytes(28)
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body


def rgb_profile(
    name: str, primaries: Sequence[tuple[float, float]], curve: bytes
) -> bytes:
    """A display profile (matrix and shaper): the primaries adapted to D50, one curve."""
    colorants = _matmul(_adapt_d65_to_d50(), rgb_to_xyz_matrix(primaries, D65))
    return _profile(b"mntr", b"RGB ", b"XYZ ", [
        (b"desc", _desc_tag(name)),
        (b"cprt", _text_tag("No copyright, use freely")),
        (b"wtpt", _xyz_tag(D50_XYZ)),
        (b"rXYZ", _xyz_tag([row[0] for row in colorants])),
        (b"gXYZ", _xyz_tag([row[1] for row in colorants])),
        (b"bXYZ", _xyz_tag([row[2] for row in colorants])),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ])


def display_p3_profile() -> bytes:
    return rgb_profile("Display P3 (test)", DISPLAY_P3_PRIMARIES, _srgb_curve())


def adobe_rgb_profile() -> bytes:
    return rgb_profile("Adobe RGB 1998 (test)", ADOBE_RGB_PRIMARIES, _gamma_curve(ADOBE_RGB_GAMMA))


def grey_profile(name: str, gamma: float) -> bytes:
    """A grey display profile: one tone curve (kTRC) of this gamma, white at D50."""
    return _profile(b"mntr", b"GRAY", b"XYZ ", [
        (b"desc", _desc_tag(name)),
        (b"cprt", _text_tag("No copyright, use freely")),
        (b"wtpt", _xyz_tag(D50_XYZ)),
        (b"kTRC", _gamma_curve(gamma)),
    ])


def press_cmyk_profile(grid: int = 11) -> bytes:
    """An output profile for the made-up press: a CMYK -> Lab table (lut16, ICC v2)."""
    to_xyz = _matmul(_adapt_d65_to_d50(), rgb_to_xyz_matrix(SRGB_PRIMARIES, D65))
    clut = bytearray()
    steps = [i / (grid - 1) for i in range(grid)]
    for c in steps:
        for m in steps:
            for y in steps:
                for k in steps:
                    x, yy, z = _mul(to_xyz, press_linear((c, m, y, k)))
                    lab = _lab_d50((x, yy, z))
                    # ICC v2 16-bit Lab: L 0..100 -> 0..0xFF00, a and b -128..128 -> 0..0xFFFF.
                    clut += struct.pack(
                        ">3H",
                        _clamp16(lab[0] * 0xFF00 / 100),
                        _clamp16((lab[1] + 128) * 256),
                        _clamp16((lab[2] + 128) * 256),
                    )
    identity = b"".join(_s15(1.0 if i == j else 0.0) for i in range(3) for j in range(3))
    linear_table = b"".join(struct.pack(">H", v) for v in (0, 0xFFFF))
    lut = (
        b"mft2" + bytes(4) + bytes([4, 3, grid, 0]) + identity + struct.pack(">HH", 2, 2)
        + linear_table * 4 + bytes(clut) + linear_table * 3
    )
    return _profile(b"prtr", b"CMYK", b"Lab ", [
        (b"desc", _desc_tag("Test press CMYK")),
        (b"cprt", _text_tag("No copyright, use freely")),
        (b"wtpt", _xyz_tag(D50_XYZ)),
        (b"A2B0", lut),
    ])


def _lab_d50(xyz: Colour) -> Colour:
    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(v / w) for v, w in zip(xyz, D50_XYZ, strict=True))
    return (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))


def _clamp16(value: float) -> int:
    return max(0, min(0xFFFF, round(value)))
