"""Who is asking, from the interaction itself: user, roles on this request, server, moderator.

Roles are read from the member data that arrives with every interaction, never from a cache of
ours, so taking a role away ends a role share on the very next command (guarantee 3).
"""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core.models import Viewer
from bot.core.moderation import is_moderator


def role_ids(interaction: discord.Interaction) -> frozenset[int]:
    user = interaction.user
    if interaction.guild_id is None or not isinstance(user, discord.Member):
        return frozenset()
    # Member.roles resolves the interaction's role ids; @everyone (id == guild id) included.
    return frozenset(role.id for role in user.roles) | {interaction.guild_id}


async def viewer_from(interaction: discord.Interaction) -> Viewer:
    roles = role_ids(interaction)
    moderator = False
    if interaction.guild_id is not None:
        policy = await interaction.client.veil.moderation.policy(interaction.guild_id)
        moderator = is_moderator(policy, roles,
                                 manage_guild=interaction.permissions.manage_guild)
    return Viewer(interaction.user.id, roles, interaction.guild_id, moderator)


class NotModerator(app_commands.CheckFailure):
    """Raised by ``moderators_only``; the error handler explains it."""


async def ensure_moderator(interaction: discord.Interaction) -> bool:
    """True for a moderator of the server the interaction comes from; otherwise raises an error
    whose message the central error path shows to the user."""
    if interaction.guild_id is None:
        raise app_commands.NoPrivateMessage("Moderator commands work inside a server.")
    if not (await viewer_from(interaction)).is_moderator:
        raise NotModerator("Only this server's moderators (Manage Server, or the moderator "
                           "role set with /admin mod-role) can do that.")
    return True


def moderators_only():
    """Enforce moderator rights on the server side. ``default_permissions`` is only a hint to
    Discord's interface; this check is what actually guards every admin command."""
    return app_commands.check(ensure_moderator)
