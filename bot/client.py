"""The Discord client: receives its services through the constructor, loads one cog per area,
syncs slash commands, and runs the background work (retractions, retention, the link server).

Needs no privileged intent: roles come with each interaction, and Veil reads no message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable

import discord
from discord.ext import commands

from bot.config import Settings
from bot.core.veil import Veil
from bot.generate import GenerationQueue
from cogs import EXTENSIONS
from cogs._delivery import Deliverer
from cogs._views import OwnerButton

log = logging.getLogger("veil.bot")

RETRACT_EVERY_S = 30.0
SWEEP_EVERY_S = 600.0


class VeilBot(commands.Bot):
    def __init__(self, *, settings: Settings, veil: Veil, queue: GenerationQueue,
                 start_web: bool | None = None, sync_commands: bool = True,
                 **options) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, **options)
        self.settings = settings
        self.veil = veil
        self.queue = queue
        self.deliverer = Deliverer(self)
        self.owner_button_handler: Callable[..., Awaitable[None]] | None = None
        self._start_web = settings.web_enabled if start_web is None else start_web
        self._sync_commands = sync_commands
        self._background: list[asyncio.Task] = []
        self._web_runner = None
        self.retract_wakeup = asyncio.Event()

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(OwnerButton)
        if self._sync_commands:
            await self._sync()
        self._background.append(asyncio.create_task(self._retraction_loop(), name="retract"))
        self._background.append(asyncio.create_task(self._retention_loop(), name="retention"))
        if self._start_web:
            from bot.web import create_app, start_web

            app = create_app(self.veil, public_url=self.settings.public_url,
                             trusted_proxies=self.settings.trusted_proxies)
            self._web_runner = await start_web(app, self.settings.web_host,
                                               self.settings.web_port)

    async def _sync(self) -> None:
        """Sync commands (to one guild in development), skipping it when nothing changed, so
        restarts do not spend Discord's daily command-creation budget."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        marker = self.settings.data_dir / f"commands-{guild.id if guild else 'global'}.sha256"
        if marker.exists() and marker.read_text() == digest:
            return
        await self.tree.sync(guild=guild)
        marker.write_text(digest)
        log.info("Synced %d slash commands %s", len(payload),
                 "to the development server" if guild else "globally")

    def wake_retractions(self) -> None:
        self.retract_wakeup.set()

    async def _retraction_loop(self) -> None:
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                await self.deliverer.retract_due()
            except Exception:
                log.exception("Retraction pass failed; will try again")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.retract_wakeup.wait(), RETRACT_EVERY_S)
            self.retract_wakeup.clear()

    async def _retention_loop(self) -> None:
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                result = await self.veil.retention.sweep()
                if result.images or result.retractions:
                    self.wake_retractions()
            except Exception:
                log.exception("Retention sweep failed; will try again")
            await asyncio.sleep(SWEEP_EVERY_S)

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._web_runner is not None:
            await self._web_runner.cleanup()
        await super().close()
