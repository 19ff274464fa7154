"""Veil as a user-installed app: its commands follow the person into servers that never added
Veil, group DMs and DMs, and its guarantees hold there (issue 14).

"Elsewhere" is a server that never added Veil's bot: alice and bob use Veil there through their
own install. Posting or deleting in its channels fails as on Discord (403 50001), and the bot
gets none of its events, so discord.py holds none of its roles.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from bot.core.venue import SERVER_INSTALL_NEEDED
from bot.delivery import NO_MUTUAL_SERVER_WARNING
from tests.discord_double.interactions import CommandNotAvailable
from tests.e2e import (
    App,
    assert_no_private_image_in_any_channel,
    button_id,
    image_dms,
    png,
    texts,
    veil_app,
)

__all__ = ["veil_app"]

PERSONAL = ("imagine", "upload", "gallery", "view", "visibility", "share", "unshare", "shares",
            "group", "link", "delete", "forget-me", "access-log", "export", "privacy", "private",
            "report")


@dataclass
class Elsewhere:
    guild: object
    general: object
    role: object
    group_dm: object


@pytest.fixture
def elsewhere(veil_app: App) -> Elsewhere:
    double, world = veil_app.double, veil_app.world
    guild = double.add_guild("Elsewhere", bot_member=False)
    general = double.state.channels[guild.channel_ids[0]]
    role = double.add_role(guild, "artists")
    double.add_member(guild, world.alice, roles=[role])
    double.add_member(guild, world.bob, roles=[role])
    group_dm = double.add_group_dm(world.alice, world.bob, name="pals")
    return Elsewhere(guild, general, role, group_dm)


def channel_posts(app: App) -> list:
    """Every attempt the bot made to post in, or delete from, a channel that is not a DM."""
    dms = {c.id for c in app.double.state.channels.values() if c.is_dm}
    return [c for c in app.double.calls_to("*", r"^/channels/\d+/messages")
            if int(c.path.split("/")[2]) not in dms]


def ephemeral_images(handle) -> list:
    return [a for m in handle.messages if m.ephemeral for a in m.attachments]


async def test_synced_commands_carry_user_install_and_contexts_and_admin_stays_a_server_install(
        veil_app: App) -> None:
    commands = veil_app.double.commands
    for name in PERSONAL:
        assert commands[name].integration_types == [0, 1], name
        assert commands[name].contexts == [0, 1, 2], name
    assert commands["admin"].integration_types == [0]
    assert commands["admin"].contexts == [0]
    assert commands["admin"].payload["dm_permission"] is False


async def test_public_imagine_in_a_server_without_the_bot_posts_nothing_there(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    # Even a policy row naming this channel (left from an install long gone) must not matter.
    await app.veil.moderation.allow_channel(elsewhere.guild.id, elsewhere.general.id, 1)
    handle = await app.run("imagine", user=alice, guild=elsewhere.guild,
                           channel=elsewhere.general,
                           options={"prompt": "a lighthouse", "private": False})
    assert handle.payload["authorizing_integration_owners"] == {"1": str(alice.id)}
    assert channel_posts(app) == []
    assert app.double.messages_in(elsewhere.general, include_ephemeral=True) == [
        m for m in handle.messages if m.ephemeral]
    assert "Sent to your DMs" in texts(handle)
    assert all(m.ephemeral for m in handle.messages)
    assert len(image_dms(app, alice)) == 1
    [record] = await app.veil.images.owned(alice.id, limit=1)
    assert record.visibility == "public" and record.guild_id is None


async def test_delete_retracts_the_dm_copies_and_reports_the_ephemeral_ones_it_cannot(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    await app.run("imagine", user=alice, guild=elsewhere.guild, options={"prompt": "a fox"})
    [record] = await app.veil.images.owned(alice.id, limit=1)
    app.double.close_dms(alice)
    view = await app.run("view", user=alice, guild=elsewhere.guild,
                         options={"image": record.public_id})
    assert len(ephemeral_images(view)) == 1
    assert "cannot be retracted" in texts(view)
    assert await app.veil.images.deliveries(record.public_id) == [
        ("dm", app.double.dm_channel(alice).id, image_dms(app, alice)[0].id),
        ("ephemeral", elsewhere.general.id, view.messages[-2].id)]
    app.double.open_dms(alice)

    prompt = await app.run("delete", user=alice, guild=elsewhere.guild,
                           options={"image": record.public_id}, settle=False)
    done = await app.click(prompt.original, prompt.original.components[0]["components"][0]
                           ["custom_id"], user=alice)
    assert image_dms(app, alice) == []
    said = texts(prompt) + texts(done)
    assert "1 message carrying it was retracted" in said
    assert "1 ephemeral copy cannot be retracted" in said
    assert channel_posts(app) == []


async def test_the_delete_button_on_an_ephemeral_copy_works_where_the_bot_is_absent(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    app.double.close_dms(alice)
    handle = await app.run("imagine", user=alice, guild=elsewhere.guild,
                           options={"prompt": "a pier"})
    [copy] = [m for m in handle.messages if m.attachments]
    assert copy.ephemeral
    prompt = await app.double.click(copy, button_id(copy, "Delete"), user=alice)
    await prompt.wait_response()
    done = await app.click(prompt.original, button_id(prompt.original, "Delete"), user=alice)
    assert await app.veil.images.owned(alice.id, limit=1) == []
    assert "1 ephemeral copy cannot be retracted" in texts(prompt) + texts(done)
    assert channel_posts(app) == []


async def test_admin_works_where_the_server_installed_only_veils_commands(
        veil_app: App) -> None:
    app = veil_app
    guild = app.double.add_guild("Studio", bot_member=False)
    owner = app.double.state.users[guild.owner_id]
    general = app.double.state.channels[guild.channel_ids[0]]
    handle = await app.run("admin channel-allow", user=owner, guild=guild, install="guild",
                           options={"channel": general})
    assert "Public images may now be posted" in texts(handle)
    assert "my bot is not a member of this server" in texts(handle)
    assert (await app.veil.moderation.policy(guild.id)).permitted_channels == {general.id}


async def test_a_dm_refused_for_want_of_a_mutual_server_falls_back_to_an_ephemeral_copy(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app = veil_app
    carol = app.double.add_user("carol")
    app.double.add_member(elsewhere.guild, carol)
    app.double.dms_need_mutual_guild = True
    handle = await app.run("imagine", user=carol, guild=elsewhere.guild,
                           options={"prompt": "a kite", "private": False})
    assert len(ephemeral_images(handle)) == 1
    assert NO_MUTUAL_SERVER_WARNING in texts(handle)
    assert "DMs are closed" not in texts(handle)
    [record] = await app.veil.images.owned(carol.id, limit=1)
    assert [kind for kind, _, _ in await app.veil.images.deliveries(record.public_id)] == [
        "ephemeral"]
    export = await app.run("export", user=carol, guild=elsewhere.guild)
    assert "Discord does not let me DM you (we share no server)" in texts(export)
    assert any("/x/" in m.content for m in export.messages if m.ephemeral), \
        "the export's one-time link comes in an ephemeral reply instead"
    assert channel_posts(app) == []


async def test_in_a_group_dm_the_reply_says_the_image_went_to_your_dms(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    handle = await app.run("imagine", user=alice, guild=None, channel=elsewhere.group_dm,
                           options={"prompt": "a boat", "private": False})
    assert handle.payload["context"] == 2
    assert "Sent to your DMs" in texts(handle)
    assert "this chat" not in texts(handle)
    assert len(image_dms(app, alice)) == 1
    assert app.double.messages_in(elsewhere.group_dm) == []
    # In the bot's own DM the image is in "this chat" indeed.
    mine = await app.run("imagine", user=alice, guild=None, install="user",
                         options={"prompt": "a boat"})
    assert "Sent to this chat" in texts(mine)


async def test_admin_is_refused_in_a_server_that_only_users_installed_veil_into(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, double = veil_app, veil_app.double
    owner = double.state.users[elsewhere.guild.owner_id]
    with pytest.raises(CommandNotAvailable):
        await double.slash("admin policy", user=owner, guild=elsewhere.guild)
    # A stale registration or an odd client: Veil refuses it itself, in plain words.
    for command, options in (("admin force-private", {"setting": "on"}),
                             ("admin channel-allow", {"channel": elsewhere.general})):
        handle = await app.run(command, user=owner, guild=elsewhere.guild, options=options,
                               bypass_client_checks=True)
        assert texts(handle) == SERVER_INSTALL_NEEDED
        assert handle.ephemeral
    policy = await app.veil.moderation.policy(elsewhere.guild.id)
    assert not policy.force_private and not policy.permitted_channels
    group = await app.run("admin policy", user=app.world.alice, guild=None,
                          channel=elsewhere.group_dm, bypass_client_checks=True)
    assert "inside a server that has installed Veil" in texts(group)


async def test_role_shares_are_refused_where_the_server_has_not_installed_veil(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    await app.run("imagine", user=alice, guild=elsewhere.guild, options={"prompt": "a bell"})
    handle = await app.run("share", user=alice, guild=elsewhere.guild,
                           options={"target": elsewhere.role})
    assert "its roles cannot be shared with" in texts(handle)
    assert await app.veil.sharing.grants_by(alice.id) == []
    person = await app.run("share", user=alice, guild=elsewhere.guild,
                           options={"target": app.world.bob})
    assert "Shared all your images with" in texts(person)


async def test_a_role_share_holds_in_a_server_whose_roles_the_bot_never_cached(
        veil_app: App) -> None:
    app, alice, bob = veil_app, veil_app.world.alice, veil_app.world.bob
    # The server installed Veil's commands only: no bot member, no GUILD_CREATE, no role cache.
    guild = app.double.add_guild("Studio", bot_member=False)
    role = app.double.add_role(guild, "crew")
    app.double.add_member(guild, alice)
    app.double.add_member(guild, bob, roles=[role])
    assert app.bot.get_guild(guild.id) is None
    await app.run("imagine", user=alice, guild=guild, install="guild",
                  options={"prompt": "a crane"})
    [record] = await app.veil.images.owned(alice.id, limit=1)
    assert record.guild_id == guild.id  # the server installed Veil: its policy governs it
    shared = await app.run("share", user=alice, guild=guild, install="guild",
                           options={"target": role, "image": record.public_id})
    assert "Shared" in texts(shared)
    seen = await app.run("view", user=bob, guild=guild, install="guild",
                         options={"image": record.public_id})
    assert "Sent to your DMs" in texts(seen)
    assert len(image_dms(app, bob)) == 1
    app.double.set_roles(guild, bob, [])
    denied = await app.run("view", user=bob, guild=guild, install="guild",
                           options={"image": record.public_id})
    assert "Sent" not in texts(denied)
    # The interaction shows the role is gone: the copy it brought him is retracted too.
    for _ in range(250):
        if not image_dms(app, bob):
            break
        await asyncio.sleep(0.02)
    assert image_dms(app, bob) == []
    assert channel_posts(app) == []


async def test_a_public_image_asked_in_a_permitted_channel_goes_by_dm_where_the_bot_is_absent(
        veil_app: App) -> None:
    app, alice = veil_app, veil_app.world.alice
    # Installed with commands only: the server's policy holds, but no bot is there to post.
    guild = app.double.add_guild("Studio", bot_member=False)
    app.double.add_member(guild, alice)
    general = app.double.state.channels[guild.channel_ids[0]]
    await app.veil.moderation.allow_channel(guild.id, general.id, 1)
    handle = await app.run("imagine", user=alice, guild=guild, install="guild",
                           options={"prompt": "a mill", "private": False})
    [record] = await app.veil.images.owned(alice.id, limit=1)
    assert (record.visibility, record.guild_id) == ("public", guild.id)
    assert channel_posts(app) == []
    assert "Sent to your DMs" in texts(handle)
    assert "may not post" not in texts(handle)
    assert len(image_dms(app, alice)) == 1


async def test_a_server_that_installed_veil_governs_images_its_members_make_by_user_install(
        veil_app: App) -> None:
    app, alice, world = veil_app, veil_app.world.alice, veil_app.world
    await app.veil.moderation.update_policy(world.guild.id, 1, force_private=True)
    handle = await app.run("imagine", user=alice, install="user",
                           options={"prompt": "a tower", "private": False})
    assert handle.payload["authorizing_integration_owners"] == {"1": str(alice.id)}
    [record] = await app.veil.images.owned(alice.id, limit=1)
    assert (record.visibility, record.guild_id) == ("private", world.guild.id)
    await app.veil.moderation.update_policy(world.guild.id, 1, force_private=False)
    await app.permit(world.gallery)
    await app.run("imagine", user=alice, install="user", channel=world.gallery,
                  options={"prompt": "a bridge", "private": False})
    assert len(app.double.messages_in(world.gallery)) == 1  # the bot is there: it may post
    await assert_no_private_image_in_any_channel(app)


async def test_privacy_says_what_protects_you_where_the_server_has_not_installed_veil(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    handle = await app.run("privacy", user=alice, guild=elsewhere.guild)
    said = texts(handle)
    assert "has **not** installed Veil" in said
    assert "external apps as a whole" in said
    assert "This server's policy" not in said
    assert "posts nothing in this server's channels" in said
    off = await app.run("private off", user=alice, guild=elsewhere.guild)
    assert "This server has not installed Veil" in texts(off)
    home = await app.run("privacy", user=alice, install="user")
    assert "This server's policy" in texts(home)
    assert "has installed Veil" in texts(home)


@pytest.mark.slow
async def test_every_personal_command_answers_privately_from_a_user_install_in_each_context(
        veil_app: App, elsewhere: Elsewhere) -> None:
    app, alice = veil_app, veil_app.world.alice
    places = {"a server without Veil": {"guild": elsewhere.guild},
              "a group DM": {"guild": None, "channel": elsewhere.group_dm},
              "the bot's DM": {"guild": None, "install": "user"}}
    for where, place in places.items():
        await app.run("imagine", user=alice, options={"prompt": where}, **place)
        [record] = await app.veil.images.owned(alice.id, limit=1)
        image = record.public_id
        runs = [("upload", {"image": app.double.upload(png(), "p.png")}), ("gallery", {}),
                ("view", {"image": image}), ("visibility", {"image": image,
                                                            "setting": "public"}),
                ("share", {"target": app.world.bob, "image": image}), ("shares", {}),
                ("unshare", {"target": app.world.bob, "image": image}),
                ("group create", {"name": f"g{len(where)}"}), ("group list", {}),
                ("group share", {"name": f"g{len(where)}", "image": image}),
                ("report", {"image": image, "reason": "a test"}),
                ("link create", {"image": image}), ("link list", {}),
                ("access-log", {}), ("export", {}), ("privacy", {}), ("private status", {})]
        for command, options in runs:
            handle = await app.run(command, user=alice, options=options, **place)
            said = texts(handle)
            assert "went wrong" not in said, (where, command, said)
            assert all(m.ephemeral for m in handle.messages), (where, command)
            if command == "visibility":
                assert "appears in no channel" in said, (where, said)
            # A user install may send at most 5 followups to one interaction.
            assert len(handle.followups) <= 5, (where, command)
    assert channel_posts(app) == []
    assert app.double.messages_in(elsewhere.group_dm) == []
    await assert_no_private_image_in_any_channel(app)

