"""Building INTERACTION_CREATE payloads and following what the bot answers to them."""

# ruff: noqa: ASYNC109  (waits take an explicit timeout= by design: it is the clearest test API)

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from . import payloads
from .state import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DM_PERMISSIONS,
    FLAG_EPHEMERAL,
    TEXT_LIKE_CHANNEL_TYPES,
    USE_APPLICATION_COMMANDS,
    USER_APP_PERMISSIONS,
    Channel,
    Guild,
    StoredAttachment,
    StoredMessage,
    as_id,
)

if TYPE_CHECKING:
    from .server import DiscordDouble

# Interaction types.
PING = 1
APPLICATION_COMMAND = 2
MESSAGE_COMPONENT = 3
APPLICATION_COMMAND_AUTOCOMPLETE = 4
MODAL_SUBMIT = 5

# Callback types.
PONG = 1
CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
APPLICATION_COMMAND_AUTOCOMPLETE_RESULT = 8
MODAL = 9

# Interaction contexts.
CONTEXT_GUILD = 0
CONTEXT_BOT_DM = 1
CONTEXT_PRIVATE_CHANNEL = 2  # group DMs, and DMs between users (not with the bot)

# Installation types (keys of authorizing_integration_owners, values of integration_types).
GUILD_INSTALL = 0
USER_INSTALL = 1
INSTALLS = {"guild": GUILD_INSTALL, "user": USER_INSTALL}

SELECT_TYPES = {3, 5, 6, 7, 8}


class CommandNotAvailable(LookupError):
    """The Discord client would not let this user run this command here.

    Raised by :meth:`DiscordDouble.slash` (and friends) unless ``bypass_client_checks=True``:
    the command is not registered, not allowed in this context, or hidden by
    ``default_member_permissions``.
    """


class RegisteredCommand:
    """An application command as the bot registered it (the JSON Discord stored)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def name(self) -> str:
        return self.payload["name"]

    @property
    def description(self) -> str:
        return self.payload.get("description", "")

    @property
    def type(self) -> int:
        return int(self.payload.get("type", 1))

    @property
    def guild_id(self) -> int | None:
        gid = self.payload.get("guild_id")
        return None if gid is None else int(gid)

    @property
    def options(self) -> list[dict[str, Any]]:
        return self.payload.get("options") or []

    @property
    def default_member_permissions(self) -> int | None:
        value = self.payload.get("default_member_permissions")
        return None if value is None else int(value)

    @property
    def contexts(self) -> list[int] | None:
        return self.payload.get("contexts")

    @property
    def integration_types(self) -> list[int]:
        """How the command may be installed: 0 with a server, 1 on a user's account."""
        return self.payload.get("integration_types") or [GUILD_INSTALL]

    def subcommand(self, path: str | list[str]) -> dict[str, Any]:
        """The option dict of a subcommand or group, e.g. ``subcommand("channel allow")``."""
        names = path.split() if isinstance(path, str) else list(path)
        node: dict[str, Any] = self.payload
        for name in names:
            children = [o for o in node.get("options") or [] if o.get("type") in (1, 2)]
            match = next((o for o in children if o["name"] == name), None)
            if match is None:
                known = ", ".join(o["name"] for o in children) or "none"
                raise KeyError(f"/{self.name}: no subcommand {name!r} (known: {known})")
            node = match
        return node

    def leaf_options(self, path: list[str]) -> list[dict[str, Any]]:
        node = self.subcommand(path) if path else self.payload
        return [o for o in node.get("options") or [] if o.get("type") not in (1, 2)]

    def subcommand_paths(self) -> list[str]:
        """Every invocable path, e.g. ``["admin channel allow", "admin purge"]``."""
        out: list[str] = []

        def walk(node: dict[str, Any], prefix: list[str]) -> None:
            subs = [o for o in node.get("options") or [] if o.get("type") in (1, 2)]
            if not subs:
                out.append(" ".join(prefix))
            for sub in subs:
                walk(sub, [*prefix, sub["name"]])

        walk(self.payload, [self.name])
        return out

    def __repr__(self) -> str:
        scope = f" guild={self.guild_id}" if self.guild_id else ""
        return f"<RegisteredCommand /{self.name} id={self.id} type={self.type}{scope}>"


class InteractionHandle:
    """One interaction the double dispatched, and everything the bot answered to it.

    - ``responses``: callback bodies (``{"type": .., "data": ..}``) in arrival order
    - ``response_type``: type of the first callback (4 message, 5 deferred, 6 deferred update,
      7 update message, 8 autocomplete result, 9 modal) or None
    - ``original``: the message the initial response is about (created by 4/5, the clicked
      message for 6/7); after a type 5 defer, the first followup *fills* this message (Discord
      behaviour: it keeps the defer's ephemeral flag), so ``followups[0] is original`` then
    - ``followups``: messages created through ``POST /webhooks/{app}/{token}``
    - ``edits``: bodies of ``PATCH .../messages/@original``
    - ``choices``: autocomplete choices; ``modal``: the modal the bot opened
    """

    def __init__(
        self,
        double: DiscordDouble,
        *,
        id: int,
        token: str,
        type: int,
        payload: dict[str, Any],
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        command_name: str | None = None,
        target_message: StoredMessage | None = None,
    ) -> None:
        self.double = double
        self.id = id
        self.token = token
        self.type = type
        self.payload = payload
        self.user_id = user_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.command_name = command_name
        self.target_message = target_message
        self.created = time.monotonic()
        self.responses: list[dict[str, Any]] = []
        self.original: StoredMessage | None = None
        self.deferred_pending = False  # type 5 sent and no followup/edit filled it yet
        self.followups: list[StoredMessage] = []
        self.edits: list[dict[str, Any]] = []
        self.choices: list[dict[str, Any]] | None = None
        self.modal: dict[str, Any] | None = None
        self.original_deleted = False
        self.expired = False

    def __repr__(self) -> str:
        return (
            f"<InteractionHandle id={self.id} type={self.type} name={self.command_name!r} "
            f"response_type={self.response_type} followups={len(self.followups)}>"
        )

    # -- reading ------------------------------------------------------------------------------

    @property
    def acknowledged(self) -> bool:
        return bool(self.responses)

    @property
    def response(self) -> dict[str, Any] | None:
        return self.responses[0] if self.responses else None

    @property
    def response_type(self) -> int | None:
        return self.responses[0]["type"] if self.responses else None

    @property
    def deferred(self) -> bool:
        return self.response_type in (DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_UPDATE_MESSAGE)

    @property
    def content(self) -> str | None:
        return None if self.original is None else self.original.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original.embeds

    @property
    def components(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original.components

    @property
    def flags(self) -> int:
        return 0 if self.original is None else self.original.flags

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def attachments(self) -> list[StoredAttachment]:
        return [] if self.original is None else self.original.attachments

    @property
    def messages(self) -> list[StoredMessage]:
        """The original response message (if any) then every distinct followup."""
        out: list[StoredMessage] = []
        for msg in [self.original, *self.followups]:
            if msg is not None and all(m is not msg for m in out):
                out.append(msg)
        return out

    # -- waiting ------------------------------------------------------------------------------

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the initial callback and return its body."""
        await self.double.wait_for(
            lambda: self.acknowledged, timeout=timeout, what=f"a response to {self!r}"
        )
        assert self.response is not None
        return self.response

    async def wait_original(self, timeout: float = 5.0) -> StoredMessage:
        """Wait until the original response exists and is no longer a 'thinking' placeholder."""

        def ready() -> bool:
            return self.original is not None and not self.deferred_pending

        await self.double.wait_for(
            ready, timeout=timeout, what=f"the original response of {self!r}"
        )
        assert self.original is not None
        return self.original

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[StoredMessage]:
        await self.double.wait_for(
            lambda: len(self.followups) >= count,
            timeout=timeout,
            what=f"{count} followup(s) on {self!r}",
        )
        return self.followups

    async def wait_edits(self, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        await self.double.wait_for(
            lambda: len(self.edits) >= count,
            timeout=timeout,
            what=f"{count} edit(s) of the original response of {self!r}",
        )
        return self.edits

    async def wait_choices(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        await self.double.wait_for(
            lambda: self.choices is not None,
            timeout=timeout,
            what=f"autocomplete choices for {self!r}",
        )
        assert self.choices is not None
        return self.choices

    async def wait_done(self, timeout: float = 5.0, quiet: float = 0.05) -> InteractionHandle:
        """Wait for the response (and, after a defer, the message filling it), then for REST quiet.

        "Quiet" means no REST request in flight and none for ``quiet`` seconds: a heuristic
        for "the bot has finished handling this". Prefer an explicit wait when one fits.
        """

        def responded() -> bool:
            if not self.acknowledged:
                return False
            return not (
                self.response_type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE and self.deferred_pending
            )

        await self.double.wait_for(responded, timeout=timeout, what=f"{self!r} to be answered")
        await self.double.idle(quiet=quiet, timeout=timeout)
        return self


class InteractionFactory:
    """Builds interaction payloads from the double's state and dispatches them."""

    def __init__(self, double: DiscordDouble) -> None:
        self.double = double

    # -- command lookup -----------------------------------------------------------------------

    def find_command(
        self, name: str, guild_id: int | None, type: int = 1
    ) -> RegisteredCommand | None:
        if guild_id is not None:
            for cmd in self.double._command_store.get(guild_id, []):
                if cmd.name == name and cmd.type == type:
                    return cmd
        for cmd in self.double._command_store.get(None, []):
            if cmd.name == name and cmd.type == type:
                return cmd
        return None

    # -- common parts -------------------------------------------------------------------------

    def _where(self, user: Any, guild: Any, channel: Any) -> tuple[int, Guild | None, Channel]:
        double = self.double
        state = double.state
        user_id = as_id(user)
        state.user(user_id)
        if channel is not None:
            ch = state.channel(channel)
            g = state.guilds[ch.guild_id] if ch.guild_id is not None else None
            if guild is not None and (g is None or g.id != as_id(guild)):
                raise ValueError(f"channel {ch.id} is not in guild {as_id(guild)}")
        elif guild is not None:
            g = state.guild(guild)
            ch = next(
                (
                    state.channels[cid]
                    for cid in g.channel_ids
                    if not state.channels[cid].deleted
                    and state.channels[cid].type in TEXT_LIKE_CHANNEL_TYPES
                ),
                None,
            )
            if ch is None:
                raise ValueError(f"guild {g.id} has no text channel to run the command in")
        else:
            g = None
            ch = double._open_dm(user_id)
        if ch.deleted:
            raise ValueError(f"channel {ch.id} was deleted")
        if g is not None and user_id not in g.members:
            raise ValueError(
                f"user {user_id} is not a member of guild {g.id}; call double.add_member() first"
            )
        if ch.is_dm and ch.recipient_id != user_id:
            raise ValueError(f"DM channel {ch.id} belongs to user {ch.recipient_id}, not {user_id}")
        if ch.is_group_dm and user_id not in ch.recipient_ids:
            raise ValueError(f"user {user_id} is not in group DM {ch.id}")
        return user_id, g, ch

    @staticmethod
    def _install(install: str | None, guild: Guild | None, channel: Channel) -> int:
        """Which installation authorizes the interaction: asked for, or the only one possible
        (a server without the bot, or a group DM: the user's own install)."""
        if install is None:
            if channel.is_group_dm or (guild is not None and not guild.bot_member):
                return USER_INSTALL
            return GUILD_INSTALL
        if install not in INSTALLS:
            raise ValueError(f"install must be 'guild' or 'user', not {install!r}")
        wanted = INSTALLS[install]
        if wanted == GUILD_INSTALL and channel.is_group_dm:
            raise ValueError("a server install cannot be used in a group DM")
        # A server install in a guild without the bot member is a commands-only install
        # (scope applications.commands without bot): allowed, and the bot still cannot post.
        return wanted

    def _base(
        self,
        itype: int,
        *,
        user_id: int,
        guild: Guild | None,
        channel: Channel,
        role_ids: list[int] | None,
        locale: str,
        install: str | None = None,
    ) -> tuple[dict[str, Any], int, str, int]:
        double = self.double
        state = double.state
        installed = self._install(install, guild, channel)
        iid = state.next_id()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)
        data: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(double.application_id),
            "type": itype,
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": double.attachment_size_limit,
            "channel_id": str(channel.id),
        }
        if guild is not None:
            member = guild.members[user_id]
            roles = list(member.role_ids) if role_ids is None else [as_id(r) for r in role_ids]
            perms = state.channel_permissions(channel, user_id, roles)
            app_perms = (
                state.channel_permissions(channel, double.bot_user_id)
                if guild.bot_member
                else USER_APP_PERMISSIONS
            )
            owner = str(guild.id) if installed == GUILD_INSTALL else str(user_id)
            data.update(
                {
                    "guild_id": str(guild.id),
                    "guild": {"id": str(guild.id), "locale": guild.locale, "features": []},
                    "guild_locale": guild.locale,
                    "member": payloads.member_payload(
                        member, state, permissions=perms, role_ids=roles
                    ),
                    "app_permissions": str(app_perms),
                    "authorizing_integration_owners": {str(installed): owner},
                    "context": CONTEXT_GUILD,
                    "channel": payloads.interaction_channel_payload(channel, state, perms),
                }
            )
        elif channel.is_group_dm:
            perms = DM_PERMISSIONS
            data.update(
                {
                    "user": payloads.user_payload(state.users[user_id]),
                    "app_permissions": str(USER_APP_PERMISSIONS),
                    "authorizing_integration_owners": {str(USER_INSTALL): str(user_id)},
                    "context": CONTEXT_PRIVATE_CHANNEL,
                    "channel": payloads.interaction_channel_payload(channel, state, DM_PERMISSIONS),
                }
            )
        else:
            perms = DM_PERMISSIONS
            # In the bot's DM a server install is owned by "0"; a user install by the user.
            owner = "0" if installed == GUILD_INSTALL else str(user_id)
            data.update(
                {
                    "user": payloads.user_payload(state.users[user_id]),
                    "app_permissions": str(DM_PERMISSIONS),
                    "authorizing_integration_owners": {str(installed): owner},
                    "context": CONTEXT_BOT_DM,
                    "channel": payloads.interaction_channel_payload(channel, state, DM_PERMISSIONS),
                }
            )
        return data, iid, token, perms

    def _dispatch(self, handle: InteractionHandle) -> InteractionHandle:
        double = self.double
        if not double.gateway.connected:
            raise RuntimeError(
                "no bot is connected to the double's gateway (start the bot, e.g. with "
                "`async with double.running(bot):`)"
            )
        double._register_interaction(handle)
        double.gateway.dispatch("INTERACTION_CREATE", handle.payload)
        return handle

    def _check_available(
        self,
        cmd: RegisteredCommand | None,
        name: str,
        *,
        guild: Guild | None,
        perms: int,
        payload: dict[str, Any],
    ) -> None:
        if cmd is None:
            raise CommandNotAvailable(
                f"/{name} is not registered (registered: {self.double.command_names() or 'none'})"
            )
        installs = [int(k) for k in payload.get("authorizing_integration_owners", {})]
        if not any(i in cmd.integration_types for i in installs):
            raise CommandNotAvailable(
                f"/{name} is not installed that way (integration_types="
                f"{cmd.integration_types}, this interaction: {installs})"
            )
        if payload.get("context") == CONTEXT_PRIVATE_CHANNEL:
            if cmd.contexts is None or CONTEXT_PRIVATE_CHANNEL not in cmd.contexts:
                raise CommandNotAvailable(
                    f"/{name} is not allowed in group DMs (contexts={cmd.contexts})"
                )
            return
        if guild is None:
            if cmd.guild_id is not None:
                raise CommandNotAvailable(f"/{name} is a guild command; it is not offered in DMs")
            if cmd.contexts is not None and CONTEXT_BOT_DM not in cmd.contexts:
                raise CommandNotAvailable(
                    f"/{name} is not allowed in DMs (contexts={cmd.contexts})"
                )
            if cmd.contexts is None and cmd.payload.get("dm_permission") is False:
                raise CommandNotAvailable(f"/{name} has dm_permission=false")
            return
        if cmd.contexts is not None and CONTEXT_GUILD not in cmd.contexts:
            raise CommandNotAvailable(f"/{name} is not allowed in guilds (contexts={cmd.contexts})")
        if perms != ALL_PERMISSIONS and not perms & USE_APPLICATION_COMMANDS:
            raise CommandNotAvailable(f"the user lacks Use Application Commands; /{name} is hidden")
        required = cmd.default_member_permissions
        privileged = perms == ALL_PERMISSIONS or bool(perms & ADMINISTRATOR)
        if (
            required is not None
            and not privileged
            and (required == 0 or perms & required != required)
        ):
            raise CommandNotAvailable(
                f"/{name} needs permissions {required} (default_member_permissions) "
                f"and the user has {perms}; Discord hides it"
            )

    # -- options ------------------------------------------------------------------------------

    def _convert(
        self,
        definition: dict[str, Any] | None,
        name: str,
        otype: int,
        value: Any,
        *,
        guild: Guild | None,
        channel: Channel,
        user_id: int,
        resolved: dict[str, dict[str, Any]],
    ) -> Any:
        state = self.double.state
        if otype == 3:
            value = str(value)
            if definition is not None:
                lo, hi = definition.get("min_length"), definition.get("max_length")
                if (lo is not None and len(value) < lo) or (hi is not None and len(value) > hi):
                    raise ValueError(f"option {name!r}: length {len(value)} outside [{lo}, {hi}]")
        elif otype == 4:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"option {name!r} wants an integer, got {value!r}")
            value = int(value)
        elif otype == 5:
            if not isinstance(value, bool):
                raise ValueError(f"option {name!r} wants a bool, got {value!r}")
        elif otype == 10:
            value = float(value)
        elif otype in (6, 9) and (otype == 6 or as_id(value) in state.users):
            uid = as_id(value)
            user = state.user(uid)
            resolved.setdefault("users", {})[str(uid)] = payloads.user_payload(user)
            if guild is not None and uid in guild.members:
                member = guild.members[uid]
                resolved.setdefault("members", {})[str(uid)] = payloads.member_payload(
                    member,
                    state,
                    with_user=False,
                    permissions=state.channel_permissions(channel, uid),
                )
            value = str(uid)
        elif otype in (8, 9):
            rid = as_id(value)
            if guild is None or rid not in guild.roles:
                raise ValueError(f"option {name!r}: role {rid} is not in this guild")
            resolved.setdefault("roles", {})[str(rid)] = payloads.role_payload(guild.roles[rid])
            value = str(rid)
        elif otype == 7:
            ch = state.channel(value)
            allowed_types = (definition or {}).get("channel_types")
            if allowed_types and ch.type not in allowed_types:
                raise ValueError(f"option {name!r}: channel type {ch.type} not in {allowed_types}")
            entry = payloads.channel_payload(ch, state)
            entry["permissions"] = str(state.channel_permissions(ch, user_id))
            resolved.setdefault("channels", {})[str(ch.id)] = entry
            value = str(ch.id)
        elif otype == 11:
            att = self._as_attachment(value)
            resolved.setdefault("attachments", {})[str(att.id)] = payloads.attachment_payload(att)
            value = str(att.id)
        else:
            raise ValueError(f"option {name!r}: unsupported option type {otype}")
        if definition is not None and definition.get("choices") and otype in (3, 4, 10):
            allowed = [c["value"] for c in definition["choices"]]
            if value not in allowed:
                raise ValueError(f"option {name!r}: {value!r} is not one of the choices {allowed}")
        if definition is not None and otype in (4, 10):
            lo, hi = definition.get("min_value"), definition.get("max_value")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ValueError(f"option {name!r}: {value} outside [{lo}, {hi}]")
        return value

    def _as_attachment(self, value: Any) -> StoredAttachment:
        if isinstance(value, StoredAttachment):
            return value
        if isinstance(value, tuple) and 2 <= len(value) <= 3:
            return self.double.upload(*value)
        raise TypeError(
            "attachment options take double.upload(...) results "
            "or (filename, bytes[, content_type]) tuples"
        )

    @staticmethod
    def _infer_type(value: Any) -> int:
        if isinstance(value, bool):
            return 5
        if isinstance(value, int):
            return 4
        if isinstance(value, float):
            return 10
        if isinstance(value, (StoredAttachment, tuple)):
            return 11
        cls = type(value).__name__
        return {"User": 6, "Channel": 7, "Role": 8}.get(cls, 3)

    def _build_options(
        self,
        definitions: list[dict[str, Any]] | None,
        values: dict[str, Any] | list[dict[str, Any]] | None,
        *,
        guild: Guild | None,
        channel: Channel,
        user_id: int,
        resolved: dict[str, dict[str, Any]],
        focused: str | None = None,
        check_required: bool = True,
    ) -> list[dict[str, Any]]:
        if isinstance(values, list):
            return values
        values = dict(values or {})
        by_name = {d["name"]: d for d in definitions or []}
        if definitions is not None:
            unknown = [n for n in values if n not in by_name]
            if unknown:
                known = ", ".join(by_name) or "none"
                raise ValueError(f"unknown option(s) {unknown} (the command has: {known})")
            if check_required:
                missing = [
                    d["name"] for d in definitions if d.get("required") and d["name"] not in values
                ]
                if missing:
                    raise ValueError(f"missing required option(s) {missing}")
            order = [d["name"] for d in definitions if d["name"] in values]
        else:
            order = list(values)
        out: list[dict[str, Any]] = []
        for name in order:
            value = values[name]
            definition = by_name.get(name)
            otype = definition["type"] if definition else self._infer_type(value)
            if name == focused:
                out.append({"name": name, "type": otype, "value": str(value), "focused": True})
                continue
            if focused is not None and otype in (6, 7, 8, 9, 11):
                # Autocomplete payloads carry raw ids and no resolved data.
                out.append({"name": name, "type": otype, "value": str(as_id(value))})
                continue
            converted = self._convert(
                definition,
                name,
                otype,
                value,
                guild=guild,
                channel=channel,
                user_id=user_id,
                resolved=resolved,
            )
            out.append({"name": name, "type": otype, "value": converted})
        return out

    # -- application commands -----------------------------------------------------------------

    def _command_payload(
        self,
        itype: int,
        command: str,
        *,
        user: Any,
        guild: Any,
        channel: Any,
        options: Any,
        roles: list[Any] | None,
        resolved: dict[str, Any] | None,
        locale: str,
        bypass_client_checks: bool,
        focused: str | None = None,
        install: str | None = None,
    ) -> InteractionHandle:
        parts = command.strip().lstrip("/").split()
        if not parts:
            raise ValueError("empty command name")
        root, path = parts[0], parts[1:]
        user_id, g, ch = self._where(user, guild, channel)
        data, iid, token, perms = self._base(
            itype,
            user_id=user_id,
            guild=g,
            channel=ch,
            role_ids=roles,
            locale=locale,
            install=install,
        )
        cmd = self.find_command(root, g.id if g else None)
        if not bypass_client_checks:
            self._check_available(cmd, root, guild=g, perms=perms, payload=data)
        definitions: list[dict[str, Any]] | None = None
        if cmd is not None:
            cmd.subcommand(path)  # validates the path
            definitions = cmd.leaf_options(path)
        res: dict[str, dict[str, Any]] = {}
        leaf = self._build_options(
            definitions,
            options,
            guild=g,
            channel=ch,
            user_id=user_id,
            resolved=res,
            focused=focused,
            check_required=focused is None,
        )
        if focused is not None and not any(o.get("focused") for o in leaf):
            leaf.append({"name": focused, "type": 3, "value": "", "focused": True})
        nested = leaf
        if path:
            node_types: list[int] = []
            if cmd is not None:
                node = cmd.payload
                for name in path:
                    node = next(o for o in node["options"] if o["name"] == name)
                    node_types.append(node["type"])
            else:
                node_types = [2] * (len(path) - 1) + [1]
            for name, ntype in reversed(list(zip(path, node_types, strict=True))):
                nested = [{"name": name, "type": ntype, "options": nested}]
        for key, entries in (resolved or {}).items():
            res.setdefault(key, {}).update(entries)
        cmd_data: dict[str, Any] = {
            "id": str(cmd.id if cmd is not None else self.double.state.next_id()),
            "name": root,
            "type": 1,
            "options": nested,
        }
        if cmd is not None and cmd.guild_id is not None:
            cmd_data["guild_id"] = str(cmd.guild_id)
        if res and focused is None:
            cmd_data["resolved"] = res
        data["data"] = cmd_data
        return InteractionHandle(
            self.double,
            id=iid,
            token=token,
            type=itype,
            payload=data,
            user_id=user_id,
            guild_id=g.id if g else None,
            channel_id=ch.id,
            command_name=" ".join(parts),
        )

    def slash(self, command: str, **kwargs: Any) -> InteractionHandle:
        handle = self._command_payload(APPLICATION_COMMAND, command, **kwargs)
        return self._dispatch(handle)

    def autocomplete(
        self, command: str, *, focused: str, value: str, **kwargs: Any
    ) -> InteractionHandle:
        options = kwargs.pop("options", None) or {}
        if isinstance(options, dict):
            options = {**options, focused: value}
        handle = self._command_payload(
            APPLICATION_COMMAND_AUTOCOMPLETE, command, options=options, focused=focused, **kwargs
        )
        return self._dispatch(handle)

    def context_menu(
        self,
        name: str,
        target: Any,
        *,
        user: Any,
        guild: Any,
        channel: Any,
        locale: str,
        bypass_client_checks: bool,
    ) -> InteractionHandle:
        state = self.double.state
        if isinstance(target, StoredMessage):
            ctype = 3
            channel = channel if channel is not None else target.channel_id
        else:
            ctype = 2
        user_id, g, ch = self._where(user, guild, channel)
        data, iid, token, perms = self._base(
            APPLICATION_COMMAND, user_id=user_id, guild=g, channel=ch, role_ids=None, locale=locale
        )
        cmd = self.find_command(name, g.id if g else None, type=ctype)
        if not bypass_client_checks:
            self._check_available(cmd, name, guild=g, perms=perms, payload=data)
        res: dict[str, Any] = {}
        if ctype == 3:
            msg = target
            res["messages"] = {str(msg.id): payloads.message_payload(msg, state)}
            target_id = msg.id
        else:
            self._convert(
                None, "target", 6, target, guild=g, channel=ch, user_id=user_id, resolved=res
            )
            target_id = as_id(target)
        cmd_data: dict[str, Any] = {
            "id": str(cmd.id if cmd is not None else state.next_id()),
            "name": name,
            "type": ctype,
            "target_id": str(target_id),
            "resolved": res,
        }
        if cmd is not None and cmd.guild_id is not None:
            cmd_data["guild_id"] = str(cmd.guild_id)
        data["data"] = cmd_data
        handle = InteractionHandle(
            self.double,
            id=iid,
            token=token,
            type=APPLICATION_COMMAND,
            payload=data,
            user_id=user_id,
            guild_id=g.id if g else None,
            channel_id=ch.id,
            command_name=name,
        )
        return self._dispatch(handle)

    # -- components ---------------------------------------------------------------------------

    def click(
        self,
        message: Any,
        custom_id: str,
        *,
        user: Any,
        values: list[Any] | None,
        locale: str,
    ) -> InteractionHandle:
        state = self.double.state
        msg = message if isinstance(message, StoredMessage) else state.message(message)
        if msg.deleted:
            raise ValueError(f"message {msg.id} was deleted")
        comp = msg.find_component(custom_id)
        if comp is None:
            ids = [c.get("custom_id") for c in msg.iter_components() if c.get("custom_id")]
            raise ValueError(f"message {msg.id} has no component {custom_id!r} (has: {ids})")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} is disabled; a user cannot use it")
        ctype = int(comp["type"])
        user_id, g, ch = self._where(user, None, msg.channel_id)
        if msg.ephemeral and msg.interaction_user_id not in (None, user_id):
            raise ValueError(
                f"message {msg.id} is ephemeral: only user {msg.interaction_user_id} sees it"
            )
        data, iid, token, _perms = self._base(
            MESSAGE_COMPONENT, user_id=user_id, guild=g, channel=ch, role_ids=None, locale=locale
        )
        inner: dict[str, Any] = {"custom_id": custom_id, "component_type": ctype}
        if comp.get("id") is not None:
            inner["id"] = comp["id"]
        if ctype in SELECT_TYPES:
            picked = list(values or [])
            lo, hi = comp.get("min_values", 1), comp.get("max_values", 1)
            if not lo <= len(picked) <= hi:
                raise ValueError(f"select {custom_id!r} takes {lo}..{hi} values, got {len(picked)}")
            res: dict[str, Any] = {}
            if ctype == 3:
                allowed = [o["value"] for o in comp.get("options", [])]
                bad = [v for v in picked if v not in allowed]
                if bad:
                    raise ValueError(f"select {custom_id!r}: {bad} not among options {allowed}")
                inner["values"] = [str(v) for v in picked]
            else:
                otype = {5: 6, 6: 8, 7: 9, 8: 7}[ctype]
                inner["values"] = [
                    self._convert(
                        None,
                        custom_id,
                        otype,
                        v,
                        guild=g,
                        channel=ch,
                        user_id=user_id,
                        resolved=res,
                    )
                    for v in picked
                ]
                inner["resolved"] = res
        elif ctype != 2:
            raise ValueError(f"component {custom_id!r} has type {ctype}; it cannot be clicked")
        elif comp.get("style") in (5, 6):
            raise ValueError(f"button {custom_id!r} is a link/premium button: no interaction")
        data["data"] = inner
        data["message"] = payloads.message_payload(msg, state)
        handle = InteractionHandle(
            self.double,
            id=iid,
            token=token,
            type=MESSAGE_COMPONENT,
            payload=data,
            user_id=user_id,
            guild_id=g.id if g else None,
            channel_id=ch.id,
            command_name=custom_id,
            target_message=msg,
        )
        return self._dispatch(handle)

    # -- modals -------------------------------------------------------------------------------

    def submit_modal(
        self, source: InteractionHandle, values: dict[str, Any], *, locale: str
    ) -> InteractionHandle:
        modal = source.modal
        if modal is None:
            raise ValueError(f"{source!r} did not open a modal")
        remaining = dict(values)

        def mirror(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for comp in components:
                ctype = comp.get("type")
                if ctype == 1:
                    out.append({"type": 1, "components": mirror(comp.get("components") or [])})
                elif ctype == 18:
                    entry = {"type": 18, "component": mirror([comp["component"]])[0]}
                    if comp.get("id") is not None:
                        entry["id"] = comp["id"]
                    out.append(entry)
                elif ctype == 4:
                    cid = comp["custom_id"]
                    if cid in remaining:
                        value = str(remaining.pop(cid))
                    else:
                        value = comp.get("value") or ""
                        if comp.get("required", True) and not value:
                            raise ValueError(f"modal text input {cid!r} is required")
                    out.append({"type": 4, "custom_id": cid, "value": value})
                elif ctype in SELECT_TYPES:
                    cid = comp["custom_id"]
                    picked = remaining.pop(cid, [])
                    out.append(
                        {"type": ctype, "custom_id": cid, "values": [str(v) for v in picked]}
                    )
                elif comp.get("custom_id") is not None:
                    cid = comp["custom_id"]
                    out.append({"type": ctype, "custom_id": cid, "value": remaining.pop(cid, None)})
            return out

        components = mirror(modal.get("components") or [])
        if remaining:
            raise ValueError(f"the modal has no input(s) {sorted(remaining)}")
        state = self.double.state
        g = state.guilds.get(source.guild_id) if source.guild_id is not None else None
        ch = state.channel(source.channel_id)
        data, iid, token, _ = self._base(
            MODAL_SUBMIT, user_id=source.user_id, guild=g, channel=ch, role_ids=None, locale=locale
        )
        data["data"] = {"custom_id": modal["custom_id"], "components": components}
        if source.target_message is not None:
            data["message"] = payloads.message_payload(source.target_message, state)
        handle = InteractionHandle(
            self.double,
            id=iid,
            token=token,
            type=MODAL_SUBMIT,
            payload=data,
            user_id=source.user_id,
            guild_id=source.guild_id,
            channel_id=ch.id,
            command_name=modal["custom_id"],
            target_message=source.target_message,
        )
        return self._dispatch(handle)
