"""Shared fixtures: a real Veil over a real SQLite file in a temporary folder, with a clock the
test moves by hand, and small real images made with Pillow (``png``, kept in tests.e2e beside the
bot's fixture so both kinds of test make images the same way)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core.models import Viewer
from bot.core.veil import Veil
from bot.logs import REDACTOR
from tests.blobstores import blob_options  # noqa: F401  (the folder; @both_stores adds S3)
from tests.e2e import png, veil_app  # noqa: F401  (the bot fixture for all; png for imports)
from tests.s3server import s3_server  # noqa: F401  (the session's S3 server, started on demand)

GUILD = 1_000_000_000_000_000_001
OTHER_GUILD = 1_000_000_000_000_000_002
ALICE = 2_000_000_000_000_000_001
BOB = 2_000_000_000_000_000_002
CAROL = 2_000_000_000_000_000_003
MOD = 2_000_000_000_000_000_009
ARTISTS = 3_000_000_000_000_000_001


def _redact_like_veil() -> None:
    """Put Veil's log filter on pytest's capture handlers, as ``setup_logging`` puts it on Veil's
    own handler, so what ``caplog`` holds is what Veil would write."""
    for handler in logging.getLogger().handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)


# pytest installs fresh capture handlers for each phase of a test, before these hooks run.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _redact_like_veil()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _redact_like_veil()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _redact_like_veil()


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def veil(data_dir: Path, clock: FakeClock,
               blob_options: dict[str, Any]) -> AsyncIterator[Veil]:  # noqa: F811
    v = await Veil.open(data_dir, clock=clock, **blob_options)
    try:
        yield v
    finally:
        await v.close()


def viewer(user_id: int, *roles: int, guild: int | None = GUILD, mod: bool = False) -> Viewer:
    return Viewer(user_id, frozenset(roles), guild, mod)
