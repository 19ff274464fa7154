"""Deterministic, photo-like test images: a smooth colour field, hard-edged shapes and fine
sensor-like noise, so that encoders do realistic work (neither flat colour nor pure noise)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter


def photo(width: int, height: int, *, seed: int, noise: float = 0.05) -> Image.Image:
    rng = random.Random(seed)
    cw, ch = max(2, width // 64), max(2, height // 64)
    field = Image.frombytes("RGB", (cw, ch), rng.randbytes(cw * ch * 3))
    picture = field.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(picture)
    for _ in range(80):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(width // 40, width // 6), rng.randrange(height // 40, height // 6)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    picture = picture.filter(ImageFilter.GaussianBlur(1.2))
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
    return Image.blend(picture, Image.merge("RGB", (grain, grain, grain)), noise)


def jpeg_with_exif(width: int = 4000, height: int = 3000, *, seed: int = 6) -> bytes:
    """A camera-like JPEG (quality 92) with an EXIF block: camera, time, GPS, comment.
    Orientation is 1, so neither side has to rotate pixels."""
    exif = Image.Exif()
    exif[0x010F] = "Veil Bench Optics"          # Make
    exif[0x0110] = "Model 6"                    # Model
    exif[0x0132] = "2024:05:01 12:34:56"        # DateTime
    exif[0x0112] = 1                            # Orientation: upright
    exif[0x0131] = "bench firmware 1.0"         # Software
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 7.5), 3: "E", 4: (4.0, 53.0, 1.25)}  # GPS
    exif[0x9286] = b"ASCII\x00\x00\x00" + b"private note " * 40  # UserComment (Exif IFD)
    buffer = io.BytesIO()
    photo(width, height, seed=seed).save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()


def png_photo(side: int = 2048, *, seed: int = 7) -> bytes:
    """A photo-like RGB PNG such as an image generator writes (zlib level 6, Pillow's default),
    with a ``parameters`` text chunk as Stable Diffusion WebUI adds."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a quiet harbour at dawn, Steps: 30, Seed: 7")
    buffer = io.BytesIO()
    photo(side, side, seed=seed, noise=0.03).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def small_jpeg(side: int = 1024, *, seed: int = 8) -> bytes:
    buffer = io.BytesIO()
    photo(side, side, seed=seed).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
