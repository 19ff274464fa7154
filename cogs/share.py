"""Sharing: `/share`, `/unshare`, `/shares`, and personal groups under `/group`."""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.durations import format_duration
from bot.core.models import Grant, Viewer
from cogs._options import Duration, owned_image_autocomplete, when
from cogs._replies import reply
from cogs._viewer import viewer_from
from cogs._views import confirm

Target = discord.Member | discord.User | discord.Role
NO_PINGS = discord.AllowedMentions.none()


def target_kind(target: Target) -> str:
    return "role" if isinstance(target, discord.Role) else "user"


def what(image: str | None) -> str:
    return f"`{image}`" if image else "all your images"


def describe_grant(grant: Grant) -> str:
    who = {"user": f"<@{grant.grantee_id}>", "role": f"<@&{grant.grantee_id}>",
           "group": f"group **{grant.group_name}**"}[grant.grantee_kind]
    item = f"`{grant.image_public_id}`" if grant.image_public_id else "all images"
    until = f" until {when(grant.expires_at)}" if grant.expires_at else ""
    return f"{item} → {who}{until}"


async def unshare_reply(bot, interaction, removed: int, queued: int, who: str,
                        image: str | None) -> None:
    if not removed:
        await reply(interaction, f"You were not sharing {what(image)} with {who}.",
                    allowed_mentions=NO_PINGS)
        return
    retracted = await bot.deliverer.retract_due() if queued else 0
    text = f"Stopped sharing {what(image)} with {who}."
    if retracted:
        text += f" Retracted {retracted} message{'s' if retracted != 1 else ''} I had sent them."
    await reply(interaction, text, allowed_mentions=NO_PINGS)


class Share(commands.Cog):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="share", description="Share one image, or all of yours, with a "
                                                    "person or a role.")
    @app_commands.describe(target="A person or a role", image="One image (leave empty for all "
                           "your images)", expires="How long, like 30m, 12h or 7d (default: "
                           "until you unshare)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def share(self, interaction: discord.Interaction, target: Target,
                    image: str | None = None, expires: Duration | None = None) -> None:
        viewer = await viewer_from(interaction)
        if isinstance(target, discord.User | discord.Member) and target.bot:
            await reply(interaction, "Bots cannot be shared with.")
            return
        grant = await self.veil.sharing.grant(viewer, target_kind(target), target.id,
                                              image_public_id=image, expires_in=expires)
        until = f" for {format_duration(expires)}" if expires else ""
        await reply(interaction, f"Shared {what(grant.image_public_id)} with {target.mention}"
                                 f"{until}. Undo with /unshare.", allowed_mentions=NO_PINGS)
        if target_kind(target) == "user":
            await self._notify(viewer, target, grant)

    async def _notify(self, viewer: Viewer, target, grant: Grant) -> None:
        """Tell the person by DM (text only: never the image, never a prompt)."""
        item = (f"image `{grant.image_public_id}`" if grant.image_public_id
                else "their images")
        try:
            await target.send(f"<@{viewer.user_id}> shared {item} with you on Veil. "
                              "See it with /gallery or /view.")
        except discord.HTTPException:
            pass  # closed DMs: the share still works, they will find it in /gallery

    @app_commands.command(name="unshare", description="Stop sharing with a person or a role.")
    @app_commands.describe(target="A person or a role",
                           image="One image (leave empty to stop sharing everything)")
    @app_commands.autocomplete(image=owned_image_autocomplete)
    async def unshare(self, interaction: discord.Interaction, target: Target,
                      image: str | None = None) -> None:
        viewer = await viewer_from(interaction)
        removed, queued = await self.veil.sharing.revoke(viewer, target_kind(target), target.id,
                                                         image_public_id=image)
        await unshare_reply(self.bot, interaction, removed, queued, target.mention, image)

    @app_commands.command(name="shares", description="List what you are sharing, and with whom.")
    async def shares(self, interaction: discord.Interaction) -> None:
        grants = await self.veil.sharing.grants_by(interaction.user.id)
        if not grants:
            await reply(interaction, "You are not sharing anything. Use /share to start.")
            return
        lines = [describe_grant(g) for g in grants[:40]]
        if len(grants) > 40:
            lines.append(f"… and {len(grants) - 40} more.")
        await reply(interaction, "\n".join(lines), allowed_mentions=NO_PINGS)


async def group_autocomplete(interaction: discord.Interaction,
                             current: str) -> list[app_commands.Choice[str]]:
    groups = await interaction.client.veil.sharing.groups(interaction.user.id)
    current = current.lower()
    return [app_commands.Choice(name=f"{g.name} ({len(g.member_ids)} members)", value=g.name)
            for g in groups if current in g.name.lower()][:25]


class Groups(commands.GroupCog, group_name="group",
             group_description="Personal groups of people to share with."):
    def __init__(self, bot) -> None:
        self.bot = bot
        self.veil = bot.veil

    @app_commands.command(name="create", description="Create a personal group.")
    @app_commands.describe(name="A name only you see, up to 32 characters")
    async def create(self, interaction: discord.Interaction,
                     name: app_commands.Range[str, 1, 32]) -> None:
        group = await self.veil.sharing.create_group(interaction.user.id, name)
        await reply(interaction, f"Created group **{group.name}**. Add people with /group add.")

    @app_commands.command(name="add", description="Add a person to one of your groups.")
    @app_commands.describe(name="The group", member="Who to add")
    @app_commands.autocomplete(name=group_autocomplete)
    async def add(self, interaction: discord.Interaction, name: str,
                  member: discord.Member | discord.User) -> None:
        if member.bot:
            await reply(interaction, "Bots cannot be in a group.")
            return
        group = await self.veil.sharing.add_member(interaction.user.id, name, member.id)
        await reply(interaction, f"Added {member.mention} to **{group.name}** "
                                 f"({len(group.member_ids)} members).", allowed_mentions=NO_PINGS)

    @app_commands.command(name="remove", description="Remove a person from one of your groups.")
    @app_commands.describe(name="The group", member="Who to remove")
    @app_commands.autocomplete(name=group_autocomplete)
    async def remove(self, interaction: discord.Interaction, name: str,
                     member: discord.Member | discord.User) -> None:
        group, queued = await self.veil.sharing.remove_member(interaction.user.id, name,
                                                              member.id)
        retracted = await self.bot.deliverer.retract_due() if queued else 0
        text = f"Removed {member.mention} from **{group.name}**."
        if retracted:
            text += f" Retracted {retracted} message{'s' if retracted != 1 else ''} they got " \
                    "through the group."
        await reply(interaction, text, allowed_mentions=NO_PINGS)

    @app_commands.command(name="delete", description="Delete one of your groups and its shares.")
    @app_commands.describe(name="The group")
    @app_commands.autocomplete(name=group_autocomplete)
    async def delete(self, interaction: discord.Interaction, name: str) -> None:
        group = await self.veil.sharing.group(interaction.user.id, name)
        ok, _ = await confirm(interaction, f"Delete group **{group.name}** and everything shared "
                              f"with it ({len(group.member_ids)} members lose access)?")
        if not ok:
            await interaction.followup.send("Kept the group.", ephemeral=True)
            return
        queued = await self.veil.sharing.delete_group(interaction.user.id, group.name)
        retracted = await self.bot.deliverer.retract_due() if queued else 0
        await interaction.followup.send(f"Deleted group **{group.name}**; retracted {retracted} "
                                        "messages sent through it.", ephemeral=True)

    @app_commands.command(name="list", description="List your groups and their members.")
    async def list_groups(self, interaction: discord.Interaction) -> None:
        groups = await self.veil.sharing.groups(interaction.user.id)
        if not groups:
            await reply(interaction, "You have no groups. Create one with /group create.")
            return
        lines = [f"**{g.name}**: {' '.join(f'<@{m}>' for m in g.member_ids) or 'no members'}"
                 for g in groups]
        await reply(interaction, "\n".join(lines), allowed_mentions=NO_PINGS)

    @app_commands.command(name="share", description="Share one image, or all, with a group.")
    @app_commands.describe(name="The group", image="One image (leave empty for all)",
                           expires="How long, like 30m, 12h or 7d")
    @app_commands.autocomplete(name=group_autocomplete, image=owned_image_autocomplete)
    async def share(self, interaction: discord.Interaction, name: str,
                    image: str | None = None, expires: Duration | None = None) -> None:
        viewer = await viewer_from(interaction)
        group = await self.veil.sharing.group(viewer.user_id, name)
        await self.veil.sharing.grant(viewer, "group", group.id, image_public_id=image,
                                      expires_in=expires)
        until = f" for {format_duration(expires)}" if expires else ""
        await reply(interaction, f"Shared {what(image)} with group **{group.name}**{until}.")

    @app_commands.command(name="unshare", description="Stop sharing with a group.")
    @app_commands.describe(name="The group", image="One image (leave empty for everything)")
    @app_commands.autocomplete(name=group_autocomplete, image=owned_image_autocomplete)
    async def unshare(self, interaction: discord.Interaction, name: str,
                      image: str | None = None) -> None:
        viewer = await viewer_from(interaction)
        group = await self.veil.sharing.group(viewer.user_id, name)
        removed, queued = await self.veil.sharing.revoke(viewer, "group", group.id,
                                                         image_public_id=image)
        await unshare_reply(self.bot, interaction, removed, queued, f"group **{group.name}**",
                            image)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(Share(bot))
    await bot.add_cog(Groups(bot))
