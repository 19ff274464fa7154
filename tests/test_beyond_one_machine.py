"""Veil as a deployment beyond one machine runs it: two bot processes (shards 0 and 1 of 2) and
two link servers (`python -m bot web`), each a real subprocess, on one store, driven through the
Discord double. Whatever one process does, the others honour on the very next request: nothing
that decides access lives in one process's memory.

Each server is on the shard that serves it ((guild id >> 22) % 2), so a command in one server
reaches one process and a command in the other server the other process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_settings
from bot.core.models import Viewer
from bot.core.veil import Veil
from tests.discord_double import DiscordDouble
from tests.e2e import button_id, image_attachments, png
from tests.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
MASTER_KEY = "5e" * 32  # every process of a deployment holds the same master key
LINK = re.compile(r"https://veil\.example/l/([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])")
IMAGE_ID = re.compile(r"`([23456789a-z]{10})`")
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}


def guild_id_on(shard: int, count: int = 2) -> int:
    """A snowflake that Discord routes to ``shard``: (id >> 22) % count == shard."""
    return ((1_300_000_000_000 // count) * count + shard) << 22 | 1


@dataclass
class Deployment:
    double: DiscordDouble
    world: object
    veil: Veil  # the test's own view of the store, to read ids as an operator would
    links: list[str]  # the two link servers' base URLs
    guilds: list[object]  # guilds[n] is served by shard n
    channels: list[object]


async def _spawn(double: DiscordDouble, command: str, env: dict[str, str],
                 log: Path) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.cliagainst", double.api_base, double.gateway_url, command,
        cwd=log.parent, env={**clean, "PYTHONPATH": str(ROOT), **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("wb"))


async def _until(predicate, what: str, procs: list[asyncio.subprocess.Process],
                 logs: list[Path]) -> None:
    deadline = time.monotonic() + 30
    while not await predicate():
        for proc, log in zip(procs, logs, strict=True):
            assert proc.returncode is None, f"{log.name} stopped:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def deployment(tmp_path: Path, store: dict[str, str], *,
                     shared_folder: bool) -> AsyncIterator[Deployment]:
    """Two shards and two link servers on ``store`` (the storage settings). Each process has a
    data folder of its own unless ``shared_folder`` (SQLite: the folder is the store)."""
    async with DiscordDouble() as double:
        world = double.populate()
        guilds, channels = [], []
        for shard in (0, 1):
            guild = double.add_guild(f"Shard {shard}", owner=world.owner,
                                     guild_id=guild_id_on(shard))
            for person in (world.alice, world.bob):
                double.add_member(guild, person)
            guilds.append(guild)
            channels.append(double.state.channel(guild.channel_ids[0]))
        common = {**store, "DISCORD_TOKEN": double.token, "VEIL_MASTER_KEY": MASTER_KEY,
                  "VEIL_SHARED_LIMITS": "on", "VEIL_PUBLIC_URL": "https://veil.example",
                  "VEIL_SHARD_COUNT": "2", "VEIL_WEB_ENABLED": "off"}

        def folder(name: str) -> Path:
            path = tmp_path / ("data" if shared_folder else f"data-{name}")
            path.mkdir(exist_ok=True)
            return path

        # The store exists (migrated, master key recorded) before the processes race to it.
        veil = await Veil.open(folder("test"), master_key=bytes.fromhex(MASTER_KEY),
                               **_open_args(store))
        procs, logs, links = [], [], []
        try:
            for shard in (0, 1):
                logs.append(tmp_path / f"shard{shard}.log")
                procs.append(await _spawn(double, "run", {
                    **common, "VEIL_DATA_DIR": str(folder(f"shard{shard}")),
                    "VEIL_SHARD_IDS": str(shard)}, logs[-1]))
            for n in (0, 1):
                port = free_port()
                logs.append(tmp_path / f"web{n}.log")
                procs.append(await _spawn(double, "web", {
                    **common, "VEIL_DATA_DIR": str(folder(f"web{n}")),
                    "VEIL_WEB_PORT": str(port)}, logs[-1]))
                links.append(f"http://127.0.0.1:{port}")

            async def bots_connected() -> bool:
                sessions = double.gateway.shard_sessions
                return (set(sessions) == {0, 1} and all(s.conn for s in sessions.values())
                        and bool(double.commands))

            async def links_answer() -> bool:
                async with aiohttp.ClientSession() as http:
                    for base in links:
                        try:
                            async with http.get(f"{base}/healthz") as response:
                                if response.status != 200:
                                    return False
                        except aiohttp.ClientConnectionError:
                            return False
                return True

            await _until(bots_connected, "both shards to connect", procs, logs)
            await _until(links_answer, "both link servers", procs, logs)
            yield Deployment(double, world, veil, links, guilds, channels)
            for proc, log in zip(procs, logs, strict=True):
                assert proc.returncode is None, f"{log.name} stopped:\n{log.read_text()[-3000:]}"
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await veil.close()
        for log in logs:
            assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _open_args(store: dict[str, str]) -> dict[str, object]:
    """Veil.open's arguments for the storage settings ``store`` (empty: the data folder)."""
    settings = load_settings({**store, "VEIL_DATA_DIR": "unused"}, require_token=False,
                             dotenv_path=None)
    return {"database_url": settings.database_url, "blob_url": settings.blob_url,
            "s3": settings.s3}


async def command(d: Deployment, shard: int, name: str, *, user, **options):
    """Run a slash command in the server shard ``shard`` serves and wait until it is done."""
    handle = await d.double.slash(name, user=user, guild=d.guilds[shard],
                                  channel=d.channels[shard], options=options or None)
    await handle.wait_done(quiet=0.1, timeout=20)
    # It went to that shard's process, and to no other.
    seen = {n for n, s in d.double.gateway.shard_sessions.items()
            if any(f'"id": "{handle.id}"' in frame for _, frame in s.log)}
    assert seen == {shard}, seen
    return handle


def image_dms(d: Deployment, user) -> list:
    """The DMs to ``user`` that carry an image (deleted ones left out)."""
    return [m for m in d.double.dm_messages(user) if image_attachments([m])]


def text(handle) -> str:
    return "\n".join(m.content for m in handle.messages)


@pytest.fixture
def store(database_url: str | None, request: pytest.FixtureRequest) -> dict[str, str]:
    """The storage settings every process gets: none (the data folder), or PostgreSQL
    (``backend``) with the images in the session's S3 server."""
    if database_url is None:
        return {}
    s3 = request.getfixturevalue("s3_server")
    return {"VEIL_DATABASE_URL": database_url, **s3.env(s3.new_url())}


@pytest.mark.slow
async def test_two_shards_and_two_link_servers_on_one_store_act_as_one(tmp_path, store):
    # On PostgreSQL and S3 every process has a data folder of its own: nothing is shared on disk.
    async with deployment(tmp_path, store, shared_folder=not store) as d:
        alice, bob = d.world.alice, d.world.bob
        # Alice makes an image through shard 0.
        upload = d.double.upload(png(), "harbour.png")
        await command(d, 0, "upload", user=alice, image=upload, private=True)
        [image] = [i.public_id for i in await d.veil.images.owned(alice.id)]

        # A share made through shard 1 is honoured by shard 0 at once.
        refused = await command(d, 0, "view", user=bob, image=image)
        assert not image_dms(d, bob), text(refused)
        shared = await command(d, 1, "share", user=alice, target=bob, image=image)
        assert f"with <@{bob.id}>" in text(shared), text(shared)
        await command(d, 0, "view", user=bob, image=image)
        [bobs_copy] = image_dms(d, bob)

        # A link made through shard 0 opens on both link servers; revoked through shard 1, it
        # is gone on both at once.
        made = await command(d, 0, "link create", user=alice, image=image)
        token = LINK.search(text(made)).group(1)
        assert await fetch(d.links[0], token) == (200, 200)
        assert await fetch(d.links[1], token) == (200, 200)
        [link] = await d.veil.links.links_of(Viewer(alice.id))
        await command(d, 1, "link revoke", user=alice, link=link.public_id)
        assert await fetch(d.links[1], token) == (404, 404)
        assert await fetch(d.links[0], token) == (404, 404)

        # A delete through shard 1 retracts every copy, whoever sent it, exactly once.
        await command(d, 1, "view", user=alice, image=image)  # her second copy, by shard 1
        alices_copies = image_dms(d, alice)
        assert len(alices_copies) == 2  # the upload's and this one
        prompt = await d.double.slash("delete", user=alice, guild=d.guilds[1],
                                      channel=d.channels[1], options={"image": image})
        await prompt.wait_original()
        click = await d.double.click(prompt.original, button_id(prompt.original, "Delete"),
                                     user=alice)
        await click.wait_done(quiet=0.1, timeout=20)
        copies = {bobs_copy.id} | {m.id for m in alices_copies}
        await d.double.wait_for(lambda: copies <= {m.id for m in d.double.deleted_messages},
                                timeout=20, what="both copies retracted")
        await asyncio.sleep(1.0)  # time for a second, wrong retraction by the other process
        deletes = [c.path for c in d.double.calls_to("DELETE", r"^/channels/\d+/messages/\d+$")]
        for copy in copies:
            assert sum(path.endswith(f"/{copy}") for path in deletes) == 1, deletes
        assert await fetch(d.links[0], token) == (404, 404)


async def fetch(base: str, token: str) -> tuple[int, int]:
    """The statuses of a link's page and its image, as a person's browser fetches them."""
    async with aiohttp.ClientSession(headers=BROWSER) as http:
        async with http.get(f"{base}/l/{token}") as page:
            await page.read()
        async with http.get(f"{base}/l/{token}/image") as image:
            await image.read()
    return page.status, image.status


