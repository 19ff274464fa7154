"""Image generation: one small interface, the built-in and Stable Diffusion backends, a fair queue.

``make_generator`` turns the configured kind into a generator; everything a caller needs is
re-exported here, so other packages import from ``bot.generate`` and nowhere deeper.
"""

from __future__ import annotations

from bot.generate.base import (
    GenerationRequest,
    Generator,
    Progress,
    ProgressCallback,
)
from bot.generate.procedural import ProceduralGenerator
from bot.generate.queue import GenerationQueue
from bot.generate.sdwebui import SDWebUIGenerator

GENERATOR_KINDS = ("procedural", "sdwebui")

__all__ = [
    "GENERATOR_KINDS",
    "GenerationQueue",
    "GenerationRequest",
    "Generator",
    "ProceduralGenerator",
    "Progress",
    "ProgressCallback",
    "SDWebUIGenerator",
    "make_generator",
]


def make_generator(kind: str, *, sd_url: str | None, timeout_s: float) -> Generator:
    """Build the generator named in the settings; a ValueError says what to fix if it can't."""
    chosen = kind.strip().lower()
    if chosen == "procedural":
        return ProceduralGenerator()
    if chosen == "sdwebui":
        if not sd_url:
            raise ValueError(
                "The generator is set to 'sdwebui' but no Stable Diffusion WebUI address is "
                "configured: set it (for example http://127.0.0.1:7860) or use 'procedural'."
            )
        return SDWebUIGenerator(sd_url, timeout_s=timeout_s)
    raise ValueError(f"Unknown generator kind {kind!r}: use one of {', '.join(GENERATOR_KINDS)}.")
