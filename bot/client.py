"""The Discord client: receives its services through the constructor, loads one cog per area,
syncs slash commands, and runs the background work (retractions, retention, the link server).

Needs no privileged intent: roles come with each interaction, and Veil reads no message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.acknowledgements import Acknowledger, VeilTree
from bot.buttons import OwnerActions, OwnerButton
from bot.config import Settings
from bot.core.ledger import IN_FLIGHT_WAIT_S, Drained
from bot.core.veil import Veil
from bot.delivery import Deliverer
from bot.generate import GenerationQueue
from bot.logs import REDACTOR
from cogs import EXTENSIONS

if TYPE_CHECKING:
    from bot.web.app import WebServer

log = logging.getLogger("veil.bot")

RETRACT_EVERY_S = 30.0
SWEEP_EVERY_S = 600.0
GRANT_EXPIRY_LEASE_S = 5.0

# Veil has no voice features: discord.py's start-up warnings about PyNaCl and davey (its voice
# libraries) would only puzzle an operator.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


class VeilBot(commands.Bot):
    def __init__(self, *, settings: Settings, veil: Veil, queue: GenerationQueue,
                 start_web: bool | None = None, sync_commands: bool = True,
                 freeze_gc: bool = False, early_acks: bool = True, **options) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        # Optional and privileged: role removals arrive at once (on_member_update).
        intents.members = settings.members_intent
        # Every command works as a server install and as a user install (a person's own
        # account), in servers, group DMs and DMs, unless it says otherwise (/admin does).
        options.setdefault("allowed_installs",
                           app_commands.AppInstallationType(guild=True, user=True))
        options.setdefault("allowed_contexts", app_commands.AppCommandContext(
            guild=True, dm_channel=True, private_channel=True))
        options.setdefault("tree_cls", VeilTree)
        super().__init__(command_prefix=commands.when_mentioned, intents=intents,
                         help_command=None, **options)
        # Commands that answer first with a private deferral are acknowledged from the
        # gateway frame, before anything else (bot/acknowledgements.py).
        # (``early_acks=False``: in discord.py's order, for the benchmark's comparison.)
        if early_acks and isinstance(self.tree, VeilTree):
            self.tree.acknowledger = Acknowledger(self)
        self.settings = settings
        self.veil = veil
        self.queue = queue
        self.deliverer = Deliverer(self, veil)
        # Filled by the cogs as they load: each adds the owner-button actions it performs.
        self.owner_actions = OwnerActions()
        self._start_web = settings.web_enabled if start_web is None else start_web
        self._sync_commands = sync_commands
        self._freeze_gc = freeze_gc
        self._background: list[asyncio.Task] = []
        self._web_runner: WebServer | None = None
        self.retract_wakeup = asyncio.Event()
        self.grants_changed = asyncio.Event()
        veil.ctx.retraction_listeners.append(self.wake_retractions)
        REDACTOR.add_secrets(settings.discord_token)

    async def login(self, token: str) -> None:
        REDACTOR.add_secrets(token)
        await super().login(token)

    async def setup_hook(self) -> None:
        # The port first: a port in use stops the start before anything is sent to Discord.
        if self._start_web:
            from bot.web import create_app, start_web

            app = create_app(self.veil, public_url=self.settings.public_url,
                             trusted_proxies=self.settings.trusted_proxies,
                             shared_limits=self.settings.shared_limits)
            self._web_runner = await start_web(app, self.settings.web_host,
                                               self.settings.web_port)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(OwnerButton)
        if self._sync_commands:
            await self._sync()
        self._background.append(asyncio.create_task(self._retraction_loop(), name="retract"))
        self._background.append(asyncio.create_task(self._retention_loop(), name="retention"))
        self._background.append(asyncio.create_task(self._grant_expiry_loop(),
                                                     name="grant-expiry"))

    async def _sync(self, *, force: bool = False) -> int:
        """Sync commands (to one guild in development), skipping it when nothing changed, so
        restarts do not spend Discord's daily command-creation budget. Only one process
        syncs (VEIL_SYNC_COMMANDS, on by default where shard 0 runs), or `python -m bot sync`.
        Returns how many commands were sent (0 when skipped)."""
        guild = discord.Object(self.settings.dev_guild_id) if self.settings.dev_guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        payload = [c.to_dict(self.tree) for c in self.tree.get_commands(guild=guild)]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        marker = self.settings.data_dir / f"commands-{guild.id if guild else 'global'}.sha256"
        if not force and marker.exists() and marker.read_text() == digest:
            return 0
        await self.tree.sync(guild=guild)
        marker.write_text(digest)
        log.info("Synced %d slash commands %s", len(payload),
                 "to the development server" if guild else "globally")
        return len(payload)

    async def sync_commands_once(self, token: str) -> int:
        """`python -m bot sync`: log in over HTTP only (no gateway session), load the cogs,
        send the commands, and stop. Returns how many commands were sent."""
        self._sync_commands = False
        self._start_web = False
        await self.login(token)
        return await self._sync(force=True)

    def wake_retractions(self) -> None:
        self.retract_wakeup.set()

    def wake_grant_expiry(self) -> None:
        """A share with an end was made: the expiry sweep may need to run sooner."""
        self.grants_changed.set()

    async def retract_now(self, ids: Iterable[int]) -> Drained:
        """Delete these outbox messages (the ones a command queued itself) now, and say how it
        went: done, still waiting (Discord refused for now; the worker retries) and stuck.
        Other people's retractions are the worker's, so a command never waits for them; it
        waits a little only for its own rows another worker has claimed at this moment."""
        ids = list(ids)
        if not ids:
            return Drained()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IN_FLIGHT_WAIT_S
        while True:
            for start in range(0, len(ids), 50):
                await self.deliverer.retract_due(ids[start:start + 50])
            left, stuck, in_flight = await self.veil.ledger.progress(ids)
            if not in_flight or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        # Outbox rows are only ever removed once their message is gone.
        return Drained(done=len(ids) - left, waiting=left - stuck, stuck=stuck)

    async def on_ready(self) -> None:
        """Start-up is over: what it made (modules, the command tree, the caches READY filled)
        lives as long as the process. Frozen (``freeze_gc``, on in ``make_bot``: a test process
        running many bots leaves it off), a full garbage collection no longer walks it: such a
        collection during a burst of commands held the event loop for 22 to 27 ms."""
        if self._freeze_gc:
            gc.collect()
            gc.freeze()

    async def on_member_update(self, before: discord.Member, after: discord.Member) -> None:
        """With the Server Members intent: a role taken away retracts, at once, what the member
        received through a share with that role."""
        if {r.id for r in before.roles} - {r.id for r in after.roles}:
            roles = frozenset(r.id for r in after.roles) | {after.guild.id}
            await self.veil.sharing.roles_now(after.id, after.guild.id, roles)

    async def _retraction_loop(self) -> None:
        await self.wait_until_ready()
        while not self.is_closed():
            try:
                await self.deliverer.reconcile_pending()
                while (await self.deliverer.retract_due()).done:
                    pass  # a full batch went: there may be more
            except Exception:
                log.exception("Retraction pass failed; will try again")
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and close() would then wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRACT_EVERY_S):
                    await self.retract_wakeup.wait()
            self.retract_wakeup.clear()

    async def _retention_loop(self) -> None:
        """Retention, and finishing what a crashed process left (erasures, abandoned uploads),
        each once per period across every process on this data store (leases)."""
        await self.wait_until_ready()
        leases = self.veil.leases
        while not self.is_closed():
            try:
                result = await leases.once_per("retention", SWEEP_EVERY_S,
                                               self.veil.retention.sweep)
                if result is not None and (result.images or result.retractions):
                    self.wake_retractions()
                if await leases.once_per("repair", SWEEP_EVERY_S, self.veil.repair):
                    self.wake_retractions()
                # Expired and abandoned export files.
                await leases.once_per("exports", SWEEP_EVERY_S, self.veil.exports.sweep)
            except Exception:
                log.exception("Retention sweep failed; will try again")
            await asyncio.sleep(SWEEP_EVERY_S)

    async def _grant_expiry_loop(self) -> None:
        """Expired shares are swept when they expire (not at the next 10-minute tick), so a
        copy sent through one is gone within seconds of its end."""
        await self.wait_until_ready()
        while not self.is_closed():
            self.grants_changed.clear()
            try:
                # Under a short lease: one process sweeps at each expiry; another that wakes
                # for the same expiry finds it taken and (the sweep being idempotent anyway)
                # has nothing to do.
                await self.veil.leases.once_per("grant-expiry", GRANT_EXPIRY_LEASE_S,
                                                self.veil.retention.expire_grants)
                upcoming = await self.veil.retention.next_grant_expiry()
            except Exception:
                log.exception("Share expiry sweep failed; will try again")
                upcoming = None
            wait = SWEEP_EVERY_S if upcoming is None else max(
                0.05, min(SWEEP_EVERY_S, upcoming - self.veil.ctx.now() + 0.05))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.grants_changed.wait()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._web_runner is not None:
            await self._web_runner.cleanup()
        await super().close()


class ShardedVeilBot(VeilBot, commands.AutoShardedBot):
    """VeilBot over the shards this process was given (VEIL_SHARD_IDS of VEIL_SHARD_COUNT), so
    several processes split the gateway. DMs always arrive on shard 0."""


def make_bot(*, settings: Settings, veil: Veil, queue: GenerationQueue, **options) -> VeilBot:
    """The bot for ``settings``: sharded when VEIL_SHARD_COUNT is set."""
    options.setdefault("sync_commands", settings.sync_commands)
    options.setdefault("freeze_gc", True)
    if settings.shard_count is None:
        return VeilBot(settings=settings, veil=veil, queue=queue, **options)
    return ShardedVeilBot(settings=settings, veil=veil, queue=queue,
                          shard_count=settings.shard_count,
                          shard_ids=list(settings.shard_ids) if settings.shard_ids else None,
                          **options)


# What Veil's command handlers receive: ``interaction.client`` is a VeilBot, so a type checker
# knows ``interaction.client.veil``.
Interaction = discord.Interaction[VeilBot]
