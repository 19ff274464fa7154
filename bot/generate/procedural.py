"""The built-in generator: soft abstract art drawn with Pillow, no network, no model.

Everything is derived from SHA-256 hashes, so the same (prompt, seed, image index) always gives
the same PNG bytes (for one Pillow version, whose filters and encoder shape the bytes). The
palette comes from the prompt alone, so a batch of four looks like four takes on one idea, while
the layout comes from (prompt, seed, index). Nothing here uses Pillow's ``effect_noise``: it
draws from the C library's unseeded random generator, which would break determinism. Noise is
built from hashed bytes instead, scaled up smoothly.

Rendering is plain CPU work, so it runs on a worker thread and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import math
import random
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from bot.core.errors import GeneratorUnavailable
from bot.generate.base import GenerationRequest, ProgressCallback, report

RGB = tuple[int, int, int]

# Composition happens at a reduced size and is scaled up once: the art is soft by design, and
# this keeps a 768x768 image at a few tens of milliseconds.
WORK_DIVISOR = 3
PALETTE_SCHEMES = ("analogous", "complementary", "triadic", "split")
PNG_COMPRESS_LEVEL = 4
SHUTTING_DOWN = "The image generator is shutting down. Try again in a minute."


def _rng(*parts: object) -> random.Random:
    """A random generator seeded from a hash of ``parts``, the same on every run and machine."""
    text = "\0".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _hsv(hue: float, saturation: float, value: float) -> RGB:
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def palette_for(prompt: str) -> list[RGB]:
    """Four colours from dark to light, chosen by the prompt's hash around one colour scheme."""
    rng = _rng("veil-palette", prompt)
    base = rng.random()
    scheme = rng.choice(PALETTE_SCHEMES)
    offsets = {
        "analogous": (0.0, 0.08, -0.08, 0.16),
        "complementary": (0.0, 0.5, 0.04, 0.46),
        "triadic": (0.0, 1 / 3, 2 / 3, 0.05),
        "split": (0.0, 0.42, 0.58, 0.02),
    }[scheme]
    saturation = rng.uniform(0.55, 0.85)
    return [
        _hsv(base + offsets[0], min(1.0, saturation + 0.1), rng.uniform(0.12, 0.22)),
        _hsv(base + offsets[1], saturation, rng.uniform(0.5, 0.65)),
        _hsv(base + offsets[2], saturation * 0.9, rng.uniform(0.8, 0.92)),
        _hsv(base + offsets[3], saturation * 0.35, rng.uniform(0.95, 1.0)),
    ]


def _gradient_map(field: Image.Image, stops: list[RGB]) -> Image.Image:
    """Colour a greyscale image by interpolating between ``stops`` (dark values get stops[0])."""
    spans = len(stops) - 1
    channels: list[list[int]] = [[], [], []]
    for level in range(256):
        position = level / 255 * spans
        low = min(int(position), spans - 1)
        mix = position - low
        for channel in range(3):
            start, end = stops[low][channel], stops[low + 1][channel]
            channels[channel].append(round(start + (end - start) * mix))
    bands = [field.point(table) for table in channels]
    return Image.merge("RGB", bands)


def _smooth_noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Cloud-like greyscale noise: octaves of hashed bytes, each scaled up smoothly."""
    result: Image.Image | None = None
    weight_so_far = 0.0
    for cells, weight in ((3, 1.0), (5, 0.45), (9, 0.2)):
        octave = Image.frombytes("L", (cells, cells), rng.randbytes(cells * cells))
        octave = octave.resize(size, Image.Resampling.BICUBIC)
        if result is None:
            result = octave
        else:
            result = Image.blend(result, octave, weight / (weight_so_far + weight))
        weight_so_far += weight
    assert result is not None
    return ImageOps.autocontrast(result, cutoff=1)


def _linear_gradient(angle: float, size: tuple[int, int]) -> Image.Image:
    """A black-to-white ramp across the image at ``angle`` degrees, without empty corners."""
    ramp = Image.linear_gradient("L").rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    # Keep the centre square that the rotated ramp fully covers, whatever the angle.
    inner = 256 / (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))
    left = (ramp.width - inner) / 2
    top = (ramp.height - inner) / 2
    box = (round(left), round(top), round(left + inner), round(top + inner))
    return ramp.resize(size, Image.Resampling.BILINEAR, box=box)


def _banded(field: Image.Image, rng: random.Random) -> Image.Image:
    """Pick a look for the field: smooth, softly contoured, or posterized into flat terraces."""
    style = rng.choice(("smooth", "contours", "terraces"))
    if style == "contours":
        rings = rng.choice((3, 4, 5))
        strength = rng.uniform(0.18, 0.3)
        table = []
        for level in range(256):
            shade = level / 255 + strength * math.sin(level / 255 * rings * math.tau)
            table.append(round(255 * min(1.0, max(0.0, shade))))
        return field.point(table)
    if style == "terraces":
        steps = rng.choice((5, 6, 8))
        table = [round(int(level / 256 * steps) * 255 / (steps - 1)) for level in range(256)]
        terraced = field.point(table).filter(ImageFilter.GaussianBlur(1.2))
        return Image.blend(terraced, field, 0.3)
    return field


def _shapes(rng: random.Random, size: tuple[int, int], colours: list[RGB]) -> Image.Image:
    """Translucent discs and rings on a transparent layer, blurred into soft glows."""
    width, height = size
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shortest = min(width, height)
    for _ in range(rng.randint(3, 7)):
        radius = shortest * rng.uniform(0.06, 0.32)
        x = width * rng.uniform(0.05, 0.95)
        y = height * rng.uniform(0.05, 0.95)
        box = (x - radius, y - radius, x + radius, y + radius)
        colour = rng.choice(colours[1:])
        alpha = rng.randint(40, 110)
        if rng.random() < 0.3:
            ring = max(1, round(radius * rng.uniform(0.03, 0.08)))
            draw.ellipse(box, outline=(*colour, alpha + 70), width=ring)
        else:
            draw.ellipse(box, fill=(*colour, alpha))
    return layer.filter(ImageFilter.GaussianBlur(shortest * rng.uniform(0.004, 0.012)))


def _vignette(size: tuple[int, int], strength: float) -> Image.Image:
    """A multiplier image: white in the middle, darker towards the corners."""
    glow = Image.radial_gradient("L").resize(size, Image.Resampling.BILINEAR)
    floor = round(255 * (1.0 - strength))
    table = [floor + (255 - floor) * level // 255 for level in range(256)]
    return ImageOps.invert(glow).point(table)


def render(prompt: str, seed: int, index: int, width: int, height: int) -> bytes:
    """Draw one image and return it as PNG bytes, with no text chunks of any kind."""
    rng = _rng("veil-layout", prompt, seed, index)
    colours = palette_for(prompt)
    work = (max(16, width // WORK_DIVISOR), max(16, height // WORK_DIVISOR))

    ramp = _linear_gradient(rng.uniform(0.0, 360.0), work)
    clouds = _smooth_noise(rng, work)
    field = Image.blend(ramp, clouds, rng.uniform(0.35, 0.65))
    field = _banded(ImageOps.autocontrast(field, cutoff=0.5), rng)
    stops = colours if rng.random() < 0.5 else colours[:1] + colours[2:0:-1] + colours[3:]
    picture = _gradient_map(field, stops)

    picture = picture.convert("RGBA")
    picture.alpha_composite(_shapes(rng, work, colours))
    picture = picture.convert("RGB")
    picture = ImageChops.multiply(picture, _vignette(work, rng.uniform(0.15, 0.4)).convert("RGB"))
    picture = picture.resize((width, height), Image.Resampling.BICUBIC)

    buffer = io.BytesIO()
    # No pnginfo, so no text chunks. Level 4 encodes about twice as fast as the default 6 for a
    # file only a few percent larger, and encoding is most of the time spent here.
    picture.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def render_for(request: GenerationRequest, index: int) -> bytes:
    """Image ``index`` of ``request``: drawn from its own seed, so it can be drawn again alone.

    A variation blends the picture of the kept seed with the one of its variation seed: at a
    small strength the composition stays and the details move, as a sampler's variation seed does.
    """
    seed = request.seed_of(index)
    base = render(request.prompt, seed, 0, request.width, request.height)
    variation_seed = request.variation_seed_of(index)
    if variation_seed is None:
        return base
    other = render(request.prompt, variation_seed, 0, request.width, request.height)
    with Image.open(io.BytesIO(base)) as first, Image.open(io.BytesIO(other)) as second:
        mixed = Image.blend(first.convert("RGB"), second.convert("RGB"),
                            request.variation_strength)
    buffer = io.BytesIO()
    mixed.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


class ProceduralGenerator:
    """The default generator: deterministic abstract images, rendered on a worker thread."""

    name = "procedural"

    def __init__(self, *, max_workers: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="veil-art")
        self._closed = False

    async def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> list[bytes]:
        if self._closed:
            raise GeneratorUnavailable(SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        images: list[bytes] = []
        for index in range(request.count):
            await report(
                progress, index / request.count, f"rendering image {index + 1} of {request.count}"
            )
            try:
                image = await loop.run_in_executor(
                    self._executor, render_for, request, index
                )
            except RuntimeError:
                # The executor refuses new work once close() has shut it down mid-batch.
                if not self._closed:
                    raise
                raise GeneratorUnavailable(SHUTTING_DOWN) from None
            images.append(image)
        await report(progress, 1.0, "done")
        return images

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
