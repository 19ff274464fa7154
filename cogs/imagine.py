"""Making images: `/imagine` (generate, with a queue and a progress bar), the owner's Re-roll
and Variations buttons, and `/upload`.

All defer ephemerally at once, store through the core (which sanitizes and encrypts), and
deliver through the one delivery path. Re-roll and Variations go through the same queue, with
its per-user limit, as `/imagine`. The prompt is never shown in a channel.
"""

from __future__ import annotations

import time
from types import EllipsisType
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.acknowledgements import defer_privately, defers_privately
from bot.core.errors import BadImage, GeneratorUnavailable, QueueFull
from bot.core.models import FollowUpKind, GenerationParams, ImageContent, ImageRecord, Viewer
from bot.delivery import DeliveryFailed
from bot.generate import MAX_PROMPT_CHARS, GenerationRequest, Progress
from bot.images import check_declared_size
from bot.interactions import viewer_from
from cogs._views import InvokerView, owner_buttons, owner_only

if TYPE_CHECKING:
    from bot.client import Interaction

PROGRESS_EVERY_S = 1.0
RETRY_WAIT_S = 600.0  # shorter than an interaction token's 15 minutes, so expiry can be shown
BAR_CELLS = 12


def progress_bar(fraction: float) -> str:
    filled = max(0, min(BAR_CELLS, round(fraction * BAR_CELLS)))
    return "▰" * filled + "▱" * (BAR_CELLS - filled) + f" {int(fraction * 100)}%"


def caption(records: list[ImageRecord], owner_id: int) -> str:
    ids = ", ".join(f"`{r.public_id}`" for r in records)
    kind = "private" if any(r.visibility == "private" for r in records) else "public"
    return f"Image{'s' if len(records) > 1 else ''} {ids} by <@{owner_id}> · {kind}"


def summary(records: list[ImageRecord], note: str) -> str:
    ids = ", ".join(f"`{r.public_id}`" for r in records)
    kind = records[0].visibility
    return f"Done: {ids} ({kind}). {note}"


class RetryView(InvokerView):
    """Offered when the generator failed: one click tries the same request again. When the
    offer times out (before the interaction's 15-minute token does) the button is disabled."""

    not_yours = "Only the person who asked can try again."

    def __init__(self, cog: Imagine, source: discord.Interaction, request: GenerationRequest,
                 private: bool | None, guild_id: int | None | EllipsisType, text: str) -> None:
        super().__init__(source.user.id, timeout=cog.retry_wait_s)
        self.cog, self.source = cog, source
        self.request, self.private, self.guild_id, self.text = request, private, guild_id, text

    async def on_timeout(self) -> None:
        self.disable_all()
        try:
            await self.source.edit_original_response(
                content=f"{self.text}\n\nThis offer expired: run /imagine again.", view=self)
        except discord.HTTPException:
            pass  # the message is gone or its token expired: nothing left to tidy

    @discord.ui.button(label="Try again", style=discord.ButtonStyle.primary)
    async def retry(self, interaction: Interaction, button: discord.ui.Button) -> None:
        button.disabled = True
        await interaction.response.edit_message(content="Trying again…", view=self)
        self.stop()
        # The clicked message is this interaction's original response: progress, the result
        # or a fresh "Try again" all land in that one message.
        await self.cog.run_generation(interaction, self.request, self.private,
                                      guild_id=self.guild_id)


class Imagine(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil
        self.retry_wait_s = RETRY_WAIT_S
        self.progress_every_s = PROGRESS_EVERY_S

    async def cog_load(self) -> None:
        self.bot.owner_actions.add("reroll", owner_only(self.reroll_button))
        self.bot.owner_actions.add("vary", owner_only(self.vary_button))

    async def cog_unload(self) -> None:
        self.bot.owner_actions.remove("reroll")
        self.bot.owner_actions.remove("vary")

    async def reroll_button(self, interaction: Interaction, record: ImageRecord,
                            viewer: Viewer) -> None:
        await self.follow_up(interaction, record.public_id, viewer, "reroll")

    async def vary_button(self, interaction: Interaction, record: ImageRecord,
                          viewer: Viewer) -> None:
        await self.follow_up(interaction, record.public_id, viewer, "variation")

    @defers_privately
    @app_commands.command(name="imagine", description="Generate images from a prompt.")
    @app_commands.describe(prompt="What to draw", private="Keep these private (default: your "
                           "private mode)", count="How many images, 1 to 4")
    async def imagine(self, interaction: Interaction,
                      prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS],
                      private: bool | None = None,
                      count: app_commands.Range[int, 1, 4] = 1) -> None:
        await defer_privately(interaction)
        size = self.bot.settings.image_size
        request = GenerationRequest(prompt=prompt, count=count, width=size, height=size)
        await self.run_generation(interaction, request, private)

    async def follow_up(self, interaction: Interaction, public_id: str, viewer: Viewer,
                        kind: FollowUpKind) -> None:
        """The owner's Re-roll or Variations on one of their images: the core decides what to
        draw and where the new images belong; the queue and delivery are /imagine's own."""
        plan = await self.veil.images.follow_up(public_id, viewer, kind)
        await interaction.response.defer(ephemeral=True, thinking=True)
        request = GenerationRequest(
            prompt=plan.prompt, count=plan.count, seed=plan.seed, width=plan.width,
            height=plan.height, variation_seed=plan.variation_seed,
            variation_strength=plan.variation_strength)
        await self.run_generation(interaction, request, plan.requested_private,
                                  guild_id=plan.guild_id)

    async def run_generation(self, interaction: Interaction, request: GenerationRequest,
                             private: bool | None, *,
                             guild_id: int | None | EllipsisType = ...) -> None:
        """Queue, generate, store and deliver. ``guild_id`` is the server the images belong to
        (its forced private mode applies): the original's for Re-roll and Variations; by
        default (``...``) the one whose policy governs where this runs."""
        viewer = await viewer_from(interaction)
        home = viewer.guild_id if guild_id is ... else guild_id
        status = _StatusMessage(interaction, self.progress_every_s)
        generator = self.bot.queue.generator.name
        try:
            images = await self.bot.queue.submit(viewer.user_id, request, status.progress)
        except (GeneratorUnavailable, QueueFull) as error:
            await status.show(error.message, view=RetryView(self, interaction, request,
                                                            private, guild_id, error.message))
            return
        # viewer.guild_id is the server whose policy governs images made here: None where the
        # server did not install Veil (a user install), so no policy it never chose applies.
        # A follow-up belongs to its original's server instead.
        records = [await self.veil.images.create(
            viewer.user_id, data, guild_id=home, source="generated",
            prompt=request.prompt, requested_private=private,
            generation=_params(request, index, generator)) for index, data in enumerate(images)]
        await self._deliver(interaction, viewer, records, status)

    async def _deliver(self, interaction: Interaction, viewer: Viewer,
                       records: list[ImageRecord], status: _StatusMessage) -> None:
        contents: list[ImageContent] = [
            (await self.veil.images.open(r.public_id, viewer))[0] for r in records]
        try:
            delivered = await self.bot.deliverer.deliver(
                interaction, contents, caption=caption(records, viewer.user_id),
                view_factory=owner_buttons)
        except DeliveryFailed as error:
            await status.show(error.message, view=None)
            return
        await status.show(summary(records, delivered.note), view=None)

    @defers_privately
    @app_commands.command(name="upload",
                          description="Store an image privately (metadata is removed).")
    @app_commands.describe(image="The image file (PNG, JPEG, WebP or GIF)",
                           private="Keep it private (default: your private mode)")
    async def upload(self, interaction: Interaction, image: discord.Attachment,
                     private: bool | None = None) -> None:
        await defer_privately(interaction)
        # Discord announces the size and the header's dimensions: refuse a giant before
        # downloading it, in the pipeline's own words (it checks the real bytes again later).
        check_declared_size(self.veil.ctx.limits, byte_count=image.size, width=image.width,
                            height=image.height)
        try:
            data = await image.read()
        except discord.HTTPException:
            raise BadImage("I could not download that file from Discord. Please upload it "
                           "again.") from None
        viewer = await viewer_from(interaction)
        record = await self.veil.images.create(viewer.user_id, data,
                                               guild_id=viewer.guild_id, source="upload",
                                               requested_private=private)
        await self._deliver(interaction, viewer, [record],
                            _StatusMessage(interaction, self.progress_every_s))


def _params(request: GenerationRequest, index: int, generator: str) -> GenerationParams:
    """How image ``index`` of ``request`` was drawn, as the core keeps it (sealed)."""
    return GenerationParams(
        seed=request.seed_of(index), width=request.width, height=request.height,
        generator=generator, batch_size=request.count,
        variation_seed=request.variation_seed_of(index),
        variation_strength=request.variation_strength if request.is_variation else 0.0)


class _StatusMessage:
    """The one message that shows queue position and progress, edited in place (throttled):
    the command's deferred reply, or the message whose "Try again" was clicked."""

    def __init__(self, interaction: Interaction, every_s: float) -> None:
        self.interaction = interaction
        self.every_s = every_s
        self._last_bar: float | None = None
        self._told_position: int | None = None
        self._told_at: float | None = None

    async def progress(self, event: Progress) -> None:
        # The generator awaits this callback, so an edit Discord rate-limits would stall the
        # queue for everyone: at most one bar every ``every_s``, the first one at once.
        if event.queue_position is not None:
            now = time.monotonic()
            if event.queue_position == self._told_position:
                return
            # Every place the line moves would otherwise edit every waiting message: with n
            # people waiting that is n*n edits. Tell the first place at once, then at most
            # one change every ``every_s``.
            if self._told_at is not None and now - self._told_at < self.every_s:
                return
            self._told_position, self._told_at = event.queue_position, now
            text = f"Waiting for the generator: you are #{event.queue_position} in line."
        else:
            now = time.monotonic()
            if event.fraction >= 1.0:
                return  # the result replaces the bar at once
            if self._last_bar is not None and now - self._last_bar < self.every_s:
                return
            self._last_bar = now
            text = f"{progress_bar(event.fraction)} {event.stage}"
        try:
            await self.show(text)
        except discord.HTTPException:
            pass  # progress is a courtesy; the result still arrives

    async def show(self, text: str, **kwargs) -> None:
        await self.interaction.edit_original_response(content=text, **kwargs)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(bot))
