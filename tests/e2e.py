"""The unmodified Veil bot against the local Discord double: a fixture and the helpers the
end-to-end tests share.

``veil_app`` starts the double, builds a world (a server with #general and #gallery, alice, bob,
a moderator), opens a real Veil on a temporary folder and runs the real ``VeilBot``. The helpers
read what people would see (replies, DMs, channel posts) and what Veil stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from bot.client import VeilBot
from bot.config import Settings, load_settings
from bot.core.veil import Veil
from bot.generate import (
    GenerationQueue,
    GenerationRequest,
    Generator,
    ProceduralGenerator,
    Progress,
)
from tests.discord_double import DiscordDouble

# Tasks in which discord.py runs our command and component callbacks.
BOT_WORK_TASKS = ("CommandTree-invoker", "discord-ui-view-dispatch", "discord-ui-dynamic-item",
                  "veil-acknowledge")


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


E2E_IMAGE_SIZE = 128  # the side of the images /imagine draws in these tests (VEIL_IMAGE_SIZE)
PUBLIC_LINK = "https://veil.example/l/"  # how every Veil link the bot hands out begins


def png(color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48),
        **info: str) -> bytes:
    """A small real PNG; keyword arguments become tEXt chunks."""
    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG", pnginfo=meta)
    return buf.getvalue()


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, read from its bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, types = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


# What people see ----------------------------------------------------------------------------

def texts(handle) -> str:
    """Everything the bot answered to one command or click, one message a line."""
    return "\n".join(m.content for m in handle.messages)


def button_id(message, label: str) -> str:
    """The custom id of the button labelled ``label`` on a message."""
    for component in message.iter_components():
        if component.get("type") == 2 and component.get("label") == label:
            return component["custom_id"]
    raise AssertionError(f"no {label!r} button on message {message.id}")


def image_attachments(messages) -> list:
    return [a for m in messages for v in m.versions for a in v.attachments
            if a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".gif"))]


def image_dms(app: App, user) -> list:
    """The DMs to ``user`` that carry an image (deleted ones left out)."""
    return [m for m in app.double.dm_messages(user) if image_attachments([m])]


async def assert_no_private_image_in_any_channel(app: App, *, also_private=()) -> None:
    """No message in a guild channel, deleted ones and every edit included, ever carried a
    private image as an attachment or an embed, nor any Veil link."""
    ids = await private_image_ids(app) | set(also_private)
    private_bytes = {a.data for m in app.double.state.messages.values() for v in m.versions
                     for a in v.attachments if any(i in a.filename for i in ids)}
    for message in app.double.all_guild_channel_messages(include_deleted=True):
        for version in message.versions:
            assert PUBLIC_LINK not in version.content, "a Veil link was posted in a channel"
            for attachment in version.attachments:
                assert not any(i in attachment.filename for i in ids), attachment.filename
                assert attachment.data not in private_bytes, "private bytes in a channel"
            for embed in version.embeds:
                text = json.dumps(embed)
                assert PUBLIC_LINK not in text
                assert not any(i in text for i in ids), "a private image embedded in a channel"


# What Veil stored ---------------------------------------------------------------------------

async def new_image(app: App, owner) -> str:
    """Store an uploaded image for ``owner`` through the core (no command, no delivery)."""
    record = await app.veil.images.create(owner.id, png(), guild_id=app.world.guild.id,
                                          source="upload")
    return record.public_id


async def post_public_image(app: App, user, prompt: str = "a public picture") -> tuple[str, object]:
    """``user`` makes a public image in #gallery, permitted first, where the bot posts it;
    returns the image id and that post (the only message in #gallery)."""
    await app.permit(app.world.gallery)
    await app.run("imagine", user=user, channel=app.world.gallery,
                  options={"prompt": prompt, "private": False})
    [post] = app.double.messages_in(app.world.gallery)
    return await newest_image(app, user), post


async def newest_image(app: App, user) -> str:
    """The id of the image ``user`` made last (by a command, say)."""
    [record] = await app.veil.images.owned(user.id, limit=1)
    return record.public_id


async def image_ids(app: App, owner) -> set[str]:
    rows = await app.veil.ctx.db.fetchall("SELECT public_id FROM images WHERE owner_id = ?",
                                          (owner.id,))
    return {r[0] for r in rows}


async def private_image_ids(app: App) -> set[str]:
    rows = await app.veil.ctx.db.fetchall(
        "SELECT public_id FROM images WHERE visibility = 'private'")
    return {row[0] for row in rows}


def blob_files(app: App) -> list[Path]:
    return [p for p in app.veil.data_dir.joinpath("blobs").rglob("*") if p.is_file()]


class GatedGenerator:
    """A generator that holds every request until the test opens ``gate``; counts the
    requests it has started."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0

    async def generate(self, request: GenerationRequest,
                       progress: Callable[[Progress], Awaitable[None]] | None = None,
                       ) -> list[bytes]:
        self.started += 1
        await self.gate.wait()
        if progress is not None:
            await progress(Progress(0.5, "rendering"))
        return [png() for _ in range(request.count)]

    async def close(self) -> None:
        pass


def app_settings(double: DiscordDouble, data_dir: Path, **env: str) -> Settings:
    """The settings every end-to-end bot runs with (no link server; links on veil.example),
    with ``env`` added or changed. /imagine draws small images: encoding and sanitizing a
    768-pixel PNG is most of the CPU a bot test would spend otherwise."""
    return load_settings({"DISCORD_TOKEN": double.token, "VEIL_DATA_DIR": str(data_dir),
                          "VEIL_WEB_ENABLED": "off", "VEIL_PUBLIC_URL": "https://veil.example",
                          "VEIL_IMAGE_SIZE": str(E2E_IMAGE_SIZE), **env})


@contextlib.asynccontextmanager
async def bot_running(double: DiscordDouble, world, settings: Settings, veil: Veil, *,
                      generator: Generator | None = None) -> AsyncIterator[App]:
    """The real VeilBot over ``veil``, connected to ``double`` until the block ends; images
    are drawn by ``generator`` (the procedural one by default)."""
    generator = generator or ProceduralGenerator()
    queue = GenerationQueue(generator, per_user_limit=2)
    bot = VeilBot(settings=settings, veil=veil, queue=queue, guild_ready_timeout=0.01)
    async with double.running(bot):
        yield App(double, world, bot, veil)
    await generator.close()


@contextlib.asynccontextmanager
async def app_in(data_dir: Path, **env: str) -> AsyncIterator[App]:
    """A Discord double with the standard world, a Veil on ``data_dir`` and the bot running;
    at the end, the double must have answered every call the bot made."""
    async with DiscordDouble() as double:
        world = double.populate()
        settings = app_settings(double, data_dir, **env)
        async with await Veil.open(settings.data_dir) as veil, \
                bot_running(double, world, settings, veil) as app:
            yield app
        double.assert_no_unhandled()


@pytest.fixture
async def veil_app(tmp_path: Path) -> AsyncIterator[App]:
    async with app_in(tmp_path / "data") as app:
        yield app
