"""Your privacy: `/private on|off|status`, `/privacy`, `/export`, `/forget-me`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.acknowledgements import defer_privately, defers_privately
from bot.core.durations import format_duration
from bot.core.venue import protection_notes
from bot.delivery import NO_MUTUAL_SERVER
from bot.generate import describe_generator
from bot.interactions import venue_from
from bot.web import export_url
from cogs._options import when
from cogs._replies import fit_lines, plural, reply
from cogs._views import confirm

if TYPE_CHECKING:
    from bot.client import Interaction

STUCK_SHOWN = 10  # of each kind in /privacy, so the whole answer fits in one message


class Private(commands.GroupCog, group_name="private",
              group_description="Private mode: everything you create from now on is private."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="on", description="Make everything you create from now on private.")
    async def private_on(self, interaction: Interaction) -> None:
        await self.veil.privacy.set_private_mode(interaction.user.id, True)
        await reply(interaction, "Private mode is **on**: new images reach only you and the "
                                 "people you share them with.")

    @app_commands.command(name="off",
                          description="Let new images be public where moderators allow it.")
    async def private_off(self, interaction: Interaction) -> None:
        await self.veil.privacy.set_private_mode(interaction.user.id, False)
        venue = venue_from(interaction)
        status = await self.veil.privacy.status(interaction.user.id, venue.policy_guild_id)
        text = ("Private mode is **off**: new images are public, and appear in channels that "
                "the moderators of a server with Veil permitted.")
        if venue.kind == "server" and venue.policy_guild_id is None:
            text += (" This server has not installed Veil: images made here stay in your DMs "
                     "and reach only the people you share them with.")
        if status.forced_by_server:
            text += " This server forces private mode, so images made here stay private."
        await reply(interaction, text)

    @app_commands.command(name="status", description="Show whether private mode is on.")
    async def private_status(self, interaction: Interaction) -> None:
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
    async def privacy(self, interaction: Interaction) -> None:
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
        lines += await self._copies_beyond_reach(interaction.user.id)
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
        await reply(interaction, fit_lines(lines),
                    allowed_mentions=discord.AllowedMentions.none())

    async def _copies_beyond_reach(self, owner_id: int) -> list[str]:
        """Copies of the owner's images Veil could not delete, and why: never dropped silently
        (guarantee 5 says what a bot can do; the owner must know where it could not)."""
        stuck = await self.veil.ledger.stuck(owner_id, limit=STUCK_SHOWN)
        lines: list[str] = []
        if stuck:
            lines += ["", "**Copies I could not retract** (I try again once a day)"]
            lines += [f"- `{c.image_ref or '?'}` in <#{c.channel_id}>"
                      + (f" (sent to <@{c.recipient_id}>)" if c.recipient_id else "")
                      + f": {c.reason}" for c in stuck]
        fixed = await self.veil.ledger.unretractable_copies(owner_id, limit=STUCK_SHOWN)
        if fixed:
            lines += ["", "**Copies no bot can retract**"]
            lines += [f"- `{c.image_ref}`" + (f" to <@{c.recipient_id}>" if c.recipient_id
                                               else "") + f": {c.reason}" for c in fixed]
        return lines

    @defers_privately
    @app_commands.command(name="export",
                          description="Get your images and records as a one-time download.")
    async def export(self, interaction: Interaction) -> None:
        await defer_privately(interaction)
        job = await self.veil.exports.start(interaction.user.id)
        await interaction.followup.send(
            "Preparing your export. I will DM you a one-time download link when it is ready.",
            ephemeral=True)
        ready = await self.veil.exports.prepare(job)
        url = export_url(self.bot.settings.public_url, ready.token)
        text = (f"Your Veil export is ready: {plural(ready.images, 'image')} and your records, "
                f"{_size(ready.byte_size)}.\n{url}\n"
                f"The link works **once**, until {when(ready.expires_at)}; after the download "
                "or by then, the file is deleted from Veil. Deleting any of your images before "
                "the download deletes the export too. Do not pass this link on.")
        try:
            # No preview: Discord's crawler need not be handed the token at all.
            await interaction.user.send(text, suppress_embeds=True)
        except discord.HTTPException as exc:
            # The export is ready and spent the cooldown: the link must reach its owner anyway.
            if isinstance(exc, discord.Forbidden):
                why = ("Discord does not let me DM you (we share no server)"
                       if exc.code == NO_MUTUAL_SERVER else "Your DMs are closed")
            else:
                why = "Discord would not let me DM you just now"
            await interaction.followup.send(
                f"{why}, so here is the link (only you can see this). " + text,
                ephemeral=True, suppress_embeds=True)
            return
        await interaction.followup.send("Sent your export's download link to your DMs.",
                                        ephemeral=True)

    @app_commands.command(name="forget-me",
                          description="Delete everything Veil holds about you, key included.")
    async def forget_me(self, interaction: Interaction) -> None:
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
        drained = await self.bot.retract_now(removal.retraction_ids)
        text = (f"Done. Deleted {plural(len(removal.image_ids), 'image')} and retracted "
                f"{plural(drained.done, 'message')}. Veil no longer holds anything about you.")
        waiting = drained.waiting + drained.stuck
        if waiting > 0:
            text += (f" {plural(waiting, 'more message')} will be retracted as soon as Discord "
                     "lets me; I keep trying.")
        if removal.ephemeral_copies:
            copies = plural(removal.ephemeral_copies, "ephemeral copy", "ephemeral copies")
            text += f" {copies} could not be retracted; they vanish when you close Discord."
        await interaction.followup.send(text, ephemeral=True)


def _size(byte_size: int) -> str:
    return f"{byte_size / 1e6:.1f} MB" if byte_size >= 100_000 else \
        f"{max(1, round(byte_size / 1e3))} kB"


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Private(bot))
    await bot.add_cog(PrivacyTools(bot))
