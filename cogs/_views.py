"""Small reusable pieces of interface: views only their invoker may use, a confirmation prompt,
and the owner's buttons on a delivered image (``bot.buttons`` routes their clicks; each cog
adds the actions it performs, wrapped in ``owner_only``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import discord
from discord.ui.select import BaseSelect  # the one base of every kind of select menu

from bot.buttons import OwnerAction, OwnerButton
from bot.core.errors import NotFound
from bot.core.models import ImageContent, ImageRecord, Viewer
from bot.interactions import viewer_from
from cogs._replies import reply, report_error

if TYPE_CHECKING:
    from bot.client import Interaction


class InvokerView(discord.ui.View):
    """Buttons and pickers that answer only the person who asked. A view has no command tree
    to report its errors, so a failing callback ends in the central error message here, not in
    Discord's bare "interaction failed"."""

    not_yours = "This question is not for you."

    def __init__(self, invoker_id: int, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.invoker_id = invoker_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.invoker_id:
            await interaction.response.send_message(self.not_yours, ephemeral=True)
            return False
        return True

    async def on_error(self, interaction: discord.Interaction, error: Exception,
                       item: discord.ui.Item) -> None:
        await report_error(interaction, error)

    def disable_all(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button | BaseSelect):
                item.disabled = True


class Confirm(InvokerView):
    """Ask the invoker to confirm a destructive action; only they can answer. When answering
    fails, the question stays open: the user is told so and may click again."""

    def __init__(self, invoker_id: int, *, confirm_label: str = "Delete",
                 timeout: float = 60.0) -> None:
        super().__init__(invoker_id, timeout=timeout)
        self.value: bool | None = None
        self.confirm_button.label = confirm_label

    async def _finish(self, interaction: Interaction, value: bool) -> None:
        self.disable_all()
        await interaction.response.edit_message(view=self)
        self.value = value
        self.stop()

    @discord.ui.button(label="Delete", style=discord.ButtonStyle.danger)
    async def confirm_button(self, interaction: Interaction,
                             button: discord.ui.Button) -> None:
        await self._finish(interaction, True)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary)
    async def cancel_button(self, interaction: Interaction,
                            button: discord.ui.Button) -> None:
        await self._finish(interaction, False)


async def confirm(interaction: Interaction, question: str, *,
                  confirm_label: str = "Delete",
                  wait_s: float = 60.0) -> tuple[bool, Confirm]:
    """Ask ``question`` ephemerally with Confirm/Cancel; returns (confirmed, view). On timeout
    the buttons are disabled and the prompt says so."""
    view = Confirm(interaction.user.id, confirm_label=confirm_label, timeout=wait_s)
    await interaction.response.send_message(question, view=view, ephemeral=True)
    timed_out = await view.wait()
    if timed_out:
        view.disable_all()
        try:
            await interaction.edit_original_response(
                content=f"{question}\n\nNo answer in time, so nothing was changed.",
                view=view)
        except discord.HTTPException:
            pass
        return False, view
    return bool(view.value), view


IMAGE_ACTIONS = ("share", "link", "delete")
GENERATED_ACTIONS = ("details", "vary")
MAX_ROWS = 5  # Discord's limit for one message
ONLY_THE_OWNER = "Only the owner of this image can use these buttons."
GONE = "That image no longer exists: it was deleted."

# An owner action's body: it runs only for the owner of ``record``.
OwnerHandler = Callable[["Interaction", ImageRecord, Viewer], Awaitable[None]]


def owner_only(handler: OwnerHandler) -> OwnerAction:
    """``handler`` as an owner button's action (``bot.buttons``): it runs only when the one who
    clicked owns the image; anyone else, or a click on a deleted image, gets a short private
    answer. A button has no command tree to report its errors, so a failure ends in the central
    error message here."""

    async def act(interaction: Interaction, image_id: str) -> None:
        veil = interaction.client.veil
        try:
            viewer = await viewer_from(interaction)
            record = await veil.images.get_owned(image_id, viewer)
            await handler(interaction, record, viewer)
        except NotFound:
            gone = await veil.ctx.image(image_id) is None
            await reply(interaction, GONE if gone else ONLY_THE_OWNER)
        except Exception as error:
            await report_error(interaction, error)

    return act


def owner_buttons(contents: Sequence[ImageContent]) -> discord.ui.View | None:
    """One row per image: Share, Link, Delete, and for a generated image Details and
    Variations; then, if a row is left and any image was generated, one Re-roll for the batch."""
    view = discord.ui.View(timeout=None)
    records = [content.record for content in contents][:MAX_ROWS]
    for row, record in enumerate(records):
        actions = IMAGE_ACTIONS + (GENERATED_ACTIONS if record.source == "generated" else ())
        for action in actions:
            button = OwnerButton(action, record.public_id)
            button.item.row = row
            view.add_item(button)
    generated = [record for record in records if record.source == "generated"]
    if generated and len(records) < MAX_ROWS:
        button = OwnerButton("reroll", generated[0].public_id)
        button.item.row = len(records)
        view.add_item(button)
    return view
