"""A visible per-link watermark: "shared by link <id>" drawn on a copy of the image.

If a watermarked copy turns up somewhere, its owner can tell which of their links it came
through. The result is re-encoded in the image's own format with no metadata at all (a fresh
image from the pixels, no ``info`` carried over). This is CPU work: callers run it in an
executor, never on the event loop.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

_SAVE_OPTIONS: dict[str, dict[str, object]] = {
    "PNG": {"optimize": False},
    "JPEG": {"quality": 90},
    "WEBP": {"quality": 90},
}


def watermark_text(link_public_id: str) -> str:
    return f"shared by link {link_public_id}"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # Pillow built without FreeType
        return ImageFont.load_default()


def apply_watermark(data: bytes, image_format: str, text: str) -> bytes:
    """``data`` (a sanitized PNG, JPEG or WebP) with ``text`` drawn across its bottom edge."""
    with Image.open(io.BytesIO(data)) as source:
        source.load()
        has_alpha = source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info
        mode = "RGBA" if has_alpha and image_format != "JPEG" else "RGB"
        # convert() gives a new image; building it from pixels leaves every bit of info behind.
        pixels = source.convert(mode)
    picture = Image.new(mode, pixels.size)
    picture.paste(pixels)
    width, height = picture.size

    size = max(10, min(width // 24, height // 8, 48))
    font = _font(size)
    overlay = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 3)
    text_w, text_h = right - left, bottom - top
    x = max(0, width - text_w - 2 * pad)
    y = max(0, height - text_h - 2 * pad)
    # A dark band with light text stays readable on any picture, light or dark.
    draw.rectangle((x, y, width, height), fill=(0, 0, 0, 150))
    draw.text((x + pad - left, y + pad - top), text, font=font, fill=(255, 255, 255, 235))

    marked = Image.alpha_composite(picture.convert("RGBA"), overlay).convert(mode)
    out = io.BytesIO()
    marked.save(out, format=image_format, **_SAVE_OPTIONS.get(image_format, {}))
    return out.getvalue()
