"""`/imagine`, `/upload`, `/view`, `/gallery`, `/delete` end to end against the Discord double."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from bot.core.errors import GeneratorUnavailable
from bot.generate import MAX_PROMPT_CHARS, GenerationQueue, ProceduralGenerator, Progress
from tests.e2e import (
    GatedGenerator,
    assert_no_private_image_in_any_channel,
    blob_files,
    button_id,
    image_attachments,
    image_dms,
    newest_image,
    png,
    png_chunks,
    private_image_ids,
    texts,
)

TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf"}


async def test_a_private_imagine_in_a_permitted_channel_posts_nothing_there_and_dms_a_clean_png(
        veil_app):
    app = veil_app
    await app.permit(app.world.general)
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": "a secret garden", "private": True})
    assert handle.ephemeral
    assert image_attachments(app.double.all_guild_channel_messages()) == []
    [dm] = app.double.dm_messages(app.world.alice)
    [attachment] = dm.attachments
    assert TEXT_CHUNKS.isdisjoint(png_chunks(attachment.data))
    assert b"secret garden" not in attachment.data
    assert "secret garden" not in dm.content
    assert "Sent to your DMs" in handle.messages[-1].content


async def test_a_public_imagine_in_a_permitted_channel_is_posted_there(veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    await app.run("imagine", user=app.world.alice, channel=app.world.gallery,
                  options={"prompt": "a public sunrise", "private": False, "count": 2})
    [post] = app.double.messages_in(app.world.gallery)
    assert len(post.attachments) == 2
    assert "a public sunrise" not in post.content


async def test_a_public_image_in_a_channel_that_is_not_permitted_goes_to_dms(veil_app):
    app = veil_app
    await app.run("imagine", user=app.world.alice, options={"prompt": "x", "private": False})
    assert image_attachments(app.double.all_guild_channel_messages()) == []
    assert len(app.double.dm_messages(app.world.alice)) == 1


async def test_imagine_draws_images_of_the_configured_size(veil_app):
    app = veil_app
    size = app.bot.settings.image_size
    assert size != 768, "the tests' size should differ from the default to tell them apart"
    await app.run("imagine", user=app.world.alice, options={"prompt": "a small sketch"})
    [dm] = app.double.dm_messages(app.world.alice)
    with Image.open(io.BytesIO(dm.attachments[0].data)) as image:
        assert image.size == (size, size)


async def test_closed_dms_get_an_ephemeral_copy_and_a_warning(veil_app):
    app = veil_app
    app.double.close_dms(app.world.alice)
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "quiet"})
    assert image_attachments(app.double.all_guild_channel_messages()) == []
    ephemeral = [m for m in handle.messages if m.ephemeral and m.attachments]
    assert ephemeral, "the image should arrive as an ephemeral copy"
    assert any("cannot be retracted" in m.content for m in handle.messages)


async def test_upload_strips_the_prompt_and_gps_before_storing_and_delivering(veil_app):
    app = veil_app
    data = png((10, 200, 30), (80, 60), parameters="a hidden prompt, Steps: 20",
               prompt='{"1": "secret"}')
    upload = app.double.upload(data, "holiday-in-paris.png", user=app.world.alice)
    handle = await app.run("upload", user=app.world.alice, options={"image": upload})
    [dm] = app.double.dm_messages(app.world.alice)
    data = dm.attachments[0].data
    assert TEXT_CHUNKS.isdisjoint(png_chunks(data))
    assert b"hidden prompt" not in data
    assert "paris" not in dm.attachments[0].filename
    assert handle.ephemeral


async def test_a_corrupt_upload_gets_a_clear_message_and_stores_nothing(veil_app):
    app = veil_app
    upload = app.double.upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png",
                               user=app.world.alice)
    handle = await app.run("upload", user=app.world.alice, options={"image": upload})
    assert any("damaged" in m.content.lower() or "not" in m.content.lower()
               for m in handle.messages)
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM images") == 0


# Generators and files the tests below need --------------------------------------------------

class FlakyGenerator:
    """A generator that is down until a test says it is back."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = True
        self.inner = ProceduralGenerator()

    async def generate(self, request, progress=None):
        if self.down:
            raise GeneratorUnavailable("The image generator is not answering. Try again in a "
                                       "minute.")
        return await self.inner.generate(request, progress)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def flaky(veil_app) -> AsyncIterator[FlakyGenerator]:
    """The bot's generator, down until the test sets ``flaky.down = False``."""
    generator = FlakyGenerator()
    veil_app.bot.queue = GenerationQueue(generator)
    yield generator
    await generator.close()


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims a huge canvas (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


async def stored_image_count(app) -> int:
    return await app.veil.ctx.db.fetchval("SELECT count(*) FROM images")


# Every delivery path keeps private images out of channels -------------------------------------

async def test_every_imagine_path_keeps_private_images_out_of_channels(veil_app):
    app = veil_app
    await app.permit(app.world.general)
    await app.run("imagine", user=app.world.alice, options={"prompt": "p1", "private": True})
    await app.run("imagine", user=app.world.alice, options={"prompt": "p2", "count": 2})
    await app.run("imagine", user=app.world.alice, guild=None,
                  options={"prompt": "in a dm", "private": True})
    app.double.close_dms(app.world.alice)
    await app.run("imagine", user=app.world.alice, options={"prompt": "p3", "private": True})
    assert len(await private_image_ids(app)) == 5
    assert image_attachments(app.double.all_guild_channel_messages(include_deleted=True)) == []
    await assert_no_private_image_in_any_channel(app)


async def test_a_private_upload_in_a_permitted_channel_goes_by_dm_only(veil_app):
    app = veil_app
    await app.permit(app.world.general)
    upload = app.double.upload(png(), "me.png", user=app.world.alice)
    handle = await app.run("upload", user=app.world.alice,
                           options={"image": upload, "private": True})
    assert handle.ephemeral and "Sent to your DMs" in texts(handle)
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1
    await assert_no_private_image_in_any_channel(app)
    assert image_attachments(app.double.all_guild_channel_messages(include_deleted=True)) == []


async def test_an_imagine_in_a_dm_is_answered_in_that_dm(veil_app):
    app = veil_app
    handle = await app.run("imagine", user=app.world.alice, guild=None,
                           options={"prompt": "quiet", "private": False})
    [dm] = image_dms(app, app.world.alice)
    assert not dm.ephemeral
    assert "Sent to this chat" in texts(handle)


async def test_a_public_image_in_a_permitted_channel_i_may_not_post_in_goes_to_dms_and_says_why(
        veil_app):
    app = veil_app
    await app.permit(app.world.gallery)
    app.double.deny_channel(app.world.gallery)
    handle = await app.run("imagine", user=app.world.alice, channel=app.world.gallery,
                           options={"prompt": "sunrise", "private": False})
    assert app.double.messages_in(app.world.gallery, include_deleted=True) == []
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1
    assert "missing permission" in texts(handle) and "privately" in texts(handle)
    [(kind, _, _)] = await app.veil.images.deliveries(await newest_image(app, app.world.alice))
    assert kind == "dm"


# The generator and the queue ----------------------------------------------------------------

async def test_a_generator_outage_shows_a_clear_message_and_try_again_works_once_it_is_back(
        veil_app, flaky):
    app = veil_app
    await app.permit(app.world.general)
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": "a lighthouse", "private": True})
    assert "not answering" in handle.original.content
    assert app.double.dm_messages(app.world.alice) == []
    assert await stored_image_count(app) == 0
    flaky.down = False
    await app.click(handle.original, button_id(handle.original, "Try again"),
                    user=app.world.alice)
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1
    assert "Done:" in handle.original.content and "Sent to your DMs" in handle.original.content
    assert handle.original.components == [], "the spent Try again button should go"
    await assert_no_private_image_in_any_channel(app)


async def test_try_again_while_the_generator_is_still_down_offers_try_again_in_the_same_message(
        veil_app, flaky):
    app = veil_app
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "a boat"})
    first = button_id(handle.original, "Try again")
    await app.click(handle.original, first, user=app.world.alice)
    assert "not answering" in handle.original.content
    second = button_id(handle.original, "Try again")
    assert second != first
    assert not handle.original.find_component(second).get("disabled")
    assert [m for m in handle.followups if m is not handle.original] == []
    flaky.down = False
    await app.click(handle.original, second, user=app.world.alice)
    assert "Done:" in handle.original.content
    assert handle.original.components == []
    assert await stored_image_count(app) == 1


async def test_an_unused_try_again_button_is_disabled_when_the_offer_expires(veil_app, flaky):
    app = veil_app
    app.bot.get_cog("Imagine").retry_wait_s = 0.1
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "a boat"})
    retry = button_id(handle.original, "Try again")
    await app.double.wait_for(
        lambda: handle.original.find_component(retry).get("disabled"),
        timeout=2, what="the Try again button to be disabled")
    assert "not answering" in handle.original.content
    assert "expired" in handle.original.content


async def test_more_requests_than_the_per_user_limit_at_once_are_refused_with_a_clear_message(
        veil_app):
    app = veil_app
    gated = GatedGenerator()
    app.bot.queue = GenerationQueue(gated, per_user_limit=2)
    first = await app.run("imagine", user=app.world.alice, settle=False,
                          options={"prompt": "one"})
    second = await app.run("imagine", user=app.world.alice, settle=False,
                           options={"prompt": "two"})
    await app.double.wait_for(lambda: gated.started == 1 and app.bot.queue.waiting == 1,
                              what="two requests in the queue")
    third = await app.run("imagine", user=app.world.alice, settle=False,
                          options={"prompt": "three"})
    await third.wait_original()
    assert "2 image requests waiting or running" in third.original.content
    assert third.ephemeral
    assert "#1 in line" in second.original.content
    gated.gate.set()
    await app.settle()
    shown = [e.get("content") or "" for e in second.edits]
    assert len(shown) == 3, shown
    assert "#1 in line" in shown[0]
    assert "50% rendering" in shown[1], "the first bar shows at once, even right after the line"
    assert shown[2].startswith("Done:")
    assert await stored_image_count(app) == 2
    assert "Done:" in first.original.content and "Done:" in second.original.content
    await app.click(third.original, button_id(third.original, "Try again"), user=app.world.alice)
    assert "Done:" in third.original.content
    assert await stored_image_count(app) == 3


async def test_a_generation_edits_its_reply_with_a_progress_bar(veil_app):
    app = veil_app
    app.bot.get_cog("Imagine").progress_every_s = 0.0
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": "slow clouds", "count": 2})
    shown = [e.get("content") or "" for e in handle.edits]
    assert shown[0].startswith("▱▱▱▱▱▱▱▱▱▱▱▱ 0%") and "rendering image 1 of 2" in shown[0]
    assert shown[1].startswith("▰▰▰▰▰▰▱▱▱▱▱▱ 50%") and "rendering image 2 of 2" in shown[1]
    assert shown[-1].startswith("Done:") and "Done:" in handle.original.content


class ChattyGenerator:
    """Reports progress a hundred times in a blink, as a fast backend can."""

    name = "chatty"

    async def generate(self, request, progress=None):
        for step in range(100):
            await progress(Progress(step / 100, f"step {step}"))
        return [png()]

    async def close(self) -> None:
        pass


async def test_progress_edits_are_throttled_so_a_chatty_generator_cannot_flood_discord(
        veil_app):
    app = veil_app
    app.bot.queue = GenerationQueue(ChattyGenerator())
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "fast"})
    shown = [e.get("content") or "" for e in handle.edits]
    assert len(shown) == 2, shown
    assert "step 0" in shown[0] and shown[1].startswith("Done:")


# Uploads that must be refused ---------------------------------------------------------------

async def test_an_upload_declared_larger_than_the_limit_is_refused_before_it_is_downloaded(
        veil_app):
    app = veil_app
    upload = app.double.upload(png(), "huge.png", user=app.world.alice, size=30 * 1024 * 1024)
    handle = await app.run("upload", user=app.world.alice, options={"image": upload})
    assert "The file is 30 MB; the limit is 25 MB." in texts(handle)
    assert handle.ephemeral
    assert app.double.attachment_requests == []
    assert await stored_image_count(app) == 0
    assert app.double.dm_messages(app.world.alice) == []


async def test_a_decompression_bomb_upload_is_refused_before_download_and_nothing_is_stored(
        veil_app):
    app = veil_app
    data = bomb_png()
    assert len(data) < 200
    upload = app.double.upload(data, "small.png", user=app.world.alice)
    assert (upload.width, upload.height) == (50_000, 50_000)
    handle = await app.run("upload", user=app.world.alice, options={"image": upload})
    assert "50000×50000 pixels" in texts(handle) and "limit" in texts(handle)
    assert handle.ephemeral
    assert app.double.attachment_requests == []
    assert await stored_image_count(app) == 0
    assert blob_files(app) == []
    assert app.double.dm_messages(app.world.alice) == []


async def test_a_decompression_bomb_with_understated_dimensions_is_still_refused_clearly(
        veil_app):
    app = veil_app
    upload = app.double.upload(bomb_png(), "small.png", user=app.world.alice,
                               width=64, height=48)
    handle = await app.run("upload", user=app.world.alice, options={"image": upload})
    assert len(app.double.attachment_requests) == 1, "this one is only caught after download"
    assert "50000×50000 pixels" in texts(handle) and "limit" in texts(handle)
    assert await stored_image_count(app) == 0
    assert blob_files(app) == []
    assert await app.veil.ctx.db.fetchval("SELECT count(*) FROM staged_blobs") == 0
    assert app.double.dm_messages(app.world.alice) == []


# Discord failing on us ----------------------------------------------------------------------

async def test_a_discord_outage_on_the_dm_loses_nothing_and_says_how_to_get_the_image(veil_app):
    app = veil_app
    await app.permit(app.world.general)
    app.double.fail_next("POST", r"/channels/\d+/messages$", status=503)
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": "a stored secret", "private": True})
    image = await newest_image(app, app.world.alice)
    assert app.double.dm_messages(app.world.alice) == []
    assert image in handle.original.content and "/view" in handle.original.content
    assert "Nothing was lost" in handle.original.content
    again = await app.run("view", user=app.world.alice, options={"image": image})
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1
    assert "Sent to your DMs" in texts(again)
    await assert_no_private_image_in_any_channel(app)


async def test_the_command_accepts_every_prompt_the_core_accepts_and_no_longer(veil_app):
    app = veil_app
    await app.run("imagine", user=app.world.alice, options={"prompt": "x" * MAX_PROMPT_CHARS})
    assert len(await app.veil.images.owned(app.world.alice.id)) == 1
    with pytest.raises(ValueError, match="length"):  # Discord refuses it before Veil sees it
        await app.run("imagine", user=app.world.alice,
                      options={"prompt": "x" * (MAX_PROMPT_CHARS + 1)})
