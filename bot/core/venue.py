"""Where a command was used, and what Veil may do there (DESIGN section 4, user installs).

A person can install Veil on their own account and run its commands in any server, group DM or
DM, even where the server never added Veil. Two facts from the interaction decide what holds:

- whether the *server installed Veil*: only then does a server policy (forced private mode,
  links, retention, permitted channels) govern images made there, do its moderators have
  `/admin`, and may images be shared with its roles;
- whether *Veil's bot is a member* there: only then can Veil post in a channel, or delete what
  it posted. Anywhere else the interaction token is the only way to answer (ephemeral
  replies), and results go by DM.

Plain facts in, plain answers out: the cogs read the interaction, this module decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.core.errors import VeilError

VenueKind = Literal["server", "bot_dm", "private_chat"]


class NotInstalledHere(VeilError):
    """A command or option that needs Veil installed in the server, used where it is not."""


@dataclass(frozen=True)
class Venue:
    """Where an interaction happened: a server, the user's DM with Veil, or a private chat
    that Veil is not part of (a group DM, or a DM between two people)."""

    kind: VenueKind
    guild_id: int | None = None
    channel_id: int | None = None
    server_installed: bool = False
    bot_present: bool = False

    @property
    def policy_guild_id(self) -> int | None:
        """The server whose policy and moderators govern what happens here, if any.

        None where the server did not install Veil: an image made there belongs to no server
        (like one made in a DM), so nobody there sees it unless its owner shares it, and no
        policy the server never chose is pretended to apply.
        """
        return self.guild_id if self.kind == "server" and self.server_installed else None

    @property
    def can_post(self) -> bool:
        """May Veil post in this channel (and so delete from it later)?"""
        return self.kind == "server" and self.bot_present

    @property
    def private_destination(self) -> str:
        """Where a private delivery lands, in the words of the person who asked here."""
        return "this chat" if self.kind == "bot_dm" else "your DMs"


SERVER_INSTALL_NEEDED = (
    "Veil is not installed in this server, only on your account, so there is no server policy "
    "here to manage. A server admin can add Veil to the server with its install link; until "
    "then your commands work here privately.")


def moderation_refusal(venue: Venue) -> str | None:
    """Why `/admin` cannot apply here, or None where it can."""
    if venue.kind != "server":
        return "Moderator commands work inside a server that has installed Veil."
    if not venue.server_installed:
        return SERVER_INSTALL_NEEDED
    return None


def role_share_refusal(venue: Venue) -> str | None:
    """Why an image cannot be shared with a role from here, or None where it can.

    A role belongs to one server; Veil honours it only where that server installed Veil, so
    its moderators (who manage the role) have agreed to Veil being used there.
    """
    if venue.kind != "server":
        return ("Roles belong to a server: share with a role from inside a server that has "
                "installed Veil, or share with people or a /group here.")
    if not venue.server_installed:
        return ("This server has not installed Veil, so its roles cannot be shared with. Share "
                "with people or a /group instead, or ask a server admin to add Veil.")
    return None


def protection_notes(venue: Venue) -> list[str]:
    """What protects the user where they are, and what does not (for `/privacy`)."""
    if venue.kind == "bot_dm":
        return []
    if venue.kind == "private_chat":
        return [
            "You are using Veil from your own account in a private chat it is not part of.",
            "- Veil posts nothing in this chat: results go to your DMs (or a copy only you can "
            "see, if Discord will not let me DM you).",
            "- Images you make here belong to no server: nobody else sees them unless you share "
            "them.",
            "- The other people here cannot see your commands' answers; they can see that you "
            "used an app.",
        ]
    if venue.server_installed:
        notes = ["This server has installed Veil: its policy below applies to images you make "
                 "here, whether you use Veil through the server or your own account."]
        if not venue.bot_present:
            notes.append("- Veil's bot is not a member here, so it posts nothing in this "
                         "server's channels: results go to your DMs.")
        return notes
    return [
        "This server has **not** installed Veil: you are using it from your own account.",
        "- What protects you: Veil posts nothing in this server's channels and cannot; results "
        "go to your DMs (or a copy only you can see). Images you make here belong to no "
        "server, so no server policy or moderator reaches them, and nobody here sees them "
        "unless you share them.",
        "- What does not: this server's moderators cannot set Veil's policy here, and they can "
        "only allow or block external apps as a whole. The people here can see that you used "
        "an app, not what it answered. Copies only you can see (ephemeral) cannot be "
        "retracted later.",
    ]
