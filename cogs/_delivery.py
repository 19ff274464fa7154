"""Delivering images only where policy allows (DESIGN section 4), and retracting them later.

The only code in Veil that posts image bytes to Discord. The place comes from
``bot.core.access.place_for``: a channel only for a public image, in the server it came from, in a
channel moderators permitted; otherwise a DM; and if the recipient's DMs are closed, an ephemeral
followup that only they can see. Every message carrying an image is recorded so deletion can
retract it. When Discord itself fails a DM, nothing falls back to a copy we could not retract:
the user is told the image is stored and how to get it (``DeliveryFailed``).

Where Veil is used through a user install in a server whose channels its bot is not in (or in a
group DM), it can post nothing there and delete nothing there: whatever the image's visibility,
the result goes by DM, or as an ephemeral copy (recorded as one that cannot be retracted, and
the user is told), never as a public followup.

Commands that deliver images defer *ephemerally* (``deliver`` does it if they did not): the first
followup after a defer inherits the defer's visibility, so a public defer could otherwise turn a
fallback copy into a channel message.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import discord

from bot.core.access import place_for
from bot.core.errors import VeilError
from bot.core.models import ImageContent, ImageRecord
from bot.core.venue import Venue
from cogs._replies import NO_MUTUAL_SERVER
from cogs._viewer import venue_from

if TYPE_CHECKING:
    from bot.client import Interaction

log = logging.getLogger("veil.delivery")

Place = Literal["channel", "dm", "ephemeral"]
EPHEMERAL_WARNING = (
    "Your DMs are closed to me, so here is a copy only you can see. Ephemeral copies cannot be "
    "retracted if the image is deleted later; allow DMs from this server's members to keep "
    "full control.")
# Discord refuses a bot's DM to someone it shares no server with (NO_MUTUAL_SERVER): the usual
# case for a person who installed Veil on their account only.
NO_MUTUAL_SERVER_WARNING = (
    "Discord does not let me DM you: we share no server. Here is a copy only you can see. "
    "Ephemeral copies cannot be retracted if the image is deleted later; to get results by DM "
    "(which I can retract), join a server that has Veil, or message me once.")
ELSEWHERE_WARNING = (
    "Discord did not let me DM you, so here is a copy only you can see. Ephemeral copies cannot "
    "be retracted if the image is deleted later; allow DMs from me to keep full control.")


def dm_refused_warning(error: discord.Forbidden, venue: Venue) -> str:
    """Why the copy is ephemeral, in the words that fit the refusal and the place."""
    if error.code == NO_MUTUAL_SERVER:
        return NO_MUTUAL_SERVER_WARNING
    return EPHEMERAL_WARNING if venue.bot_present else ELSEWHERE_WARNING
MAX_RETRACTION_ATTEMPTS = 12
NO_PINGS = discord.AllowedMentions.none()


@dataclass(frozen=True)
class Delivered:
    place: Place
    note: str
    message: discord.Message | discord.WebhookMessage | None = None


class DeliveryFailed(VeilError):
    pass


def not_delivered(records: Sequence[ImageRecord]) -> DeliveryFailed:
    ids = ", ".join(f"`{r.public_id}`" for r in records)
    where = ("it is stored, and /view with that id sends it" if len(records) == 1
             else "they are stored, and /view with each id sends them")
    return DeliveryFailed(f"Discord did not accept my message just now, so {ids} did not "
                          f"arrive. Nothing was lost: {where} again in a minute.")


def _files(contents: Sequence[ImageContent]) -> list[discord.File]:
    return [discord.File(io.BytesIO(c.data), filename=c.filename) for c in contents]


def _fits(contents: Sequence[ImageContent], limit: int) -> bool:
    return sum(len(c.data) for c in contents) <= limit


class Deliverer:
    def __init__(self, bot) -> None:
        self.bot = bot

    @property
    def veil(self):
        return self.bot.veil

    async def deliver(self, interaction: Interaction, contents: Sequence[ImageContent],
                      *, caption: str, grant_id: int | None = None,
                      view_factory=None) -> Delivered:
        """Send ``contents`` (already access-checked for interaction.user) where allowed.

        ``view_factory(contents)`` may add buttons (only on messages to the owner).
        """
        if not interaction.response.is_done():
            await interaction.response.defer(ephemeral=True, thinking=True)
        records = [c.record for c in contents]
        venue = venue_from(interaction)
        permitted = await self.veil.moderation.channel_permitted(venue.policy_guild_id,
                                                                 interaction.channel_id)
        places = {place_for(r, guild_id=venue.policy_guild_id, channel_permitted=permitted,
                            can_post=venue.can_post)
                  for r in records}
        limit = getattr(interaction, "filesize_limit", 10 * 1024 * 1024)
        if not _fits(contents, limit):
            raise DeliveryFailed("That image is larger than Discord lets me attach here. "
                                 "Use /link create to share it through a Veil link instead.")
        view = view_factory(contents) if view_factory is not None else None
        note_prefix = ""
        channel = interaction.channel
        if places == {"channel"} and isinstance(channel, discord.abc.Messageable):
            try:
                message = await channel.send(
                    caption, files=_files(contents), allowed_mentions=NO_PINGS,
                    **({"view": view} if view is not None else {}))
            except discord.Forbidden:
                note_prefix = ("I may not post images in this channel (missing permission), so "
                               "I sent it privately instead. ")
            except discord.HTTPException:
                note_prefix = ("Discord did not accept my post in this channel just now, so I "
                               "sent it privately instead. ")
            else:
                await self._record(records, message, "channel", interaction, None, grant_id)
                return Delivered("channel", "Posted in this channel.", message)
        return await self._deliver_privately(interaction, venue, contents, caption, grant_id,
                                             view, note_prefix)

    async def _deliver_privately(self, interaction, venue: Venue, contents, caption, grant_id,
                                 view, note_prefix: str) -> Delivered:
        records = [c.record for c in contents]
        extra = {"view": view} if view is not None else {}
        try:
            message = await interaction.user.send(caption, files=_files(contents), **extra)
        except discord.Forbidden as refused:
            # DMs closed (50007), blocked, or no server in common (50278): an ephemeral copy.
            warning = dm_refused_warning(refused, venue)
        except discord.HTTPException as error:
            # A fault on Discord's side: an ephemeral copy could not be retracted later, so
            # rather than fall back to one, say that the image is safe and how to get it.
            raise not_delivered(records) from error
        else:
            await self._record(records, message, "dm", interaction, interaction.user.id,
                               grant_id)
            return Delivered("dm", f"{note_prefix}Sent to {venue.private_destination}.",
                             message)
        try:
            message = await interaction.followup.send(caption, files=_files(contents),
                                                      ephemeral=True, wait=True, **extra)
        except discord.HTTPException as error:
            raise not_delivered(records) from error
        await self._record(records, message, "ephemeral", interaction, interaction.user.id,
                           grant_id)
        return Delivered("ephemeral", note_prefix + warning, message)

    async def _record(self, records, message, kind: Place, interaction, recipient_id,
                      grant_id) -> None:
        channel_id = message.channel.id if message.channel is not None else 0
        for record in records:
            await self.veil.images.record_delivery(
                record, kind=kind, channel_id=channel_id, message_id=message.id,
                recipient_id=recipient_id, guild_id=interaction.guild_id, grant_id=grant_id)

    async def retract_due(self) -> int:
        """Delete every posted message waiting in the retraction outbox; returns how many went.

        A message already gone counts as done; a failure is retried later with back-off.
        """
        done = 0
        for job in await self.veil.images.due_retractions():
            try:
                await self.bot.http.delete_message(job.channel_id, job.message_id,
                                                   reason="Veil: image deleted or unshared")
            except discord.NotFound:
                pass
            except discord.HTTPException as error:
                if job.attempts + 1 >= MAX_RETRACTION_ATTEMPTS:
                    log.error("Giving up retracting message %s in channel %s after %d tries "
                              "(%s)", job.message_id, job.channel_id, job.attempts + 1,
                              error.status)
                else:
                    await self.veil.images.retraction_failed(job.id)
                    continue
            await self.veil.images.retraction_done(job.id)
            done += 1
        return done
