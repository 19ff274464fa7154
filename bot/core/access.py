"""The access rules (DESIGN sections 3 and 4) as pure functions, each with a reason.

The services look up the facts (is there a live grant, an open report) and ask these functions;
nothing here touches storage, so the same rule serves the bot, the link server and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.core.models import ImageRecord, Viewer

Via = Literal["owner", "public", "grant", "report", "none"]
Place = Literal["channel", "dm"]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    via: Via = "none"
    grant_id: int | None = None
    report_id: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


def can_view(image: ImageRecord, viewer: Viewer, *, now: float, live_grant_id: int | None,
             open_report: int | bool | None) -> Decision:
    """May ``viewer`` receive the bytes (or any derived form) of ``image`` right now?"""
    if image.expires_at is not None and now >= image.expires_at:
        return Decision(False, "the image has expired")
    if viewer.user_id == image.owner_id:
        return Decision(True, "you own it", "owner")
    if live_grant_id is not None:
        return Decision(True, "it is shared with you", "grant", live_grant_id)
    if (image.visibility == "public" and image.guild_id is not None
            and viewer.guild_id == image.guild_id):
        return Decision(True, "it is public in this server", "public")
    if (viewer.is_moderator and open_report and image.guild_id is not None
            and viewer.guild_id == image.guild_id):
        report_id = None if isinstance(open_report, bool) else open_report
        return Decision(True, "it was reported to this server's moderators", "report",
                        report_id=report_id)
    return Decision(False, "it is not shared with you")


def can_manage(image: ImageRecord, viewer: Viewer) -> Decision:
    """May ``viewer`` change, share or delete ``image``? Only its owner."""
    if viewer.user_id == image.owner_id:
        return Decision(True, "you own it", "owner")
    return Decision(False, "only its owner can do that")


def can_remove(image: ImageRecord, viewer: Viewer) -> Decision:
    """May ``viewer`` delete ``image``? Its owner, or a moderator of the server it came from."""
    if viewer.user_id == image.owner_id:
        return Decision(True, "you own it", "owner")
    if viewer.is_moderator and image.guild_id is not None and viewer.guild_id == image.guild_id:
        return Decision(True, "you moderate the server it came from")
    return Decision(False, "only its owner or this server's moderators can remove it")


def place_for(image: ImageRecord, *, guild_id: int | None, channel_permitted: bool,
              can_post: bool = True) -> Place:
    """Where a delivery asked for in server ``guild_id`` (None: a DM) may go (DESIGN 4): a
    channel only for a public image, in the server it came from, in a channel its moderators
    permitted, and only where Veil's bot is there to post it (``can_post``: a user install in
    a server without the bot can post nothing and delete nothing). Anywhere else, privately.

    The caller falls back from "dm" to an ephemeral reply when the recipient's DMs are closed.
    """
    if (image.visibility == "public" and can_post and guild_id is not None
            and guild_id == image.guild_id and channel_permitted):
        return "channel"
    return "dm"


def effective_visibility(*, requested_private: bool | None, user_private_mode: bool,
                         guild_forces_private: bool) -> Literal["private", "public"]:
    """A new image's visibility: a server that forces private mode wins over everything."""
    if guild_forces_private:
        return "private"
    private = user_private_mode if requested_private is None else requested_private
    return "private" if private else "public"
