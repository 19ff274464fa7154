"""`/admin ...` end to end against the double: who may use it, and what each command does."""

from __future__ import annotations

import pytest

from bot.core.models import Report, Viewer
from tests.discord_double import CommandNotAvailable
from tests.e2e import (
    button_id,
    image_attachments,
    image_dms,
    image_ids,
    new_image,
    post_public_image,
)

MANAGE_GUILD = 1 << 5
DAY = 86400.0
REFUSAL = "Only this server's moderators"


async def admin(app, path: str, user=None, **options):
    """Run `/admin <path>` as the moderator, or as ``user`` as if Discord's interface had not
    hidden it (a server can change who sees a command; our own check must hold regardless)."""
    return await app.run(f"admin {path}", user=user or app.world.moderator,
                         options=options or None, bypass_client_checks=user is not None)


async def confirm_with(app, handle, label: str, user) -> None:
    prompt = await handle.wait_original()
    assert prompt.ephemeral
    await app.click(prompt, button_id(prompt, label), user=user)
    await app.settle(handle)


async def reported_image(app, reason: str = "spam") -> tuple[str, Report]:
    """Alice makes a public image in the server and Bob reports it; returns its id and the
    report."""
    world = app.world
    await app.run("imagine", user=world.alice, options={"prompt": "x", "private": False})
    [image] = await image_ids(app, world.alice)
    report = await app.veil.moderation.report(Viewer(world.bob.id, guild_id=world.guild.id),
                                              image, reason)
    return image, report


async def snapshot(app) -> tuple:
    db = app.veil.ctx.db
    return (await app.veil.moderation.policy(app.world.guild.id),
            await db.fetchall("SELECT id, public_id FROM images ORDER BY id"),
            await db.fetchall("SELECT action FROM audit_log WHERE action LIKE 'admin.%'"),
            await db.fetchval("SELECT count(*) FROM retractions"))


# Who may use /admin --------------------------------------------------------------------------


async def test_admin_commands_carry_the_manage_server_hint_for_discords_interface(veil_app):
    assert veil_app.double.command("admin").default_member_permissions == MANAGE_GUILD


async def test_discord_hides_admin_from_a_plain_member(veil_app):
    app = veil_app
    with pytest.raises(CommandNotAvailable):
        await app.run("admin policy", user=app.world.alice)


async def test_every_admin_command_refuses_a_plain_member_and_changes_nothing(veil_app):
    app = veil_app
    world = app.world
    await app.permit(world.general)
    await app.run("imagine", user=world.bob, options={"prompt": "bob's picture"})
    [bob_image] = await image_ids(app, world.bob)
    helpers = app.double.add_role(world.guild, "Helpers")
    attempts = {
        "admin channel-allow": {"channel": world.gallery},
        "admin channel-deny": {"channel": world.general},
        "admin channels": {},
        "admin policy": {},
        "admin force-private": {"setting": "on"},
        "admin links": {"setting": "off"},
        "admin link-max-lifetime": {"duration": "1d"},
        "admin retention": {"days": 1},
        "admin mod-role": {"role": helpers},
        "admin purge": {"member": world.bob},
        "admin takedown": {"image": bob_image},
        "admin audit": {},
        "admin reports": {},
        "admin report-close": {"report": 1},
        "admin stats": {},
    }
    assert sorted(attempts) == sorted(app.double.command("admin").subcommand_paths())
    before = await snapshot(app)
    for path, options in attempts.items():
        handle = await app.run(path, user=world.alice, options=options or None,
                               bypass_client_checks=True)
        assert handle.ephemeral, path
        assert REFUSAL in handle.content, (path, handle.content)
        assert [m for m in handle.messages if m.components] == [], path
    assert await snapshot(app) == before
    assert not any(m.deleted for m in app.double.dm_messages(world.bob, include_deleted=True))


async def test_a_member_with_the_moderator_role_is_accepted_without_manage_server(veil_app):
    app = veil_app
    world = app.world
    helpers = app.double.add_role(world.guild, "Helpers")
    app.double.set_roles(world.guild, world.bob, [helpers])
    refused = await admin(app, "policy", user=world.bob)
    assert REFUSAL in refused.content

    await admin(app, "mod-role", role=helpers)
    accepted = await admin(app, "channel-allow", user=world.bob, channel=world.gallery)
    assert REFUSAL not in accepted.content
    assert await app.veil.moderation.channel_permitted(world.guild.id, world.gallery.id)

    app.double.set_roles(world.guild, world.bob, [])
    again = await admin(app, "policy", user=world.bob)
    assert REFUSAL in again.content


async def test_admin_commands_are_refused_clearly_in_a_dm(veil_app):
    app = veil_app
    with pytest.raises(CommandNotAvailable):
        await app.run("admin policy", user=app.world.moderator, guild=None)
    handle = await app.run("admin policy", user=app.world.moderator, guild=None,
                           bypass_client_checks=True)
    assert handle.ephemeral
    assert "inside a server" in handle.content


# Channels and policy -------------------------------------------------------------------------


async def test_channel_allow_deny_and_channels_round_trip(veil_app):
    app = veil_app
    world = app.world
    empty = await admin(app, "channels")
    assert empty.ephemeral and "No channel is permitted" in empty.content

    allowed = await admin(app, "channel-allow", channel=world.gallery)
    assert f"<#{world.gallery.id}>" in allowed.content
    await admin(app, "channel-allow", channel=world.general)
    listed = await admin(app, "channels")
    assert f"<#{world.gallery.id}>" in listed.content
    assert f"<#{world.general.id}>" in listed.content

    await admin(app, "channel-deny", channel=world.general)
    listed = await admin(app, "channels")
    assert f"<#{world.general.id}>" not in listed.content
    assert f"<#{world.gallery.id}>" in listed.content
    policy = await admin(app, "policy")
    assert f"<#{world.gallery.id}>" in policy.content
    assert app.double.messages_in(world.general) == []


async def test_policy_settings_round_trip_and_show_in_admin_policy(veil_app):
    app = veil_app
    await admin(app, "force-private", setting="on")
    await admin(app, "links", setting="off")
    lifetime = await admin(app, "link-max-lifetime", duration="2d")
    assert "**2d**" in lifetime.content
    helpers = app.double.add_role(app.world.guild, "Helpers")
    await admin(app, "mod-role", role=helpers)

    policy = await app.veil.moderation.policy(app.world.guild.id)
    assert policy.force_private and not policy.links_enabled
    assert policy.link_max_lifetime == 2 * DAY and policy.mod_role_id == helpers.id
    shown = (await admin(app, "policy")).content
    assert "Forced private mode: **on**" in shown
    assert "Links: **off**" in shown
    assert f"<@&{helpers.id}>" in shown

    await admin(app, "mod-role")
    assert (await app.veil.moderation.policy(app.world.guild.id)).mod_role_id is None


async def test_a_link_lifetime_that_is_not_a_duration_gets_a_clear_message(veil_app):
    app = veil_app
    handle = await admin(app, "link-max-lifetime", duration="banana")
    assert handle.ephemeral
    assert "'banana' is not a duration" in handle.content
    assert "12h" in handle.content
    assert "reference" not in handle.content
    assert (await app.veil.moderation.policy(app.world.guild.id)).link_max_lifetime == 7 * DAY


async def test_a_link_lifetime_longer_than_a_year_is_refused_clearly(veil_app):
    handle = await admin(veil_app, "link-max-lifetime", duration="400d")
    assert "at most a year" in handle.content


async def test_retention_removes_older_images_at_once_and_retracts_their_messages(veil_app):
    app = veil_app
    alice = app.world.alice
    start = app.veil.ctx.now()
    await app.run("imagine", user=alice, options={"prompt": "old photo"})
    [old] = await image_ids(app, alice)
    [old_dm] = app.double.dm_messages(alice)
    app.veil.ctx.clock = lambda: start + 31 * DAY
    await app.run("imagine", user=alice, options={"prompt": "new photo"})
    [new] = await image_ids(app, alice) - {old}

    handle = await admin(app, "retention", days=30)

    assert "kept 30 days" in handle.messages[0].content
    assert "Removed 1 image made here more than 30 days ago" in handle.messages[-1].content
    assert all(m.ephemeral for m in handle.messages)
    assert await image_ids(app, alice) == {new}
    assert old_dm.deleted
    assert (await app.veil.moderation.policy(app.world.guild.id)).retention_days == 30

    off = await admin(app, "retention", days=0)
    assert "Retention is off" in off.content
    assert (await app.veil.moderation.policy(app.world.guild.id)).retention_days is None


# Removal ------------------------------------------------------------------------------------


async def test_purge_with_confirmation_removes_only_that_members_images_from_this_server(
        veil_app):
    app = veil_app
    world = app.world
    await app.permit(world.gallery)
    await app.run("imagine", user=world.alice, options={"prompt": "in the server"})
    await app.run("imagine", user=world.alice, channel=world.gallery,
                  options={"prompt": "posted", "private": False})
    await app.run("imagine", user=world.alice, guild=None, options={"prompt": "made in dms"})
    await app.run("imagine", user=world.bob, options={"prompt": "bob's"})
    dm_made = await app.veil.ctx.db.fetchval(
        "SELECT public_id FROM images WHERE owner_id = ? AND guild_id IS NULL", (world.alice.id,))
    bob_before = await image_ids(app, world.bob)
    alice_server_messages = [m for m in app.double.dm_messages(world.alice)
                             if m.attachments and m.guild_id is None][:1]
    alice_server_messages += app.double.messages_in(world.gallery)

    handle = await app.run("admin purge", user=world.moderator, options={"member": world.alice},
                           settle=False)
    prompt = await handle.wait_original()
    assert "Delete all 2 images" in prompt.content
    await confirm_with(app, handle, "Purge", world.moderator)
    assert "Deleted 2 images: their files" in handle.messages[-1].content
    assert "2 messages carrying them were retracted." in handle.messages[-1].content

    assert await image_ids(app, world.alice) == {dm_made}
    assert await image_ids(app, world.bob) == bob_before
    assert all(m.deleted for m in alice_server_messages)
    assert app.double.messages_in(world.gallery) == []
    remaining = image_dms(app, world.alice)
    assert len(remaining) == 1 and dm_made in remaining[0].content
    assert all(m.ephemeral for m in handle.messages)


async def test_purge_cancelled_deletes_nothing(veil_app):
    app = veil_app
    await app.run("imagine", user=app.world.alice, options={"prompt": "keep me"})
    before = await image_ids(app, app.world.alice)
    handle = await app.run("admin purge", user=app.world.moderator,
                           options={"member": app.world.alice}, settle=False)
    await confirm_with(app, handle, "Cancel", app.world.moderator)
    assert "Nothing was deleted" in handle.messages[-1].content
    assert await image_ids(app, app.world.alice) == before


async def test_takedown_removes_an_image_and_retracts_it_without_showing_it_to_the_moderator(
        veil_app):
    app = veil_app
    world = app.world
    image, post = await post_public_image(app, world.alice, "a rude drawing")

    handle = await admin(app, "takedown", image=image)

    assert handle.ephemeral
    assert "Deleted 1 image" in handle.messages[-1].content
    assert "1 message carrying it was retracted." in handle.messages[-1].content
    assert "not retracted yet" not in handle.messages[-1].content
    assert await image_ids(app, world.alice) == set()
    assert post.deleted
    to_moderator = [m for m in handle.messages] + app.double.dm_messages(world.moderator)
    assert all(not v.attachments for m in to_moderator for v in m.versions)
    assert not any(c.files for c in app.double.calls if handle.token in c.path)


async def test_takedown_of_an_unknown_image_says_so(veil_app):
    handle = await admin(veil_app, "takedown", image="zzzzzzzzzz")
    assert handle.ephemeral and "No image with that id" in handle.messages[-1].content


async def test_takedown_of_an_image_from_another_place_is_refused(veil_app):
    app = veil_app
    await app.run("imagine", user=app.world.alice, guild=None, options={"prompt": "dm art"})
    [image] = await image_ids(app, app.world.alice)
    handle = await admin(app, "takedown", image=image)
    assert "No image with that id" in handle.messages[-1].content
    assert await image_ids(app, app.world.alice) == {image}


async def test_takedown_suggests_reported_images(veil_app):
    app = veil_app
    world = app.world
    image, _ = await reported_image(app)
    handle = await app.double.autocomplete("admin takedown", focused="image", value="",
                                           user=world.moderator, guild=world.guild)
    choices = await handle.wait_choices()
    assert [c["value"] for c in choices] == [image]


# Oversight ----------------------------------------------------------------------------------


async def test_audit_shows_actions_by_id_without_prompts_or_link_tokens(veil_app):
    app = veil_app
    world = app.world
    await app.run("imagine", user=world.alice, options={"prompt": "a very secret lighthouse"})
    [image] = await image_ids(app, world.alice)
    link = await app.veil.links.create(image, Viewer(world.alice.id, guild_id=world.guild.id))
    await admin(app, "force-private", setting="on")
    await admin(app, "takedown", image=image)

    handle = await admin(app, "audit")
    text = handle.content
    assert handle.ephemeral
    for action in ("image.create", "link.create", "admin.force_private", "admin.takedown"):
        assert action in text
    assert image in text
    assert "lighthouse" not in text
    assert link.token not in text and link.token[:12] not in text

    only_alice = (await admin(app, "audit", member=world.alice, limit=1)).content
    assert len(only_alice.splitlines()) == 1
    assert "admin.force_private" not in only_alice


async def test_audit_of_a_quiet_server_says_it_is_empty(veil_app):
    assert "empty" in (await admin(veil_app, "audit")).content


async def test_reports_lists_a_report_filed_through_the_core(veil_app):
    app = veil_app
    world = app.world
    empty = await admin(app, "reports")
    assert "No open reports" in empty.content
    image, report = await reported_image(app, "looks like spam")
    handle = await admin(app, "reports")
    assert handle.ephemeral
    assert f"#{report.id} `{image}`" in handle.content
    assert "looks like spam" in handle.content
    assert f"<@{world.bob.id}>" in handle.content


async def test_stats_counts_images_owners_links_and_reports(veil_app):
    app = veil_app
    world = app.world
    await app.run("imagine", user=world.alice, options={"prompt": "a", "count": 2})
    await app.run("imagine", user=world.bob, options={"prompt": "b", "private": False})
    [bob_image] = await image_ids(app, world.bob)
    await app.veil.links.create(bob_image, Viewer(world.bob.id, guild_id=world.guild.id))
    await app.veil.moderation.report(Viewer(world.alice.id, guild_id=world.guild.id), bob_image,
                                     "meh")
    handle = await admin(app, "stats")
    assert handle.ephemeral
    for line in ("images: **3**", "private images: **2**", "owners: **2**", "live links: **1**",
                 "open reports: **1**"):
        assert line in handle.content


async def test_admin_answers_never_post_in_the_channel(veil_app):
    app = veil_app
    for path in ("policy", "channels", "stats", "audit", "reports"):
        await admin(app, path)
    assert app.double.messages_in(app.world.general) == []
    assert image_attachments(app.double.all_guild_channel_messages()) == []


async def test_reported_image_ids_are_not_suggested_to_a_plain_member(veil_app):
    app = veil_app
    world = app.world
    await reported_image(app)
    handle = await app.double.autocomplete("admin takedown", focused="image", value="",
                                           user=world.bob, guild=world.guild,
                                           bypass_client_checks=True)
    assert await handle.wait_choices() == []


async def test_everyone_cannot_become_the_moderator_role(veil_app):
    app = veil_app
    everyone = app.world.guild.id
    handle = await admin(app, "mod-role", role=everyone)
    assert "@everyone cannot be the moderator role" in handle.content
    assert (await app.veil.moderation.policy(app.world.guild.id)).mod_role_id is None
    refused = await app.run("admin policy", user=app.world.alice, bypass_client_checks=True)
    assert REFUSAL in refused.content


async def test_a_long_audit_log_fits_one_message_in_whole_lines(veil_app):
    app = veil_app
    for n in range(50):
        await app.veil.moderation.allow_channel(app.world.guild.id, 9_000_000 + n,
                                                app.world.moderator.id)
    handle = await admin(app, "audit", limit=50)
    lines = handle.content.splitlines()
    assert len(handle.content) <= 2000
    assert lines[-1].startswith("… and ") and lines[-1].endswith(" more")
    assert all(line.endswith(")") for line in lines[:-1])
    shown = len(lines) - 1
    assert lines[-1] == f"… and {50 - shown} more"


async def test_closing_a_report_ends_the_moderators_view_of_that_image(veil_app):
    app = veil_app
    world = app.world
    image = await new_image(app, world.alice)
    await app.veil.sharing.grant(Viewer(world.alice.id), "user", world.bob.id,
                                 image_public_id=image)
    report = await app.veil.moderation.report(Viewer(world.bob.id), image, "harassment")
    seen = await app.run("view", user=world.moderator, options={"image": image})
    assert image_dms(app, world.moderator), seen.content
    closed = await admin(app, "report-close", report=report.id)
    assert f"Closed report #{report.id}" in closed.content
    refused = await app.run("view", user=world.moderator, options={"image": image})
    assert f"no image with id `{image}` that you can see" in refused.messages[-1].content
