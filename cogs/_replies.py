"""Answering an interaction whatever state it is in, and the one path for errors.

Our own errors (``VeilError``) carry a message written for the user and are shown as they are,
ephemerally. Anything else is logged with a short reference id (and without the interaction's
options, which may hold a prompt) and the user gets that id.
"""

from __future__ import annotations

import logging
import secrets

import discord
from discord import app_commands

from bot.core.errors import VeilError

log = logging.getLogger("veil.errors")

CANNOT_DM = 50007  # Discord's "Cannot send messages to this user"


async def reply(interaction: discord.Interaction, content: str | None = None, *,
                ephemeral: bool = True, **kwargs) -> None:
    """Send a message as the response, or as a followup when the response was already used."""
    if interaction.response.is_done():
        await interaction.followup.send(content, ephemeral=ephemeral, **kwargs)
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)


def message_for(error: BaseException) -> str | None:
    """The user-facing text for an error we expect, or None for a real fault."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VeilError):
            return current.message
        if isinstance(current, app_commands.NoPrivateMessage):
            return "This command works only inside a server."
        if isinstance(current, app_commands.CheckFailure) and str(current):
            return str(current)
        if isinstance(current, app_commands.CommandOnCooldown):
            return f"Slow down: try again in {current.retry_after:.0f} s."
        if isinstance(current, app_commands.BotMissingPermissions):
            missing = ", ".join(p.replace("_", " ") for p in current.missing_permissions)
            return f"I am missing permissions here: {missing}. Ask a moderator to grant them."
        if isinstance(current, discord.Forbidden) and current.code == CANNOT_DM:
            return ("I cannot send you a direct message: your DMs are closed to me. Allow "
                    "direct messages from this server's members, then try again.")
        if isinstance(current, discord.Forbidden):
            return ("Discord refused that: I am missing a permission in this channel. "
                    "Ask a moderator to check my role, or use me in DMs.")
        if isinstance(current, discord.DiscordServerError):
            return "Discord is having trouble right now. Nothing was lost; try again in a minute."
        current = current.__cause__ or getattr(current, "original", None)
    return None


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    text = message_for(error)
    if text is None:
        reference = secrets.token_hex(4)
        command = interaction.command.qualified_name if interaction.command else "component"
        log.error("Unexpected error in %s (ref %s, user %s)", command, reference,
                  interaction.user.id if interaction.user else "?", exc_info=error)
        text = (f"Something went wrong on my side (reference `{reference}`). "
                "Nothing you stored was lost; please try again.")
    try:
        await reply(interaction, text, ephemeral=True)
    except discord.HTTPException:
        log.warning("Could not tell the user about an error (interaction expired?)")
