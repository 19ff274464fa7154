"""Small reusable pieces of interface: views only their invoker may use, a confirmation prompt,
and the owner's buttons.

The owner's buttons (Share, Link, Delete; and on generated images Details, Variations and
Re-roll) are dynamic items: their custom id carries the image id, so they keep working after a
restart without any state kept in memory. Anyone can click a button on a channel post, or forge
its custom id: the handler answers only the image's owner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord
from discord.ui.select import BaseSelect  # the one base of every kind of select menu

from bot.core.models import ImageContent
from cogs._replies import report_error

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


OWNER_ACTIONS = {"share": ("Share", discord.ButtonStyle.secondary),
                 "link": ("Link", discord.ButtonStyle.secondary),
                 "delete": ("Delete", discord.ButtonStyle.danger),
                 "details": ("Details", discord.ButtonStyle.secondary),
                 "vary": ("Variations", discord.ButtonStyle.secondary),
                 "reroll": ("Re-roll", discord.ButtonStyle.primary)}
IMAGE_ACTIONS = ("share", "link", "delete")
GENERATED_ACTIONS = ("details", "vary")
MAX_ROWS = 5  # Discord's limit for one message


class OwnerButton(discord.ui.DynamicItem[discord.ui.Button],
                  template=r"veil:(?P<action>share|link|delete|details|vary|reroll):"
                           r"(?P<image>[a-z0-9]{6,16})"):
    """A button on a delivered image that only its owner may use; handled by cogs.gallery."""

    def __init__(self, action: str, image_id: str) -> None:
        label, style = OWNER_ACTIONS[action]
        super().__init__(discord.ui.Button(label=label, style=style,
                                           custom_id=f"veil:{action}:{image_id}"))
        self.action = action
        self.image_id = image_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> OwnerButton:
        return cls(match["action"], match["image"])

    async def callback(self, interaction: discord.Interaction) -> None:
        handler = getattr(interaction.client, "owner_button_handler", None)
        if handler is None:  # the gallery cog is unloaded (being reloaded, for instance)
            await interaction.response.send_message(
                "These buttons are unavailable for a moment; try again shortly.", ephemeral=True)
            return
        await handler(interaction, self.action, self.image_id)


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
