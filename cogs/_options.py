"""Typed options shared by the cogs: durations and image ids with autocomplete."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.core.durations import format_duration, parse_duration
from bot.interactions import viewer_from

if TYPE_CHECKING:
    from bot.client import Interaction


class DurationTransformer(app_commands.Transformer):
    """`30m`, `12h`, `7d` -> seconds; a bad value becomes a message that shows the format."""

    async def transform(self, interaction: discord.Interaction, value: str) -> float:
        return parse_duration(value)


Duration = app_commands.Transform[float, DurationTransformer]

AnyChannel = (discord.TextChannel | discord.Thread | app_commands.AppCommandChannel
              | app_commands.AppCommandThread)


class TextChannelTransformer(app_commands.Transformer):
    """A text channel or thread. Where discord.py holds the server (Veil's bot is a member) the
    full channel; where it does not (Veil's commands installed without its bot) the channel as
    the interaction describes it, rather than the failure discord.py's own converter gives."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.channel

    @property
    def channel_types(self) -> list[discord.ChannelType]:
        return [discord.ChannelType.text, discord.ChannelType.news,
                discord.ChannelType.news_thread, discord.ChannelType.private_thread,
                discord.ChannelType.public_thread]

    async def transform(self, interaction: discord.Interaction, value: AnyChannel) -> AnyChannel:
        resolved = value.resolve() if isinstance(
            value, app_commands.AppCommandChannel | app_commands.AppCommandThread) else None
        # channel_types lets Discord offer text channels and threads only.
        return resolved if isinstance(resolved, discord.TextChannel | discord.Thread) else value


TextChannel = app_commands.Transform[AnyChannel, TextChannelTransformer]


def _label(record, mine: bool) -> str:
    who = "yours" if mine else "shared with you"
    return f"{record.public_id} · {record.visibility} · {record.width}x{record.height} · {who}"


async def owned_image_autocomplete(interaction: Interaction,
                                   current: str) -> list[app_commands.Choice[str]]:
    """Ids of the caller's own images (for commands that change or share an image)."""
    veil = interaction.client.veil
    records = await veil.images.suggest(await viewer_from(interaction), current, owned_only=True)
    return [app_commands.Choice(name=_label(r, True), value=r.public_id) for r in records]


async def visible_image_autocomplete(interaction: Interaction,
                                     current: str) -> list[app_commands.Choice[str]]:
    """Ids of images the caller may see: their own and those shared with them."""
    viewer = await viewer_from(interaction)
    records = await interaction.client.veil.images.suggest(viewer, current, owned_only=False)
    return [app_commands.Choice(name=_label(r, r.owner_id == viewer.user_id), value=r.public_id)
            for r in records]


def when(timestamp: float | None) -> str:
    """A Discord timestamp that each reader sees in their own time zone."""
    return "never" if timestamp is None else f"<t:{int(timestamp)}:R>"


__all__ = ["Duration", "TextChannel", "format_duration", "owned_image_autocomplete",
           "visible_image_autocomplete", "when"]
