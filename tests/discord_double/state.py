"""The double's world: users, guilds, channels, roles, members, messages, attachments.

Plain dataclasses with integer ids. Nothing here knows about HTTP or websockets; the REST and
gateway layers read and mutate a :class:`State` and turn it into Discord JSON via
:mod:`tests.discord_double.payloads`.
"""

from __future__ import annotations

import datetime
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

SNOWFLAKE_BASE = 1_100_000_000_000_000_000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
CREATE_INSTANT_INVITE = 1 << 0
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
MANAGE_ROLES = 1 << 28
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

DEFAULT_EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)
DEFAULT_BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_APPLICATION_COMMANDS
)
# What Discord reports as app_permissions inside the bot's own DM channel.
DM_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | USE_EXTERNAL_EMOJIS
    | USE_APPLICATION_COMMANDS
)
MENTION_EVERYONE = 1 << 17
# What Discord reports as `app_permissions` where only a user install authorized the command
# and the bot is not there: the app may shape its interaction responses, nothing else.
USER_APP_PERMISSIONS = ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE | USE_EXTERNAL_EMOJIS

# Channel types.
GUILD_TEXT = 0
DM = 1
GUILD_VOICE = 2
GROUP_DM = 3
GUILD_CATEGORY = 4
GUILD_ANNOUNCEMENT = 5
TEXT_LIKE_CHANNEL_TYPES = frozenset({GUILD_TEXT, DM, GUILD_VOICE, GROUP_DM, GUILD_ANNOUNCEMENT})

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_IS_COMPONENTS_V2 = 1 << 15

# Overwrite types.
OVERWRITE_ROLE = 0
OVERWRITE_MEMBER = 1


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def iso(dt: datetime.datetime | None) -> str | None:
    return None if dt is None else dt.isoformat()


def as_id(value: Any) -> int:
    """Accept a model object with ``.id``, an int, or a numeric string."""
    if value is None:
        raise TypeError("expected an id or a model object, got None")
    raw = getattr(value, "id", value)
    return int(raw)


@dataclass
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    discriminator: str = "0"

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"


@dataclass
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    color: int = 0
    hoist: bool = False
    managed: bool = False
    mentionable: bool = False
    bot_id: int | None = None  # set for the bot's managed role

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"


@dataclass
class Member:
    user_id: int
    guild_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: datetime.datetime = field(default_factory=utcnow)


@dataclass
class Channel:
    id: int
    type: int
    name: str | None = None
    guild_id: int | None = None
    position: int = 0
    topic: str | None = None
    parent_id: int | None = None
    nsfw: bool = False
    overwrites: list[dict[str, int]] = field(default_factory=list)
    recipient_id: int | None = None  # DM channels: the (non-bot) user
    recipient_ids: list[int] = field(default_factory=list)  # group DMs: who is in it
    deleted: bool = False
    # False -> REST refuses the bot's sends here with 403 50013 whatever the permissions say.
    bot_can_send: bool = True
    message_ids: list[int] = field(default_factory=list)
    last_message_id: int | None = None

    @property
    def is_dm(self) -> bool:
        return self.type == DM

    @property
    def is_group_dm(self) -> bool:
        return self.type == GROUP_DM

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)
    locale: str = "en-US"
    joined_at: datetime.datetime = field(default_factory=utcnow)
    # False: the app is only user-installed here (or the bot was never added): the bot gets no
    # GUILD_CREATE nor any event of this guild, and may not read, post or delete in it.
    bot_member: bool = True

    @property
    def everyone_role(self) -> Role:
        return self.roles[self.id]


@dataclass
class StoredAttachment:
    """An attachment the double holds, with its exact bytes."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    proxy_url: str
    size: int
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False
    uploader_id: int | None = None
    message_id: int | None = None
    title: str | None = None

    @property
    def spoiler(self) -> bool:
        return self.filename.startswith("SPOILER_")


@dataclass
class MessageVersion:
    """One state a message had (creation or any later edit)."""

    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[StoredAttachment]
    flags: int
    at: datetime.datetime


@dataclass
class StoredMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[StoredAttachment] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    tts: bool = False
    created_at: datetime.datetime = field(default_factory=utcnow)
    edited_at: datetime.datetime | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    # Set on messages created through an interaction (responses and followups).
    interaction_id: int | None = None
    interaction_type: int | None = None
    interaction_user_id: int | None = None
    interaction_name: str | None = None
    message_reference: dict[str, Any] | None = None
    deleted: bool = False
    deleted_at: datetime.datetime | None = None
    deleted_via: str | None = None  # "channel", "bulk", "webhook"
    created_via: str = "channel"  # "channel", "interaction", "followup", "user"
    versions: list[MessageVersion] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def attachment_bytes(self) -> list[bytes]:
        return [a.data for a in self.attachments]

    @property
    def filenames(self) -> list[str]:
        return [a.filename for a in self.attachments]

    def snapshot(self) -> None:
        self.versions.append(
            MessageVersion(
                content=self.content,
                embeds=[dict(e) for e in self.embeds],
                components=list(self.components),
                attachments=list(self.attachments),
                flags=self.flags,
                at=utcnow(),
            )
        )

    def iter_components(self) -> list[dict[str, Any]]:
        """Every component in the message, nested ones included (depth first)."""
        out: list[dict[str, Any]] = []
        _walk_components(self.components, out)
        return out

    def find_component(self, custom_id: str) -> dict[str, Any] | None:
        for comp in self.iter_components():
            if comp.get("custom_id") == custom_id:
                return comp
        return None

    def all_versions_attachments(self) -> list[StoredAttachment]:
        """Attachments the message ever carried, across every edit."""
        seen: dict[int, StoredAttachment] = {}
        for version in self.versions:
            for att in version.attachments:
                seen.setdefault(att.id, att)
        for att in self.attachments:
            seen.setdefault(att.id, att)
        return list(seen.values())


def _walk_components(components: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    for comp in components or []:
        out.append(comp)
        _walk_components(comp.get("components") or [], out)
        for key in ("accessory", "component"):
            child = comp.get(key)
            if isinstance(child, dict):
                _walk_components([child], out)


@dataclass
class UploadedFile:
    """One file part of a multipart request, as received."""

    field_name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Call:
    """One REST request the double received."""

    method: str
    path: str  # without the /api/v10 prefix
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    time: float
    authorized: bool = False
    status: int | None = None
    response: Any = None
    route: str | None = None  # name of the handler that answered, None if unhandled
    injected: bool = False  # answered by a fail_next rule

    @property
    def unhandled(self) -> bool:
        return self.route is None and not self.injected

    def __repr__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query.items())
        return f"<Call {self.method} {self.path}{'?' + query if query else ''} -> {self.status}>"


@dataclass
class FailureRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    message: str
    times: int
    retry_after: float
    is_global: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0:
            return False
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        return self.pattern.search(path) is not None


class State:
    """Container for every object of the double's world."""

    def __init__(self) -> None:
        self._ids = itertools.count(SNOWFLAKE_BASE)
        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, StoredMessage] = {}
        self.attachments: dict[int, StoredAttachment] = {}
        self.dm_channel_by_user: dict[int, int] = {}
        self.closed_dms: set[int] = set()
        self.deleted_messages: list[StoredMessage] = []
        self.started = time.monotonic()

    def next_id(self) -> int:
        return next(self._ids)

    # -- lookups ------------------------------------------------------------------------------

    @staticmethod
    def _lookup(table: dict[int, Any], key: Any, what: str) -> Any:
        ident = as_id(key)
        try:
            return table[ident]
        except KeyError:
            raise KeyError(f"unknown {what} {ident}") from None

    def user(self, user: Any) -> User:
        return self._lookup(self.users, user, "user")

    def guild(self, guild: Any) -> Guild:
        return self._lookup(self.guilds, guild, "guild")

    def channel(self, channel: Any) -> Channel:
        return self._lookup(self.channels, channel, "channel")

    def message(self, message: Any) -> StoredMessage:
        return self._lookup(self.messages, message, "message")

    def shares_guild(self, user_a: int, user_b: int) -> bool:
        """Are both users members of one guild (what Discord asks before a bot's first DM)?"""
        return any(
            user_a in g.members and user_b in g.members for g in self.guilds.values()
        )

    def member(self, guild: Any, user: Any) -> Member:
        g = self.guild(guild)
        uid = as_id(user)
        try:
            return g.members[uid]
        except KeyError:
            raise KeyError(f"user {uid} is not a member of guild {g.id}") from None

    # -- permissions --------------------------------------------------------------------------

    def base_permissions(
        self, guild: Guild, user_id: int, role_ids: list[int] | None = None
    ) -> int:
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        if role_ids is None:
            member = guild.members.get(user_id)
            role_ids = member.role_ids if member else []
        perms = guild.everyone_role.permissions
        for rid in role_ids:
            role = guild.roles.get(int(rid))
            if role is not None:
                perms |= role.permissions
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return perms

    def channel_permissions(
        self, channel: Channel, user_id: int, role_ids: list[int] | None = None
    ) -> int:
        """Discord's permission algorithm: base, then @everyone, role and member overwrites."""
        if channel.guild_id is None:
            return DM_PERMISSIONS
        guild = self.guilds[channel.guild_id]
        if role_ids is None:
            member = guild.members.get(user_id)
            if member is None:
                return 0  # not in the guild (a bot that was never added): no access at all
            role_ids = member.role_ids
        perms = self.base_permissions(guild, user_id, role_ids)
        if perms == ALL_PERMISSIONS:
            return perms
        overwrites = channel.overwrites
        for ow in overwrites:
            if ow["type"] == OVERWRITE_ROLE and ow["id"] == guild.id:
                perms = (perms & ~ow["deny"]) | ow["allow"]
        allow = deny = 0
        wanted = {int(r) for r in role_ids}
        for ow in overwrites:
            if ow["type"] == OVERWRITE_ROLE and ow["id"] in wanted:
                allow |= ow["allow"]
                deny |= ow["deny"]
        perms = (perms & ~deny) | allow
        for ow in overwrites:
            if ow["type"] == OVERWRITE_MEMBER and ow["id"] == user_id:
                perms = (perms & ~ow["deny"]) | ow["allow"]
        if not perms & VIEW_CHANNEL:
            return 0
        return perms
