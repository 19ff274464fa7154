"""`/imagine`, `/upload`, `/view`, `/gallery`, `/delete` end to end against the Discord double."""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

from tests.e2e import image_attachments, png_chunks, veil_app  # noqa: F401 (fixture)

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
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", "a hidden prompt, Steps: 20")
    meta.add_text("prompt", '{"1": "secret"}')
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), (10, 200, 30)).save(buf, "PNG", pnginfo=meta)
    upload = app.double.upload(buf.getvalue(), "holiday-in-paris.png", user=app.world.alice)
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
