"""Making images: `/imagine` (generate, with a queue and a progress bar) and `/upload`.

Both defer ephemerally at once, store through the core (which sanitizes and encrypts), and
deliver through the one delivery path. The prompt is never shown in a channel.
"""

from __future__ import annotations

import time

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import BadImage, GeneratorUnavailable
from bot.core.models import ImageContent, ImageRecord, Viewer
from bot.generate import GenerationRequest, Progress
from cogs._viewer import viewer_from
from cogs._views import owner_buttons

PROGRESS_EVERY_S = 1.0
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


class RetryView(discord.ui.View):
    """Offered when the generator failed: one click tries the same request again."""

    def __init__(self, cog: Imagine, invoker_id: int, request: GenerationRequest,
                 private: bool | None) -> None:
        super().__init__(timeout=600)
        self.cog, self.invoker_id = cog, invoker_id
        self.request, self.private = request, private

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.invoker_id

    @discord.ui.button(label="Try again", style=discord.ButtonStyle.primary)
    async def retry(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        button.disabled = True
        await interaction.response.edit_message(content="Trying again…", view=self)
        self.stop()
        await self.cog.run_generation(interaction, self.request, self.private, edit=False)


class Imagine(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="imagine", description="Generate images from a prompt.")
    @app_commands.describe(prompt="What to draw", private="Keep these private (default: your "
                           "private mode)", count="How many images, 1 to 4")
    async def imagine(self, interaction: discord.Interaction,
                      prompt: app_commands.Range[str, 1, 1000],
                      private: bool | None = None,
                      count: app_commands.Range[int, 1, 4] = 1) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        request = GenerationRequest(prompt=prompt, count=count)
        await self.run_generation(interaction, request, private, edit=True)

    async def run_generation(self, interaction: discord.Interaction, request: GenerationRequest,
                             private: bool | None, *, edit: bool) -> None:
        viewer = await viewer_from(interaction)
        status = _StatusMessage(interaction, edit=edit)
        try:
            images = await self.bot.queue.submit(viewer.user_id, request, status.progress)
        except GeneratorUnavailable as error:
            await status.show(error.message, view=RetryView(self, viewer.user_id, request,
                                                            private))
            return
        records = [await self.veil.images.create(
            viewer.user_id, data, guild_id=interaction.guild_id, source="generated",
            prompt=request.prompt, requested_private=private) for data in images]
        await self._deliver(interaction, viewer, records, status)

    async def _deliver(self, interaction: discord.Interaction, viewer: Viewer,
                       records: list[ImageRecord], status: _StatusMessage) -> None:
        contents: list[ImageContent] = [await self.veil.images.decrypt(r) for r in records]
        delivered = await self.bot.deliverer.deliver(
            interaction, contents, caption=caption(records, viewer.user_id),
            view_factory=owner_buttons)
        await status.show(summary(records, delivered.note))

    @app_commands.command(name="upload",
                          description="Store an image privately (metadata is removed).")
    @app_commands.describe(image="The image file (PNG, JPEG, WebP or GIF)",
                           private="Keep it private (default: your private mode)")
    async def upload(self, interaction: discord.Interaction, image: discord.Attachment,
                     private: bool | None = None) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        limit = self.veil.ctx.limits.max_bytes
        if image.size > limit:
            raise BadImage(f"The file is {image.size / 1e6:.1f} MB; the limit is "
                           f"{limit / 1e6:.0f} MB.")
        try:
            data = await image.read()
        except discord.HTTPException:
            raise BadImage("I could not download that file from Discord. Please upload it "
                           "again.") from None
        viewer = await viewer_from(interaction)
        record = await self.veil.images.create(viewer.user_id, data,
                                               guild_id=interaction.guild_id, source="upload",
                                               requested_private=private)
        await self._deliver(interaction, viewer, [record], _StatusMessage(interaction, edit=True))


class _StatusMessage:
    """The one message that shows queue position and progress, edited in place (throttled)."""

    def __init__(self, interaction: discord.Interaction, *, edit: bool) -> None:
        self.interaction = interaction
        self.edit = edit
        self._last = 0.0
        self._last_stage = ""

    async def progress(self, event: Progress) -> None:
        now = time.monotonic()
        stage_changed = event.stage != self._last_stage
        if not stage_changed and now - self._last < PROGRESS_EVERY_S and event.fraction < 1.0:
            return
        self._last, self._last_stage = now, event.stage
        if event.queue_position is not None:
            text = f"Waiting for the generator: you are #{event.queue_position} in line."
        else:
            text = f"{progress_bar(event.fraction)} {event.stage}"
        try:
            await self.show(text)
        except discord.HTTPException:
            pass  # progress is a courtesy; the result still arrives

    async def show(self, text: str, **kwargs) -> None:
        if self.edit:
            await self.interaction.edit_original_response(content=text, **kwargs)
        else:
            await self.interaction.followup.send(text, ephemeral=True, **kwargs)
            self.edit = True


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Imagine(bot))
