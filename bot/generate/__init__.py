"""Image generation: one small interface, the built-in, Stable Diffusion WebUI and ComfyUI
backends, a fair queue.

``make_generator`` turns the configured kind into a generator; everything a caller needs is
re-exported here, so other packages import from ``bot.generate`` and nowhere deeper.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from bot.generate.base import (
    DEFAULT_SIDE,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MIN_SIDE,
    GenerationRequest,
    Generator,
    Progress,
    ProgressCallback,
)
from bot.generate.comfyui import (
    DEFAULT_CHECKPOINT,
    ComfyUIGenerator,
    Workflow,
    WorkflowError,
    load_workflow,
)
from bot.generate.procedural import ProceduralGenerator
from bot.generate.queue import GenerationQueue
from bot.generate.sdwebui import SDWebUIGenerator

GENERATOR_KINDS = ("procedural", "sdwebui", "comfyui")

__all__ = [
    "GENERATOR_KINDS",
    "DEFAULT_SIDE",
    "MAX_PROMPT_CHARS",
    "MAX_SIDE",
    "MIN_SIDE",
    "ComfyUIGenerator",
    "Workflow",
    "WorkflowError",
    "load_workflow",
    "GenerationQueue",
    "GenerationRequest",
    "Generator",
    "ProceduralGenerator",
    "Progress",
    "ProgressCallback",
    "SDWebUIGenerator",
    "make_generator",
    "GENERATOR_TITLES",
    "describe_generator",
    "startup_warnings",
]

GENERATOR_TITLES = {"procedural": "Veil's built-in generator (no model, no network)",
                    "sdwebui": "Stable Diffusion WebUI (AUTOMATIC1111 or Forge)",
                    "comfyui": "ComfyUI"}


def make_generator(kind: str, *, sd_url: str | None, timeout_s: float,
                   comfyui_url: str | None = None, comfyui_workflow: str | None = None,
                   comfyui_checkpoint: str = DEFAULT_CHECKPOINT) -> Generator:
    """Build the generator named in the settings; a ValueError says what to fix if it can't."""
    chosen = kind.strip().lower()
    if chosen == "comfyui":
        if not comfyui_url:
            raise ValueError(
                "The generator is set to 'comfyui' but no ComfyUI address is configured: set "
                "it (for example http://127.0.0.1:8188) or use 'procedural'."
            )
        return ComfyUIGenerator(comfyui_url, workflow=load_workflow(comfyui_workflow),
                                checkpoint=comfyui_checkpoint, timeout_s=timeout_s)
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


async def startup_warnings(generator: Generator) -> list[str]:
    """Problems an operator should hear about at start-up (none for the built-in generator)."""
    check = getattr(generator, "startup_warnings", None)
    return await check() if check is not None else []


def runs_here(url: str | None) -> bool:
    """Whether a backend address points at this machine (no URL: the built-in generator)."""
    if url is None:
        return True
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def describe_generator(generator: Generator) -> str:
    """One line for /privacy: which generator draws, and whether prompts leave this machine."""
    title = GENERATOR_TITLES.get(generator.name, generator.name)
    if runs_here(getattr(generator, "url", None)):
        return f"{title}, on the machine Veil runs on"
    return f"{title}, on another machine: prompts travel to it over the network"
