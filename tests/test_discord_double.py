"""End-to-end tests of the Discord double with a real (unmodified) discord.py bot."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from discord import app_commands
from discord.ext import commands

from tests.discord_double import CommandNotAvailable, DiscordDouble, World
from tests.discord_double.pytest_plugin import discord_double, discord_world  # noqa: F401


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


PNG = tiny_png()
COLORS = ["red", "green", "blue", "grey", "gold"]


@dataclass
class Record:
    """What the test bot saw, for assertions."""

    ready: asyncio.Event = field(default_factory=asyncio.Event)
    errors: dict[str, Exception] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


class Confirm(discord.ui.View):
    def __init__(self, record: Record) -> None:
        super().__init__(timeout=None)
        self.record = record

    @discord.ui.button(label="Confirm", custom_id="confirm", style=discord.ButtonStyle.success)
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.record.values["clicked_by"] = interaction.user.id
        await interaction.response.edit_message(content="confirmed", view=None)


class Feedback(discord.ui.Modal, title="Feedback"):
    text = discord.ui.TextInput(label="Your feedback", custom_id="feedback-text")

    def __init__(self, record: Record) -> None:
        super().__init__()
        self.record = record

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.record.values["feedback"] = self.text.value
        await interaction.response.send_message("thanks", ephemeral=True)


class DemoBot(commands.Bot):
    def __init__(self, record: Record) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            guild_ready_timeout=0.01,
        )
        self.record = record
        self._add_commands()

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def on_ready(self) -> None:
        self.record.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        self.record.values.setdefault("seen", []).append(
            (message.channel.id, message.author.id, message.content, len(message.attachments))
        )

    def _add_commands(self) -> None:
        record = self.record
        tree = self.tree

        @tree.command(name="whisper", description="Answer only you")
        async def whisper(interaction: discord.Interaction) -> None:
            record.values["interaction"] = interaction
            await interaction.response.send_message("just for you", ephemeral=True)

        @tree.command(name="slow", description="Think too long before answering")
        async def slow(interaction: discord.Interaction) -> None:
            await asyncio.sleep(0.1)
            try:
                await interaction.response.send_message("too late")
            except discord.NotFound as exc:
                record.errors["slow"] = exc

        @tree.command(name="sendfile", description="DM you a picture")
        async def sendfile(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                await interaction.user.send(
                    "your picture", file=discord.File(io.BytesIO(PNG), filename="picture.png")
                )
            except discord.Forbidden as exc:
                record.errors["dm"] = exc
                await interaction.followup.send("I cannot DM you", ephemeral=True)
                return
            await interaction.followup.send("sent by DM", ephemeral=True)
            await interaction.followup.send("and one more", ephemeral=True)

        async def color_autocomplete(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=c, value=c) for c in COLORS if c.startswith(current)]

        @tree.command(name="pick", description="Pick a color for someone")
        @app_commands.autocomplete(color=color_autocomplete)
        async def pick(
            interaction: discord.Interaction, member: discord.Member, color: str
        ) -> None:
            record.values["picked"] = (member.id, color, type(member).__name__)
            await interaction.response.send_message(
                f"{member.mention} gets {color}", view=Confirm(record)
            )

        @tree.command(name="inspect", description="Read an uploaded file")
        async def inspect(interaction: discord.Interaction, file: discord.Attachment) -> None:
            data = await file.read()
            record.values["upload"] = (file.filename, file.size, file.width, file.height, data)
            digest = hashlib.sha256(data).hexdigest()[:12]
            await interaction.response.send_message(
                f"{file.filename}: {len(data)} bytes {digest}", ephemeral=True
            )

        @tree.command(name="announce", description="Post text in this channel")
        async def announce(interaction: discord.Interaction, text: str) -> None:
            await interaction.response.defer(ephemeral=True)
            try:
                msg = await interaction.channel.send(text)
            except discord.HTTPException as exc:
                record.errors["announce"] = exc
                await interaction.followup.send(f"failed: {exc.status} {exc.code}")
                return
            record.values["announced"] = msg.id
            await interaction.followup.send("posted")

        @tree.command(name="carry", description="Works from a user install too")
        @app_commands.allowed_installs(guilds=True, users=True)
        @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
        async def carry(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True)
            record.values["carry"] = (
                interaction.context.guild, interaction.context.dm_channel,
                interaction.context.private_channel, interaction.is_user_integration(),
                interaction.is_guild_integration(), [r.id for r in interaction.user.roles]
                if isinstance(interaction.user, discord.Member) else None)
            try:
                await interaction.channel.send("hello")
            except discord.HTTPException as exc:
                record.errors["carry"] = exc
            await interaction.followup.send("done", ephemeral=True)

        @tree.command(name="feedback", description="Tell us something")
        async def feedback(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(Feedback(record))

        @tree.command(name="progress", description="Edit one message as work goes")
        async def progress(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("0%", ephemeral=True)
            for step in ("50%", "100%"):
                await interaction.edit_original_response(content=step)
            await interaction.edit_original_response(
                content="done", attachments=[discord.File(io.BytesIO(PNG), filename="result.png")]
            )
            fetched = await interaction.original_response()
            record.values["fetched"] = (fetched.id, fetched.content, len(fetched.attachments))

        @tree.command(name="card", description="Show a picture card")
        async def card(interaction: discord.Interaction) -> None:
            embed = discord.Embed(title="Card").set_image(url="attachment://card.png")
            await interaction.response.send_message(
                embed=embed, file=discord.File(io.BytesIO(PNG), filename="card.png")
            )

        @tree.context_menu(name="Report message")
        async def report(interaction: discord.Interaction, message: discord.Message) -> None:
            record.values["reported"] = (message.id, message.content)
            await interaction.response.send_message("reported", ephemeral=True)

        admin = app_commands.Group(
            name="admin",
            description="Moderator tools",
            default_permissions=discord.Permissions(manage_guild=True),
            guild_only=True,
        )
        channel_group = app_commands.Group(
            name="channel", description="Channel settings", parent=admin
        )

        @channel_group.command(name="allow", description="Allow images in a channel")
        async def allow(interaction: discord.Interaction, channel: discord.TextChannel) -> None:
            record.values["allowed"] = channel.id
            await interaction.response.send_message(f"allowed {channel.mention}", ephemeral=True)

        @admin.command(name="purge", description="Post a notice then delete it")
        async def purge(interaction: discord.Interaction) -> None:
            await interaction.response.defer(ephemeral=True)
            msg = await interaction.channel.send("notice")
            await msg.delete()
            try:
                await interaction.channel.get_partial_message(msg.id).delete()
            except discord.NotFound as exc:
                record.errors["second_delete"] = exc
            await interaction.followup.send("purged")

        tree.add_command(admin)


@dataclass
class Env:
    double: DiscordDouble
    world: World
    bot: DemoBot
    record: Record


@pytest_asyncio.fixture
async def env(discord_double: DiscordDouble, discord_world: World) -> AsyncIterator[Env]:  # noqa: F811
    record = Record()
    bot = DemoBot(record)
    async with discord_double.running(bot):
        yield Env(discord_double, discord_world, bot, record)


async def test_ready_guilds_and_synced_commands(env: Env) -> None:
    double, world, bot = env.double, env.world, env.bot
    await asyncio.wait_for(env.record.ready.wait(), 2)
    assert bot.user is not None and bot.user.id == double.bot_user_id
    guild = bot.get_guild(world.guild.id)
    assert guild is not None and guild.name == "Veil Test"
    assert {c.name for c in guild.text_channels} == {"general", "gallery"}
    me = guild.me
    assert me.guild_permissions.send_messages and me.guild_permissions.attach_files
    assert not me.guild_permissions.manage_messages
    assert set(double.commands) == {
        "whisper", "sendfile", "pick", "inspect", "announce", "feedback", "progress", "card",
        "slow", "admin", "carry",
    }  # fmt: skip
    assert [c.type for c in double.all_commands() if c.name == "Report message"] == [3]
    assert double.commands["whisper"].description == "Answer only you"
    assert double.commands["admin"].subcommand_paths() == ["admin channel allow", "admin purge"]
    assert double.commands["admin"].subcommand("channel allow")["description"] == (
        "Allow images in a channel"
    )
    assert double.calls_to("PUT", r"^/applications/\d+/commands$")[0].status == 200
    double.assert_no_unhandled()


async def test_ephemeral_reply(env: Env) -> None:
    handle = await env.double.slash("whisper", user=env.world.alice, guild=env.world.guild)
    response = await handle.wait_response()
    assert response["type"] == 4
    assert handle.ephemeral and handle.content == "just for you"
    assert handle.original is not None and handle.original.interaction_user_id == env.world.alice.id
    # Nobody else in the channel sees it.
    assert env.double.messages_in(env.world.general) == []
    assert env.double.messages_in(env.world.general, include_ephemeral=True) == [handle.original]
    assert handle.payload["data"]["id"] == str(env.double.commands["whisper"].id)


async def test_defer_dm_file_then_followups(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("sendfile", user=world.alice, guild=world.guild)
    await handle.wait_followups(2)
    assert handle.response_type == 5
    # The first followup after a defer fills the deferred message and keeps its ephemeral flag.
    first, second = handle.followups
    assert first is handle.original and first.content == "sent by DM" and first.ephemeral
    assert not first.loading
    assert second.content == "and one more" and second.ephemeral and second is not first
    [dm] = double.dm_messages(world.alice)
    assert dm.content == "your picture" and dm.filenames == ["picture.png"]
    assert double.attachment_bytes(dm) == [PNG]
    assert (dm.attachments[0].width, dm.attachments[0].height) == (3, 2)
    # The bot-posted attachment URL is served by the double.
    async with aiohttp.ClientSession() as session, session.get(dm.attachments[0].url) as resp:
        assert resp.status == 200 and await resp.read() == PNG
    assert double.all_guild_channel_messages() == []


async def test_closed_dms_surface_as_forbidden_50007(env: Env) -> None:
    double, world = env.double, env.world
    double.close_dms(world.bob)
    handle = await double.slash("sendfile", user=world.bob, guild=world.guild)
    await handle.wait_followups(1)
    exc = env.record.errors["dm"]
    assert isinstance(exc, discord.Forbidden) and exc.code == 50007
    assert handle.followups[0].content == "I cannot DM you"
    assert double.dm_messages(world.bob) == []


async def test_button_click_reaches_view_and_updates_message(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash(
        "pick", user=world.alice, guild=world.guild, options={"member": world.bob, "color": "red"}
    )
    await handle.wait_response()
    assert env.record.values["picked"] == (world.bob.id, "red", "Member")
    resolved = handle.payload["data"]["resolved"]
    assert set(resolved["users"]) == {str(world.bob.id)} and set(resolved["members"]) == {
        str(world.bob.id)
    }
    message = handle.original
    assert message is not None and not message.ephemeral
    assert double.messages_in(world.general) == [message]
    assert message.find_component("confirm") is not None
    click = await double.click(message, "confirm", user=world.bob)
    await click.wait_response()
    assert click.response_type == 7
    assert env.record.values["clicked_by"] == world.bob.id
    assert message.content == "confirmed" and message.components == []
    assert len(message.versions) == 2 and message.versions[0].content.endswith("gets red")


async def test_autocomplete_returns_choices(env: Env) -> None:
    handle = await env.double.autocomplete(
        "pick", focused="color", value="gr", user=env.world.alice, guild=env.world.guild
    )
    choices = await handle.wait_choices()
    assert handle.response_type == 8
    assert [c["value"] for c in choices] == ["green", "grey"]


async def test_uploaded_attachment_is_downloadable_by_the_bot(env: Env) -> None:
    double, world = env.double, env.world
    upload = double.upload(PNG, "holiday.png")
    handle = await double.slash(
        "inspect", user=world.alice, guild=world.guild, options={"file": upload}
    )
    await handle.wait_response()
    assert env.record.values["upload"] == ("holiday.png", len(PNG), 3, 2, PNG)
    assert handle.content.startswith(f"holiday.png: {len(PNG)} bytes")
    assert any("/ephemeral-attachments/" in path for path in double.attachment_requests)


async def test_injected_server_error_surfaces_as_discord_server_error(env: Env) -> None:
    # discord.py retries 500/502/504/524 five times (sleeping 1, 3, 5, 7, 9 s); any other 5xx
    # raises DiscordServerError at once, so tests inject 503.
    double, world = env.double, env.world
    rule = double.fail_next("POST", r"^/channels/\d+/messages$", status=503)
    handle = await double.slash(
        "announce", user=world.alice, guild=world.guild, options={"text": "hello"}
    )
    await handle.wait_followups(1)
    exc = env.record.errors["announce"]
    assert isinstance(exc, discord.DiscordServerError) and exc.status == 503
    assert rule.hits == 1 and handle.followups[0].content == "failed: 503 0"
    assert double.messages_in(world.general) == []


async def test_rate_limit_is_retried_after_retry_after(env: Env) -> None:
    double, world = env.double, env.world
    double.fail_next("POST", r"^/channels/\d+/messages$", status=429, retry_after=0.05)
    handle = await double.slash(
        "announce", user=world.alice, guild=world.guild, options={"text": "hello"}
    )
    await handle.wait_followups(1)
    assert handle.followups[0].content == "posted"
    posts = double.calls_to("POST", r"^/channels/\d+/messages$")
    assert [c.status for c in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 0.05
    [msg] = double.messages_in(world.general)
    assert msg.content == "hello"


async def test_denied_and_deleted_channels(env: Env) -> None:
    double, world = env.double, env.world
    double.deny_channel(world.general)
    handle = await double.slash(
        "announce", user=world.alice, guild=world.guild, options={"text": "x"}
    )
    await handle.wait_followups(1)
    exc = env.record.errors.pop("announce")
    assert isinstance(exc, discord.Forbidden) and exc.code == 50013
    perms = env.bot.get_channel(world.general.id).permissions_for(
        env.bot.get_guild(world.guild.id).me
    )
    assert not perms.send_messages

    victim = double.add_channel(world.guild, "doomed")
    await double.wait_for(lambda: env.bot.get_channel(victim.id) is not None, what="CHANNEL_CREATE")
    channel = env.bot.get_channel(victim.id)
    double.delete_channel(victim)
    with pytest.raises(discord.NotFound) as info:
        await channel.send("anyone?")
    assert info.value.code == 10003


async def test_message_delete_is_recorded_and_unknown_delete_is_404(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("admin purge", user=world.moderator, guild=world.guild)
    await handle.wait_followups(1)
    [deleted] = double.deleted_messages
    assert deleted.content == "notice" and deleted.deleted_via == "channel"
    assert double.messages_in(world.general) == []
    assert double.messages_in(world.general, include_deleted=True) == [deleted]
    exc = env.record.errors["second_delete"]
    assert isinstance(exc, discord.NotFound) and exc.code == 10008


async def test_subcommand_group_path_and_channel_option(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash(
        "admin channel allow",
        user=world.moderator,
        guild=world.guild,
        options={"channel": world.gallery},
    )
    await handle.wait_response()
    assert env.record.values["allowed"] == world.gallery.id
    data = handle.payload["data"]
    assert data["options"][0]["type"] == 2 and data["options"][0]["options"][0]["type"] == 1
    # default_member_permissions hides /admin from members without Manage Server ...
    with pytest.raises(CommandNotAvailable):
        await double.slash("admin purge", user=world.alice, guild=world.guild)
    # ... unless a test says a server admin overrode it in the integration settings.
    bypass = await double.slash(
        "admin channel allow",
        user=world.alice,
        guild=world.guild,
        options={"channel": world.general},
        bypass_client_checks=True,
    )
    await bypass.wait_response()
    assert env.record.values["allowed"] == world.general.id


async def test_modal_roundtrip(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("feedback", user=world.alice)  # in the bot's DM
    await handle.wait_response()
    assert handle.response_type == 9 and handle.modal["title"] == "Feedback"
    submitted = await double.submit_modal(handle, {"feedback-text": "lovely"})
    await submitted.wait_response()
    assert env.record.values["feedback"] == "lovely"
    assert submitted.content == "thanks" and submitted.ephemeral


async def test_edits_of_original_response_with_attachment(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("progress", user=world.alice, guild=world.guild)
    await handle.wait_edits(3)
    assert [e.get("content") for e in handle.edits] == ["50%", "100%", "done"]
    original = handle.original
    assert original.content == "done" and original.ephemeral
    assert double.attachment_bytes(original) == [PNG]
    assert [v.content for v in original.versions] == ["0%", "50%", "100%", "done"]
    await double.wait_for(lambda: "fetched" in env.record.values, what="GET @original")
    assert env.record.values["fetched"] == (original.id, "done", 1)


async def test_reconnect_resumes_and_events_flow(env: Env) -> None:
    double, world = env.double, env.world
    await double.reconnect()
    handle = await double.slash("whisper", user=world.alice, guild=world.guild)
    await handle.wait_response()
    assert handle.content == "just for you"
    assert any(frame.get("op") == 6 for frame in double.gateway.received)


async def test_unhandled_route_is_recorded(env: Env) -> None:
    route = discord.http.Route("GET", "/guilds/{guild_id}/bans", guild_id=env.world.guild.id)
    with pytest.raises(discord.NotFound):
        await env.bot.http.request(route)
    [call] = env.double.unhandled
    assert call.method == "GET" and call.path == f"/guilds/{env.world.guild.id}/bans"
    with pytest.raises(AssertionError):
        env.double.assert_no_unhandled()


async def test_wrong_token_fails_login(discord_double: DiscordDouble) -> None:  # noqa: F811
    bot = DemoBot(Record())
    with pytest.raises(discord.LoginFailure):
        await bot.login("not-the-token")
    await bot.close()
    assert discord_double.calls[-1].status == 401


async def test_install_points_discord_at_the_double_and_restores() -> None:
    def current() -> tuple[str, str]:
        return discord.http.Route.BASE, str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)

    before = current()
    async with DiscordDouble() as double:
        assert current() == (double.api_base, f"ws://127.0.0.1:{double.port}/gateway")
        assert double.api_base == f"http://127.0.0.1:{double.port}/api/v10"
    assert current() == before


async def test_initial_response_with_file_and_embed_attachment(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("card", user=world.alice, channel=world.gallery)
    await handle.wait_response()
    call = double.calls_to("POST", r"^/interactions/")[-1]
    assert call.query == {"with_response": "1"}
    assert [(f.field_name, f.filename, f.data) for f in call.files] == [
        ("files[0]", "card.png", PNG)
    ]
    [msg] = double.messages_in(world.gallery)
    assert msg is handle.original and not msg.ephemeral and msg.type == 20
    assert msg.embeds[0]["image"]["url"] == msg.attachments[0].url
    assert double.attachment_bytes(msg) == [PNG]
    assert double.all_guild_channel_messages() == [msg]


async def test_guild_scoped_command_sync_and_dm_availability(env: Env) -> None:
    double, world, bot = env.double, env.world, env.bot
    guild = discord.Object(id=world.guild.id)

    @app_commands.command(name="local", description="Only in the test guild")
    async def local(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("local!")

    bot.tree.add_command(local, guild=guild)
    await bot.tree.sync(guild=guild)
    assert set(double.guild_commands(world.guild)) == {"local"}
    assert "local" not in double.commands
    handle = await double.slash("local", user=world.bob, guild=world.guild)
    await handle.wait_response()
    assert handle.payload["data"]["guild_id"] == str(world.guild.id)
    assert handle.content == "local!"
    with pytest.raises(CommandNotAvailable):
        await double.slash("local", user=world.bob)  # guild commands are not offered in DMs


async def test_message_context_menu(env: Env) -> None:
    double, world = env.double, env.world
    target = double.post_user_message(world.general, world.bob, "look at this")
    handle = await double.context_menu("Report message", target, user=world.alice)
    await handle.wait_response()
    assert env.record.values["reported"] == (target.id, "look at this")
    assert handle.payload["data"]["target_id"] == str(target.id)


async def test_user_messages_reach_the_bot_per_intents(env: Env) -> None:
    double, world = env.double, env.world
    double.post_user_message(world.general, world.bob, "hello guild", attachments=[("a.txt", b"A")])
    double.post_user_message(None, world.bob, "hello bot")  # the bot's DM with bob
    await double.wait_for(lambda: len(env.record.values.get("seen", [])) == 2, what="2 messages")
    dm = double.dm_channel(world.bob)
    # Default intents have no message_content: guild text and files are blanked; DMs are not.
    assert env.record.values["seen"] == [
        (world.general.id, world.bob.id, "", 0),
        (dm.id, world.bob.id, "hello bot", 0),
    ]


async def test_roles_override_changes_member_and_permissions(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash(
        "admin channel allow",
        user=world.alice,
        guild=world.guild,
        options={"channel": world.gallery},
        roles=[world.mod_role],
    )
    await handle.wait_response()
    member = handle.payload["member"]
    assert member["roles"] == [str(world.mod_role.id)]
    assert int(member["permissions"]) & (1 << 5)  # Manage Server from the role
    assert env.record.values["allowed"] == world.gallery.id


async def test_delete_original_and_expired_token(env: Env) -> None:
    double, world = env.double, env.world
    handle = await double.slash("whisper", user=world.alice, guild=world.guild)
    await handle.wait_response()
    interaction: discord.Interaction = env.record.values["interaction"]
    await interaction.delete_original_response()
    assert handle.original_deleted and double.deleted_messages == [handle.original]
    assert handle.original.deleted_via == "webhook"
    double.expire_interaction(handle)
    with pytest.raises(discord.HTTPException) as info:
        await interaction.followup.send("late")
    assert (info.value.status, info.value.code) == (401, 50027)


async def test_acknowledging_after_the_deadline_fails(env: Env) -> None:
    env.double.ack_deadline = 0.05  # Discord's is 3 s
    handle = await env.double.slash("slow", user=env.world.alice, guild=env.world.guild)
    await env.double.wait_for(lambda: "slow" in env.record.errors, what="the late response")
    assert env.record.errors["slow"].code == 10062
    assert not handle.acknowledged


async def test_member_chunking_with_members_intent(
    discord_double: DiscordDouble,  # noqa: F811
    discord_world: World,  # noqa: F811
) -> None:
    bot = commands.Bot(
        command_prefix=commands.when_mentioned,
        intents=discord.Intents.all(),
        guild_ready_timeout=0.01,
    )
    async with discord_double.running(bot):
        guild = bot.get_guild(discord_world.guild.id)
        assert guild.chunked and len(guild.members) == 5
        found = await guild.query_members(user_ids=[discord_world.bob.id])
        assert [m.name for m in found] == ["bob"]
        assert any(f.get("op") == 8 for f in discord_double.gateway.received)
        # A new member is announced to a bot with the members intent.
        carol = discord_double.add_user("carol")
        discord_double.add_member(discord_world.guild, carol)
        await discord_double.wait_for(lambda: guild.get_member(carol.id), what="GUILD_MEMBER_ADD")


async def test_user_installs_in_bot_less_guilds_and_group_dms(env: Env) -> None:
    double, world, record = env.double, env.world, env.record
    carry, whisper = double.commands["carry"], double.commands["whisper"]
    assert (carry.integration_types, carry.contexts) == ([0, 1], [0, 1, 2])
    assert whisper.integration_types == [0]
    elsewhere = double.add_guild("Elsewhere", bot_member=False)
    role = double.add_role(elsewhere, "crew")
    double.add_member(elsewhere, world.alice, roles=[role])
    assert env.bot.get_guild(elsewhere.id) is None  # no GUILD_CREATE, no role cache
    with pytest.raises(CommandNotAvailable):
        await double.slash("whisper", user=world.alice, guild=elsewhere)  # a server install only
    handle = await double.slash("carry", user=world.alice, guild=elsewhere)
    await handle.wait_done()
    assert handle.payload["authorizing_integration_owners"] == {"1": str(world.alice.id)}
    assert handle.payload["context"] == 0
    assert record.values["carry"][:5] == (True, False, False, True, False)
    assert record.values["carry"][5] == []  # discord.py drops roles it has not cached
    assert handle.payload["member"]["roles"] == [str(role.id)]
    error = record.errors.pop("carry")
    assert isinstance(error, discord.Forbidden) and error.code == 50001
    assert double.messages_in(double.state.channels[elsewhere.channel_ids[0]]) == []

    group = double.add_group_dm(world.alice, world.bob)
    handle = await double.slash("carry", user=world.alice, channel=group)
    await handle.wait_done()
    assert handle.payload["context"] == 2
    assert record.values["carry"][:5] == (False, False, True, True, False)
    assert isinstance(record.errors.pop("carry"), discord.Forbidden)
    assert double.messages_in(group) == []

    double.dms_need_mutual_guild = True
    loner = double.add_user("loner")
    double.add_member(elsewhere, loner)
    handle = await double.slash("sendfile", user=loner, guild=elsewhere, install="guild",
                                bypass_client_checks=True)
    await handle.wait_followups(1)
    assert record.errors["dm"].code == 50278


async def test_bots_on_two_shards_each_get_only_the_events_of_their_own_servers():
    async with DiscordDouble() as double:
        world = double.populate()
        # Discord routes a server's events to shard (guild_id >> 22) % shard_count.
        shard_of_first = (world.guild.id >> 22) % 2
        other = double.add_guild("Other", guild_id=((world.guild.id >> 22) + 1) << 22)
        double.add_member(other, world.alice)
        answered: dict[int, list[int | None]] = {0: [], 1: []}
        bots = []
        for shard in (0, 1):
            bot = commands.AutoShardedBot(command_prefix="!", intents=discord.Intents.default(),
                                          shard_count=2, shard_ids=[shard],
                                          guild_ready_timeout=0.01)

            @bot.tree.command(name="where", description="Which shard answers")
            async def where(interaction: discord.Interaction, shard: int = shard) -> None:
                answered[shard].append(interaction.guild_id)
                await interaction.response.send_message(f"shard {shard}", ephemeral=True)

            bots.append(bot)
        async with double.running(bots[0]), double.running(bots[1]):
            await bots[0].tree.sync()
            assert {g.id for g in bots[shard_of_first].guilds} == {world.guild.id}
            assert {g.id for g in bots[1 - shard_of_first].guilds} == {other.id}
            for guild in (world.guild, other, None):
                handle = await double.slash("where", user=world.alice, guild=guild)
                await handle.wait_response()
        assert answered[shard_of_first] == [world.guild.id] + ([None] if shard_of_first == 0
                                                               else [])
        assert answered[1 - shard_of_first] == [other.id] + ([None] if shard_of_first == 1
                                                             else [])
