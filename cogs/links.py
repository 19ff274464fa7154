"""Expiring links served by Veil's own web server: `/link create|list|revoke|password`.

A link's password is asked in a modal, never as a command option, so it does not sit in the
command history nor in the interaction's options that error reports may mention.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.models import ImageRecord, ShareLink, Viewer
from bot.core.passwords import MAX_LENGTH, MIN_LENGTH
from bot.interactions import as_veil, viewer_from
from bot.web import link_url
from cogs._options import Duration, owned_image_autocomplete, when
from cogs._replies import plural, reply, reply_lines, report_error
from cogs._views import owner_only

if TYPE_CHECKING:
    from bot.client import Interaction

PASSWORD_INPUT = "link-password"


def describe_link(link: ShareLink, now: float) -> str:
    views = f"{link.views}/{link.max_views}" if link.max_views else f"{link.views}"
    extras = "".join(f" · {name}" for name, on in (("download", link.allow_download),
                                                     ("watermark", link.watermark),
                                                     ("password", link.has_password)) if on)
    return (f"`{link.public_id}` → `{link.image_public_id}` · {link.status(now)} · views {views}"
            f" · expires {when(link.expires_at)}{extras}")


async def link_autocomplete(interaction: Interaction,
                            current: str) -> list[app_commands.Choice[str]]:
    veil = interaction.client.veil
    links = await veil.links.links_of(Viewer(interaction.user.id))
    now = veil.ctx.now()
    # Only live links: revoking an expired, used-up or revoked one changes nothing.
    return [app_commands.Choice(name=f"{link.public_id} → {link.image_public_id} · views "
                                     f"{link.views}", value=link.public_id)
            for link in links if link.status(now) == "live"
            and link.public_id.startswith(current.strip().lower())][:25]


class PasswordModal(discord.ui.Modal):
    """Asks for a link's password; ``then`` receives the submit interaction and the answer
    (None when an optional field was left empty)."""

    def __init__(self, *, title: str, label: str, required: bool,
                 then: Callable[[Interaction, str | None], Awaitable[None]]) -> None:
        super().__init__(title=title, custom_id="veil-link-password")
        self.answer: discord.ui.TextInput = discord.ui.TextInput(
            label=label, custom_id=PASSWORD_INPUT, style=discord.TextStyle.short,
            min_length=None if not required else MIN_LENGTH, max_length=MAX_LENGTH,
            required=required,
            placeholder=f"{MIN_LENGTH} to {MAX_LENGTH} characters")
        self.add_item(self.answer)
        self._then = then

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self._then(as_veil(interaction), self.answer.value or None)

    # Modal's own signature, which discord.py itself declares against View's with an ignore.
    async def on_error(  # type: ignore[override]
            self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error)


class Links(commands.GroupCog, group_name="link",
            group_description="Expiring links to one of your images."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    async def cog_load(self) -> None:
        self.bot.owner_actions.add("link", owner_only(self.link_button))

    async def cog_unload(self) -> None:
        self.bot.owner_actions.remove("link")

    async def link_button(self, interaction: Interaction, record: ImageRecord,
                          viewer: Viewer) -> None:
        """The Link button: a link with the server's defaults, like /link create alone."""
        await self.create_and_reply(interaction, record.public_id, viewer)

    async def create_and_reply(self, interaction: Interaction, image: str,
                               viewer: Viewer, *, expires: float | None = None,
                               max_views: int | None = None, download: bool = False,
                               watermark: bool = False, password: str | None = None) -> None:
        new = await self.veil.links.create(image, viewer, expires_in=expires,
                                           max_views=max_views, allow_download=download,
                                           watermark=watermark, password=password)
        url = link_url(self.bot.settings.public_url, new.token)
        limit = f", {plural(max_views, 'view')}" if max_views else ""
        holder = ("Anyone holding this URL and the password" if password
                  else "Anyone holding this URL")
        await reply(interaction,
                    f"Link `{new.link.public_id}` to `{new.link.image_public_id}` "
                    f"(expires {when(new.link.expires_at)}{limit}"
                    f"{', password' if password else ''}):\n{url}\n"
                    f"{holder} can open the image until it expires or you run "
                    "/link revoke. Chat previews of it show nothing and spend no view."
                    + (" Send the password another way than the link." if password else ""),
                    # No preview here: Discord's crawler need not be handed the token at all.
                    suppress_embeds=True)

    @app_commands.command(name="create", description="Make an expiring link to one of your "
                                                     "images.")
    @app_commands.describe(image="The image id", expires="How long, like 30m, 12h, 7d "
                           "(default 24h, capped by the server)", max_views="Stop after this "
                           "many views", download="Let viewers download the file",
                           watermark="Stamp the link id visibly on the image",
                           password="Ask for a password (you type it in a form next)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def create(self, interaction: Interaction, image: str,
                     expires: Duration | None = None,
                     max_views: app_commands.Range[int, 1, 1000] | None = None,
                     download: bool = False, watermark: bool = False,
                     password: bool = False) -> None:
        viewer = await viewer_from(interaction)
        if not password:
            await self.create_and_reply(interaction, image, viewer, expires=expires,
                                        max_views=max_views, download=download,
                                        watermark=watermark)
            return
        # Refuse a wrong image id now, before asking for a password for it.
        await self.veil.images.get_owned(image, viewer)

        async def made(submitted: Interaction, answer: str | None) -> None:
            await self.create_and_reply(submitted, image, viewer, expires=expires,
                                        max_views=max_views, download=download,
                                        watermark=watermark, password=answer or "")

        await interaction.response.send_modal(PasswordModal(
            title="Password for the new link", label="Password", required=True, then=made))

    @app_commands.command(name="password",
                          description="Set, change or remove a link's password.")
    @app_commands.describe(link="The link id (from /link list)")
    @app_commands.autocomplete(link=link_autocomplete)
    async def password(self, interaction: Interaction, link: str) -> None:
        viewer = await viewer_from(interaction)

        async def changed(submitted: discord.Interaction, answer: str | None) -> None:
            updated = await self.veil.links.set_password(link, viewer, answer)
            state = ("now asks for the new password" if updated.has_password
                     else "no longer asks for a password")
            await reply(submitted, f"Link `{updated.public_id}` {state}. Everyone who had "
                                   "opened it with a password has to enter it again.")

        await interaction.response.send_modal(PasswordModal(
            title="Link password", label="New password (empty: remove it)", required=False,
            then=changed))

    @app_commands.command(name="list", description="List your links and their state.")
    async def list_links(self, interaction: Interaction) -> None:
        links = await self.veil.links.links_of(Viewer(interaction.user.id))
        now = self.veil.ctx.now()
        await reply_lines(interaction, [describe_link(link, now) for link in links],
                          empty="You have no links. Make one with /link create.")

    @app_commands.command(name="revoke", description="Turn a link off now.")
    @app_commands.describe(link="The link id (from /link list)")
    @app_commands.autocomplete(link=link_autocomplete)
    async def revoke(self, interaction: Interaction, link: str) -> None:
        revoked = await self.veil.links.revoke(link, await viewer_from(interaction))
        await reply(interaction, f"Link `{revoked.public_id}` is off; it stops working on the "
                                 "very next request.")


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Links(bot))
