"""`/share`, `/unshare`, `/shares` and `/group` end to end against the Discord double.

Each test acts as the people involved would (Alice shares, Bob asks for the image) and checks
what they would notice: the DM that arrives, the refusal, the message that disappears.
"""

from __future__ import annotations

import re

from bot.core.models import Viewer
from tests.conftest import FakeClock
from tests.e2e import button_id, image_attachments, image_dms, new_image, texts

MENTION = re.compile(r"<@[&!]?\d+>")


async def view(app, user, image: str, **kwargs):
    return await app.run("view", user=user, options={"image": image}, **kwargs)


def got_image(handle) -> bool:
    return "Sent to your DMs" in texts(handle)


def refused(handle, image: str) -> bool:
    return f"There is no image with id `{image}` that you can see." in texts(handle)


def allowed_mentions_of_every_reply(app) -> list[dict | None]:
    """What the bot asked Discord to ping for each reply (response or followup) it sent with a
    mention in it."""
    found = []
    for call in app.double.calls:
        body = call.json if isinstance(call.json, dict) else None
        if body is None or not re.match(r"/(interactions|webhooks)/", call.path):
            continue
        data = body.get("data") if isinstance(body.get("data"), dict) else body
        if MENTION.search(str(data.get("content") or "")):
            found.append(data.get("allowed_mentions"))
    return found


# Sharing with a person ------------------------------------------------------------------------


async def test_bob_gets_an_image_alice_shared_with_him_by_dm(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    share = await app.run("share", user=app.world.alice,
                          options={"target": app.world.bob, "image": image})
    assert share.ephemeral
    assert f"Shared `{image}` with <@{app.world.bob.id}>" in texts(share)
    handle = await view(app, app.world.bob, image)
    assert got_image(handle)
    [dm] = image_dms(app, app.world.bob)
    [attachment] = dm.attachments
    assert image in attachment.filename
    assert image_attachments(app.double.all_guild_channel_messages()) == []


async def test_someone_nothing_was_shared_with_is_refused_exactly_like_for_an_unknown_id(
        veil_app):
    app = veil_app
    carol = app.double.add_user("carol")
    app.double.add_member(app.world.guild, carol)
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob, "image": image})
    asked = await view(app, carol, image)
    unknown = await view(app, carol, "zzzzzzzzzz")
    assert texts(asked).replace(image, "ID") == texts(unknown).replace("zzzzzzzzzz", "ID")
    assert refused(asked, image)
    assert image_dms(app, carol) == []


async def test_sharing_everything_with_bob_covers_images_alice_makes_later(veil_app):
    app = veil_app
    share = await app.run("share", user=app.world.alice, options={"target": app.world.bob})
    assert "all your images" in texts(share)
    later = await new_image(app, app.world.alice)
    assert got_image(await view(app, app.world.bob, later))


async def test_bob_hears_of_a_share_by_a_dm_that_carries_no_image(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob, "image": image})
    [note] = app.double.dm_messages(app.world.bob)
    assert image in note.content and note.attachments == []
    [sent] = app.double.calls_to("POST", rf"/channels/{note.channel_id}/messages$")
    assert sent.json["allowed_mentions"] == {"parse": []}


async def test_a_share_with_someone_whose_dms_are_closed_still_works(veil_app):
    app = veil_app
    app.double.close_dms(app.world.bob)
    image = await new_image(app, app.world.alice)
    share = await app.run("share", user=app.world.alice,
                          options={"target": app.world.bob, "image": image})
    assert f"Shared `{image}`" in texts(share)
    handle = await view(app, app.world.bob, image)
    assert any(m.ephemeral and m.attachments for m in handle.messages)


async def test_only_the_owner_can_share_an_image_and_others_get_the_not_found_answer(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    carol = app.double.add_user("carol")
    handle = await app.run("share", user=app.world.bob, options={"target": carol, "image": image})
    assert refused(handle, image)
    assert await app.veil.sharing.grants_by(app.world.bob.id) == []
    assert not got_image(await view(app, carol, image, guild=None))


async def test_bots_cannot_be_shared_with_nor_added_to_a_group(veil_app):
    app = veil_app
    robot = app.double.add_user("robot", bot=True)
    app.double.add_member(app.world.guild, robot)
    handle = await app.run("share", user=app.world.alice, options={"target": robot})
    assert "Bots cannot be shared with" in texts(handle)
    await app.run("group create", user=app.world.alice, options={"name": "crew"})
    added = await app.run("group add", user=app.world.alice,
                          options={"name": "crew", "member": robot})
    assert "Bots cannot be in a group" in texts(added)
    assert await app.veil.sharing.grants_by(app.world.alice.id) == []
    assert (await app.veil.sharing.group(app.world.alice.id, "crew")).member_ids == ()


async def test_sharing_with_yourself_is_refused_with_a_reason(veil_app):
    app = veil_app
    handle = await app.run("share", user=app.world.alice, options={"target": app.world.alice})
    assert "your own images" in texts(handle)


# Sharing with a role: checked live on every request -------------------------------------------


async def share_with_a_role_bob_has(app) -> tuple[object, str]:
    """Bob has the Artists role, and Alice shares a new image with that role."""
    artists = app.double.add_role(app.world.guild, "Artists")
    app.double.set_roles(app.world.guild, app.world.bob, [artists])
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": artists, "image": image})
    return artists, image


async def test_a_role_share_ends_as_soon_as_the_role_is_missing_from_the_interaction(veil_app):
    app = veil_app
    artists, image = await share_with_a_role_bob_has(app)
    assert got_image(await view(app, app.world.bob, image))
    assert refused(await view(app, app.world.bob, image, roles=[]), image)
    app.double.set_roles(app.world.guild, app.world.bob, [])
    assert refused(await view(app, app.world.bob, image), image)
    assert got_image(await view(app, app.world.bob, image, roles=[artists]))


async def test_a_role_share_does_not_reach_into_dms_where_discord_sends_no_roles(veil_app):
    app = veil_app
    _, image = await share_with_a_role_bob_has(app)
    assert refused(await view(app, app.world.bob, image, guild=None), image)


async def test_a_role_share_with_an_expiry_works_until_the_clock_passes_it(veil_app):
    app = veil_app
    clock = FakeClock()
    app.veil.ctx.clock = clock
    artists = app.double.add_role(app.world.guild, "Artists")
    image = await new_image(app, app.world.alice)
    share = await app.run("share", user=app.world.alice,
                          options={"target": artists, "image": image, "expires": "30m"})
    assert "for 30m" in texts(share)
    clock.advance(29 * 60)
    assert got_image(await view(app, app.world.bob, image, roles=[artists]))
    clock.advance(61)
    assert refused(await view(app, app.world.bob, image, roles=[artists]), image)


# Unsharing: access ends and what was sent is retracted ----------------------------------------


async def test_unsharing_retracts_the_dm_bob_got_and_refuses_his_next_view(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob, "image": image})
    await view(app, app.world.bob, image)
    [carrier] = image_dms(app, app.world.bob)
    handle = await app.run("unshare", user=app.world.alice, options={"target": app.world.bob})
    assert "Retracted 1 message" in texts(handle)
    assert carrier.deleted and carrier in app.double.deleted_messages
    assert image_dms(app, app.world.bob) == []
    assert refused(await view(app, app.world.bob, image), image)


async def test_a_retraction_discord_refuses_is_reported_as_still_to_come_not_as_done(veil_app):
    app = veil_app
    clock = FakeClock()
    app.veil.ctx.clock = clock
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob, "image": image})
    await view(app, app.world.bob, image)
    app.double.fail_next("DELETE", r"/channels/\d+/messages/\d+$", status=503)
    handle = await app.run("unshare", user=app.world.alice, options={"target": app.world.bob})
    assert "Retracted" not in texts(handle)
    assert "1 message I had sent them is not deleted yet" in texts(handle)
    assert len(image_dms(app, app.world.bob)) == 1
    clock.advance(60)  # past the back-off: the next retraction pass deletes it
    assert (await app.bot.deliverer.retract_due()).done == 1
    assert image_dms(app, app.world.bob) == []


async def test_unsharing_a_role_retracts_what_its_members_were_sent(veil_app):
    app = veil_app
    artists = app.double.add_role(app.world.guild, "Artists")
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": artists})
    await view(app, app.world.bob, image, roles=[artists])
    handle = await app.run("unshare", user=app.world.alice, options={"target": artists})
    assert "Retracted 1 message" in texts(handle)
    assert image_dms(app, app.world.bob) == []
    assert refused(await view(app, app.world.bob, image, roles=[artists]), image)


async def test_unsharing_something_never_shared_says_so(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    handle = await app.run("unshare", user=app.world.alice,
                           options={"target": app.world.bob, "image": image})
    assert f"You were not sharing `{image}` with <@{app.world.bob.id}>" in texts(handle)


async def test_unsharing_one_image_warns_that_a_share_of_everything_still_covers_it(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob})
    await app.run("share", user=app.world.alice, options={"target": app.world.bob, "image": image})
    handle = await app.run("unshare", user=app.world.alice,
                           options={"target": app.world.bob, "image": image})
    assert "still" in texts(handle) and "all your images" in texts(handle)
    assert got_image(await view(app, app.world.bob, image))


async def test_unsharing_one_image_covered_only_by_a_share_of_everything_explains_how(veil_app):
    app = veil_app
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice, options={"target": app.world.bob})
    handle = await app.run("unshare", user=app.world.alice,
                           options={"target": app.world.bob, "image": image})
    assert "You were not sharing" not in texts(handle)
    assert "all your images" in texts(handle) and "/unshare" in texts(handle)


async def test_unsharing_from_a_group_that_was_never_shared_with_says_so(veil_app):
    app = veil_app
    await app.run("group create", user=app.world.alice, options={"name": "family"})
    handle = await app.run("group unshare", user=app.world.alice, options={"name": "family"})
    assert "You were not sharing all your images with group **family**" in texts(handle)


# Listing --------------------------------------------------------------------------------------


async def test_shares_lists_user_role_and_group_shares_with_expiries_and_pings_nobody(veil_app):
    app = veil_app
    clock = FakeClock()
    app.veil.ctx.clock = clock
    artists = app.double.add_role(app.world.guild, "Artists")
    image = await new_image(app, app.world.alice)
    await app.run("share", user=app.world.alice,
                  options={"target": app.world.bob, "image": image, "expires": "2h"})
    await app.run("share", user=app.world.alice, options={"target": artists})
    await app.run("group create", user=app.world.alice, options={"name": "close friends"})
    await app.run("group share", user=app.world.alice, options={"name": "close friends",
                                                                 "image": image})
    handle = await app.run("shares", user=app.world.alice)
    text = texts(handle)
    assert handle.ephemeral
    assert f"`{image}` → <@{app.world.bob.id}> until <t:{int(clock.now + 7200)}:R>" in text
    assert f"all images → <@&{artists.id}>" in text
    assert f"`{image}` → group **close friends**" in text
    mentions = allowed_mentions_of_every_reply(app)
    assert mentions and all(m == {"parse": []} for m in mentions)


async def test_shares_says_when_nothing_is_shared(veil_app):
    app = veil_app
    handle = await app.run("shares", user=app.world.alice)
    assert "You are not sharing anything" in texts(handle)


async def test_a_long_list_of_shares_still_fits_in_one_discord_message(veil_app):
    app = veil_app
    people = [app.double.add_user(f"friend{n}") for n in range(45)]
    image = await new_image(app, app.world.alice)
    for person in people:
        await app.veil.sharing.grant(Viewer(app.world.alice.id), "user", person.id,
                                     image_public_id=image, expires_in=3600)
    handle = await app.run("shares", user=app.world.alice)
    assert handle.response_type == 4
    assert len(handle.content) <= 2000
    assert "more" in handle.content


# Groups ---------------------------------------------------------------------------------------


async def test_a_group_share_reaches_members_and_removing_one_retracts_and_refuses(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    created = await app.run("group create", user=alice, options={"name": "family"})
    assert "Created group **family**" in texts(created)
    again = await app.run("group create", user=alice, options={"name": "Family"})
    assert "You already have a group called" in texts(again)
    added = await app.run("group add", user=alice, options={"name": "family", "member": bob})
    assert "1 member)" in texts(added)
    await app.run("group share", user=alice, options={"name": "family", "image": image})
    assert got_image(await view(app, bob, image))
    [carrier] = image_dms(app, bob)
    removed = await app.run("group remove", user=alice, options={"name": "family",
                                                                   "member": bob})
    assert "Retracted 1 message" in texts(removed)
    assert carrier.deleted
    assert refused(await view(app, bob, image), image)


async def test_deleting_a_group_asks_first_and_cancel_keeps_it(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("group create", user=alice, options={"name": "team"})
    await app.run("group add", user=alice, options={"name": "team", "member": bob})
    await app.run("group share", user=alice, options={"name": "team"})
    await view(app, bob, image)
    prompt = await app.run("group delete", user=alice, options={"name": "team"}, settle=False)
    assert prompt.ephemeral and "Delete group **team**" in prompt.content
    await app.click(prompt.original, button_id(prompt.original, "Cancel"), user=alice)
    await app.settle(prompt)
    assert "Kept the group" in texts(prompt)
    assert got_image(await view(app, bob, image))
    prompt = await app.run("group delete", user=alice, options={"name": "team"}, settle=False)
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=alice)
    await app.settle(prompt)
    assert "Deleted group **team**" in texts(prompt)
    assert "Retracted 2 messages" in texts(prompt)
    assert image_dms(app, bob) == []
    assert await app.veil.sharing.groups(alice.id) == []
    assert refused(await view(app, bob, image), image)


async def test_group_list_shows_each_group_with_its_members_without_pinging(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    empty = await app.run("group list", user=alice)
    assert "You have no groups" in texts(empty)
    await app.run("group create", user=alice, options={"name": "family"})
    await app.run("group create", user=alice, options={"name": "work"})
    await app.run("group add", user=alice, options={"name": "work", "member": bob})
    handle = await app.run("group list", user=alice)
    assert "**family**: no members" in texts(handle)
    assert f"**work**: <@{bob.id}>" in texts(handle)
    assert all(m == {"parse": []} for m in allowed_mentions_of_every_reply(app))


async def test_group_names_autocomplete_from_your_own_groups_only(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    await app.run("group create", user=alice, options={"name": "family"})
    await app.run("group create", user=alice, options={"name": "work friends"})
    await app.run("group create", user=bob, options={"name": "bob's fans"})
    handle = await app.double.autocomplete("group share", focused="name", value="FRI",
                                           user=alice, guild=app.world.guild,
                                           channel=app.world.general)
    choices = await handle.wait_choices()
    assert [c["value"] for c in choices] == ["work friends"]
    handle = await app.double.autocomplete("group add", focused="name", value="",
                                           user=alice, guild=app.world.guild,
                                           channel=app.world.general)
    assert sorted(c["value"] for c in await handle.wait_choices()) == ["family", "work friends"]


async def test_group_names_with_markdown_or_everyone_are_shown_as_typed_and_ping_nobody(
        veil_app):
    app = veil_app
    handle = await app.run("group create", user=app.world.alice, options={"name": "@everyone *"})
    assert r"@everyone \*" in texts(handle)
    replies = [c for c in app.double.calls_to("POST", r"/interactions/")
               if "@everyone" in str(c.json)]
    assert replies and all(c.json["data"].get("allowed_mentions") == {"parse": []}
                           for c in replies)


# Durations ------------------------------------------------------------------------------------


async def test_an_unreadable_expiry_is_refused_with_an_example_of_the_format(veil_app):
    app = veil_app
    handle = await app.run("share", user=app.world.alice,
                           options={"target": app.world.bob, "expires": "banana"})
    assert "'banana' is not a duration" in texts(handle)
    assert "30m, 12h, 7d" in texts(handle)
    assert await app.veil.sharing.grants_by(app.world.alice.id) == []


async def test_an_expiry_longer_than_a_year_is_refused(veil_app):
    app = veil_app
    await app.run("group create", user=app.world.alice, options={"name": "g"})
    for command, options in (("share", {"target": app.world.bob}), ("group share", {"name": "g"})):
        handle = await app.run(command, user=app.world.alice, options={**options,
                                                                        "expires": "400d"})
        assert "at most a year" in texts(handle)
    assert await app.veil.sharing.grants_by(app.world.alice.id) == []
