"""The image pipeline: every image, uploaded or generated, passes through here before storage.

See ``pipeline.sanitize_image`` for the guarantees (DESIGN 2.4 and 6).
"""

from bot.images.formats import sniff_format
from bot.images.pipeline import (
    CleanImage,
    ImageLimits,
    check_declared_size,
    sanitize_image,
    sanitize_image_async,
)

__all__ = [
    "CleanImage",
    "ImageLimits",
    "check_declared_size",
    "sanitize_image",
    "sanitize_image_async",
    "sniff_format",
]
