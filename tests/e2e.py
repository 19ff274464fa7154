"""The unmodified Veil bot against the local Discord double: a fixture and small helpers.

``veil_app`` starts the double, builds a world (a server with #general and #gallery, alice, bob,
a moderator), opens a real Veil on a temporary folder and runs the real ``VeilBot``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.client import VeilBot
from bot.config import load_settings
from bot.core.veil import Veil
from bot.generate import GenerationQueue, ProceduralGenerator
from tests.discord_double import DiscordDouble

# Tasks in which discord.py runs our command and component callbacks.
BOT_WORK_TASKS = ("CommandTree-invoker", "discord-ui-view-dispatch", "discord-ui-dynamic-item")


@dataclass
class App:
    double: DiscordDouble
    world: object
    bot: VeilBot
    veil: Veil

    async def run(self, command: str, *, user, guild=True, channel=None, settle: bool = True,
                  **kwargs):
        """Run a slash command to completion (settle=False: only until its first response,
        e.g. a confirmation prompt). guild=True uses the world's server and #general unless a
        channel is given; guild=None means the user's DM with the bot."""
        if guild is True:
            guild = self.world.guild
            channel = channel or self.world.general
        handle = await self.double.slash(command, user=user, guild=guild, channel=channel,
                                         **kwargs)
        if settle:
            await self.settle(handle)
        else:
            await handle.wait_response()
        return handle

    async def click(self, message, custom_id: str, *, user, **kwargs):
        handle = await self.double.click(message, custom_id, user=user, **kwargs)
        await self.settle(handle)
        return handle

    async def settle(self, handle=None, limit_s: float = 10.0) -> None:
        """Wait until the bot has finished every command and button callback it started (a
        quiet REST line alone is not enough: storing an image makes no REST call)."""
        deadline = asyncio.get_running_loop().time() + limit_s
        if handle is not None:
            await handle.wait_response()
        while True:
            busy = [t for t in asyncio.all_tasks() if not t.done()
                    and t.get_name().startswith(BOT_WORK_TASKS)]
            if not busy:
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"bot still busy: {[t.get_name() for t in busy]}")
            await asyncio.sleep(0.01)
        await self.double.idle()

    async def permit(self, channel) -> None:
        await self.veil.moderation.allow_channel(self.world.guild.id, channel.id, 1)


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, read from its bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, types = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def image_attachments(messages) -> list:
    return [a for m in messages for v in m.versions for a in v.attachments
            if a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif"))]


@pytest.fixture
async def veil_app(tmp_path: Path) -> AsyncIterator[App]:
    async with DiscordDouble() as double:
        world = double.populate()
        settings = load_settings({"DISCORD_TOKEN": double.token,
                                  "VEIL_DATA_DIR": str(tmp_path / "data"),
                                  "VEIL_WEB_ENABLED": "off",
                                  "VEIL_PUBLIC_URL": "https://veil.example"})
        async with await Veil.open(settings.data_dir) as veil:
            generator = ProceduralGenerator()
            queue = GenerationQueue(generator, per_user_limit=2)
            bot = VeilBot(settings=settings, veil=veil, queue=queue, guild_ready_timeout=0.01)
            async with double.running(bot):
                yield App(double, world, bot, veil)
            await generator.close()
        double.assert_no_unhandled()
