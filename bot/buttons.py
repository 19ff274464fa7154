"""The owner's buttons on delivered images (Share, Link, Delete; and on generated images
Details, Variations and Re-roll): the one persistent button type, and the registry of what
each of its actions does.

A button's custom id carries its action and the image id, so it keeps working after a restart
without any state kept in memory. The cog that performs an action adds it to the bot's
``OwnerActions`` when it loads and takes it away when it unloads: a click is routed to
whichever cog registered its action, and no cog looks another one up. Anyone can click a button
on a channel post, or forge its custom id: every action answers only the image's owner
(``cogs._views.owner_only``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import discord

from bot.interactions import as_veil

if TYPE_CHECKING:
    from bot.client import Interaction

ACTIONS = {"share": ("Share", discord.ButtonStyle.secondary),
           "link": ("Link", discord.ButtonStyle.secondary),
           "delete": ("Delete", discord.ButtonStyle.danger),
           "details": ("Details", discord.ButtonStyle.secondary),
           "vary": ("Variations", discord.ButtonStyle.secondary),
           "reroll": ("Re-roll", discord.ButtonStyle.primary)}
UNAVAILABLE = "These buttons are unavailable for a moment; try again shortly."

# What a click does: given the interaction and the image id the button carries.
OwnerAction = Callable[["Interaction", str], Awaitable[None]]


class OwnerActions:
    """Which handler performs each owner action; one per bot, filled by the cogs as they
    load."""

    def __init__(self) -> None:
        self._handlers: dict[str, OwnerAction] = {}

    def add(self, action: str, handler: OwnerAction) -> None:
        if action not in ACTIONS:
            raise ValueError(f"there is no owner button {action!r}")
        if action in self._handlers:
            raise ValueError(f"the owner button {action!r} already has a handler")
        self._handlers[action] = handler

    def remove(self, action: str) -> None:
        self._handlers.pop(action, None)

    def get(self, action: str) -> OwnerAction | None:
        return self._handlers.get(action)


class OwnerButton(discord.ui.DynamicItem[discord.ui.Button],
                  template=rf"veil:(?P<action>{'|'.join(ACTIONS)}):(?P<image>[a-z0-9]{{6,16}})"):
    """A button on a delivered image that only its owner may use."""

    def __init__(self, action: str, image_id: str) -> None:
        label, style = ACTIONS[action]
        super().__init__(discord.ui.Button(label=label, style=style,
                                           custom_id=f"veil:{action}:{image_id}"))
        self.action = action
        self.image_id = image_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item[Any],
                             match: re.Match[str]) -> OwnerButton:
        return cls(match["action"], match["image"])

    async def callback(self, interaction: discord.Interaction) -> None:
        veil_interaction = as_veil(interaction)
        handler = veil_interaction.client.owner_actions.get(self.action)
        if handler is None:  # its cog is unloaded (being reloaded, for instance)
            await interaction.response.send_message(UNAVAILABLE, ephemeral=True)
            return
        await handler(veil_interaction, self.image_id)
