"""Turn the double's state into the JSON shapes Discord sends (snowflakes as strings)."""

from __future__ import annotations

import copy
import struct
from typing import TYPE_CHECKING, Any

from .state import (
    Channel,
    Guild,
    Member,
    Role,
    StoredAttachment,
    StoredMessage,
    User,
    iso,
)

if TYPE_CHECKING:
    from .state import State


def sid(value: int | None) -> str | None:
    return None if value is None else str(value)


def user_payload(user: User) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(user.id),
        "username": user.username,
        "discriminator": user.discriminator,
        "global_name": user.global_name,
        "avatar": user.avatar,
        "public_flags": 0,
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "avatar_decoration_data": None,
        "collectibles": None,
        "primary_guild": None,
    }
    if user.bot:
        data["bot"] = True
    return data


def self_user_payload(user: User) -> dict[str, Any]:
    data = user_payload(user)
    data.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"})
    return data


def role_payload(role: Role) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(role.id),
        "name": role.name,
        "permissions": str(role.permissions),
        "position": role.position,
        "color": role.color,
        "colors": {"primary_color": role.color, "secondary_color": None, "tertiary_color": None},
        "hoist": role.hoist,
        "managed": role.managed,
        "mentionable": role.mentionable,
        "icon": None,
        "unicode_emoji": None,
        "flags": 0,
    }
    if role.bot_id is not None:
        data["tags"] = {"bot_id": str(role.bot_id)}
    return data


def overwrite_payload(ow: dict[str, int]) -> dict[str, Any]:
    return {
        "id": str(ow["id"]),
        "type": ow["type"],
        "allow": str(ow["allow"]),
        "deny": str(ow["deny"]),
    }


def channel_payload(channel: Channel, state: State) -> dict[str, Any]:
    if channel.is_group_dm:
        return {
            "id": str(channel.id),
            "type": channel.type,
            "name": channel.name,
            "owner_id": sid(channel.recipient_ids[0] if channel.recipient_ids else None),
            "last_message_id": sid(channel.last_message_id),
            "flags": 0,
            "recipients": [user_payload(state.users[u]) for u in channel.recipient_ids],
        }
    if channel.is_dm:
        recipients = []
        if channel.recipient_id is not None and channel.recipient_id in state.users:
            recipients.append(user_payload(state.users[channel.recipient_id]))
        return {
            "id": str(channel.id),
            "type": channel.type,
            "last_message_id": sid(channel.last_message_id),
            "flags": 0,
            "recipients": recipients,
        }
    return {
        "id": str(channel.id),
        "type": channel.type,
        "guild_id": sid(channel.guild_id),
        "name": channel.name,
        "position": channel.position,
        "parent_id": sid(channel.parent_id),
        "topic": channel.topic,
        "nsfw": channel.nsfw,
        "last_message_id": sid(channel.last_message_id),
        "rate_limit_per_user": 0,
        "flags": 0,
        "permission_overwrites": [overwrite_payload(ow) for ow in channel.overwrites],
    }


def interaction_channel_payload(channel: Channel, state: State, permissions: int) -> dict[str, Any]:
    data = channel_payload(channel, state)
    data["permissions"] = str(permissions)
    return data


def member_payload(
    member: Member,
    state: State,
    *,
    with_user: bool = True,
    permissions: int | None = None,
    role_ids: list[int] | None = None,
) -> dict[str, Any]:
    roles = member.role_ids if role_ids is None else role_ids
    data: dict[str, Any] = {
        "roles": [str(r) for r in roles],
        "nick": member.nick,
        "avatar": None,
        "banner": None,
        "joined_at": iso(member.joined_at),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
        "avatar_decoration_data": None,
    }
    if with_user:
        data["user"] = user_payload(state.users[member.user_id])
    if permissions is not None:
        data["permissions"] = str(permissions)
    return data


def guild_create_payload(
    guild: Guild, state: State, *, bot_id: int, all_members: bool
) -> dict[str, Any]:
    members = [
        member_payload(m, state)
        for m in guild.members.values()
        if all_members or m.user_id == bot_id
    ]
    channels = [
        channel_payload(state.channels[cid], state)
        for cid in guild.channel_ids
        if not state.channels[cid].deleted
    ]
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": guild.locale,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "application_id": None,
        "max_members": 500000,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "features": [],
        "roles": [role_payload(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "channels": channels,
        "threads": [],
        "members": members,
        "member_count": len(guild.members),
        "large": False,
        "unavailable": False,
        "lazy": True,
        "joined_at": iso(guild.joined_at),
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "incidents_data": None,
    }


def guild_rest_payload(guild: Guild, state: State) -> dict[str, Any]:
    data = guild_create_payload(guild, state, bot_id=0, all_members=False)
    for key in (
        "channels",
        "threads",
        "members",
        "voice_states",
        "presences",
        "stage_instances",
        "guild_scheduled_events",
        "soundboard_sounds",
        "lazy",
        "large",
        "member_count",
        "joined_at",
        "unavailable",
    ):
        data.pop(key, None)
    data["approximate_member_count"] = len(guild.members)
    data["approximate_presence_count"] = 0
    return data


def attachment_payload(att: StoredAttachment) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(att.id),
        "filename": att.filename,
        "size": att.size,
        "url": att.url,
        "proxy_url": att.proxy_url,
        "content_type": att.content_type,
        "flags": 0,
    }
    if att.description is not None:
        data["description"] = att.description
    if att.title is not None:
        data["title"] = att.title
    if att.width is not None and att.height is not None:
        data["width"] = att.width
        data["height"] = att.height
    if att.ephemeral:
        data["ephemeral"] = True
    return data


def message_payload(
    msg: StoredMessage,
    state: State,
    *,
    for_gateway: bool = False,
    strip_content: bool = False,
) -> dict[str, Any]:
    author = state.users[msg.author_id]
    data: dict[str, Any] = {
        "id": str(msg.id),
        "channel_id": str(msg.channel_id),
        "type": msg.type,
        "author": user_payload(author),
        "content": "" if strip_content else msg.content,
        "timestamp": iso(msg.created_at),
        "edited_timestamp": iso(msg.edited_at),
        "tts": msg.tts,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [] if strip_content else [attachment_payload(a) for a in msg.attachments],
        "embeds": [] if strip_content else copy.deepcopy(msg.embeds),
        "components": [] if strip_content else copy.deepcopy(msg.components),
        "pinned": False,
        "flags": msg.flags,
    }
    if msg.webhook_id is not None:
        data["webhook_id"] = str(msg.webhook_id)
    if msg.application_id is not None:
        data["application_id"] = str(msg.application_id)
    if msg.message_reference is not None:
        data["message_reference"] = msg.message_reference
    if msg.interaction_id is not None and msg.interaction_user_id is not None:
        iuser = user_payload(state.users[msg.interaction_user_id])
        metadata: dict[str, Any] = {
            "id": str(msg.interaction_id),
            "type": msg.interaction_type or 2,
            "user": iuser,
            "authorizing_integration_owners": {},
        }
        if msg.interaction_name is not None:
            metadata["name"] = msg.interaction_name
            metadata["command_type"] = 1
        data["interaction_metadata"] = metadata
        if msg.interaction_name is not None:
            data["interaction"] = {
                "id": str(msg.interaction_id),
                "type": msg.interaction_type or 2,
                "name": msg.interaction_name,
                "user": iuser,
            }
    if for_gateway and msg.guild_id is not None:
        data["guild_id"] = str(msg.guild_id)
        guild = state.guilds.get(msg.guild_id)
        if guild is not None and msg.author_id in guild.members:
            data["member"] = member_payload(guild.members[msg.author_id], state, with_user=False)
    return data


def resolve_embed_attachments(embeds: list[dict[str, Any]], atts: list[StoredAttachment]) -> None:
    """Rewrite ``attachment://name`` references in embeds to the served attachment URL."""
    by_name = {a.filename: a for a in atts}
    for embed in embeds:
        embed.setdefault("type", "rich")
        for key in ("image", "thumbnail", "video"):
            part = embed.get(key)
            if isinstance(part, dict):
                url = part.get("url")
                if isinstance(url, str) and url.startswith("attachment://"):
                    att = by_name.get(url[len("attachment://") :])
                    if att is not None:
                        part["url"] = att.url
                        part["proxy_url"] = att.proxy_url
                        if att.width is not None:
                            part["width"] = att.width
                            part["height"] = att.height
        author = embed.get("author")
        if isinstance(author, dict):
            icon = author.get("icon_url")
            if isinstance(icon, str) and icon.startswith("attachment://"):
                att = by_name.get(icon[len("attachment://") :])
                if att is not None:
                    author["icon_url"] = att.url


def error_payload(code: int, message: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"message": message, "code": code}
    if errors:
        data["errors"] = errors
    return data


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF, JPEG or WebP from its header, or None."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return int(w), int(h)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return int(w), int(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w = int.from_bytes(data[26:28], "little") & 0x3FFF
                h = int.from_bytes(data[28:30], "little") & 0x3FFF
                return w, h
            return None
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker == 0xFF:
                    i += 1
                    continue
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    i += 2
                    continue
                seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return int(w), int(h)
                i += 2 + seg_len
    except (struct.error, IndexError):
        return None
    return None
