"""Shared fixtures: a real Veil over a real SQLite file in a temporary folder, with a clock the
test moves by hand, and small real images made with Pillow."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot.core.models import Viewer
from bot.core.veil import Veil
from tests.e2e import veil_app  # noqa: F401  (the bot-against-the-double fixture, for every test)

GUILD = 1_000_000_000_000_000_001
OTHER_GUILD = 1_000_000_000_000_000_002
ALICE = 2_000_000_000_000_000_001
BOB = 2_000_000_000_000_000_002
CAROL = 2_000_000_000_000_000_003
MOD = 2_000_000_000_000_000_009
ARTISTS = 3_000_000_000_000_000_001


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def veil(data_dir: Path, clock: FakeClock) -> AsyncIterator[Veil]:
    v = await Veil.open(data_dir, clock=clock)
    try:
        yield v
    finally:
        await v.close()


def png(color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48),
        **info: str) -> bytes:
    """A small real PNG; keyword arguments become tEXt chunks."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


def viewer(user_id: int, *roles: int, guild: int | None = GUILD, mod: bool = False) -> Viewer:
    return Viewer(user_id, frozenset(roles), guild, mod)
