"""The moderator check on commands: who may use ``/admin`` and the other moderators' commands.

Who is asking and where comes from ``bot.interactions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord import app_commands

from bot.core.venue import moderation_refusal
from bot.interactions import venue_from, viewer_from

if TYPE_CHECKING:
    from bot.client import Interaction


class NotModerator(app_commands.CheckFailure):
    """Raised by ``moderators_only``; the error handler explains it."""


async def ensure_moderator(interaction: Interaction) -> bool:
    """True for a moderator of the server the interaction comes from; otherwise raises an error
    whose message the central error path shows to the user."""
    refusal = moderation_refusal(venue_from(interaction))
    if refusal is not None:
        raise NotModerator(refusal)
    if not (await viewer_from(interaction)).is_moderator:
        raise NotModerator("Only this server's moderators (Manage Server, or the moderator "
                           "role set with /admin mod-role) can do that.")
    return True


def moderators_only():
    """Enforce moderator rights on the server side. ``default_permissions`` is only a hint to
    Discord's interface; this check is what actually guards every admin command."""
    return app_commands.check(ensure_moderator)
