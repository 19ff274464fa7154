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
from bot.core.errors import InvalidInput
from bot.core.models import GuildPolicy, Removal
from cogs._options import Duration, when
from cogs._replies import reply
from cogs._viewer import ensure_moderator, viewer_from
from cogs._views import confirm
from cogs.gallery import removal_text

OnOff = Literal["on", "off"]
NO_PINGS = discord.AllowedMentions.none()
MAX_REPLY_CHARS = 1900


def fit_lines(lines: list[str], limit: int = MAX_REPLY_CHARS) -> str:
    """As many whole lines as fit in one message (never a mention or timestamp cut in half),
    and how many did not."""
    kept: list[str] = []
    size = 0
    for index, line in enumerate(lines):
        rest = len(lines) - index - 1
        reserve = len(f"\n… and {rest} more") if rest else 0
        if size + len(line) + 1 + reserve > limit:
            return "\n".join(kept) + f"\n… and {len(lines) - index} more"
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


def removal_report(removal: Removal, retracted: int) -> str:
    """``removal_text``, plus what is still waiting because Discord refused it for now."""
    text = removal_text(removal, retracted)
    waiting = removal.retractions_queued - retracted
    if waiting > 0:
        text += (f" {waiting} more will be retracted as soon as Discord lets me; "
                 "I keep trying.")
    return text


def posting_problem(channel: discord.abc.GuildChannel | discord.Thread) -> str | None:
    """Why Veil could not post an image in ``channel`` right now, or None when it can."""
    me = channel.guild.me
    if me is None:
        return None
    perms = channel.permissions_for(me)
    send = perms.send_messages_in_threads if isinstance(channel, discord.Thread) \
        else perms.send_messages
    missing = [name for name, ok in (("View Channel", perms.view_channel),
                                     ("Send Messages", send),
                                     ("Attach Files", perms.attach_files)) if not ok]
    if not missing:
        return None
    return (f"Note: I cannot post images in {channel.mention} yet (missing {', '.join(missing)}); "
            "until my role gets that, images asked there go to DMs.")


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
    # Checks do not run for autocomplete, and reported ids are for moderators' eyes only.
    if interaction.guild_id is None or not (await viewer_from(interaction)).is_moderator:
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
        return await ensure_moderator(interaction)

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
        text = f"Public images may now be posted in {channel.mention}. Private images never are."
        problem = posting_problem(channel)
        await reply(interaction, f"{text}\n{problem}" if problem else text)

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
        heading = ("Links are now **on**." if setting == "on" else
                   "Links are now **off**: existing links to images made here stop working too.")
        await self._policy_reply(interaction, heading, links_enabled=setting == "on")

    @app_commands.command(name="link-max-lifetime",
                          description="The longest a link to an image made here may live.")
    @app_commands.describe(duration="Like 12h, 7d, 30d")
    async def link_max_lifetime(self, interaction: discord.Interaction,
                                duration: Duration) -> None:
        await self._policy_reply(interaction, f"Links now live at most "
                                 f"**{format_duration(duration)}**; existing links that would "
                                 "live longer end sooner.", link_max_lifetime=duration)

    @app_commands.command(name="retention",
                          description="Delete images made here after this many days (0: off).")
    @app_commands.describe(days="Days to keep images; 0 turns retention off")
    async def retention(self, interaction: discord.Interaction,
                        days: app_commands.Range[int, 0, 3650]) -> None:
        await self._policy_reply(interaction, f"Images made here are now kept {days} days."
                                 if days else "Retention is off.", retention_days=days or None)
        if days:
            before = (await self.veil.moderation.stats(interaction.guild_id))["images"]
            await self.veil.retention.sweep()
            retracted = await self.bot.retract_now()
            after = (await self.veil.moderation.stats(interaction.guild_id))["images"]
            removed = max(0, before - after)
            await interaction.followup.send(
                f"Removed {removed} image{'s' if removed != 1 else ''} made here more than "
                f"{days} days ago, and retracted {retracted} "
                f"message{'s' if retracted != 1 else ''} carrying them.", ephemeral=True)

    @app_commands.command(name="mod-role",
                          description="Give a role Veil's moderator rights (empty: clear).")
    @app_commands.describe(role="The moderator role; leave empty to clear it")
    async def mod_role(self, interaction: discord.Interaction,
                       role: discord.Role | None = None) -> None:
        if role is not None and role.is_default():
            raise InvalidInput("@everyone cannot be the moderator role: it would make every "
                               "member a moderator. Pick or create a role for moderators.")
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
        retracted = await self.bot.retract_now()
        await interaction.followup.send(removal_report(removal, retracted), ephemeral=True)

    @app_commands.command(name="takedown", description="Delete one image made in this server, "
                                                       "without viewing it.")
    @app_commands.describe(image="The image id (reported ids are suggested)")
    @app_commands.autocomplete(image=report_image_autocomplete)
    async def takedown(self, interaction: discord.Interaction, image: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        removal = await self.veil.moderation.takedown(await viewer_from(interaction), image)
        retracted = await self.bot.retract_now()
        await interaction.followup.send(removal_report(removal, retracted), ephemeral=True)

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
        await reply(interaction, fit_lines(lines), allowed_mentions=NO_PINGS)

    @app_commands.command(name="reports", description="Open reports about images made here.")
    async def reports(self, interaction: discord.Interaction) -> None:
        reports = await self.veil.moderation.reports(interaction.guild_id)
        if not reports:
            await reply(interaction, "No open reports.")
            return
        lines = [f"#{r.id} `{r.image_public_id}` by <@{r.reporter_id}> {when(r.created_at)}: "
                 f"{r.reason}" for r in reports]
        footer = "Moderators may /view a reported image; /admin takedown removes it."
        body = fit_lines(lines, MAX_REPLY_CHARS - len(footer) - 1)
        await reply(interaction, f"{body}\n{footer}", allowed_mentions=NO_PINGS)

    @app_commands.command(name="stats", description="How Veil is used in this server.")
    async def stats(self, interaction: discord.Interaction) -> None:
        figures = await self.veil.moderation.stats(interaction.guild_id)
        await reply(interaction, "\n".join(f"{name}: **{value}**"
                                           for name, value in figures.items()))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
