"""The one small interface every image generator speaks: a request in, PNG bytes and progress out.

A generator never decides who sees its output and never logs or echoes the prompt: its errors are
``GeneratorUnavailable`` with a message written for the Discord user, and the bytes it returns go
through the sanitize path before they are stored or delivered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from bot.core.errors import InvalidInput
from bot.core.models import MAX_PROMPT_CHARS, SEED_LIMIT

MIN_COUNT = 1
MAX_COUNT = 4
MIN_SIDE = 64
MAX_SIDE = 2048
DEFAULT_SIDE = 768  # /imagine's width and height unless VEIL_IMAGE_SIZE says otherwise
# A variation keeps the picture and changes details: more than this is a different picture.
MAX_VARIATION_STRENGTH = 0.6


@dataclass(frozen=True)
class GenerationRequest:
    """What to draw: the prompt, how many images, an optional seed and the size in pixels.

    Image ``k`` of a batch is drawn with seed ``seed + k`` (the WebUI's convention), so every
    image can be drawn again on its own. A *variation* request (``variation_seed`` set) keeps
    the one ``seed`` for every image and mixes in ``variation_seed + k`` at
    ``variation_strength``: the same picture with small changes. The prompt never appears in a
    repr, so a request in a traceback or a log line does not leak it.
    """

    prompt: str = field(repr=False)
    count: int = 1
    seed: int | None = None
    width: int = DEFAULT_SIDE
    height: int = DEFAULT_SIDE
    variation_seed: int | None = None
    variation_strength: float = 0.0

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise InvalidInput("Describe the image you want: the prompt is empty.")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(
                f"The prompt is too long: keep it under {MAX_PROMPT_CHARS} characters."
            )
        if not MIN_COUNT <= self.count <= MAX_COUNT:
            raise InvalidInput(f"Ask for {MIN_COUNT} to {MAX_COUNT} images at a time.")
        for seed in (self.seed, self.variation_seed):
            if seed is not None and not 0 <= seed < SEED_LIMIT:
                raise InvalidInput(f"The seed must be a whole number from 0 to {SEED_LIMIT - 1}.")
        if not 0.0 <= self.variation_strength <= MAX_VARIATION_STRENGTH:
            raise InvalidInput(
                f"The variation strength must be from 0 to {MAX_VARIATION_STRENGTH:g}."
            )
        for side in (self.width, self.height):
            if not MIN_SIDE <= side <= MAX_SIDE or side % 8:
                raise InvalidInput(
                    f"Width and height must be multiples of 8 from {MIN_SIDE} to {MAX_SIDE} pixels."
                )

    @property
    def effective_seed(self) -> int:
        """The seed to render with: the one asked for, or one derived from the prompt alone."""
        if self.seed is not None:
            return self.seed
        digest = hashlib.sha256(b"veil-seed\0" + self.prompt.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "big")

    @property
    def is_variation(self) -> bool:
        return self.variation_seed is not None and self.variation_strength > 0.0

    def seed_of(self, index: int) -> int:
        """The seed image ``index`` of the batch is drawn with (wrapping at 2**32)."""
        if self.is_variation:
            return self.effective_seed
        return (self.effective_seed + index) % SEED_LIMIT

    def variation_seed_of(self, index: int) -> int | None:
        """The seed mixed into image ``index`` of a variation request, else None."""
        if not self.is_variation or self.variation_seed is None:
            return None
        return (self.variation_seed + index) % SEED_LIMIT


@dataclass(frozen=True)
class Progress:
    """How far a generation has come: a fraction from 0.0 to 1.0 and a short stage for humans.

    While a request waits in a ``GenerationQueue``, ``queue_position`` is its place in line
    (1 = runs next), so an adapter can word it itself instead of parsing ``stage``.
    """

    fraction: float
    stage: str
    queue_position: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"progress fraction must be within 0.0..1.0, got {self.fraction!r}")


ProgressCallback = Callable[[Progress], Awaitable[None]]


@runtime_checkable
class Generator(Protocol):
    """Turns a request into PNG images, one ``bytes`` per image, reporting progress on the way."""

    name: str

    async def generate(
        self, request: GenerationRequest, progress: ProgressCallback | None = None
    ) -> list[bytes]: ...

    async def close(self) -> None: ...


async def report(progress: ProgressCallback | None, fraction: float, stage: str) -> None:
    """Send one progress event if anyone listens; a tiny helper every generator shares."""
    if progress is not None:
        await progress(Progress(min(max(fraction, 0.0), 1.0), stage))


# What a user is told when an HTTP generator backend fails: the same words for every backend.
NOT_ANSWERING = "The image generator is not answering. Try again in a minute."
UNREADABLE = "The image generator sent back an answer Veil could not read. Try again in a minute."


def too_slow(timeout_s: float) -> str:
    return (
        f"The image generator took longer than {timeout_s:g} seconds, so Veil stopped waiting. "
        "Try again in a minute, or ask for fewer images."
    )


def refused(status: int) -> str:
    return f"The image generator refused the request (HTTP {status}). Try again in a minute."
