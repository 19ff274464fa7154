"""Moderator commands under `/admin`: channels, policy, purge, takedown, reports, audit, stats.

Guarded twice: `default_permissions(manage_guild)` hides the group in Discord's interface, and
``interaction_check`` enforces moderator rights on our side for every command (the hint alone can
be changed by server admins). Nothing here can show a private image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.durations import format_duration
from bot.core.errors import InvalidInput
from bot.core.models import AuditEntry, GuildPolicy, Report
from bot.interactions import as_veil, venue_from, viewer_from
from cogs._options import AnyChannel, Duration, TextChannel, when
from cogs._replies import plural, reply, reply_lines
from cogs._viewer import ensure_moderator
from cogs._views import confirm
from cogs.gallery import retract_and_describe

if TYPE_CHECKING:
    from bot.client import Interaction

OnOff = Literal["on", "off"]
NO_PINGS = discord.AllowedMentions.none()


def posting_problem(channel: AnyChannel) -> str | None:
    """Why Veil could not post an image in ``channel`` right now, or None when it can (or when
    discord.py holds no such channel to tell)."""
    if not isinstance(channel, discord.TextChannel | discord.Thread):
        return None
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


def describe_audit_entry(entry: AuditEntry) -> str:
    actor = f"<@{entry.actor_id}>" if entry.actor_id else "Veil"
    target = f" → <@{entry.target_user}>" if entry.target_user else ""
    image = f" `{entry.image_ref}`" if entry.image_ref else ""
    detail = f" ({entry.detail})" if entry.detail else ""
    return f"{when(entry.at)} {actor} **{entry.action}**{image}{target}{detail}"


def describe_report(report: Report) -> str:
    return (f"#{report.id} `{report.image_public_id}` by <@{report.reporter_id}> "
            f"{when(report.created_at)}: {report.reason}")


async def report_image_autocomplete(interaction: Interaction,
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


# Server installs only, in servers only: where Veil is just on someone's account the server has
# no Veil policy for anyone to manage. Discord hides the group there; interaction_check refuses
# it anyway (a stale registration, or a client that shows it regardless).
@app_commands.guild_only()
@app_commands.allowed_contexts(guilds=True, dms=False, private_channels=False)
@app_commands.allowed_installs(guilds=True, users=False)
@app_commands.default_permissions(manage_guild=True)
class Admin(commands.GroupCog, group_name="admin",
            group_description="Moderator tools: policy, channels, removal, audit."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return await ensure_moderator(as_veil(interaction))

    async def _policy_reply(self, interaction: Interaction, heading: str,
                            **changes: object) -> None:
        policy = await self.veil.moderation.update_policy(interaction.guild_id,
                                                          interaction.user.id, **changes)
        await reply(interaction, f"{heading}\n\n{describe_policy(policy)}",
                    allowed_mentions=NO_PINGS)

    # Channels ------------------------------------------------------------------------------

    @app_commands.command(name="channel-allow",
                          description="Let public images be posted in a channel.")
    @app_commands.describe(channel="The channel")
    async def channel_allow(self, interaction: Interaction,
                            channel: TextChannel) -> None:
        await self.veil.moderation.allow_channel(interaction.guild_id, channel.id,
                                                 interaction.user.id)
        text = f"Public images may now be posted in {channel.mention}. Private images never are."
        # Installed with commands only, Veil's bot is not in the server: it cannot post anywhere
        # here (and discord.py holds no channel to check permissions on).
        problem = posting_problem(channel) if venue_from(interaction).bot_present else (
            "Note: my bot is not a member of this server, so I cannot post here at all; until "
            "a server admin adds it with the install link, images asked here go to DMs.")
        await reply(interaction, f"{text}\n{problem}" if problem else text)

    @app_commands.command(name="channel-deny",
                          description="Stop public images from being posted in a channel.")
    @app_commands.describe(channel="The channel")
    async def channel_deny(self, interaction: Interaction,
                           channel: TextChannel) -> None:
        await self.veil.moderation.deny_channel(interaction.guild_id, channel.id,
                                                interaction.user.id)
        await reply(interaction, f"{channel.mention} no longer receives images; results go to "
                                 "DMs instead.")

    @app_commands.command(name="channels", description="List channels where public images may "
                                                       "be posted.")
    async def channels(self, interaction: Interaction) -> None:
        policy = await self.veil.moderation.policy(interaction.guild_id)
        listed = " ".join(f"<#{c}>" for c in sorted(policy.permitted_channels))
        await reply(interaction, listed or "No channel is permitted: every image goes to DMs. "
                                           "Add one with /admin channel-allow.")

    # Policy --------------------------------------------------------------------------------

    @app_commands.command(name="policy", description="Show this server's Veil policy.")
    async def policy(self, interaction: Interaction) -> None:
        policy = await self.veil.moderation.policy(interaction.guild_id)
        await reply(interaction, describe_policy(policy), allowed_mentions=NO_PINGS)

    @app_commands.command(name="force-private",
                          description="Make every image created in this server private.")
    @app_commands.describe(setting="on or off")
    async def force_private(self, interaction: Interaction, setting: OnOff) -> None:
        await self._policy_reply(interaction, f"Forced private mode is now **{setting}**.",
                                 force_private=setting == "on")

    @app_commands.command(name="links", description="Allow or forbid links to images made "
                                                    "here.")
    @app_commands.describe(setting="on or off")
    async def links(self, interaction: Interaction, setting: OnOff) -> None:
        heading = ("Links are now **on**." if setting == "on" else
                   "Links are now **off**: existing links to images made here stop working too.")
        await self._policy_reply(interaction, heading, links_enabled=setting == "on")

    @app_commands.command(name="link-max-lifetime",
                          description="The longest a link to an image made here may live.")
    @app_commands.describe(duration="Like 12h, 7d, 30d")
    async def link_max_lifetime(self, interaction: Interaction,
                                duration: Duration) -> None:
        await self._policy_reply(interaction, f"Links now live at most "
                                 f"**{format_duration(duration)}**; existing links that would "
                                 "live longer end sooner.", link_max_lifetime=duration)

    @app_commands.command(name="retention",
                          description="Delete images made here after this many days (0: off).")
    @app_commands.describe(days="Days to keep images; 0 turns retention off")
    async def retention(self, interaction: Interaction,
                        days: app_commands.Range[int, 0, 3650]) -> None:
        await self._policy_reply(interaction, f"Images made here are now kept {days} days."
                                 if days else "Retention is off.", retention_days=days or None)
        if days:
            before = (await self.veil.moderation.stats(interaction.guild_id))["images"]
            result = await self.veil.retention.sweep()
            retracted = (await self.bot.retract_now(result.retraction_ids)).done
            after = (await self.veil.moderation.stats(interaction.guild_id))["images"]
            removed = max(0, before - after)
            await interaction.followup.send(
                f"Removed {plural(removed, 'image')} made here more than {days} days ago, and "
                f"retracted {plural(retracted, 'message')} carrying "
                f"{'it' if removed == 1 else 'them'}.", ephemeral=True)

    @app_commands.command(name="mod-role",
                          description="Give a role Veil's moderator rights (empty: clear).")
    @app_commands.describe(role="The moderator role; leave empty to clear it")
    async def mod_role(self, interaction: Interaction,
                       role: discord.Role | None = None) -> None:
        if role is not None and role.is_default():
            raise InvalidInput("@everyone cannot be the moderator role: it would make every "
                               "member a moderator. Pick or create a role for moderators.")
        await self._policy_reply(interaction, "Moderator role updated.",
                                 mod_role_id=role.id if role else None)

    # Removal -------------------------------------------------------------------------------

    @app_commands.command(name="purge", description="Delete every image a member made here.")
    @app_commands.describe(member="Whose images to delete")
    async def purge(self, interaction: Interaction,
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
        await interaction.followup.send(await retract_and_describe(self.bot, removal),
                                        ephemeral=True)

    @app_commands.command(name="takedown", description="Delete one image made in this server, "
                                                       "without viewing it.")
    @app_commands.describe(image="The image id (reported ids are suggested)")
    @app_commands.autocomplete(image=report_image_autocomplete)
    async def takedown(self, interaction: Interaction, image: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        removal = await self.veil.moderation.takedown(await viewer_from(interaction), image)
        await interaction.followup.send(await retract_and_describe(self.bot, removal),
                                        ephemeral=True)

    # Oversight -----------------------------------------------------------------------------

    @app_commands.command(name="audit", description="Recent Veil actions in this server.")
    @app_commands.describe(member="Only actions by or about this member",
                           limit="How many entries (1-50)")
    async def audit(self, interaction: Interaction,
                    member: discord.Member | discord.User | None = None,
                    limit: app_commands.Range[int, 1, 50] = 20) -> None:
        entries = await self.veil.moderation.audit(
            interaction.guild_id, member_id=member.id if member else None, limit=limit)
        await reply_lines(interaction, [describe_audit_entry(e) for e in entries],
                          empty="The audit log is empty.")

    @app_commands.command(name="reports", description="Open reports about images made here.")
    async def reports(self, interaction: Interaction) -> None:
        reports = await self.veil.moderation.reports(interaction.guild_id)
        await reply_lines(interaction, [describe_report(r) for r in reports],
                          empty="No open reports.",
                          footer="Moderators may /view a reported image; /admin takedown "
                                 "removes it.")

    @app_commands.command(name="report-close",
                          description="Close a report; its image is no longer open to moderators.")
    @app_commands.describe(report="The report number (from /admin reports)")
    async def report_close(self, interaction: Interaction,
                           report: app_commands.Range[int, 1]) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        queued = await self.veil.moderation.close_report(await viewer_from(interaction), report)
        text = (f"Closed report #{report}. Its image is private to its owner and their shares "
                "again.")
        if queued:
            drained = await self.bot.retract_now(queued)
            text += (f" Retracted {plural(drained.done, 'copy', 'copies')} moderators had "
                     "received through it.")
            if drained.waiting or drained.stuck:
                text += (f" {plural(drained.waiting + drained.stuck, 'more copy', 'more copies')}"
                         " will go as soon as Discord lets me.")
        await reply(interaction, text)

    @app_commands.command(name="stats", description="How Veil is used in this server.")
    async def stats(self, interaction: Interaction) -> None:
        figures = await self.veil.moderation.stats(interaction.guild_id)
        await reply(interaction, "\n".join(f"{name}: **{value}**"
                                           for name, value in figures.items()))


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Admin(bot))
