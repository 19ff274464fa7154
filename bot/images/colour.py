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
