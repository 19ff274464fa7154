"""The owner's Details, Re-roll and Variations buttons on delivered images, end to end against
the Discord double: only the owner gets the prompt (ephemerally), and new images go through the
queue with its per-user limit and take the original's visibility unless the server forces
private mode."""

from __future__ import annotations

import logging

import pytest

from bot.core.models import Viewer
from bot.generate import GenerationQueue
from tests.e2e import (
    GatedGenerator,
    assert_no_private_image_in_any_channel,
    button_id,
    image_attachments,
    image_dms,
    newest_image,
    png,
)

SECRET = "the surprise party plans for dana"


def owner_button(action: str, image: str) -> str:
    return f"veil:{action}:{image}"


async def make(app, user, *, private: bool, channel=None, count: int = 1,
               prompt: str = SECRET) -> str:
    await app.run("imagine", user=user, channel=channel,
                  options={"prompt": prompt, "private": private, "count": count})
    return await newest_image(app, user)


def embed_text(handle) -> str:
    return "\n".join(str(embed) for message in handle.messages for embed in message.embeds)


async def test_details_show_the_owner_the_prompt_seed_size_and_generator_only_ephemerally(
        veil_app, caplog):
    app = veil_app
    caplog.set_level(logging.DEBUG)
    image = await make(app, app.world.alice, private=True, count=2)
    [dm] = image_dms(app, app.world.alice)
    handle = await app.click(dm, owner_button("details", image), user=app.world.alice)
    [reply] = handle.messages
    assert reply.ephemeral
    shown = embed_text(handle)
    assert SECRET in shown
    details = await app.veil.images.details(image, Viewer(app.world.alice.id))
    size = app.bot.settings.image_size
    assert str(details.params.seed) in shown and f"{size}×{size}" in shown
    assert "Veil's built-in generator" in shown
    assert SECRET not in caplog.text, "the prompt reached a log line"
    for message in app.double.all_guild_channel_messages(include_deleted=True):
        assert SECRET not in message.content and SECRET not in str(message.embeds)


async def test_seeds_of_a_batch_count_up_so_each_image_can_be_drawn_again(veil_app):
    app = veil_app
    await make(app, app.world.alice, private=True, count=2)
    first, second = await app.veil.images.owned(app.world.alice.id, limit=2)
    owner = Viewer(app.world.alice.id)
    one = (await app.veil.images.details(first.public_id, owner)).params
    two = (await app.veil.images.details(second.public_id, owner)).params
    assert {one.seed, two.seed} == {one.seed, one.seed + 1} or \
        {one.seed, two.seed} == {two.seed, two.seed + 1}
    assert one.batch_size == two.batch_size == 2


async def test_someone_else_pressing_details_on_a_channel_post_or_a_forged_copy_learns_nothing(
        veil_app, caplog):
    app = veil_app
    caplog.set_level(logging.DEBUG)
    await app.permit(app.world.gallery)
    image = await make(app, app.world.alice, private=False, channel=app.world.gallery)
    [post] = app.double.messages_in(app.world.gallery)
    handle = await app.click(post, owner_button("details", image), user=app.world.bob)
    assert "Only the owner" in handle.messages[0].content
    assert SECRET not in embed_text(handle) + "\n".join(m.content for m in handle.messages)
    # Bob copies Alice's button onto a message of his own and clicks it there.
    forged = app.double.post_user_message(app.world.general, app.world.bob, "look")
    forged.components = [{"type": 1, "components": [{
        "type": 2, "style": 2, "label": "Details", "custom_id": owner_button("details", image)}]}]
    private = await make(app, app.world.alice, private=True)
    for target in (image, private):
        forged.components[0]["components"][0]["custom_id"] = owner_button("details", target)
        handle = await app.click(forged, owner_button("details", target), user=app.world.bob)
        texts = "\n".join(m.content for m in handle.messages) + embed_text(handle)
        assert "Only the owner" in texts and SECRET not in texts
        assert all(m.ephemeral for m in handle.messages)
    assert SECRET not in caplog.text


async def test_an_upload_has_no_details_reroll_or_variations_buttons(veil_app):
    app = veil_app
    upload = app.double.upload(png(), "cat.png", user=app.world.alice)
    await app.run("upload", user=app.world.alice, options={"image": upload})
    [dm] = image_dms(app, app.world.alice)
    labels = [c.get("label") for c in dm.iter_components() if c["type"] == 2]
    assert labels == ["Share", "Link", "Delete"]


@pytest.mark.slow
async def test_reroll_draws_the_same_prompt_with_a_new_seed_and_the_same_batch_size(veil_app):
    app = veil_app
    image = await make(app, app.world.alice, private=True, count=2)
    [dm] = image_dms(app, app.world.alice)
    before = await app.veil.images.details(image, Viewer(app.world.alice.id))
    handle = await app.click(dm, button_id(dm, "Re-roll"), user=app.world.alice)
    assert "Done:" in handle.original.content and handle.ephemeral
    dms = image_dms(app, app.world.alice)
    assert len(dms) == 2 and len(dms[-1].attachments) == 2
    new = await newest_image(app, app.world.alice)
    after = await app.veil.images.details(new, Viewer(app.world.alice.id))
    assert after.prompt == SECRET
    assert after.params.seed not in (before.params.seed, before.params.seed + 1)
    assert dms[-1].attachments[0].data not in {a.data for a in dms[0].attachments}
    [record] = await app.veil.images.owned(app.world.alice.id, limit=1)
    assert record.visibility == "private"


@pytest.mark.slow
async def test_variations_keep_the_seed_and_change_the_picture_a_little(veil_app):
    app = veil_app
    image = await make(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    await app.click(dm, owner_button("vary", image), user=app.world.alice)
    new = await newest_image(app, app.world.alice)
    owner = Viewer(app.world.alice.id)
    original = (await app.veil.images.details(image, owner)).params
    varied = (await app.veil.images.details(new, owner)).params
    assert varied.seed == original.seed
    assert varied.variation_seed is not None and 0 < varied.variation_strength < 0.5
    old_bytes = image_dms(app, app.world.alice)[0].attachments[0].data
    new_bytes = image_dms(app, app.world.alice)[-1].attachments[0].data
    assert old_bytes != new_bytes


@pytest.mark.slow
async def test_a_public_images_reroll_is_public_but_private_once_the_server_forces_it(veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    image = await make(app, app.world.alice, private=False, channel=app.world.gallery)
    [post] = app.double.messages_in(app.world.gallery)
    await app.click(post, owner_button("reroll", image), user=app.world.alice)
    assert len(image_attachments(app.double.messages_in(app.world.gallery))) == 2
    [record] = await app.veil.images.owned(app.world.alice.id, limit=1)
    assert record.visibility == "public"
    await app.veil.moderation.update_policy(app.world.guild.id, 1, force_private=True)
    # The click comes from Alice's DMs this time: the original's server still decides.
    await app.run("view", user=app.world.alice, guild=None, options={"image": image})
    dm = image_dms(app, app.world.alice)[-1]
    await app.click(dm, owner_button("reroll", image), user=app.world.alice)
    [record] = await app.veil.images.owned(app.world.alice.id, limit=1)
    assert record.visibility == "private" and record.guild_id == app.world.guild.id
    assert len(image_attachments(app.double.messages_in(app.world.gallery))) == 2
    await assert_no_private_image_in_any_channel(app)


async def test_reroll_respects_the_per_user_queue_limit(veil_app):
    app = veil_app
    image = await make(app, app.world.alice, private=True)
    [dm] = image_dms(app, app.world.alice)
    gated = GatedGenerator()
    app.bot.queue = GenerationQueue(gated, per_user_limit=2)
    first = await app.double.click(dm, owner_button("reroll", image), user=app.world.alice)
    second = await app.double.click(dm, owner_button("vary", image), user=app.world.alice)
    await app.double.wait_for(lambda: gated.started == 1 and app.bot.queue.waiting == 1,
                              what="two follow-ups in the queue")
    third = await app.double.click(dm, owner_button("reroll", image), user=app.world.alice)
    await third.wait_original()
    await app.double.wait_for(lambda: "waiting or running" in (third.original.content or ""),
                              what="the third to be refused")
    assert "2 image requests waiting or running" in third.original.content
    assert third.ephemeral
    gated.gate.set()
    await app.settle()
    assert "Done:" in first.original.content and "Done:" in second.original.content
    assert len(await app.veil.images.owned(app.world.alice.id)) == 3
    await app.click(third.original, button_id(third.original, "Try again"),
                    user=app.world.alice)
    assert "Done:" in third.original.content
    assert len(await app.veil.images.owned(app.world.alice.id)) == 4
