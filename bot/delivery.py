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

Every copy is written to the ledger as pending before it is sent, with its basis, and recorded as
sent after (``bot.core.ledger``); a copy whose access ended while it was on its way is retracted
at once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import discord

from bot.core import failpoints
from bot.core.access import place_for
from bot.core.errors import NotFound, VeilError
from bot.core.ledger import OWNER, PUBLIC, Basis, DeliveryLedger, Drained
from bot.core.models import ImageContent, ImageRecord, Retraction
from bot.core.veil import Veil
from bot.core.venue import Venue
from bot.interactions import venue_from

if TYPE_CHECKING:
    from bot.client import Interaction

log = logging.getLogger("veil.delivery")

Place = Literal["channel", "dm", "ephemeral"]
# Buttons for the delivered images, added only to a message to their owner.
ViewFactory = Callable[[Sequence[ImageContent]], "discord.ui.View | None"]
# Discord's error codes that change what Veil does.
UNKNOWN_MESSAGE = 10008  # a message that is already gone
CANNOT_DM = 50007  # "Cannot send messages to this user"
NO_MUTUAL_SERVER = 50278  # "... due to having no mutual guilds": a user install, no shared server
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


RECONCILE_LOOKBACK = 50  # messages read back in a channel to find an unrecorded copy
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
    """Sends and retracts copies for one Discord client; made by the composition root
    (``bot.client``) and used by every cog that delivers images."""

    def __init__(self, client: discord.Client, veil: Veil) -> None:
        self.client = client
        self.veil = veil

    @property
    def ledger(self) -> DeliveryLedger:
        return self.veil.ledger

    async def deliver(self, interaction: Interaction, contents: Sequence[ImageContent],
                      *, caption: str, basis: Basis = OWNER,
                      view_factory: ViewFactory | None = None) -> Delivered:
        """Send ``contents`` (already access-checked for interaction.user) where allowed.

        ``basis`` is why the user may see them (``Basis.of`` the view decision; the owner's
        own images by default): a private copy records it, so the end of that access retracts
        the copy. A channel post's basis is always public visibility.
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
        buttons: dict[str, Any] = {"view": view} if view is not None else {}
        note_prefix = ""
        channel = interaction.channel
        if places == {"channel"} and isinstance(channel, discord.abc.Messageable):
            try:
                pending = await self.ledger.begin(records, recipient_id=None, basis=PUBLIC,
                                                  kind="channel", channel_id=channel.id,
                                                  guild_id=interaction.guild_id)
            except NotFound:
                pending = None  # made private meanwhile: only a private copy may go
            if pending is not None:
                try:
                    message = await channel.send(
                        caption, files=_files(contents), allowed_mentions=NO_PINGS, **buttons)
                except discord.Forbidden:
                    await self.ledger.abandon(pending)
                    note_prefix = ("I may not post images in this channel (missing permission), "
                                   "so I sent it privately instead. ")
                except discord.HTTPException:
                    await self.ledger.abandon(pending)
                    note_prefix = ("Discord did not accept my post in this channel just now, "
                                   "so I sent it privately instead. ")
                else:
                    failpoints.reach("deliver:sent")
                    if (await self.ledger.complete(pending, message_id=message.id)).kept:
                        return Delivered("channel", "Posted in this channel.", message)
                    # Made private while the post was on its way: it is being retracted.
                    note_prefix = "It became private as I posted it, so it went privately. "
        return await self._deliver_privately(interaction, venue, contents, caption, basis,
                                             view, note_prefix)

    async def _deliver_privately(self, interaction: Interaction, venue: Venue,
                                 contents: Sequence[ImageContent], caption: str, basis: Basis,
                                 view: discord.ui.View | None, note_prefix: str) -> Delivered:
        records = [c.record for c in contents]
        extra: dict[str, Any] = {"view": view} if view is not None else {}
        user = interaction.user
        try:
            # The DM channel is known before the send, so the pending row names it and a
            # crash after Discord's answer can be reconciled by looking there.
            dm = await user.create_dm()
        except discord.HTTPException as error:
            raise not_delivered(records) from error
        pending = await self.ledger.begin(records, recipient_id=user.id, basis=basis,
                                          kind="dm", channel_id=dm.id,
                                          guild_id=interaction.guild_id)
        try:
            message = await dm.send(caption, files=_files(contents), **extra)
        except discord.Forbidden as refused:
            # DMs closed (50007), blocked, or no server in common (50278): an ephemeral copy.
            await self.ledger.abandon(pending)
            warning = dm_refused_warning(refused, venue)
        except discord.HTTPException as error:
            await self.ledger.abandon(pending)
            # A fault on Discord's side: an ephemeral copy could not be retracted later, so
            # rather than fall back to one, say that the image is safe and how to get it.
            raise not_delivered(records) from error
        else:
            failpoints.reach("deliver:sent")
            await self.ledger.complete(pending, message_id=message.id)
            return Delivered("dm", f"{note_prefix}Sent to {venue.private_destination}.",
                             message)
        pending = await self.ledger.begin(records, recipient_id=user.id, basis=basis,
                                          kind="ephemeral",
                                          channel_id=interaction.channel_id or 0,
                                          guild_id=interaction.guild_id)
        try:
            message = await interaction.followup.send(caption, files=_files(contents),
                                                      ephemeral=True, wait=True, **extra)
        except discord.HTTPException as error:
            await self.ledger.abandon(pending)
            raise not_delivered(records) from error
        await self.ledger.complete(pending, message_id=message.id)
        return Delivered("ephemeral", note_prefix + warning, message)

    # Retraction --------------------------------------------------------------------------

    async def retract_due(self, ids: Iterable[int] | None = None) -> Drained:
        """Delete outbox messages this worker claims: every due one (``ids`` None), or only
        these (a command's own). Each row is claimed with a lease first, so another process
        draining the same outbox never deletes the same message.

        A message already gone counts as done. A permanent refusal (403, the channel gone) or
        the last attempt marks the row stuck, for the owner to see, instead of retrying it
        every few seconds; anything else is retried with back-off.
        """
        done = stuck = 0
        jobs = await self.ledger.claim(ids=ids)
        for job in jobs:
            try:
                await self.client.http.delete_message(job.channel_id, job.message_id,
                                                   reason="Veil: access to the image ended")
            except discord.NotFound as error:
                if error.code != UNKNOWN_MESSAGE:
                    stuck += await self._failed(job, "I can no longer reach that channel",
                                                permanent=True)
                    continue
            except discord.Forbidden:
                stuck += await self._failed(job, "Discord refused: I lack the permission there",
                                            permanent=True)
                continue
            except (discord.HTTPException, aiohttp.ClientError, TimeoutError) as error:
                stuck += await self._failed(job, _short(error), permanent=False)
                continue
            if await self.ledger.done(job):
                done += 1
        return Drained(done=done, waiting=len(jobs) - done, stuck=stuck)

    async def _failed(self, job: Retraction, error: str, *, permanent: bool) -> bool:
        became_stuck = await self.ledger.failed(job, error=error, permanent=permanent)
        if became_stuck:
            # Kept and shown to the owner (/privacy); logged without any content.
            log.warning("Could not retract message %s in channel %s: %s", job.message_id,
                        job.channel_id, error)
        return became_stuck

    async def reconcile_pending(self) -> int:
        """Settle deliveries a crash interrupted between Discord's answer and the record: look
        in their channel for the bot's own message carrying that image; found, it is recorded
        (and retracted if its access ended meanwhile); not found, nothing was sent."""
        settled = 0
        me = self.client.user
        for delivery_id, _recipient, channel_id, public_id, _since in \
                await self.ledger.pending():
            found = None
            if channel_id and me is not None:
                channel = self.client.get_partial_messageable(channel_id)
                try:
                    # The newest messages of that channel: the copy went there minutes ago at
                    # most, and its file name carries the image's random id.
                    async for message in channel.history(limit=RECONCILE_LOOKBACK):
                        if message.author.id == me.id and any(
                                a.filename.startswith(f"veil-{public_id}")
                                for a in message.attachments):
                            found = message.id
                            break
                except discord.HTTPException:
                    continue  # try again on the next pass
            await self.ledger.reconcile(delivery_id, found)
            settled += 1
        return settled


def _short(error: BaseException) -> str:
    status = getattr(error, "status", None)
    return f"Discord answered {status}" if status else type(error).__name__
