"""Pytest fixtures for the Discord double.

A conftest can enable them with ``pytest_plugins = ["tests.discord_double.pytest_plugin"]``;
a test module can also import the fixtures directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from .server import DiscordDouble, World


@pytest_asyncio.fixture
async def discord_double() -> AsyncIterator[DiscordDouble]:
    """A fresh, started double with discord.py pointed at it (restored afterwards)."""
    double = DiscordDouble()
    await double.start()
    double.install()
    try:
        yield double
    finally:
        await double.stop()


@pytest_asyncio.fixture
async def discord_world(discord_double: DiscordDouble) -> World:
    """``discord_double.populate()``: guild "Veil Test" with #general, #gallery and users."""
    return discord_double.populate()
