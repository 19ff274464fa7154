"""Answering an interaction whatever state it is in, the one path for errors, and the small
text helpers every reply uses (counted nouns, lists that must fit in one message).

Our own errors (``VeilError``) carry a message written for the user and are shown as they are,
ephemerally. Anything else is logged with a short reference id (and without the interaction's
options, which may hold a prompt) and the user gets that id.
"""

from __future__ import annotations

import logging
import secrets
from typing import cast

import discord
from discord import app_commands

from bot.core.errors import VeilError
from bot.delivery import CANNOT_DM, NO_MUTUAL_SERVER

log = logging.getLogger("veil.errors")

MESSAGE_LIMIT = 2000  # Discord's limit on a message's content


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 image``, ``2 images``; ``nouns`` for irregular plurals (``ephemeral copies``)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def fit_lines(lines: list[str], *, limit: int = MESSAGE_LIMIT) -> str:
    """As many whole lines as fit in one message (never a mention or a timestamp cut in half),
    then how many were left out."""
    kept: list[str] = []
    size = 0  # the kept lines, each with the newline that follows it
    for index, line in enumerate(lines):
        left_after = len(lines) - index - 1
        tail = len(f"\n… and {left_after} more") if left_after else 0
        if size + len(line) + tail > limit:
            kept.append(f"… and {len(lines) - index} more")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


async def reply(interaction: discord.Interaction, content: str | None = None, *,
                ephemeral: bool = True, **kwargs) -> None:
    """Send a message as the response, or as a followup when the response was already used."""
    if interaction.response.is_done():
        # discord.py sends None as "no text" here too, though its annotation says str.
        await interaction.followup.send(cast(str, content), ephemeral=ephemeral, **kwargs)
    else:
        await interaction.response.send_message(content, ephemeral=ephemeral, **kwargs)


async def reply_lines(interaction: discord.Interaction, lines: list[str], *, empty: str,
                      footer: str = "") -> None:
    """A list as one ephemeral message that pings nobody: as many whole lines as fit, then the
    footer if any; or ``empty`` when there is nothing to list."""
    if not lines:
        await reply(interaction, empty)
        return
    if footer:
        text = f"{fit_lines(lines, limit=MESSAGE_LIMIT - len(footer) - 1)}\n{footer}"
    else:
        text = fit_lines(lines)
    await reply(interaction, text, allowed_mentions=discord.AllowedMentions.none())


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
        if isinstance(current, discord.Forbidden) and current.code == NO_MUTUAL_SERVER:
            return ("Discord does not let me send you a direct message: we share no server. "
                    "Join a server that has Veil, or message me once, then try again.")
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
