"""The Discord client: receives its services through the constructor, loads one cog per area,
syncs slash commands, and runs the background work (retractions, retention, the link server).

Needs no privileged intent: roles come with each interaction, and Veil reads no message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Mapping

import discord
from discord import app_commands
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

# Loggers whose records may quote what travels on the wire. discord.py's DEBUG lines carry whole
# gateway events (interaction tokens, command options such as prompts) and HTTP bodies (our
# replies, link URLs included); aiosqlite's carry SQL parameters. A filter sees only the records
# of the logger it is on, not those of its children, so each logger is named.
WIRE_LOGGERS = ("discord.client", "discord.gateway", "discord.http", "discord.shard",
                "discord.state", "discord.webhook.async_", "discord.app_commands.tree",
                "discord.ui.view", "discord.ui.modal", "discord.ext.commands.bot", "aiosqlite")
_TOKEN_IN_URL = re.compile(r"(/(?:interactions/\d+|webhooks/\d+)/)[A-Za-z0-9_.\-]+")


def _withheld(value: object) -> object:
    """A log argument, or a short stand-in when it is a payload that may hold secrets."""
    if isinstance(value, dict) and "op" in value:
        return f"<op {value.get('op')} {value.get('t') or ''} payload withheld>"
    if isinstance(value, dict | list | tuple | set | bytes | bytearray | memoryview):
        return f"<{type(value).__name__} withheld>"
    if isinstance(value, functools.partial):
        return f"<{getattr(value.func, '__name__', 'call')}(...) withheld>"
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        return "<body withheld>"
    if type(value).__name__ in ("FormData", "WSMessage"):
        return f"<{type(value).__name__} withheld>"
    return value


class WireLogRedactor(logging.Filter):
    """Keeps every line of the libraries' logs, but never a payload, an interaction or webhook
    token in a URL, or a registered secret such as the bot token (guarantee 8)."""

    def __init__(self) -> None:
        super().__init__()
        # A tuple replaced whole, never changed in place: aiosqlite logs from its own thread.
        self.secrets: tuple[str, ...] = ()

    def add_secrets(self, *secrets: str | None) -> None:
        known = set(self.secrets) | {s for s in secrets if s}
        self.secrets = tuple(sorted(known, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        text = _TOKEN_IN_URL.sub(r"\1<token>", text)
        for secret in self.secrets:
            text = text.replace(secret, "<secret>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        template, args = str(record.msg), record.args
        try:
            if not args:
                message = template
            elif isinstance(args, Mapping) and "%(" in template:
                message = template % {k: _withheld(v) for k, v in args.items()}
            elif isinstance(args, Mapping):  # one dict argument, which logging unwraps
                message = template % (_withheld(dict(args)),)
            else:
                message = template % tuple(_withheld(a) for a in args)
        except (TypeError, ValueError, KeyError):
            message = template
        record.msg, record.args = self.scrub(message), None
        if record.exc_info:
            record.exc_text = self.scrub("".join(
                traceback.format_exception(*record.exc_info))).rstrip("\n")
            record.exc_info = None
        return True


LOG_REDACTOR = WireLogRedactor()


def redact_wire_logs(*secrets: str | None) -> None:
    """Install the redactor on the libraries' loggers (once) and register ``secrets``."""
    LOG_REDACTOR.add_secrets(*secrets)
    for name in WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if LOG_REDACTOR not in logger.filters:
            logger.addFilter(LOG_REDACTOR)


class VeilBot(commands.Bot):
    def __init__(self, *, settings: Settings, veil: Veil, queue: GenerationQueue,
                 start_web: bool | None = None, sync_commands: bool = True,
                 **options) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        # Every command works as a server install and as a user install (a person's own
        # account), in servers, group DMs and DMs, unless it says otherwise (/admin does).
        options.setdefault("allowed_installs",
                           app_commands.AppInstallationType(guild=True, user=True))
        options.setdefault("allowed_contexts", app_commands.AppCommandContext(
            guild=True, dm_channel=True, private_channel=True))
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
        self._retract_lock = asyncio.Lock()
        redact_wire_logs(settings.discord_token)

    async def login(self, token: str) -> None:
        redact_wire_logs(token)
        await super().login(token)

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

    async def retract_now(self) -> int:
        """Delete every message waiting in the retraction outbox now, in as many passes as it
        takes (one pass handles a batch); returns how many went. What Discord refuses stays
        queued, with back-off, for the background loop."""
        done = 0
        async with self._retract_lock:
            while passed := await self.deliverer.retract_due():
                done += passed
        return done

    async def _retraction_loop(self) -> None:
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                async with self._retract_lock:
                    await self.deliverer.retract_due()
            except Exception:
                log.exception("Retraction pass failed; will try again")
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and close() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRACT_EVERY_S):
                    await self.retract_wakeup.wait()
            self.retract_wakeup.clear()

    async def _retention_loop(self) -> None:
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                result = await self.veil.retention.sweep()
                if result.images or result.retractions:
                    self.wake_retractions()
                await self.veil.exports.sweep()  # expired and abandoned export files
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
