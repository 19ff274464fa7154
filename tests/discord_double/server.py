"""DiscordDouble: a local stand-in for Discord's gateway and REST API on 127.0.0.1."""

# ruff: noqa: ASYNC109  (waits take an explicit timeout= by design: it is the clearest test API)

from __future__ import annotations

import asyncio
import base64
import contextlib
import mimetypes
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from . import payloads
from .gateway import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    Gateway,
)
from .interactions import InteractionFactory, InteractionHandle, RegisteredCommand
from .rest import RestApi
from .state import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    DM,
    GROUP_DM,
    GUILD_TEXT,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    OVERWRITE_MEMBER,
    SEND_MESSAGES,
    Call,
    Channel,
    FailureRule,
    Guild,
    Member,
    Role,
    State,
    StoredAttachment,
    StoredMessage,
    User,
    as_id,
    utcnow,
)

T = TypeVar("T")


class DoubleTimeoutError(TimeoutError):
    """A wait on the double timed out; the message says what was awaited and recent calls."""


@dataclass
class World:
    """A small ready-made guild (see :meth:`DiscordDouble.populate`)."""

    guild: Guild
    general: Channel
    gallery: Channel
    owner: User
    alice: User
    bob: User
    moderator: User
    mod_role: Role


class DiscordDouble:
    """Discord's gateway + REST API for one bot, in process, on 127.0.0.1.

    Usage::

        async with DiscordDouble() as double:          # start() + install()
            world = double.populate()
            async with double.running(bot):             # bot.start(double.token), wait ready
                handle = await double.slash("ping", user=world.alice, guild=world.guild)
                await handle.wait_response()
    """

    def __init__(
        self,
        *,
        bot_name: str = "Veil",
        token: str | None = None,
        attachment_size_limit: int = 10 * 1024 * 1024,
        ack_deadline: float | None = 3.0,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.state = State()
        self.application_id = self.state.next_id()
        # Bots created since 2020 have user id == application id.
        self.bot_user_id = self.application_id
        self.state.users[self.bot_user_id] = User(id=self.bot_user_id, username=bot_name, bot=True)
        owner_id = self.state.next_id()
        self.state.users[owner_id] = User(id=owner_id, username="app-owner")
        self.app_owner_id = owner_id
        self.bot_name = bot_name
        encoded = base64.urlsafe_b64encode(str(self.application_id).encode()).decode().rstrip("=")
        self.token = token or f"{encoded}.Double.{secrets.token_urlsafe(27)}"
        # GATEWAY_GUILD_MEMBERS_LIMITED | GATEWAY_MESSAGE_CONTENT_LIMITED
        # | APPLICATION_COMMAND_BADGE
        self.application_flags = (1 << 15) | (1 << 19) | (1 << 23)
        self.attachment_size_limit = attachment_size_limit
        self.ack_deadline = ack_deadline
        # True: the bot's DMs to a user it shares no guild with answer 403 50278, as Discord
        # does for someone who only user-installed the app.
        self.dms_need_mutual_guild = False

        self.calls: list[Call] = []
        self.attachment_requests: list[str] = []
        self.interactions: list[InteractionHandle] = []
        self.command_syncs: list[tuple[int | None, list[str]]] = []
        self._interactions_by_id: dict[int, InteractionHandle] = {}
        self._interactions_by_token: dict[str, InteractionHandle] = {}
        self._command_store: dict[int | None, list[RegisteredCommand]] = {}
        self._failures: list[FailureRule] = []

        self.gateway = Gateway(self)
        self.gateway.heartbeat_interval_ms = heartbeat_interval_ms
        self.rest = RestApi(self)
        self._factory = InteractionFactory(self)

        self._changed = asyncio.Event()
        self._in_flight = 0
        self._last_activity = 0.0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._saved: tuple[str, Any] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the double is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> DiscordDouble:
        """Bind 127.0.0.1 on a free port and serve."""
        if self._runner is not None:
            return self
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/api/v10/{tail:.*}", self.rest.handle)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get(
            "/attachments/{channel_id}/{att_id}/{filename}", self.rest.serve_attachment
        )
        app.router.add_get(
            "/ephemeral-attachments/{app_id}/{att_id}/{filename}", self.rest.serve_attachment
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Close gateway sockets, stop serving, and undo :meth:`install`. Stop the bot first."""
        self.uninstall()
        if self._runner is None:
            return
        await self.gateway.close_all(1000)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> DiscordDouble:
        await self.start()
        self.install()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def install(self) -> None:
        """Point discord.py (REST Route.BASE and the default gateway URL) at this double."""
        import discord.gateway
        import discord.http
        import yarl

        if self._saved is None:
            self._saved = (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            )
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def uninstall(self) -> None:
        """Restore what :meth:`install` replaced (no-op if not installed)."""
        if self._saved is None:
            return
        import discord.gateway
        import discord.http

        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved
        self._saved = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[DiscordDouble]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    @contextlib.asynccontextmanager
    async def running(self, bot: Any, *, timeout: float = 10.0) -> AsyncIterator[Any]:
        """Run ``bot.start(double.token)`` in a task, wait until the bot is ready, close it after.

        Exceptions from startup (e.g. LoginFailure) propagate. Give the bot a small
        ``guild_ready_timeout`` (e.g. 0.01) or on_ready waits 2 s for more GUILD_CREATEs.
        """
        if self._saved is None:
            self.install()
        task = asyncio.create_task(bot.start(self.token), name="discord-double-bot")
        try:
            deadline = time.monotonic() + timeout
            while not bot.is_ready():
                if task.done():
                    task.result()
                    raise RuntimeError("the bot stopped before it became ready")
                if time.monotonic() > deadline:
                    raise DoubleTimeoutError(f"the bot was not ready after {timeout}s")
                await asyncio.sleep(0.002)
            yield bot
        finally:
            if not bot.is_closed():
                await bot.close()
            try:
                await asyncio.wait_for(task, timeout)
            except Exception:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    # -- world building -----------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        *,
        bot: bool = False,
        global_name: str | None = None,
        id: int | None = None,
    ) -> User:
        uid = id if id is not None else self.state.next_id()
        user = User(id=uid, username=username, global_name=global_name, bot=bot)
        self.state.users[uid] = user
        return user

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        owner: Any = None,
        channels: Iterable[str] = ("general",),
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
        locale: str = "en-US",
        bot_member: bool = True,
        guild_id: int | None = None,
    ) -> Guild:
        """A guild with @everyone, the bot's managed role, the bot and owner as members.

        ``bot_member=False``: a server that never added the bot, where people may still run the
        app's commands through their own user install. The bot gets no GUILD_CREATE and no event
        of it; reading, posting and deleting in its channels answer 403 50001 Missing Access;
        interactions there carry ``authorizing_integration_owners`` ``{"1": user}`` only.
        ``guild_id``: a chosen id, e.g. one that a given shard serves ((id >> 22) % count).
        """
        state = self.state
        if owner is None:
            owner_user = self.add_user(f"{name.lower().replace(' ', '-')}-owner")
        else:
            owner_user = state.user(owner)
        gid = guild_id if guild_id is not None else state.next_id()
        guild = Guild(
            id=gid, name=name, owner_id=owner_user.id, locale=locale, bot_member=bot_member
        )
        guild.roles[gid] = Role(
            id=gid, guild_id=gid, name="@everyone", permissions=everyone_permissions
        )
        bot_role = Role(
            id=state.next_id(),
            guild_id=gid,
            name=self.bot_name,
            permissions=bot_permissions,
            position=1,
            managed=True,
            bot_id=self.bot_user_id,
        )
        if bot_member:
            guild.roles[bot_role.id] = bot_role
            guild.members[self.bot_user_id] = Member(
                user_id=self.bot_user_id, guild_id=gid, role_ids=[bot_role.id]
            )
        guild.members[owner_user.id] = Member(user_id=owner_user.id, guild_id=gid)
        state.guilds[gid] = guild
        for position, channel_name in enumerate(channels):
            self._new_channel(guild, channel_name, position=position)
        if bot_member and self.gateway.active_session is not None:
            session = self.gateway.active_session
            self.gateway.dispatch(
                "GUILD_CREATE",
                payloads.guild_create_payload(
                    guild,
                    state,
                    bot_id=self.bot_user_id,
                    all_members=session.has(INTENT_GUILD_MEMBERS),
                ),
            )
        return guild

    def bot_role(self, guild: Any) -> Role:
        g = self.state.guild(guild)
        return next(r for r in g.roles.values() if r.bot_id == self.bot_user_id)

    def add_role(
        self,
        guild: Any,
        name: str,
        *,
        permissions: int = 0,
        position: int | None = None,
        color: int = 0,
        mentionable: bool = False,
    ) -> Role:
        g = self.state.guild(guild)
        pos = position if position is not None else max(r.position for r in g.roles.values()) + 1
        role = Role(
            id=self.state.next_id(),
            guild_id=g.id,
            name=name,
            permissions=permissions,
            position=pos,
            color=color,
            mentionable=mentionable,
        )
        g.roles[role.id] = role
        self.gateway.dispatch(
            "GUILD_ROLE_CREATE", {"guild_id": str(g.id), "role": payloads.role_payload(role)}
        )
        return role

    def _new_channel(
        self,
        guild: Guild,
        name: str,
        *,
        type: int = GUILD_TEXT,
        topic: str | None = None,
        parent: Any = None,
        overwrites: list[dict[str, int]] | None = None,
        bot_can_send: bool = True,
        position: int | None = None,
    ) -> Channel:
        ch = Channel(
            id=self.state.next_id(),
            type=type,
            name=name,
            guild_id=guild.id,
            position=position if position is not None else len(guild.channel_ids),
            topic=topic,
            parent_id=None if parent is None else as_id(parent),
            overwrites=[dict(o) for o in overwrites or []],
            bot_can_send=bot_can_send,
        )
        self.state.channels[ch.id] = ch
        guild.channel_ids.append(ch.id)
        return ch

    def add_channel(
        self,
        guild: Any,
        name: str,
        *,
        type: int = GUILD_TEXT,
        topic: str | None = None,
        parent: Any = None,
        overwrites: list[dict[str, int]] | None = None,
        bot_can_send: bool = True,
        position: int | None = None,
    ) -> Channel:
        """A guild channel. ``overwrites``: ``[{"id", "type" (0 role/1 member), "allow", "deny"}]``.

        ``bot_can_send=False`` behaves like :meth:`deny_channel` (with the overwrite).
        """
        g = self.state.guild(guild)
        ch = self._new_channel(
            g,
            name,
            type=type,
            topic=topic,
            parent=parent,
            overwrites=overwrites,
            bot_can_send=True,
            position=position,
        )
        if not bot_can_send:
            self._deny_overwrite(ch)
            ch.bot_can_send = False
        self.gateway.dispatch("CHANNEL_CREATE", payloads.channel_payload(ch, self.state))
        return ch

    def add_member(
        self, guild: Any, user: Any, *, roles: Iterable[Any] = (), nick: str | None = None
    ) -> Member:
        g = self.state.guild(guild)
        u = self.state.user(user)
        member = Member(user_id=u.id, guild_id=g.id, role_ids=[as_id(r) for r in roles], nick=nick)
        for rid in member.role_ids:
            if rid not in g.roles:
                raise KeyError(f"role {rid} is not in guild {g.id}")
        g.members[u.id] = member
        session = self.gateway.active_session
        if session is not None and session.has(INTENT_GUILD_MEMBERS):
            data = payloads.member_payload(member, self.state)
            data["guild_id"] = str(g.id)
            self.gateway.dispatch("GUILD_MEMBER_ADD", data)
        return member

    def set_roles(self, guild: Any, user: Any, roles: Iterable[Any]) -> Member:
        """Replace a member's roles (GUILD_MEMBER_UPDATE is dispatched)."""
        member = self.state.member(guild, user)
        g = self.state.guild(guild)
        member.role_ids = [as_id(r) for r in roles]
        session = self.gateway.active_session
        if session is not None and (
            session.has(INTENT_GUILD_MEMBERS) or member.user_id == self.bot_user_id
        ):
            data = payloads.member_payload(member, self.state)
            data["guild_id"] = str(g.id)
            self.gateway.dispatch("GUILD_MEMBER_UPDATE", data)
        return member

    def remove_member(self, guild: Any, user: Any) -> None:
        g = self.state.guild(guild)
        uid = as_id(user)
        g.members.pop(uid, None)
        session = self.gateway.active_session
        if session is not None and session.has(INTENT_GUILD_MEMBERS):
            self.gateway.dispatch(
                "GUILD_MEMBER_REMOVE",
                {"guild_id": str(g.id), "user": payloads.user_payload(self.state.users[uid])},
            )

    def delete_channel(self, channel: Any) -> None:
        """Later REST calls on it answer 404 10003 Unknown Channel."""
        ch = self.state.channel(channel)
        ch.deleted = True
        if ch.guild_id is not None:
            self.gateway.dispatch("CHANNEL_DELETE", payloads.channel_payload(ch, self.state))

    def _deny_overwrite(self, ch: Channel) -> None:
        for ow in ch.overwrites:
            if ow["type"] == OVERWRITE_MEMBER and ow["id"] == self.bot_user_id:
                ow["deny"] |= SEND_MESSAGES
                ow["allow"] &= ~SEND_MESSAGES
                return
        ch.overwrites.append(
            {"id": self.bot_user_id, "type": OVERWRITE_MEMBER, "allow": 0, "deny": SEND_MESSAGES}
        )

    def deny_channel(self, channel: Any, *, overwrite: bool = True) -> None:
        """The bot's sends to this channel answer 403 50013 Missing Permissions.

        With ``overwrite=True`` (default) a member overwrite denying Send Messages is added too
        (and CHANNEL_UPDATE dispatched), so ``channel.permissions_for(guild.me)`` agrees; with
        ``overwrite=False`` only REST refuses, as when discord.py's cache is stale.
        """
        ch = self.state.channel(channel)
        ch.bot_can_send = False
        if overwrite and ch.guild_id is not None:
            self._deny_overwrite(ch)
            self.gateway.dispatch("CHANNEL_UPDATE", payloads.channel_payload(ch, self.state))

    def allow_channel(self, channel: Any) -> None:
        ch = self.state.channel(channel)
        ch.bot_can_send = True
        for ow in ch.overwrites:
            if ow["type"] == OVERWRITE_MEMBER and ow["id"] == self.bot_user_id:
                ow["deny"] &= ~SEND_MESSAGES
        if ch.guild_id is not None:
            self.gateway.dispatch("CHANNEL_UPDATE", payloads.channel_payload(ch, self.state))

    def add_group_dm(self, *members: Any, name: str | None = None) -> Channel:
        """A group DM of these users (never the bot): commands of a user install work there
        (context 2), but the bot can neither read nor post in it (403 50001)."""
        ids = [as_id(m) for m in members]
        for uid in ids:
            self.state.user(uid)
        if self.bot_user_id in ids:
            raise ValueError("a bot cannot be in a group DM")
        ch = Channel(id=self.state.next_id(), type=GROUP_DM, name=name, recipient_ids=ids)
        self.state.channels[ch.id] = ch
        return ch

    def close_dms(self, user: Any) -> None:
        """The bot's messages to this user's DM answer 403 50007 (Cannot send messages...)."""
        self.state.closed_dms.add(as_id(user))

    def open_dms(self, user: Any) -> None:
        self.state.closed_dms.discard(as_id(user))

    def upload(
        self,
        data: bytes,
        filename: str,
        content_type: str | None = None,
        *,
        user: Any = None,
        width: int | None = None,
        height: int | None = None,
        size: int | None = None,
        description: str | None = None,
    ) -> StoredAttachment:
        """A user-uploaded attachment for an attachment option (served by the double).

        ``size``/``width``/``height`` override what the payload declares (to test code that
        trusts declared values); by default they are the real length and the image header's.
        """
        att = self._store_attachment(
            data,
            filename,
            channel_id=None,
            ephemeral=True,
            uploader_id=None if user is None else as_id(user),
            description=description,
            content_type=content_type,
        )
        if width is not None or height is not None:
            att.width, att.height = width, height
        if size is not None:
            att.size = size
        return att

    def post_user_message(
        self, channel: Any, user: Any, content: str = "", *, attachments: Iterable[Any] = ()
    ) -> StoredMessage:
        """A message written by a user (MESSAGE_CREATE is dispatched per intents).

        ``channel`` may be a channel or, for a DM with the bot, ``None`` (uses the user's DM).
        ``attachments``: ``(filename, bytes[, content_type])`` tuples or ``upload()`` results.
        """
        uid = as_id(user)
        ch = self._open_dm(uid) if channel is None else self.state.channel(channel)
        atts = []
        for item in attachments:
            if isinstance(item, StoredAttachment):
                item = (item.filename, item.data, item.content_type)
            atts.append(
                self._store_attachment(
                    item[1],
                    item[0],
                    channel_id=ch.id,
                    uploader_id=uid,
                    content_type=item[2] if len(item) > 2 else None,
                )
            )
        return self._create_message(
            ch, author_id=uid, attachments=atts, created_via="user", content=content
        )

    def populate(self) -> World:
        """A guild "Veil Test" (#general, #gallery), owner, alice, bob and a moderator."""
        owner = self.add_user("owner")
        alice = self.add_user("alice")
        bob = self.add_user("bob")
        moderator = self.add_user("moderator")
        guild = self.add_guild("Veil Test", owner=owner, channels=("general", "gallery"))
        mod_role = self.add_role(guild, "Moderators", permissions=MANAGE_GUILD | MANAGE_MESSAGES)
        self.add_member(guild, alice)
        self.add_member(guild, bob)
        self.add_member(guild, moderator, roles=[mod_role])
        channels = [self.state.channels[c] for c in guild.channel_ids]
        return World(
            guild=guild,
            general=channels[0],
            gallery=channels[1],
            owner=owner,
            alice=alice,
            bob=bob,
            moderator=moderator,
            mod_role=mod_role,
        )

    # -- failure injection --------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 500,
        code: int = 0,
        message: str | None = None,
        times: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
    ) -> FailureRule:
        """Answer the next ``times`` matching requests with an error.

        ``method`` is an HTTP method or ``"*"``; ``path_regex`` is searched in the path without
        ``/api/v10`` (e.g. ``r"/channels/\\d+/messages$"``). ``status=429`` answers a rate limit
        with ``retry_after`` (and the ``Via`` header discord.py needs to treat it as Discord's).
        discord.py retries 500/502/504/524 (and any 5xx for webhooks) 5 times sleeping
        1+2n s, so use 503 (REST) for a fast ``DiscordServerError``.
        """
        default = {
            429: "You are being rate limited.",
            403: "Missing Permissions",
            404: "404: Not Found",
        }.get(status, f"{status}: Internal Server Error" if status >= 500 else "Error")
        rule = FailureRule(
            method=method.upper(),
            pattern=re.compile(path_regex),
            status=status,
            code=code,
            message=message or default,
            times=times,
            retry_after=retry_after,
            is_global=is_global,
        )
        self._failures.append(rule)
        return rule

    def clear_failures(self) -> None:
        self._failures.clear()

    def _match_failure(self, method: str, path: str) -> FailureRule | None:
        for rule in self._failures:
            if rule.matches(method, path):
                return rule
        return None

    # -- interactions -------------------------------------------------------------------------

    async def slash(
        self,
        command: str,
        *,
        user: Any,
        guild: Any = None,
        channel: Any = None,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        roles: list[Any] | None = None,
        resolved: dict[str, Any] | None = None,
        locale: str = "en-US",
        bypass_client_checks: bool = False,
        install: str | None = None,
    ) -> InteractionHandle:
        """Dispatch a slash command (INTERACTION_CREATE type 2) as ``user`` would run it.

        ``command``: ``"name"`` or a subcommand path ``"admin channel-allow"``. Without guild
        and channel it runs in the user's DM with the bot. ``options`` map names to values
        (typed by the registered command: user/role/channel options take ids or model objects
        and are put in ``resolved``; attachment options take :meth:`upload` results).
        ``roles`` overrides the member's roles for this interaction only. ``install``:
        ``"guild"`` (the server's install, or the bot DM's) or ``"user"`` (the user's own);
        by default ``"user"`` in a server without the bot and in a group DM, else ``"guild"``
        (``"guild"`` in a server without the bot: a commands-only server install). It sets
        ``authorizing_integration_owners``, and the command must list that installation in its
        ``integration_types``.
        """
        handle = self._factory.slash(
            command,
            user=user,
            guild=guild,
            channel=channel,
            options=options,
            roles=roles,
            resolved=resolved,
            locale=locale,
            bypass_client_checks=bypass_client_checks,
            install=install,
        )
        await asyncio.sleep(0)
        return handle

    async def autocomplete(
        self,
        command: str,
        *,
        focused: str,
        value: str = "",
        user: Any,
        guild: Any = None,
        channel: Any = None,
        options: dict[str, Any] | None = None,
        roles: list[Any] | None = None,
        locale: str = "en-US",
        bypass_client_checks: bool = False,
        install: str | None = None,
    ) -> InteractionHandle:
        """Dispatch an autocomplete (type 4) for option ``focused`` typed as ``value``."""
        handle = self._factory.autocomplete(
            command,
            focused=focused,
            value=value,
            user=user,
            guild=guild,
            channel=channel,
            options=options,
            roles=roles,
            resolved=None,
            locale=locale,
            bypass_client_checks=bypass_client_checks,
            install=install,
        )
        await asyncio.sleep(0)
        return handle

    async def click(
        self,
        message: Any,
        custom_id: str,
        *,
        user: Any,
        values: list[Any] | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Click a button (or pick ``values`` in a select) on a message the bot posted."""
        handle = self._factory.click(message, custom_id, user=user, values=values, locale=locale)
        await asyncio.sleep(0)
        return handle

    async def submit_modal(
        self, source: InteractionHandle, values: dict[str, Any], *, locale: str = "en-US"
    ) -> InteractionHandle:
        """Submit the modal the bot opened in answer to ``source`` (values by custom_id)."""
        handle = self._factory.submit_modal(source, values, locale=locale)
        await asyncio.sleep(0)
        return handle

    async def context_menu(
        self,
        name: str,
        target: Any,
        *,
        user: Any,
        guild: Any = None,
        channel: Any = None,
        locale: str = "en-US",
        bypass_client_checks: bool = False,
    ) -> InteractionHandle:
        """Run a user (target = user) or message (target = StoredMessage) context menu command."""
        handle = self._factory.context_menu(
            name,
            target,
            user=user,
            guild=guild,
            channel=channel,
            locale=locale,
            bypass_client_checks=bypass_client_checks,
        )
        await asyncio.sleep(0)
        return handle

    def expire_interaction(self, handle: InteractionHandle) -> None:
        """Its token stops working (webhooks answer 401 50027), as after 15 minutes."""
        handle.expired = True

    def _register_interaction(self, handle: InteractionHandle) -> None:
        self.interactions.append(handle)
        self._interactions_by_id[handle.id] = handle
        self._interactions_by_token[handle.token] = handle

    # -- gateway controls ---------------------------------------------------------------------

    def dispatch(self, event: str, data: Any) -> bool:
        """Send any gateway DISPATCH event to the connected bot."""
        return self.gateway.dispatch(event, data)

    async def reconnect(self, timeout: float = 5.0) -> None:
        """Ask the bot to reconnect (op 7) and wait until it has RESUMEd."""
        session = self.gateway.active_session
        if session is None or not self.gateway.request_reconnect():
            raise RuntimeError("no connected bot")
        before = session.resumes
        await self.wait_for(
            lambda: session.resumes > before and self.gateway.connected,
            timeout=timeout,
            what="the bot to RESUME",
        )

    # -- queries ------------------------------------------------------------------------------

    @property
    def commands(self) -> dict[str, RegisteredCommand]:
        """Global chat-input commands the bot registered, by name."""
        return {c.name: c for c in self._command_store.get(None, []) if c.type == 1}

    def guild_commands(self, guild: Any) -> dict[str, RegisteredCommand]:
        return {c.name: c for c in self._command_store.get(as_id(guild), []) if c.type == 1}

    def all_commands(self, guild: Any = None) -> list[RegisteredCommand]:
        """Every registered command of a scope (global when guild is None), all types."""
        return list(self._command_store.get(None if guild is None else as_id(guild), []))

    def command(self, name: str, guild: Any = None) -> RegisteredCommand:
        """A chat-input command by name: the guild's first (if given), then global."""
        found = self._factory.find_command(name, None if guild is None else as_id(guild))
        if found is None:
            raise KeyError(f"/{name} is not registered (registered: {self.command_names()})")
        return found

    def command_names(self) -> list[str]:
        names = {c.name for cmds in self._command_store.values() for c in cmds}
        return sorted(names)

    def message(self, message_id: Any) -> StoredMessage:
        return self.state.message(message_id)

    def messages_in(
        self, channel: Any, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[StoredMessage]:
        """Messages in a channel, oldest first. By default only what everyone there can see:
        ephemeral messages and deleted messages are left out unless asked for."""
        ch = self.state.channel(channel)
        out = []
        for mid in ch.message_ids:
            msg = self.state.messages[mid]
            if msg.ephemeral and not include_ephemeral:
                continue
            if msg.deleted and not include_deleted:
                continue
            out.append(msg)
        return out

    def dm_channel(self, user: Any) -> Channel | None:
        cid = self.state.dm_channel_by_user.get(as_id(user))
        return None if cid is None else self.state.channels[cid]

    def dm_messages(self, user: Any, *, include_deleted: bool = False) -> list[StoredMessage]:
        """Messages in the user's DM with the bot (both directions), oldest first."""
        ch = self.dm_channel(user)
        if ch is None:
            return []
        return self.messages_in(ch, include_ephemeral=True, include_deleted=include_deleted)

    def all_guild_channel_messages(
        self, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[StoredMessage]:
        """Every message in every guild channel (what server members could see, by default)."""
        out = []
        for msg in self.state.messages.values():
            if msg.guild_id is None:
                continue
            if msg.ephemeral and not include_ephemeral:
                continue
            if msg.deleted and not include_deleted:
                continue
            out.append(msg)
        return out

    @property
    def deleted_messages(self) -> list[StoredMessage]:
        return self.state.deleted_messages

    def attachment_bytes(self, message: Any) -> list[bytes]:
        msg = message if isinstance(message, StoredMessage) else self.state.message(message)
        return [a.data for a in msg.attachments]

    @property
    def unhandled(self) -> list[Call]:
        """Requests no route answered (404/405 from the double)."""
        return [c for c in self.calls if c.unhandled]

    def assert_no_unhandled(self) -> None:
        if self.unhandled:
            raise AssertionError(
                f"the bot called routes the double does not implement: {self.unhandled}"
            )

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [
            c
            for c in self.calls
            if (method == "*" or c.method == method.upper()) and pattern.search(c.path)
        ]

    # -- waiting ------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T], *, timeout: float = 5.0, what: str = "a condition"
    ) -> T:
        """Re-check ``predicate`` whenever the double sees activity; return its truthy value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = self.calls[-8:]
                raise DoubleTimeoutError(
                    f"timed out after {timeout}s waiting for {what}; recent calls: {recent}; "
                    f"unhandled: {self.unhandled}"
                )
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.01))

    async def wait_for_message(
        self,
        *,
        channel: Any = None,
        dm_user: Any = None,
        predicate: Callable[[StoredMessage], bool] | None = None,
        include_ephemeral: bool = True,
        timeout: float = 5.0,
    ) -> StoredMessage:
        """The first (oldest) live message in ``channel`` / the DM of ``dm_user`` matching."""

        def find() -> StoredMessage | None:
            if dm_user is not None:
                msgs = self.dm_messages(dm_user)
            elif channel is not None:
                msgs = self.messages_in(channel, include_ephemeral=include_ephemeral)
            else:
                msgs = [m for m in self.state.messages.values() if not m.deleted]
            for msg in msgs:
                if predicate is None or predicate(msg):
                    return msg
            return None

        return await self.wait_for(find, timeout=timeout, what="a matching message")

    async def wait_for_call(
        self, method: str, path_regex: str, *, count: int = 1, timeout: float = 5.0
    ) -> list[Call]:
        """Wait until ``count`` answered calls match; returns all the matching calls."""

        def found() -> list[Call] | None:
            calls = [c for c in self.calls_to(method, path_regex) if c.status is not None]
            return calls if len(calls) >= count else None

        return await self.wait_for(found, timeout=timeout, what=f"{count} x {method} {path_regex}")

    async def idle(self, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Wait until no REST request is in flight and none arrived for ``quiet`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            since = time.monotonic() - self._last_activity
            if self._in_flight == 0 and since >= quiet:
                return
            if loop.time() > deadline:
                raise DoubleTimeoutError(f"the bot kept calling REST for more than {timeout}s")
            await asyncio.sleep(max(0.005, quiet - since) if self._in_flight == 0 else 0.005)

    # -- internals shared with rest/gateway ---------------------------------------------------

    def _application_payload(self) -> dict[str, Any]:
        state = self.state
        return {
            "id": str(self.application_id),
            "name": self.bot_name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": payloads.user_payload(state.users[self.app_owner_id]),
            "team": None,
            "flags": self.application_flags,
            "tags": [],
            "redirect_uris": [],
            "rpc_origins": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(state.guilds),
            "bot": payloads.user_payload(state.users[self.bot_user_id]),
            "integration_types_config": {"0": {}},
        }

    def _open_dm(self, user_id: int) -> Channel:
        state = self.state
        cid = state.dm_channel_by_user.get(user_id)
        if cid is not None:
            return state.channels[cid]
        ch = Channel(id=state.next_id(), type=DM, recipient_id=user_id)
        state.channels[ch.id] = ch
        state.dm_channel_by_user[user_id] = ch.id
        return ch

    def _store_attachment(
        self,
        data: bytes,
        filename: str,
        *,
        channel_id: int | None,
        ephemeral: bool = False,
        uploader_id: int | None = None,
        description: str | None = None,
        title: str | None = None,
        content_type: str | None = None,
    ) -> StoredAttachment:
        aid = self.state.next_id()
        ctype = content_type or mimetypes.guess_type(filename)[0]
        if channel_id is None:
            path = f"/ephemeral-attachments/{self.application_id}/{aid}/{quote(filename)}"
        else:
            path = f"/attachments/{channel_id}/{aid}/{quote(filename)}"
        now = int(time.time())
        url = f"{self.base_url}{path}?ex={now + 86400:x}&is={now:x}&hm={secrets.token_hex(32)}&"
        dims = payloads.image_size(data) if ctype and ctype.startswith("image/") else None
        att = StoredAttachment(
            id=aid,
            filename=filename,
            data=bytes(data),
            content_type=ctype,
            url=url,
            proxy_url=url,
            size=len(data),
            description=description,
            title=title,
            width=dims[0] if dims else None,
            height=dims[1] if dims else None,
            ephemeral=ephemeral,
            uploader_id=uploader_id,
        )
        self.state.attachments[aid] = att
        return att

    def _message_event(self, event: str, msg: StoredMessage) -> None:
        session = self.gateway.active_session
        if session is None or msg.ephemeral:
            return
        need = INTENT_GUILD_MESSAGES if msg.guild_id is not None else INTENT_DIRECT_MESSAGES
        if not session.has(need):
            return
        strip = (
            msg.guild_id is not None
            and msg.author_id != self.bot_user_id
            and not session.has(INTENT_MESSAGE_CONTENT)
            and f"<@{self.bot_user_id}>" not in msg.content
        )
        data = payloads.message_payload(msg, self.state, for_gateway=True, strip_content=strip)
        self.gateway.dispatch(event, data)

    def _create_message(
        self,
        ch: Channel,
        *,
        author_id: int,
        attachments: list[StoredAttachment],
        created_via: str,
        interaction: InteractionHandle | None = None,
        content: str = "",
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
        flags: int = 0,
        tts: bool = False,
        message_reference: dict[str, Any] | None = None,
    ) -> StoredMessage:
        msg = StoredMessage(
            id=self.state.next_id(),
            channel_id=ch.id,
            guild_id=ch.guild_id,
            author_id=author_id,
            content=content,
            embeds=list(embeds or []),
            components=list(components or []),
            attachments=list(attachments),
            flags=flags,
            tts=tts,
            message_reference=message_reference,
            created_via=created_via,
        )
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.application_id = self.application_id
            msg.interaction_id = interaction.id
            msg.interaction_type = interaction.type
            msg.interaction_user_id = interaction.user_id
            if interaction.type == 2 and created_via == "interaction":
                msg.interaction_name = interaction.command_name
                cmd_type = interaction.payload.get("data", {}).get("type", 1)
                msg.type = 20 if cmd_type == 1 else 23
        elif message_reference is not None:
            msg.type = 19
        for att in msg.attachments:
            att.message_id = msg.id
        payloads.resolve_embed_attachments(msg.embeds, msg.attachments)
        msg.snapshot()
        self.state.messages[msg.id] = msg
        ch.message_ids.append(msg.id)
        if not msg.ephemeral:
            ch.last_message_id = msg.id
        self._message_event("MESSAGE_CREATE", msg)
        self._notify()
        return msg

    def _edit_message(self, msg: StoredMessage, *, mark_edited: bool = True, **fields: Any) -> None:
        for key in ("content", "embeds", "components", "flags", "attachments"):
            if key in fields:
                setattr(msg, key, fields[key])
        for att in msg.attachments:
            att.message_id = msg.id
        payloads.resolve_embed_attachments(msg.embeds, msg.attachments)
        if mark_edited:
            msg.edited_at = utcnow()
        msg.snapshot()
        self._message_event("MESSAGE_UPDATE", msg)
        self._notify()

    def _delete_message(self, msg: StoredMessage, *, via: str) -> None:
        msg.deleted = True
        msg.deleted_at = utcnow()
        msg.deleted_via = via
        self.state.deleted_messages.append(msg)
        if not msg.ephemeral:
            session = self.gateway.active_session
            need = INTENT_GUILD_MESSAGES if msg.guild_id is not None else INTENT_DIRECT_MESSAGES
            if session is not None and session.has(need):
                data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
                if msg.guild_id is not None:
                    data["guild_id"] = str(msg.guild_id)
                self.gateway.dispatch("MESSAGE_DELETE", data)
        self._notify()

    def _bulk_delete(self, ch: Channel, msgs: list[StoredMessage]) -> None:
        for msg in msgs:
            msg.deleted = True
            msg.deleted_at = utcnow()
            msg.deleted_via = "bulk"
            self.state.deleted_messages.append(msg)
        session = self.gateway.active_session
        if msgs and session is not None and session.has(INTENT_GUILD_MESSAGES):
            self.gateway.dispatch(
                "MESSAGE_DELETE_BULK",
                {
                    "ids": [str(m.id) for m in msgs],
                    "channel_id": str(ch.id),
                    "guild_id": str(ch.guild_id),
                },
            )
        self._notify()
