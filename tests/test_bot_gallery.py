"""`/view`, `/gallery`, `/visibility`, `/delete`, `/access-log`, `/report` and the owner's
Share / Link / Delete buttons, end to end against the Discord double."""

from __future__ import annotations

import contextlib
import re

import pytest

from bot.client import VeilBot
from bot.core.models import Removal, Viewer
from bot.core.veil import Veil
from cogs.gallery import removal_text
from tests.e2e import (
    App,
    assert_no_private_image_in_any_channel,
    blob_files,
    button_id,
    image_attachments,
    image_dms,
    new_image,
    newest_image,
    png,
    texts,
)

NOT_VISIBLE = "There is no image with id `{}` that you can see."


# Helpers -------------------------------------------------------------------------------------

async def imagine(app, user, *, private: bool, channel=None, guild=True) -> str:
    await app.run("imagine", user=user, channel=channel, guild=guild,
                  options={"prompt": f"art by {user.username}", "private": private})
    return await newest_image(app, user)


async def share(app, owner, image: str, target) -> None:
    handle = await app.run("share", user=owner, options={"target": target, "image": image})
    assert "Shared" in handle.original.content, handle.original.content


def add_carol(app):
    carol = app.double.add_user("carol")
    app.double.add_member(app.world.guild, carol)
    return carol


async def image_exists(app, image: str) -> bool:
    return bool(await app.veil.ctx.db.fetchval("SELECT 1 FROM images WHERE public_id = ?",
                                               (image,)))


async def blob_name(app, image: str) -> str:
    return await app.veil.ctx.db.fetchval("SELECT blob_name FROM images WHERE public_id = ?",
                                          (image,))


def owner_button(action: str, image: str) -> str:
    return f"veil:{action}:{image}"


# /view ---------------------------------------------------------------------------------------

async def test_viewing_an_image_shared_with_bob_dms_it_to_him_and_records_the_grant(veil_app):
    app = veil_app
    await app.permit(app.world.general)
    image = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, image, app.world.bob)
    handle = await app.run("view", user=app.world.bob, options={"image": image})
    [dm] = image_dms(app, app.world.bob)
    assert [a.filename for a in dm.attachments] == [f"veil-{image}.png"]
    assert f"shared with you by <@{app.world.alice.id}>" in dm.content
    assert handle.ephemeral and "Sent to your DMs" in texts(handle)
    grant_id = await app.veil.ctx.db.fetchval("SELECT id FROM grants")
    recorded = [tuple(row) for row in await app.veil.ctx.db.fetchall(
        "SELECT recipient_id, message_id, kind, grant_id FROM deliveries"
        " WHERE recipient_id = ?", (app.world.bob.id,))]
    assert recorded == [(app.world.bob.id, dm.id, "dm", grant_id)]
    assert dm.find_component(owner_button("delete", image)) is None, \
        "a grantee must not get the owner's buttons"
    await assert_no_private_image_in_any_channel(app)


async def test_strangers_and_wrong_ids_get_the_same_no_image_you_can_see_answer(veil_app):
    app = veil_app
    carol = add_carol(app)
    image = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, image, app.world.bob)
    stranger = app.double.add_user("stranger")
    answers = []
    for user, guild, wanted in [(carol, True, image), (stranger, None, image),
                                (app.world.bob, True, "zzzzzzzz")]:
        handle = await app.run("view", user=user, guild=guild, options={"image": wanted})
        answers.append(handle.original.content)
        assert handle.ephemeral
        assert image_dms(app, user) == []
    assert answers == [NOT_VISIBLE.format(image), NOT_VISIBLE.format(image),
                       NOT_VISIBLE.format("zzzzzzzz")]
    await assert_no_private_image_in_any_channel(app)


async def test_viewing_my_own_private_image_in_a_permitted_channel_sends_it_by_dm_with_buttons(
        veil_app):
    app = veil_app
    await app.permit(app.world.general)
    image = await imagine(app, app.world.alice, private=True)
    handle = await app.run("view", user=app.world.alice, options={"image": image})
    first, second = image_dms(app, app.world.alice)
    for action in ("share", "link", "delete"):
        assert second.find_component(owner_button(action, image)) is not None
    assert "Sent to your DMs" in texts(handle)
    assert len(await app.veil.images.deliveries(image)) == 2
    await assert_no_private_image_in_any_channel(app)


async def test_viewing_a_public_image_in_a_permitted_channel_posts_it_there(veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await imagine(app, app.world.alice, private=False)
    await app.run("view", user=app.world.bob, channel=app.world.gallery,
                  options={"image": image})
    [post] = app.double.messages_in(app.world.gallery)
    assert [a.filename for a in post.attachments] == [f"veil-{image}.png"]
    assert ("channel", post.channel_id, post.id) in await app.veil.images.deliveries(image)


async def test_a_public_image_is_never_posted_in_another_servers_permitted_channel(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=False)
    await share(app, app.world.alice, image, app.world.bob)
    other = app.double.add_guild("Elsewhere", channels=("lobby",))
    app.double.add_member(other, app.world.bob)
    lobby = app.double.state.channels[other.channel_ids[0]]
    await app.veil.moderation.allow_channel(other.id, lobby.id, 1)
    handle = await app.run("view", user=app.world.bob, guild=other, channel=lobby,
                           options={"image": image})
    assert app.double.messages_in(lobby, include_deleted=True) == []
    [dm] = image_dms(app, app.world.bob)
    assert [a.filename for a in dm.attachments] == [f"veil-{image}.png"]
    assert "Sent to your DMs" in texts(handle)


async def test_a_shared_private_image_viewed_with_closed_dms_arrives_as_an_ephemeral_copy(
        veil_app):
    app = veil_app
    await app.permit(app.world.general)
    image = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, image, app.world.bob)
    app.double.close_dms(app.world.bob)
    handle = await app.run("view", user=app.world.bob, options={"image": image})
    copies = [m for m in handle.messages if m.attachments]
    assert [m.ephemeral for m in copies] == [True]
    assert "cannot be retracted" in texts(handle)
    assert app.double.messages_in(app.world.general) == []
    await assert_no_private_image_in_any_channel(app)


async def test_viewing_a_public_image_where_i_may_not_post_sends_it_by_dm_and_says_why(
        veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await imagine(app, app.world.alice, private=False)
    app.double.deny_channel(app.world.gallery)
    handle = await app.run("view", user=app.world.bob, channel=app.world.gallery,
                           options={"image": image})
    assert app.double.messages_in(app.world.gallery, include_deleted=True) == []
    [dm] = image_dms(app, app.world.bob)
    assert [a.filename for a in dm.attachments] == [f"veil-{image}.png"]
    assert "missing permission" in texts(handle)


# /gallery ------------------------------------------------------------------------------------

async def test_gallery_shows_my_images_and_shared_ones_as_ephemeral_thumbnails_with_paging(
        veil_app):
    app = veil_app
    await app.permit(app.world.general)
    bobs = await imagine(app, app.world.bob, private=True)
    await share(app, app.world.bob, bobs, app.world.alice)
    for n in range(10):
        await app.veil.images.create(app.world.alice.id, png((n * 20, 10, 10)),
                                     guild_id=app.world.guild.id, source="upload",
                                     requested_private=True)
    handle = await app.run("gallery", user=app.world.alice)
    page = handle.original
    assert page.ephemeral
    assert len(page.embeds) == 10 and len(page.attachments) == 10
    assert all(a.filename.endswith("-thumb.png") for a in page.attachments)
    assert "More on page 2" in page.content
    assert sum("yours" in e["description"] for e in page.embeds) == 10
    handle = await app.run("gallery", user=app.world.alice, options={"page": 2})
    [embed] = handle.original.embeds
    assert embed["title"] == bobs and f"shared by <@{app.world.bob.id}>" in embed["description"]
    assert "More on page" not in handle.original.content
    empty = await app.run("gallery", user=app.world.alice, options={"page": 3})
    assert empty.original.content == "There is no page 3."
    carol = add_carol(app)
    nothing = await app.run("gallery", user=carol)
    assert nothing.original.attachments == [] and "Nothing here yet" in nothing.content
    await assert_no_private_image_in_any_channel(app)


# /visibility ---------------------------------------------------------------------------------

async def test_making_a_public_image_private_retracts_its_channel_post(veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await imagine(app, app.world.alice, private=False, channel=app.world.gallery)
    [post] = app.double.messages_in(app.world.gallery)
    handle = await app.run("visibility", user=app.world.alice,
                           options={"image": image, "setting": "private"})
    assert post.deleted
    assert app.double.messages_in(app.world.gallery) == []
    assert "now **private**" in handle.content and "Deleted 1 copy of it" in handle.content
    assert handle.ephemeral
    await app.run("view", user=app.world.alice, channel=app.world.gallery,
                  options={"image": image})
    assert app.double.messages_in(app.world.gallery) == []
    assert len(image_dms(app, app.world.alice)) == 1
    # the post was made while the image was public; nothing after that carried it
    later = [m for m in app.double.all_guild_channel_messages(include_deleted=True)
             if m is not post]
    assert image_attachments(later) == []


async def test_only_the_owner_can_change_visibility(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    handle = await app.run("visibility", user=app.world.bob,
                           options={"image": image, "setting": "public"})
    assert handle.original.content == NOT_VISIBLE.format(image)
    assert await app.veil.ctx.db.fetchval(
        "SELECT visibility FROM images WHERE public_id = ?", (image,)) == "private"


# /access-log and /report ---------------------------------------------------------------------

async def test_the_access_log_shows_that_bob_viewed_alices_image_through_a_share(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    before = await app.run("access-log", user=app.world.alice)
    assert "Nobody else has viewed" in before.original.content
    await share(app, app.world.alice, image, app.world.bob)
    await app.run("view", user=app.world.bob, options={"image": image})
    handle = await app.run("access-log", user=app.world.alice, options={"image": image})
    assert handle.ephemeral
    [line] = handle.original.content.splitlines()
    assert line.startswith(f"`{image}` · <@{app.world.bob.id}> · through a share")
    stranger = await app.run("access-log", user=app.world.bob, options={"image": image})
    assert stranger.original.content == NOT_VISIBLE.format(image)


async def test_a_long_access_log_fits_one_message_in_whole_lines(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await share(app, alice, image, bob)
    for _ in range(60):
        await app.veil.images.open(image, Viewer(bob.id))
    handle = await app.run("access-log", user=alice)
    assert handle.ephemeral and handle.messages == [handle.original]
    text = handle.original.content
    assert len(text) <= 2000
    *lines, rest = text.splitlines()
    assert lines and all(line.startswith(f"`{image}` · <@{bob.id}> · through a share · <t:")
                         and line.endswith(":R>") for line in lines)
    assert rest == f"… and {60 - len(lines)} more"


async def test_a_report_lets_the_moderator_view_that_one_image_and_no_other_private_one(
        veil_app):
    app = veil_app
    mod = app.world.moderator
    reported = await imagine(app, app.world.alice, private=True)
    other = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, reported, app.world.bob)
    before = await app.run("view", user=mod, options={"image": reported})
    assert before.original.content == NOT_VISIBLE.format(reported)
    handle = await app.run("report", user=app.world.bob,
                           options={"image": reported, "reason": "not ok"})
    assert handle.ephemeral and f"Reported `{reported}`" in handle.original.content
    await app.run("view", user=mod, options={"image": reported})
    [dm] = image_dms(app, mod)
    assert [a.filename for a in dm.attachments] == [f"veil-{reported}.png"]
    refused = await app.run("view", user=mod, options={"image": other})
    assert refused.original.content == NOT_VISIBLE.format(other)
    assert len(image_dms(app, mod)) == 1
    carol = add_carol(app)
    nosy = await app.run("report", user=carol, options={"image": other, "reason": "let me see"})
    assert nosy.original.content == NOT_VISIBLE.format(other)
    await assert_no_private_image_in_any_channel(app)


# /delete -------------------------------------------------------------------------------------

async def test_delete_asks_ephemerally_and_cancel_keeps_the_image(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    prompt = await app.run("delete", user=app.world.alice, options={"image": image},
                           settle=False)
    await prompt.wait_original()
    assert prompt.ephemeral and "for good" in prompt.original.content
    cancel = await app.click(prompt.original, button_id(prompt.original, "Cancel"),
                             user=app.world.alice)
    await app.settle(prompt)
    assert all(c.get("disabled") for c in prompt.original.iter_components() if c["type"] == 2)
    assert "Kept it" in texts(prompt) + texts(cancel)
    assert await image_exists(app, image)
    assert app.double.deleted_messages == []
    again = await app.run("view", user=app.world.alice, options={"image": image})
    assert "Sent to your DMs" in texts(again)


async def test_delete_retracts_every_dm_and_channel_post_destroys_the_blob_and_forgets_the_id(
        veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await imagine(app, app.world.alice, private=False, channel=app.world.gallery)
    await app.run("view", user=app.world.alice, options={"image": image})  # a DM too
    await share(app, app.world.alice, image, app.world.bob)
    await app.run("view", user=app.world.bob, guild=None, options={"image": image})
    carrying = [m for m in app.double.state.messages.values()
                if any(image in a.filename for a in m.attachments)]
    assert {m.channel_id for m in carrying} == {
        app.world.gallery.id, app.double.dm_channel(app.world.alice).id,
        app.double.dm_channel(app.world.bob).id}
    blob = await blob_name(app, image)
    assert any(p.name.startswith(blob) for p in blob_files(app))
    prompt = await app.run("delete", user=app.world.alice, options={"image": image},
                           settle=False)
    await prompt.wait_original()
    await app.click(prompt.original, button_id(prompt.original, "Delete"),
                    user=app.world.alice)
    await app.settle(prompt)
    assert all(m.deleted for m in carrying)
    assert {m.id for m in app.double.deleted_messages} >= {m.id for m in carrying}
    assert "Deleted 1 image" in texts(prompt)
    assert "3 messages carrying it were retracted" in texts(prompt)
    assert not await image_exists(app, image)
    assert not any(p.name.startswith(blob) for p in blob_files(app))
    assert await app.veil.images.pending_retraction_count() == 0
    gone = await app.run("view", user=app.world.alice, options={"image": image})
    assert gone.original.content == NOT_VISIBLE.format(image)


async def test_a_delete_when_discord_refuses_a_retraction_says_so_and_keeps_trying(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    await app.run("gallery", user=app.world.alice)
    [dm] = image_dms(app, app.world.alice)
    app.double.fail_next("DELETE", r"/channels/\d+/messages/\d+$", status=503)
    prompt = await app.run("delete", user=app.world.alice, options={"image": image},
                           settle=False)
    await prompt.wait_original()
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=app.world.alice)
    await app.settle(prompt)
    assert not dm.deleted
    said = texts(prompt)
    assert "1 message carrying it is not retracted yet" in said and "keep trying" in said
    assert "was retracted" not in said and "were retracted" not in said
    assert "1 ephemeral copy cannot be retracted" in said
    assert not await image_exists(app, image)
    assert await app.veil.images.pending_retraction_count() == 1


async def test_an_unanswered_delete_prompt_times_out_disables_its_buttons_and_keeps_the_image(
        veil_app):
    app = veil_app
    app.bot.get_cog("Gallery").confirm_wait_s = 0.2
    image = await imagine(app, app.world.alice, private=True)
    prompt = await app.run("delete", user=app.world.alice, options={"image": image})
    assert "nothing was changed" in prompt.original.content
    buttons = [c for c in prompt.original.iter_components() if c["type"] == 2]
    assert buttons and all(c.get("disabled") for c in buttons)
    assert await image_exists(app, image)
    assert app.double.deleted_messages == []


def test_the_removal_text_agrees_in_number_with_what_was_removed():
    one = removal_text(Removal(("a",), retractions_queued=1), 0)
    assert one.startswith("Deleted 1 image: the file, its key, its links and shares are gone")
    assert "1 message carrying it was retracted." in one
    many = removal_text(Removal(("a", "b"), retractions_queued=2, ephemeral_copies=2), 0)
    assert many.startswith("Deleted 2 images: their files, keys, links and shares are gone")
    assert "2 messages carrying them were retracted." in many
    assert "2 ephemeral copies cannot be retracted" in many
    partly = removal_text(Removal(("a", "b"), retractions_queued=3, ephemeral_copies=1), 2)
    assert "1 message carrying them was retracted." in partly
    assert "2 messages carrying them are not retracted yet" in partly
    assert "1 ephemeral copy cannot be retracted" in partly
    waiting = removal_text(Removal(("a",), retractions_queued=1), 1)
    assert "1 message carrying it is not retracted yet" in waiting
    assert "was retracted" not in waiting


async def test_a_failing_answer_to_the_delete_prompt_gets_the_error_message_and_can_be_retried(
        veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    prompt = await app.run("delete", user=app.world.alice, options={"image": image},
                           settle=False)
    await prompt.wait_original()
    app.double.fail_next("POST", r"/interactions/\d+/[^/]+/callback", status=400)
    failed = await app.double.click(prompt.original, button_id(prompt.original, "Delete"),
                                    user=app.world.alice)
    await failed.wait_original()
    assert failed.ephemeral
    assert "Something went wrong on my side (reference `" in texts(failed)
    assert await image_exists(app, image)
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=app.world.alice)
    await app.settle(prompt)
    assert not await image_exists(app, image)
    assert "Deleted 1 image" in texts(prompt)


async def test_bob_cannot_delete_alices_image(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, image, app.world.bob)
    handle = await app.run("delete", user=app.world.bob, options={"image": image})
    assert handle.original.content == NOT_VISIBLE.format(image)
    assert handle.original.components == []
    assert await image_exists(app, image)


# The owner's buttons -------------------------------------------------------------------------

async def test_owner_buttons_come_with_the_dm_and_with_a_channel_post(veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    private = await imagine(app, app.world.alice, private=True)
    public = await imagine(app, app.world.alice, private=False, channel=app.world.gallery)
    [dm] = image_dms(app, app.world.alice)
    [post] = app.double.messages_in(app.world.gallery)
    for message, image in ((dm, private), (post, public)):
        labels = [c.get("label") for c in message.iter_components() if c["type"] == 2]
        assert labels == ["Share", "Link", "Delete", "Details", "Variations", "Re-roll"]
        assert message.find_component(owner_button("delete", image)) is not None


async def test_bob_pressing_alices_delete_button_is_told_only_the_owner_can_and_nothing_goes(
        veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await imagine(app, app.world.alice, private=False, channel=app.world.gallery)
    [post] = app.double.messages_in(app.world.gallery)
    for action in ("delete", "link", "share"):
        handle = await app.click(post, owner_button(action, image), user=app.world.bob)
        assert handle.ephemeral
        assert "Only the owner" in handle.original.content
        assert handle.original.components == []
    assert not post.deleted and app.double.deleted_messages == []
    assert await image_exists(app, image)
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM links") == 0


async def test_alices_delete_button_asks_then_deletes_the_image_and_its_messages(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    prompt = await app.double.click(dm, owner_button("delete", image), user=app.world.alice)
    await prompt.wait_original()
    assert prompt.ephemeral and "for good" in prompt.original.content
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=app.world.alice)
    await app.settle(prompt)
    assert dm.deleted
    assert not await image_exists(app, image)
    assert "Deleted 1 image: the file, its key" in texts(prompt)
    assert "1 message carrying it was retracted." in texts(prompt)
    await assert_no_private_image_in_any_channel(app, also_private=[image])


async def test_the_link_button_replies_privately_with_a_veil_link(veil_app):
    app = veil_app
    await app.permit(app.world.general)
    image = await imagine(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    handle = await app.click(dm, owner_button("link", image), user=app.world.alice)
    assert handle.ephemeral
    urls = re.findall(r"https://\S+", handle.original.content)
    assert len(urls) == 1 and urls[0].startswith("https://veil.example/l/")
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM links") == 1
    await assert_no_private_image_in_any_channel(app)


async def test_the_share_button_opens_a_picker_and_picking_bob_lets_him_view_it(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    denied = await app.run("view", user=app.world.bob, options={"image": image})
    assert denied.original.content == NOT_VISIBLE.format(image)
    [dm] = image_dms(app, app.world.alice)
    picker = await app.click(dm, owner_button("share", image), user=app.world.alice)
    assert picker.ephemeral and picker.original.content == f"Who should see `{image}`?"
    [select] = [c for c in picker.original.iter_components() if c["type"] == 7]
    await app.click(picker.original, select["custom_id"], user=app.world.alice,
                    values=[app.world.bob])
    assert f"Shared `{image}` with <@{app.world.bob.id}>" in picker.original.content
    assert picker.original.components == []
    await app.run("view", user=app.world.bob, options={"image": image})
    [got] = image_dms(app, app.world.bob)
    assert [a.filename for a in got.attachments] == [f"veil-{image}.png"]
    await assert_no_private_image_in_any_channel(app)


async def test_picking_bob_with_the_share_button_tells_him_by_the_same_dm_as_share(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    picked = await imagine(app, alice, private=True)
    [dm] = image_dms(app, alice)
    typed = await new_image(app, alice)
    await share(app, alice, typed, bob)
    picker = await app.click(dm, owner_button("share", picked), user=alice)
    [select] = [c for c in picker.original.iter_components() if c["type"] == 7]
    await app.click(picker.original, select["custom_id"], user=alice, values=[bob])
    by_command, by_button = app.double.dm_messages(bob)
    assert by_button.content == by_command.content.replace(typed, picked)
    assert picked in by_button.content and f"<@{alice.id}>" in by_button.content
    assert by_button.attachments == [] and "art by" not in by_button.content
    sent = app.double.calls_to("POST", rf"/channels/{by_button.channel_id}/messages$")
    assert [c.json["allowed_mentions"] for c in sent] == [{"parse": []}, {"parse": []}]


async def test_the_share_picker_refuses_a_bot(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    picker = await app.click(dm, owner_button("share", image), user=app.world.alice)
    [select] = [c for c in picker.original.iter_components() if c["type"] == 7]
    chosen = await app.click(picker.original, select["custom_id"], user=app.world.alice,
                             values=[app.double.bot_user_id, app.world.bob])
    assert chosen.ephemeral and "Bots cannot be shared with" in texts(chosen)
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM grants") == 0


async def test_the_delete_button_on_an_ephemeral_copy_works_for_closed_dms(veil_app):
    app = veil_app
    app.double.close_dms(app.world.alice)
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "quiet"})
    image = await newest_image(app, app.world.alice)
    [copy] = [m for m in handle.messages if m.attachments]
    assert copy.ephemeral
    prompt = await app.double.click(copy, owner_button("delete", image), user=app.world.alice)
    await prompt.wait_original()
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=app.world.alice)
    await app.settle(prompt)
    assert not await image_exists(app, image)
    assert "1 ephemeral copy cannot be retracted" in texts(prompt)


async def test_a_button_on_a_deleted_image_says_the_image_is_gone(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    # Discord refuses the retraction for now, so the message (and its button) is still there.
    app.double.fail_next("DELETE", r"/channels/\d+/messages/\d+$", status=503, times=3)
    await app.veil.images.delete(image, Viewer(app.world.alice.id))
    handle = await app.click(dm, owner_button("link", image), user=app.world.alice)
    assert handle.ephemeral and "no longer exists" in handle.original.content
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM links") == 0


async def test_while_the_links_area_reloads_its_button_says_so_and_the_other_buttons_work(
        veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    await app.bot.unload_extension("cogs.links")
    handle = await app.click(dm, owner_button("link", image), user=app.world.alice)
    assert handle.ephemeral and "unavailable for a moment" in handle.original.content
    details = await app.click(dm, owner_button("details", image), user=app.world.alice)
    assert details.ephemeral and details.original.embeds
    await app.bot.load_extension("cogs.links")
    link = await app.click(dm, owner_button("link", image), user=app.world.alice)
    assert link.original.content.count("https://veil.example/l/") == 1


# Restarts ------------------------------------------------------------------------------------

@pytest.fixture
async def restart(veil_app):
    """Stop the running bot and start a new VeilBot over a freshly opened Veil on the same data
    folder and the same Discord double; returns the new App."""
    async with contextlib.AsyncExitStack() as stack:

        async def restart_now() -> App:
            app = veil_app
            await app.bot.close()
            veil = await stack.enter_async_context(await Veil.open(app.bot.settings.data_dir))
            bot = VeilBot(settings=app.bot.settings, veil=veil, queue=app.bot.queue,
                          guild_ready_timeout=0.01)
            await stack.enter_async_context(app.double.running(bot))
            return App(app.double, app.world, bot, veil)

        yield restart_now


async def test_owner_buttons_still_work_after_the_bot_restarts(veil_app, restart):
    old = veil_app
    image = await imagine(old, old.world.alice, private=True)
    [dm] = image_dms(old, old.world.alice)
    app = await restart()
    assert app.bot is not old.bot and app.bot.is_ready()
    link = await app.click(dm, owner_button("link", image), user=app.world.alice)
    assert link.original.content.count("https://veil.example/l/") == 1
    prompt = await app.double.click(dm, owner_button("delete", image), user=app.world.alice)
    await prompt.wait_original()
    await app.click(prompt.original, button_id(prompt.original, "Delete"), user=app.world.alice)
    await app.settle(prompt)
    assert dm.deleted
    assert not await image_exists(app, image)


async def test_the_access_log_shows_that_bob_saw_a_thumbnail_in_his_gallery(veil_app):
    app = veil_app
    image = await imagine(app, app.world.alice, private=True)
    await share(app, app.world.alice, image, app.world.bob)
    await app.run("gallery", user=app.world.bob)
    handle = await app.run("access-log", user=app.world.alice, options={"image": image})
    assert "through a thumbnail in their gallery" in handle.original.content
