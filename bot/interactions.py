"""Who is asking, and where, from the interaction itself: user, roles on this request, server,
moderator, and whether Veil is installed and present there.

Roles are read from the member data that arrives with every interaction, never from a cache of
ours, so taking a role away ends a role share on the very next command (guarantee 3).

The Discord side of ``bot.core.venue`` and ``Viewer``, used by the cogs and by delivery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import discord

from bot.core.models import Viewer
from bot.core.moderation import is_moderator
from bot.core.venue import Venue

if TYPE_CHECKING:
    from bot.client import Interaction


def role_ids(interaction: Interaction) -> frozenset[int]:
    """The role ids the interaction payload carries for the invoking member, @everyone included.

    ``Member.roles`` would resolve them through discord.py's guild cache and silently drop the
    ones it does not hold: every role, in a server where Veil's bot is not a member (a user
    install) or whose roles were never cached. The payload's own list is kept on the member.
    """
    user = interaction.user
    if interaction.guild_id is None or not isinstance(user, discord.Member):
        return frozenset()
    payload_roles = getattr(user, "_roles", None)
    ids = ({int(r) for r in payload_roles} if payload_roles is not None
           else {role.id for role in user.roles})
    return frozenset(ids) | {interaction.guild_id}


def venue_from(interaction: Interaction) -> Venue:
    """Where the interaction happened, and what Veil may do there (``bot.core.venue``)."""
    if interaction.guild_id is not None:
        # The server installed Veil when a server install authorized this command, or when
        # Veil's bot is a member there (discord.py then holds the guild from GUILD_CREATE).
        present = interaction.client.get_guild(interaction.guild_id) is not None
        return Venue("server", interaction.guild_id, interaction.channel_id,
                     server_installed=present or interaction.is_guild_integration(),
                     bot_present=present)
    # Context 2 (a group DM, or a DM between two people) is also a DM channel to discord.py;
    # only context 1 is the user's own DM with Veil.
    if interaction.context.private_channel:
        return Venue("private_chat", None, interaction.channel_id)
    if interaction.context.dm_channel or isinstance(interaction.channel, discord.DMChannel):
        return Venue("bot_dm", None, interaction.channel_id)
    return Venue("private_chat", None, interaction.channel_id)


def as_veil(interaction: discord.Interaction[Any]) -> Interaction:
    """``interaction`` typed as Veil's, for discord.py hooks whose signature is generic
    (``interaction_check`` and the like): every interaction Veil handles comes through VeilBot."""
    return cast("Interaction", interaction)


async def viewer_from(interaction: Interaction) -> Viewer:
    """The asker as the core sees them. Outside a server that installed Veil there is no
    server: no moderator rights, and nothing is public to them by being made there."""
    venue = venue_from(interaction)
    roles = role_ids(interaction)
    moderator = False
    if interaction.guild_id is not None:
        # Without the Server Members intent this is where Veil learns that a role was taken
        # away: copies received there through a share with it are retracted now.
        await interaction.client.veil.sharing.roles_now(interaction.user.id,
                                                        interaction.guild_id, roles)
    guild_id = venue.policy_guild_id
    if guild_id is not None:
        policy = await interaction.client.veil.moderation.policy(guild_id)
        moderator = is_moderator(policy, roles,
                                 manage_guild=interaction.permissions.manage_guild)
    return Viewer(interaction.user.id, roles, guild_id, moderator)
