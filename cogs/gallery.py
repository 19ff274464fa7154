"""Seeing and managing your images: `/gallery`, `/view`, `/visibility`, `/delete`,
`/access-log`, `/report`, and the owner's buttons on delivered images."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.acknowledgements import defer_privately, defers_privately
from bot.core.ledger import Basis
from bot.core.models import GenerationDetails, ImageRecord, Removal, ViewEntry, Viewer
from bot.generate import GENERATOR_TITLES
from bot.interactions import viewer_from
from cogs._options import owned_image_autocomplete, visible_image_autocomplete, when
from cogs._replies import plural, reply, reply_lines
from cogs._views import InvokerView, confirm, owner_buttons, owner_only
from cogs.share import check_role_share, notify_grantee, target_kind

if TYPE_CHECKING:
    from bot.client import Interaction

GALLERY_PAGE = 10  # one embed and one thumbnail per image; Discord allows 10 per message
ACCESS_LOG_ENTRIES = 100  # the newest views; /access-log shows as many as fit in one message
CONFIRM_WAIT_S = 60.0


def removal_text(removal: Removal, still_pending: int) -> str:
    """What a deletion did. ``still_pending`` counts messages Discord did not let us delete yet
    (they are retried in the background), so the text never claims more than happened."""
    images = len(removal.image_ids)
    it = "it" if images == 1 else "them"
    gone = ("the file, its key, its links and shares are gone" if images == 1
            else "their files, keys, links and shares are gone")
    retracted = removal.retractions_queued - still_pending
    text = f"Deleted {plural(images, 'image')}: {gone}"
    if retracted or not still_pending:
        text += (f", and {plural(retracted, 'message')} carrying {it} "
                 f"{'was' if retracted == 1 else 'were'} retracted")
    text += "."
    if still_pending:
        text += (f" {plural(still_pending, 'message')} carrying {it} "
                 f"{'is' if still_pending == 1 else 'are'} not retracted yet: Discord refused for "
                 "now, and I keep trying.")
    if removal.ephemeral_copies:
        copies = plural(removal.ephemeral_copies, "ephemeral copy", "ephemeral copies")
        text += (f" {copies} cannot be retracted; Discord removes those when the recipient's "
                 "app reloads.")
    return text


def describe_view(entry: ViewEntry) -> str:
    who = (f"<@{entry.viewer_id}>" if entry.viewer_id else
           f"someone with link `{entry.link_id}`" if entry.link_id else "someone")
    agent = f" ({entry.agent})" if entry.agent else ""
    through = {"grant": "a share", "public": "public visibility", "link": "a link",
               "report": "a report to moderators",
               "gallery": "a thumbnail in their gallery"}.get(entry.via, entry.via)
    return f"`{entry.image_public_id}` · {who}{agent} · through {through} · {when(entry.at)}"


async def retract_and_describe(bot, removal: Removal) -> str:
    """Retract at once what this removal queued (nobody else's), then say what it did."""
    drained = await bot.retract_now(removal.retraction_ids)
    return removal_text(removal, drained.waiting + drained.stuck)


class Gallery(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil
        self.confirm_wait_s = CONFIRM_WAIT_S

    async def cog_load(self) -> None:
        actions = self.bot.owner_actions
        actions.add("share", owner_only(self.share_button))
        actions.add("delete", owner_only(self.delete_button))
        actions.add("details", owner_only(self.details_button))

    async def cog_unload(self) -> None:
        for action in ("share", "delete", "details"):
            self.bot.owner_actions.remove(action)

    @defers_privately
    @app_commands.command(name="gallery",
                          description="Your images and those shared with you, newest first.")
    @app_commands.describe(page="Page number (10 images a page)")
    async def gallery(self, interaction: Interaction,
                      page: app_commands.Range[int, 1, 1000] = 1) -> None:
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        result = await self.veil.images.gallery_thumbnails(viewer, page, per_page=GALLERY_PAGE)
        if not result.items:
            text = ("Nothing here yet. Make an image with /imagine or /upload." if page == 1
                    else f"There is no page {page}.")
            await interaction.followup.send(text, ephemeral=True)
            return
        embeds, files = [], []
        for item in result.items:
            thumb = item.thumbnail
            files.append(discord.File(io.BytesIO(thumb.data), filename=thumb.filename))
            owner = "yours" if item.mine else f"shared by <@{item.record.owner_id}>"
            embed = discord.Embed(title=item.record.public_id,
                                  description=f"{item.record.visibility} · {owner} · "
                                              f"{when(item.record.created_at)}")
            embed.set_thumbnail(url=f"attachment://{thumb.filename}")
            embeds.append(embed)
        more = f" More on page {page + 1}." if result.has_more else ""
        message = await interaction.followup.send(
            f"Page {page}. Use /view with an id to get the full image.{more}", embeds=embeds,
            files=files, ephemeral=True, wait=True)
        for item in result.items:
            await self.veil.ledger.record(
                item.record, kind="ephemeral",
                channel_id=message.channel.id if message.channel else 0,
                message_id=message.id, recipient_id=viewer.user_id, basis=item.basis,
                guild_id=interaction.guild_id)

    @defers_privately
    @app_commands.command(name="view", description="Get one image you may see.")
    @app_commands.describe(image="The image id")
    @app_commands.autocomplete(image=visible_image_autocomplete)
    async def view(self, interaction: Interaction, image: str) -> None:
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        content, decision = await self.veil.images.open(image, viewer)
        mine = decision.via == "owner"
        record = content.record
        caption = f"Image `{record.public_id}` · {record.visibility}"
        if not mine:
            caption += {"grant": " · shared with you by", "report": " · reported, by"}.get(
                decision.via, " · by") + f" <@{record.owner_id}>"
        delivered = await self.bot.deliverer.deliver(
            interaction, [content], caption=caption, basis=Basis.of(decision),
            view_factory=owner_buttons if mine else None)
        await interaction.followup.send(delivered.note, ephemeral=True)

    @defers_privately
    @app_commands.command(name="visibility", description="Make one of your images public or "
                                                         "private.")
    @app_commands.describe(image="The image id", setting="public or private")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def visibility(self, interaction: Interaction, image: str,
                         setting: Literal["public", "private"]) -> None:
        # Answer Discord at once: the retractions below may take longer than its 3 seconds.
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        record, queued = await self.veil.images.set_visibility(image, viewer, setting)
        text = f"`{record.public_id}` is now **{setting}**."
        if setting == "public" and record.guild_id is None:
            # Made in a DM, a group DM or a server that never installed Veil: public has no
            # server to be public in, so it still reaches only its owner and their shares.
            text += (" It was made outside any server that installed Veil, so it appears in no "
                     "channel; share it or make a /link to show it.")
        elif setting == "public":
            text += " It may appear in channels its server's moderators permitted."
        if queued:
            drained = await self.bot.retract_now(queued)
            if drained.done:
                text += (f" Deleted {plural(drained.done, 'copy', 'copies')} of it sent while "
                         "it was public.")
            if drained.waiting:
                text += (f" {plural(drained.waiting, 'more copy', 'more copies')} will go as "
                         "soon as Discord lets me.")
            if drained.stuck:
                text += (f" {plural(drained.stuck, 'copy', 'copies')} I cannot delete "
                         "(see /privacy).")
        await reply(interaction, text)

    @app_commands.command(name="delete",
                          description="Delete one of your images for good, everywhere.")
    @app_commands.describe(image="The image id")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def delete(self, interaction: Interaction, image: str) -> None:
        await self.confirm_and_delete(interaction, image)

    async def confirm_and_delete(self, interaction: Interaction, image: str) -> None:
        viewer = await viewer_from(interaction)
        record = await self.veil.images.get_owned(image, viewer)
        ok, view = await confirm(interaction, f"Delete `{record.public_id}` for good? Its links "
                                 "stop working and every message I posted with it is deleted.",
                                 wait_s=self.confirm_wait_s)
        if not ok:
            if view.value is False:  # on a timeout the prompt itself already says so
                await interaction.followup.send("Kept it; nothing was deleted.", ephemeral=True)
            return
        removal = await self.veil.images.delete(record.public_id, viewer)
        await interaction.followup.send(await retract_and_describe(self.bot, removal),
                                        ephemeral=True)

    @app_commands.command(name="access-log",
                          description="Who viewed your images, when, and through what.")
    @app_commands.describe(image="Only this image (optional)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def access_log(self, interaction: Interaction,
                         image: str | None = None) -> None:
        viewer = await viewer_from(interaction)
        entries = await self.veil.images.view_log(viewer, image, limit=ACCESS_LOG_ENTRIES)
        links = await self.veil.links.links_of(viewer, image)
        # Counts only: who tried, and from where, is never kept.
        failures = [f"`{link.public_id}` {plural(link.password_failures, 'time')}"
                    for link in links if link.password_failures]
        footer = ("Wrong passwords were tried on links " + ", ".join(failures) + "."
                  if failures else "")
        await reply_lines(interaction, [describe_view(e) for e in entries],
                          empty="Nobody else has viewed your images yet."
                          + (f"\n{footer}" if footer else ""), footer=footer)

    @app_commands.command(name="report",
                          description="Report an image shared with you to this server's "
                                      "moderators.")
    @app_commands.describe(image="The image id", reason="What is wrong with it")
    @app_commands.autocomplete(image=visible_image_autocomplete)
    async def report(self, interaction: Interaction, image: str,
                     reason: app_commands.Range[str, 1, 500]) -> None:
        viewer = await viewer_from(interaction)
        filed = await self.veil.moderation.report(viewer, image, reason)
        await reply(interaction, f"Reported `{filed.image_public_id}` (report #{filed.id}). The "
                                 "moderators of the server it came from can now review that one "
                                 "image.")

    # The owner's buttons on delivered images -------------------------------------------------

    async def share_button(self, interaction: Interaction, record: ImageRecord,
                           viewer: Viewer) -> None:
        await interaction.response.send_message(
            f"Who should see `{record.public_id}`?",
            view=SharePicker(self, record.public_id, viewer.user_id), ephemeral=True)

    async def delete_button(self, interaction: Interaction, record: ImageRecord,
                            viewer: Viewer) -> None:
        await self.confirm_and_delete(interaction, record.public_id)

    async def details_button(self, interaction: Interaction, record: ImageRecord,
                             viewer: Viewer) -> None:
        details = await self.veil.images.details(record.public_id, viewer)
        # Ephemeral: only the owner who clicked sees it, wherever the button was.
        await interaction.response.send_message(
            embed=details_embed(details), ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none())


def details_embed(details: GenerationDetails) -> discord.Embed:
    """The owner's own details of a generated image: the prompt, seed, size and generator."""
    embed = discord.Embed(title=f"Details of `{details.image_public_id}`",
                          description=_quoted(details.prompt))
    params = details.params
    if params is None:
        embed.set_footer(text="Made before Veil kept seeds: only the prompt is known.")
        return embed
    seed = str(params.seed)
    if params.variation_seed is not None:
        seed += (f" · variation seed {params.variation_seed} at strength "
                 f"{params.variation_strength:g}")
    embed.add_field(name="Seed", value=seed, inline=False)
    embed.add_field(name="Size", value=f"{params.width}×{params.height}")
    embed.add_field(name="Generator", value=GENERATOR_TITLES.get(params.generator,
                                                                   params.generator))
    embed.set_footer(text="Only you can see this. Re-roll: same prompt, a new seed. "
                          "Variations: this seed, small changes.")
    return embed


def _quoted(prompt: str) -> str:
    """The prompt shown as text (never as mentions or markdown), within an embed's limit."""
    shown = discord.utils.escape_mentions(discord.utils.escape_markdown(prompt))
    return shown if len(shown) <= 4000 else shown[:3999] + "…"


class SharePicker(InvokerView):
    """A user/role picker shown by the Share button, to the image's owner only."""

    def __init__(self, cog: Gallery, image_id: str, owner_id: int) -> None:
        super().__init__(owner_id, timeout=120)
        self.cog = cog
        self.image_id = image_id

    @discord.ui.select(cls=discord.ui.MentionableSelect, placeholder="Pick people or roles",
                       min_values=1, max_values=10)
    async def pick(self, interaction: Interaction,
                   select: discord.ui.MentionableSelect) -> None:
        if any(getattr(target, "bot", False) for target in select.values):
            await reply(interaction, "Bots cannot be shared with; pick people or roles.")
            return
        check_role_share(interaction, select.values)
        viewer = await viewer_from(interaction)
        people = []
        for target in select.values:
            grant = await self.cog.veil.sharing.grant(viewer, target_kind(target), target.id,
                                                      image_public_id=self.image_id)
            if isinstance(target, discord.User | discord.Member):
                people.append((target, grant))
        names = ", ".join(target.mention for target in select.values)
        await interaction.response.edit_message(
            content=f"Shared `{self.image_id}` with {names}.", view=None,
            allowed_mentions=discord.AllowedMentions.none())
        # After the answer, so a slow DM cannot make the picker's interaction fail.
        for person, grant in people:
            await notify_grantee(person, grant)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Gallery(bot))
