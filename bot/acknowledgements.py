"""Acknowledging slash commands from the gateway frame, ahead of everything else.

Discord gives an interaction 3 s for its first response, after which the person sees "The
application did not respond" and nothing the command does can be shown. Most of Veil's commands
answer first with a private "thinking" reply (an ephemeral deferral), whatever they then do. In
discord.py's own order that deferral waits behind the building of the interaction's objects, the
command tree's lookup, option conversion, checks, and every other task ready on the loop: in a
burst of commands, behind the database and delivery work of the commands that came before it
(measured: hundreds of ms per stage under 200 concurrent commands, `python -m bench.interaction`).

Here a command declared with ``@defers_privately`` is acknowledged from the INTERACTION_CREATE
payload itself, before discord.py builds anything: the same callback its body would send first
(type 5, ephemeral), through discord.py's own webhook adapter and HTTP session. Then the payload
goes to discord.py's own parser, which builds the interaction and runs the command through the
tree as usual, once, whether the acknowledgement went through or not; the command's
``defer_privately`` does nothing after an early acknowledgement, and defers as it always did
after a failed one (and gets Discord's own answer). Checks and option errors that stop a command
after an early acknowledgement reach the person as the private follow-up the central error path
sends.

Priority: while an early acknowledgement is on its way, or another command frame came within
``QUIET_S``, no acknowledged command goes on (its objects, the tree, its database and delivery
work), unless it has waited ``ACKS_FIRST_WAIT_S`` (half a second); then at most
``COMMANDS_PER_ITERATION`` go on per loop iteration. So a burst's acknowledgements leave before
any command's work takes the loop (or the Discord side's time), and the loop reads the gateway
between commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import discord
from discord import app_commands
from discord.enums import InteractionResponseType
from discord.http import Route

if TYPE_CHECKING:
    from discord.ext import commands

log = logging.getLogger("veil.acks")

DEFERS_PRIVATELY = "veil.defers_privately"  # in a command's extras: its body defers ephemerally
ACKNOWLEDGED = "veil.acknowledged"  # in an interaction's extras: deferred from the frame
# The longest a command's own work waits behind other commands' acknowledgements. Not Discord's
# 3 s: under a steady stream of commands (a frame every < QUIET_S) the wait always runs to
# this bound, so it is added to every result; a burst's acknowledgements all leave well within
# it (200 at once: the last 90-190 ms after the first, `python -m bench.interaction`).
ACKS_FIRST_WAIT_S = 0.5
COMMANDS_PER_ITERATION = 4
QUIET_S = 0.05
APPLICATION_COMMAND = 2  # interaction type
CHAT_INPUT = 1  # application command type
SUBCOMMAND, SUBCOMMAND_GROUP = 1, 2  # option types
# What ``defer(ephemeral=True, thinking=True)`` sends for a slash command: type 5 (a deferred
# message, "thinking"), flag 64 (ephemeral); with discord.py's query.
EPHEMERAL_DEFERRAL = json.dumps(
    {"type": InteractionResponseType.deferred_channel_message.value, "data": {"flags": 64}}
).encode()
WITH_RESPONSE = {"with_response": "1"}
JSON = {"Content-Type": "application/json"}

CommandT = TypeVar("CommandT", bound=app_commands.Command[Any, Any, Any])


def defers_privately(command: CommandT) -> CommandT:
    """Declare that ``command`` always answers first with ``defer_privately``, so it may be
    acknowledged from the gateway frame. Put it above ``@app_commands.command``."""
    command.extras[DEFERS_PRIVATELY] = True
    return command


async def defer_privately(interaction: discord.Interaction) -> None:
    """Answer with a private "thinking" reply, unless the frame's early acknowledgement
    already did exactly that."""
    if interaction.extras.get(ACKNOWLEDGED):
        return
    await interaction.response.defer(ephemeral=True, thinking=True)


class Acknowledger:
    """Sends the early acknowledgements of one client, and tells the command tree about them."""

    def __init__(self, client: commands.Bot) -> None:
        self.client = client
        self._acknowledged: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._last_frame = -math.inf
        self._admission = _Admission(self._busy_until)
        parsers: dict[str, Callable[[Any], None]] = client._connection.parsers
        self._parse = parsers["INTERACTION_CREATE"]
        parsers["INTERACTION_CREATE"] = self._on_interaction_create

    def _busy_until(self, now: float) -> float | None:
        if self._in_flight:
            return math.inf
        if now < self._last_frame + QUIET_S:
            return self._last_frame + QUIET_S
        return None

    def _on_interaction_create(self, data: Any) -> None:
        if data.get("type") == APPLICATION_COMMAND and self._defers_privately(data):
            self._in_flight += 1
            self._last_frame = asyncio.get_running_loop().time()
            task = asyncio.get_running_loop().create_task(
                self._acknowledge_then_dispatch(data), name="veil-acknowledge")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._parse(data)

    async def _acknowledge_then_dispatch(self, data: Any) -> None:
        """Acknowledge, then hand the payload to discord.py (which builds the interaction
        and runs the command through the tree) once admitted: whether or not the
        acknowledgement went through, the command runs once."""
        interaction_id = int(data["id"])
        try:
            if await self._acknowledge(interaction_id, data["token"]):
                self._acknowledged.add(interaction_id)
        finally:
            self._in_flight -= 1
            self._admission.kick()
        await self._admission.wait()
        try:
            self._parse(data)
        except Exception:
            # What discord.py's gateway loop would have met parsing the frame itself.
            log.exception("Could not dispatch an interaction")

    def _defers_privately(self, data: Any) -> bool:
        """Whether the command this payload names (resolved as the tree resolves it: the
        guild's commands, then the global ones; subcommands through their groups) is declared
        ``@defers_privately``."""
        command_data = data.get("data") or {}
        if command_data.get("type", CHAT_INPUT) != CHAT_INPUT:
            return False
        tree = self.client.tree
        guild_id = command_data.get("guild_id")
        found: Any = None
        if guild_id is not None:
            found = tree.get_command(command_data.get("name", ""),
                                     guild=discord.Object(int(guild_id)))
        if found is None:
            found = tree.get_command(command_data.get("name", ""))
        options = command_data.get("options") or []
        while isinstance(found, app_commands.Group):
            sub = next((o for o in options if o.get("type") in (SUBCOMMAND, SUBCOMMAND_GROUP)),
                       None)
            if sub is None:
                return False
            found = found.get_command(sub.get("name", ""))
            options = sub.get("options") or []
        return isinstance(found, app_commands.Command) and bool(
            found.extras.get(DEFERS_PRIVATELY))

    async def _acknowledge(self, interaction_id: int, token: str) -> bool:
        """Send the request ``InteractionResponse.defer(ephemeral=True, thinking=True)`` sends
        (same URL, query and body, through discord.py's own HTTP session), now. False when it
        did not go through, a rate limit included: the command then defers itself, through
        discord.py's webhook adapter and its retries. The adapter is not used here because
        its per-request work (a lock, headers, decoding the answer) was most of the loop's
        CPU per acknowledgement (`python -m bench.interaction`)."""
        http = self.client.http
        url = f"{Route.BASE}/interactions/{interaction_id}/{token}/callback"
        try:
            async with http._HTTPClient__session.post(  # type: ignore[attr-defined]
                    url, data=EPHEMERAL_DEFERRAL, params=WITH_RESPONSE, headers=JSON,
                    proxy=http.proxy, proxy_auth=http.proxy_auth) as response:
                await response.read()  # the connection goes back to the pool for the next one
                if 200 <= response.status < 300:
                    return True
                log.debug("Early acknowledgement refused (%d); the command will defer itself",
                          response.status)
                return False
        except (aiohttp.ClientError, OSError, TimeoutError):
            log.debug("Early acknowledgement failed; the command will defer itself")
            return False

    def settle(self, interaction: discord.Interaction) -> None:
        """Before the tree runs a command: record its early acknowledgement on it, if it had
        one."""
        if interaction.id not in self._acknowledged:
            return
        self._acknowledged.discard(interaction.id)
        # discord.py's own record of a sent response (what ``defer`` sets): from here on
        # ``is_done()`` is True and the error path answers with a follow-up.
        interaction.response._response_type = InteractionResponseType.deferred_channel_message
        interaction.extras[ACKNOWLEDGED] = True


class _Admission:
    """Lets acknowledged commands onto the loop (discord.py's parsing of their payload, the
    tree, their own work): none while an early acknowledgement is on its way or a command
    frame came in the last ``QUIET_S`` (more of a burst is likely on its way), unless one has
    waited ``ACKS_FIRST_WAIT_S``; then at most ``COMMANDS_PER_ITERATION`` per loop
    iteration, so the gateway's next frames and the acknowledgements' responses are read
    between them rather than after all of them."""

    def __init__(self, busy_until: Callable[[float], float | None]) -> None:
        # busy_until(now): None when commands may go on; else when to look again (infinity:
        # when kicked, as an acknowledgement ends).
        self._busy_until = busy_until
        self._waiting: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._armed = False
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((loop.time(), future))
        self.kick()
        await future

    def kick(self) -> None:
        """Look again at the next iteration."""
        if not self._armed and self._waiting:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._admit)

    def _admit(self) -> None:
        self._armed = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        admitted = 0
        while self._waiting and admitted < COMMANDS_PER_ITERATION:
            since, future = self._waiting[0]
            busy_until = self._busy_until(now)
            if busy_until is not None and now - since < ACKS_FIRST_WAIT_S:
                self._look_again_at(min(busy_until, since + ACKS_FIRST_WAIT_S))
                return
            self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                admitted += 1
        self.kick()

    def _look_again_at(self, when: float) -> None:
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.kick()


class VeilTree(app_commands.CommandTree):
    """The command tree, settling a command's early acknowledgement before running it."""

    acknowledger: Acknowledger | None = None

    async def _call(self, interaction: discord.Interaction) -> None:
        if self.acknowledger is not None:
            self.acknowledger.settle(interaction)
        await super()._call(interaction)
