"""Moderator commands under `/admin`: channels, policy, purge, takedown, reports, audit, stats.

Guarded twice: `default_permissions(manage_guild)` hides the group in Discord's interface, and
``interaction_check`` enforces moderator rights on our side for every command (the hint alone can
be changed by server admins). Nothing here can show a private image.
"""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.durations import format_duration
from bot.core.models import GuildPolicy
from cogs._options import Duration, when
from cogs._replies import reply
from cogs._viewer import NotModerator, viewer_from
from cogs._views import confirm
from cogs.gallery import removal_text

OnOff = Literal["on", "off"]
NO_PINGS = discord.AllowedMentions.none()


def describe_policy(policy: GuildPolicy) -> str:
    channels = " ".join(f"<#{c}>" for c in sorted(policy.permitted_channels)) or "none"
    mod_role = f"<@&{policy.mod_role_id}>" if policy.mod_role_id else "none (Manage Server only)"
    retention = f"{policy.retention_days} days" if policy.retention_days else "off"
    return "\n".join([
        f"Forced private mode: **{'on' if policy.force_private else 'off'}**",
        f"Links: **{'on' if policy.links_enabled else 'off'}**, longest lifetime "
        f"**{format_duration(policy.link_max_lifetime)}**",
        f"Retention: **{retention}**",
        f"Moderator role: {mod_role}",
        f"Channels where public images may be posted: {channels}",
    ])


async def report_image_autocomplete(interaction: discord.Interaction,
                                    current: str) -> list[app_commands.Choice[str]]:
    if interaction.guild_id is None:
        return []
    reports = await interaction.client.veil.moderation.reports(interaction.guild_id)
    seen = []
    for r in reports:
        if r.image_public_id.startswith(current.strip().lower()) and r.image_public_id not in seen:
            seen.append(r.image_public_id)
    return [app_commands.Choice(name=f"{i} (reported)", value=i) for i in seen[:25]]


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Admin(commands.GroupCog, group_name="admin",
            group_description="Moderator tools: policy, channels, removal, audit."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage("Moderator commands work inside a server.")
        if not (await viewer_from(interaction)).is_moderator:
            raise NotModerator("Only this server's moderators (Manage Server, or the moderator "
                               "role set with /admin mod-role) can do that.")
        return True

    async def _policy_reply(self, interaction: discord.Interaction, heading: str,
                            **changes: object) -> None:
        policy = await self.veil.moderation.update_policy(interaction.guild_id,
                                                          interaction.user.id, **changes)
        await reply(interaction, f"{heading}\n\n{describe_policy(policy)}",
                    allowed_mentions=NO_PINGS)

    # Channels ------------------------------------------------------------------------------

    @app_commands.command(name="channel-allow",
                          description="Let public images be posted in a channel.")
    @app_commands.describe(channel="The channel")
    async def channel_allow(self, interaction: discord.Interaction,
                            channel: discord.TextChannel | discord.Thread) -> None:
        await self.veil.moderation.allow_channel(interaction.guild_id, channel.id,
                                                 interaction.user.id)
        await reply(interaction, f"Public images may now be posted in {channel.mention}. "
                                 "Private images never are.")

    @app_commands.command(name="channel-deny",
                          description="Stop public images from being posted in a channel.")
    @app_commands.describe(channel="The channel")
    async def channel_deny(self, interaction: discord.Interaction,
                           channel: discord.TextChannel | discord.Thread) -> None:
        await self.veil.moderation.deny_channel(interaction.guild_id, channel.id,
                                                interaction.user.id)
        await reply(interaction, f"{channel.mention} no longer receives images; results go to "
                                 "DMs instead.")

    @app_commands.command(name="channels", description="List channels where public images may "
                                                       "be posted.")
    async def channels(self, interaction: discord.Interaction) -> None:
        policy = await self.veil.moderation.policy(interaction.guild_id)
        listed = " ".join(f"<#{c}>" for c in sorted(policy.permitted_channels))
        await reply(interaction, listed or "No channel is permitted: every image goes to DMs. "
                                           "Add one with /admin channel-allow.")

    # Policy --------------------------------------------------------------------------------

    @app_commands.command(name="policy", description="Show this server's Veil policy.")
    async def policy(self, interaction: discord.Interaction) -> None:
        policy = await self.veil.moderation.policy(interaction.guild_id)
        await reply(interaction, describe_policy(policy), allowed_mentions=NO_PINGS)

    @app_commands.command(name="force-private",
                          description="Make every image created in this server private.")
    @app_commands.describe(setting="on or off")
    async def force_private(self, interaction: discord.Interaction, setting: OnOff) -> None:
        await self._policy_reply(interaction, f"Forced private mode is now **{setting}**.",
                                 force_private=setting == "on")

    @app_commands.command(name="links", description="Allow or forbid links to images made "
                                                    "here.")
    @app_commands.describe(setting="on or off")
    async def links(self, interaction: discord.Interaction, setting: OnOff) -> None:
        await self._policy_reply(interaction, f"Links are now **{setting}**.",
                                 links_enabled=setting == "on")

    @app_commands.command(name="link-max-lifetime",
                          description="The longest a link to an image made here may live.")
    @app_commands.describe(duration="Like 12h, 7d, 30d")
    async def link_max_lifetime(self, interaction: discord.Interaction,
                                duration: Duration) -> None:
        await self._policy_reply(interaction, f"Links now live at most "
                                 f"**{format_duration(duration)}**.", link_max_lifetime=duration)

    @app_commands.command(name="retention",
                          description="Delete images made here after this many days (0: off).")
    @app_commands.describe(days="Days to keep images; 0 turns retention off")
    async def retention(self, interaction: discord.Interaction,
                        days: app_commands.Range[int, 0, 3650]) -> None:
        await self._policy_reply(interaction, f"Images made here are now kept {days} days."
                                 if days else "Retention is off.", retention_days=days or None)
        if days:
            result = await self.veil.retention.sweep()
            retracted = await self.bot.deliverer.retract_due()
            await interaction.followup.send(f"Removed {result.images} images older than that "
                                            f"and retracted {retracted} messages.", ephemeral=True)

    @app_commands.command(name="mod-role",
                          description="Give a role Veil's moderator rights (empty: clear).")
    @app_commands.describe(role="The moderator role; leave empty to clear it")
    async def mod_role(self, interaction: discord.Interaction,
                       role: discord.Role | None = None) -> None:
        await self._policy_reply(interaction, "Moderator role updated.",
                                 mod_role_id=role.id if role else None)

    # Removal -------------------------------------------------------------------------------

    @app_commands.command(name="purge", description="Delete every image a member made here.")
    @app_commands.describe(member="Whose images to delete")
    async def purge(self, interaction: discord.Interaction,
                    member: discord.Member | discord.User) -> None:
        count = len(await self.veil.images.owned(member.id, guild_id=interaction.guild_id,
                                                 limit=100_000))
        ok, _ = await confirm(interaction, f"Delete all {count} images {member.mention} made in "
                              "this server, and retract every message carrying them?",
                              confirm_label="Purge")
        if not ok:
            await interaction.followup.send("Nothing was deleted.", ephemeral=True)
            return
        removal = await self.veil.moderation.purge(await viewer_from(interaction), member.id)
        retracted = await self.bot.deliverer.retract_due()
        await interaction.followup.send(removal_text(removal, retracted), ephemeral=True)

    @app_commands.command(name="takedown", description="Delete one image made in this server, "
                                                       "without viewing it.")
    @app_commands.describe(image="The image id (reported ids are suggested)")
    @app_commands.autocomplete(image=report_image_autocomplete)
    async def takedown(self, interaction: discord.Interaction, image: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        removal = await self.veil.moderation.takedown(await viewer_from(interaction), image)
        retracted = await self.bot.deliverer.retract_due()
        await interaction.followup.send(removal_text(removal, retracted), ephemeral=True)

    # Oversight -----------------------------------------------------------------------------

    @app_commands.command(name="audit", description="Recent Veil actions in this server.")
    @app_commands.describe(member="Only actions by or about this member",
                           limit="How many entries (1-50)")
    async def audit(self, interaction: discord.Interaction,
                    member: discord.Member | discord.User | None = None,
                    limit: app_commands.Range[int, 1, 50] = 20) -> None:
        entries = await self.veil.moderation.audit(
            interaction.guild_id, member_id=member.id if member else None, limit=limit)
        if not entries:
            await reply(interaction, "The audit log is empty.")
            return
        lines = []
        for e in entries:
            actor = f"<@{e.actor_id}>" if e.actor_id else "Veil"
            target = f" → <@{e.target_user}>" if e.target_user else ""
            image = f" `{e.image_ref}`" if e.image_ref else ""
            detail = f" ({e.detail})" if e.detail else ""
            lines.append(f"{when(e.at)} {actor} **{e.action}**{image}{target}{detail}")
        await reply(interaction, "\n".join(lines)[:1900], allowed_mentions=NO_PINGS)

    @app_commands.command(name="reports", description="Open reports about images made here.")
    async def reports(self, interaction: discord.Interaction) -> None:
        reports = await self.veil.moderation.reports(interaction.guild_id)
        if not reports:
            await reply(interaction, "No open reports.")
            return
        lines = [f"#{r.id} `{r.image_public_id}` by <@{r.reporter_id}> {when(r.created_at)}: "
                 f"{r.reason}" for r in reports]
        lines.append("Moderators may /view a reported image; /admin takedown removes it.")
        await reply(interaction, "\n".join(lines)[:1900], allowed_mentions=NO_PINGS)

    @app_commands.command(name="stats", description="How Veil is used in this server.")
    async def stats(self, interaction: discord.Interaction) -> None:
        figures = await self.veil.moderation.stats(interaction.guild_id)
        await reply(interaction, "\n".join(f"{name}: **{value}**"
                                           for name, value in figures.items()))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
