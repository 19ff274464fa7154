"""Sharing: `/share`, `/unshare`, `/shares`, and personal groups under `/group`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.acknowledgements import defer_privately, defers_privately
from bot.core.durations import format_duration
from bot.core.models import Grant, GranteeKind, Group
from bot.core.venue import NotInstalledHere, role_share_refusal
from bot.interactions import venue_from, viewer_from
from cogs._options import Duration, owned_image_autocomplete, when
from cogs._replies import plural, reply, reply_lines
from cogs._views import confirm

if TYPE_CHECKING:
    from bot.client import Interaction

Target = discord.Member | discord.User | discord.Role
NO_PINGS = discord.AllowedMentions.none()
MEMBERS_SHOWN = 10  # per group in /group list, so one big group cannot crowd out the rest
FORWARD_NOTE = ("Discord lets a recipient forward a message as a snapshot that no bot can "
                "delete; share only with people you trust with a copy.")


def target_kind(target: Target) -> GranteeKind:
    return "role" if isinstance(target, discord.Role) else "user"


def check_role_share(interaction: Interaction, targets) -> None:
    """Refuse sharing with a role where that role's server has not installed Veil (or outside
    any server), in words that say what to do instead."""
    if any(isinstance(t, discord.Role) for t in targets):
        refusal = role_share_refusal(venue_from(interaction))
        if refusal is not None:
            raise NotInstalledHere(refusal)


def what(image: str | None) -> str:
    return f"`{image}`" if image else "all your images"


def group_label(name: str) -> str:
    """A group name as the owner typed it, shown in bold without breaking the markdown."""
    return f"**{discord.utils.escape_markdown(name)}**"


def describe_grant(grant: Grant) -> str:
    who = {"user": f"<@{grant.grantee_id}>", "role": f"<@&{grant.grantee_id}>",
           "group": f"group {group_label(grant.group_name or '?')}"}[grant.grantee_kind]
    item = f"`{grant.image_public_id}`" if grant.image_public_id else "all images"
    until = f" until {when(grant.expires_at)}" if grant.expires_at else ""
    return f"{item} → {who}{until}"


async def notify_grantee(person: discord.abc.Messageable, grant: Grant) -> None:
    """Tell a person by DM that something was shared with them (text only: never the image,
    never a prompt)."""
    item = f"image `{grant.image_public_id}`" if grant.image_public_id else "their images"
    try:
        await person.send(f"<@{grant.owner_id}> shared {item} with you on Veil. "
                          "See it with /gallery or /view.", allowed_mentions=NO_PINGS)
    except discord.HTTPException:
        pass  # closed DMs: the share still works, they will find it in /gallery


async def retraction_text(bot, queued: Sequence[int], whom: str) -> str:
    """Retract what this command queued (and only that), and say how it went: what Discord
    refuses now is retried by the background worker; what it refuses for good is stuck, and
    the owner is told where to see it."""
    if not queued:
        return ""
    drained = await bot.retract_now(queued)
    text = (f" Retracted {plural(drained.done, 'message')} I had sent {whom}."
            if drained.done else "")
    if drained.waiting:
        text += (f" {plural(drained.waiting, 'message')} I had sent {whom} "
                 f"{'is' if drained.waiting == 1 else 'are'} not deleted yet: Discord refused "
                 "for now, and I keep trying.")
    if drained.stuck:
        text += (f" {plural(drained.stuck, 'message')} I had sent {whom} "
                 f"{'is' if drained.stuck == 1 else 'are'} beyond my reach (see /privacy).")
    return text


async def unshare_reply(bot, interaction, removed: int, queued: Sequence[int], who: str,
                        image: str | None, covered: bool) -> None:
    everything = (f" {who} can still see `{image}` because you share all your images with "
                  f"them; /unshare without an image stops that.") if covered else ""
    if not removed:
        text = (everything.strip() if covered
                else f"You were not sharing {what(image)} with {who}.")
        await reply(interaction, text, allowed_mentions=NO_PINGS)
        return
    text = f"Stopped sharing {what(image)} with {who}."
    text += await retraction_text(bot, queued, "them") + everything
    await reply(interaction, text, allowed_mentions=NO_PINGS)


class Share(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @defers_privately
    @app_commands.command(name="share", description="Share one image, or all of yours, with a "
                                                    "person or a role.")
    @app_commands.describe(target="A person or a role", image="One image (leave empty for all "
                           "your images)", expires="How long, like 30m, 12h or 7d (default: "
                           "until you unshare)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def share(self, interaction: Interaction, target: Target,
                    image: str | None = None, expires: Duration | None = None) -> None:
        # Answer Discord at once: the grant may wait for the write lock behind other work.
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        if isinstance(target, discord.User | discord.Member) and target.bot:
            await reply(interaction, "Bots cannot be shared with.")
            return
        check_role_share(interaction, [target])
        grant = await self.veil.sharing.grant(viewer, target_kind(target), target.id,
                                              image_public_id=image, expires_in=expires)
        until = f" for {format_duration(expires)}" if expires else ""
        await reply(interaction, f"Shared {what(grant.image_public_id)} with {target.mention}"
                                 f"{until}. Undo with /unshare: I then delete every copy I sent "
                                 f"them. {FORWARD_NOTE}", allowed_mentions=NO_PINGS)
        if expires:
            self.bot.wake_grant_expiry()
        if isinstance(target, discord.User | discord.Member):
            await notify_grantee(target, grant)

    @defers_privately
    @app_commands.command(name="unshare", description="Stop sharing with a person or a role.")
    @app_commands.describe(target="A person or a role",
                           image="One image (leave empty to stop sharing everything)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def unshare(self, interaction: Interaction, target: Target,
                      image: str | None = None) -> None:
        # Answer Discord at once: the retractions below may take longer than its 3 seconds.
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        kind = target_kind(target)
        removed, queued = await self.veil.sharing.revoke(viewer, kind, target.id,
                                                         image_public_id=image)
        covered = await self.veil.sharing.still_covered(viewer.user_id, kind, target.id, image)
        await unshare_reply(self.bot, interaction, removed, queued, target.mention, image,
                            covered)

    @app_commands.command(name="shares", description="List what you are sharing, and with whom.")
    async def shares(self, interaction: Interaction) -> None:
        grants = await self.veil.sharing.grants_by(interaction.user.id)
        await reply_lines(interaction, [describe_grant(g) for g in grants],
                          empty="You are not sharing anything. Use /share to start.")


def describe_group(group: Group) -> str:
    members = " ".join(f"<@{m}>" for m in group.member_ids[:MEMBERS_SHOWN]) or "no members"
    if len(group.member_ids) > MEMBERS_SHOWN:
        members += f" and {len(group.member_ids) - MEMBERS_SHOWN} more"
    return f"{group_label(group.name)}: {members}"


async def group_autocomplete(interaction: Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
    groups = await interaction.client.veil.sharing.groups(interaction.user.id)
    current = current.lower()
    return [app_commands.Choice(name=f"{g.name} ({plural(len(g.member_ids), 'member')})",
                                value=g.name)
            for g in groups if current in g.name.lower()][:25]


class Groups(commands.GroupCog, group_name="group",
             group_description="Personal groups of people to share with."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="create", description="Create a personal group.")
    @app_commands.describe(name="A name only you see, up to 32 characters")
    async def create(self, interaction: Interaction,
                     name: app_commands.Range[str, 1, 32]) -> None:
        group = await self.veil.sharing.create_group(interaction.user.id, name)
        await reply(interaction, f"Created group {group_label(group.name)}. Add people with "
                                 "/group add.", allowed_mentions=NO_PINGS)

    @app_commands.command(name="add", description="Add a person to one of your groups.")
    @app_commands.describe(name="The group", member="Who to add")
    @app_commands.autocomplete(name=group_autocomplete)
    async def add(self, interaction: Interaction, name: str,
                  member: discord.Member | discord.User) -> None:
        if member.bot:
            await reply(interaction, "Bots cannot be in a group.")
            return
        group = await self.veil.sharing.add_member(interaction.user.id, name, member.id)
        await reply(interaction, f"Added {member.mention} to {group_label(group.name)} "
                                 f"({plural(len(group.member_ids), 'member')}).",
                    allowed_mentions=NO_PINGS)

    @defers_privately
    @app_commands.command(name="remove", description="Remove a person from one of your groups.")
    @app_commands.describe(name="The group", member="Who to remove")
    @app_commands.autocomplete(name=group_autocomplete)
    async def remove(self, interaction: Interaction, name: str,
                     member: discord.Member | discord.User) -> None:
        await defer_privately(interaction)
        group, queued = await self.veil.sharing.remove_member(interaction.user.id, name,
                                                              member.id)
        text = f"Removed {member.mention} from {group_label(group.name)}."
        text += await retraction_text(self.bot, queued, "them through the group")
        await reply(interaction, text, allowed_mentions=NO_PINGS)

    @app_commands.command(name="delete", description="Delete one of your groups and its shares.")
    @app_commands.describe(name="The group")
    @app_commands.autocomplete(name=group_autocomplete)
    async def delete(self, interaction: Interaction, name: str) -> None:
        group = await self.veil.sharing.group(interaction.user.id, name)
        ok, _ = await confirm(interaction, f"Delete group {group_label(group.name)} and everything "
                              "shared with it? Its members lose access now "
                              f"({plural(len(group.member_ids), 'member')}).")
        if not ok:
            await interaction.followup.send("Kept the group.", ephemeral=True)
            return
        queued = await self.veil.sharing.delete_group(interaction.user.id, group.name)
        text = f"Deleted group {group_label(group.name)} and its shares."
        text += await retraction_text(self.bot, queued, "through it")
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="list", description="List your groups and their members.")
    async def list_groups(self, interaction: Interaction) -> None:
        groups = await self.veil.sharing.groups(interaction.user.id)
        await reply_lines(interaction, [describe_group(g) for g in groups],
                          empty="You have no groups. Create one with /group create.")

    @app_commands.command(name="share", description="Share one image, or all, with a group.")
    @app_commands.describe(name="The group", image="One image (leave empty for all)",
                           expires="How long, like 30m, 12h or 7d")
    @app_commands.autocomplete(name=group_autocomplete, image=owned_image_autocomplete)
    async def share(self, interaction: Interaction, name: str,
                    image: str | None = None, expires: Duration | None = None) -> None:
        viewer = await viewer_from(interaction)
        group = await self.veil.sharing.group(viewer.user_id, name)
        await self.veil.sharing.grant(viewer, "group", group.id, image_public_id=image,
                                      expires_in=expires)
        if expires:
            self.bot.wake_grant_expiry()
        until = f" for {format_duration(expires)}" if expires else ""
        await reply(interaction, f"Shared {what(image)} with group {group_label(group.name)}"
                                 f"{until}. {FORWARD_NOTE}", allowed_mentions=NO_PINGS)

    @defers_privately
    @app_commands.command(name="unshare", description="Stop sharing with a group.")
    @app_commands.describe(name="The group", image="One image (leave empty for everything)")
    @app_commands.autocomplete(name=group_autocomplete, image=owned_image_autocomplete)
    async def unshare(self, interaction: Interaction, name: str,
                      image: str | None = None) -> None:
        await defer_privately(interaction)
        viewer = await viewer_from(interaction)
        group = await self.veil.sharing.group(viewer.user_id, name)
        removed, queued = await self.veil.sharing.revoke(viewer, "group", group.id,
                                                         image_public_id=image)
        covered = await self.veil.sharing.still_covered(viewer.user_id, "group", group.id,
                                                        image)
        await unshare_reply(self.bot, interaction, removed, queued,
                            f"group {group_label(group.name)}", image, covered)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Share(bot))
    await bot.add_cog(Groups(bot))
