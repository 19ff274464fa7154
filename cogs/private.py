"""Your privacy: `/private on|off|status`, `/privacy`, `/export`, `/forget-me`."""

from __future__ import annotations

import io
import zipfile

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.durations import format_duration
from bot.core.models import DeliveryKind, ImageRecord
from bot.core.venue import protection_notes
from bot.generate import describe_generator
from cogs._replies import NO_MUTUAL_SERVER, plural, reply
from cogs._viewer import venue_from
from cogs._views import confirm

RECORDS_FILE = "veil-export.json"


class Private(commands.GroupCog, group_name="private",
              group_description="Private mode: everything you create from now on is private."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="on", description="Make everything you create from now on private.")
    async def private_on(self, interaction: discord.Interaction) -> None:
        await self.veil.privacy.set_private_mode(interaction.user.id, True)
        await reply(interaction, "Private mode is **on**: new images reach only you and the "
                                 "people you share them with.")

    @app_commands.command(name="off",
                          description="Let new images be public where moderators allow it.")
    async def private_off(self, interaction: discord.Interaction) -> None:
        await self.veil.privacy.set_private_mode(interaction.user.id, False)
        status = await self.veil.privacy.status(interaction.user.id,
                                                 venue_from(interaction).policy_guild_id)
        text = ("Private mode is **off**: new images are public, and appear in channels that "
                "this server's moderators permitted.")
        if status.forced_by_server:
            text += " This server forces private mode, so images made here stay private."
        await reply(interaction, text)

    @app_commands.command(name="status", description="Show whether private mode is on.")
    async def private_status(self, interaction: discord.Interaction) -> None:
        status = await self.veil.privacy.status(interaction.user.id,
                                                 venue_from(interaction).policy_guild_id)
        mode = "on" if status.private_mode else "off"
        text = f"Private mode is **{mode}**."
        if status.forced_by_server:
            text += " This server forces private mode for everything made here."
        await reply(interaction, text)


class PrivacyTools(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="privacy",
                          description="What Veil stores about you, and this server's policy.")
    async def privacy(self, interaction: discord.Interaction) -> None:
        venue = venue_from(interaction)
        status = await self.veil.privacy.status(interaction.user.id, venue.policy_guild_id)
        lines = [
            "**What Veil keeps about you**",
            f"- Private mode: {'on' if status.private_mode else 'off'}",
            f"- Images: {status.images} (encrypted; metadata removed before storing)",
            f"- Active shares: {status.grants} · live links: {status.live_links} · "
            f"groups: {status.groups}",
            "- A key of yours that locks your images; `/forget-me` destroys it.",
            "- Who viewed your images (`/access-log`), and ids of messages that carry them, so "
            "`/delete` can retract them.",
            "Veil never keeps original file names, and moderators cannot open your private "
            "images unless someone you shared one with reports it.",
            f"- Images are drawn by {describe_generator(self.bot.queue.generator)}.",
        ]
        notes = protection_notes(venue)
        if notes:
            lines += ["", *notes]
        if venue.policy_guild_id is not None:
            policy = await self.veil.moderation.policy(venue.policy_guild_id)
            retention = f"{policy.retention_days} days" if policy.retention_days else "none"
            lines += [
                "",
                "**This server's policy**",
                f"- Forced private mode: {'on' if policy.force_private else 'off'}",
                f"- Links: {'on' if policy.links_enabled else 'off'}, at most "
                f"{format_duration(policy.link_max_lifetime)}",
                f"- Retention: {retention}",
                f"- Channels where public images may appear: "
                f"{' '.join(f'<#{c}>' for c in sorted(policy.permitted_channels)) or 'none'}",
            ]
        await reply(interaction, "\n".join(lines))

    @app_commands.command(name="export", description="Get your images and records as a zip file.")
    async def export(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        archive, carried, note = await self._build_export(interaction.user.id,
                                                          interaction.filesize_limit)
        caption = "Your Veil export." + note
        retractable = " I remove this message if you delete any of these images." if carried \
            else ""
        try:
            message = await interaction.user.send(caption + retractable,
                                                  file=_zip_file(archive))
        except discord.Forbidden as refused:
            why = ("Discord does not let me DM you (we share no server)"
                   if refused.code == NO_MUTUAL_SERVER else "Your DMs are closed")
            message = await interaction.followup.send(
                f"{why}, so here is your export (only you can see it; an ephemeral copy "
                "cannot be removed later). " + caption,
                file=_zip_file(archive), ephemeral=True, wait=True)
            await self._record(carried, message, "ephemeral", interaction)
            return
        await self._record(carried, message, "dm", interaction)
        await interaction.followup.send("Sent your export to your DMs." + note, ephemeral=True)

    async def _build_export(self, user_id: int,
                            limit: int) -> tuple[bytes, tuple[ImageRecord, ...], str]:
        """The archive to send, the images it carries, and a note on anything left out."""
        export = await self.veil.privacy.export(user_id)
        if len(export.archive) > limit:
            note = (f" With your images it would be {len(export.archive) / 1e6:.1f} MB, over the "
                    f"{limit / 1e6:.2g} MB Discord lets me send here, so it holds your records "
                    "only; /view sends each image.")
            return records_only(export.archive), (), note
        if export.truncated:
            total = (await self.veil.privacy.status(user_id)).images
            return export.archive, export.images, (
                f" It holds your newest {len(export.images)} of {total} images; /view sends "
                "any other one.")
        return export.archive, export.images, ""

    async def _record(self, records: tuple[ImageRecord, ...], message: discord.Message,
                      kind: DeliveryKind, interaction: discord.Interaction) -> None:
        """Remember the export as a message carrying these images, so deleting any of them (or
        /forget-me) retracts it like every other copy (guarantee 5)."""
        for record in records:
            await self.veil.images.record_delivery(
                record, kind=kind, channel_id=message.channel.id, message_id=message.id,
                recipient_id=interaction.user.id, guild_id=interaction.guild_id)

    @app_commands.command(name="forget-me",
                          description="Delete everything Veil holds about you, key included.")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        status = await self.veil.privacy.status(interaction.user.id)
        ok, _ = await confirm(
            interaction,
            f"This deletes **all {status.images} of your images**, your shares, groups and links, "
            "retracts every message I posted with your images, and destroys your key. "
            "It cannot be undone.", confirm_label="Forget me")
        if not ok:
            await interaction.followup.send("Nothing was deleted.", ephemeral=True)
            return
        removal = await self.veil.privacy.forget(interaction.user.id)
        retracted = await self.bot.retract_now()
        text = (f"Done. Deleted {plural(len(removal.image_ids), 'image')} and retracted "
                f"{plural(retracted, 'message')}. Veil no longer holds anything about you.")
        waiting = removal.retractions_queued - retracted
        if waiting > 0:
            text += (f" {plural(waiting, 'more message')} will be retracted as soon as Discord "
                     "lets me; I keep trying.")
        if removal.ephemeral_copies:
            copies = plural(removal.ephemeral_copies, "ephemeral copy", "ephemeral copies")
            text += f" {copies} could not be retracted; they vanish when you close Discord."
        await interaction.followup.send(text, ephemeral=True)


def _zip_file(archive: bytes) -> discord.File:
    return discord.File(io.BytesIO(archive), filename="veil-export.zip")


def records_only(archive: bytes) -> bytes:
    """The export without its images: the records file alone, for exports too large to send."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as full, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as small:
        small.writestr(RECORDS_FILE, full.read(RECORDS_FILE))
    return out.getvalue()


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Private(bot))
    await bot.add_cog(PrivacyTools(bot))
