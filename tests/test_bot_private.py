"""`/private on|off|status`, `/privacy`, `/export`, `/forget-me` end to end against the double."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import zipfile

from aiohttp.test_utils import TestClient, TestServer

from bot.core.models import Viewer
from bot.web import create_app
from tests.e2e import button_id, image_attachments, image_dms, image_ids, texts
from tests.test_bot_links import everything_shown_to_others


async def visibility_of_latest_image(app, owner) -> str:
    return await app.veil.ctx.db.fetchval(
        "SELECT visibility FROM images WHERE owner_id = ? ORDER BY id DESC LIMIT 1", (owner.id,))


async def test_a_new_user_starts_in_private_mode(veil_app):
    app = veil_app
    status = await app.run("private status", user=app.world.bob)
    assert status.ephemeral
    assert "Private mode is **on**" in status.content
    await app.run("imagine", user=app.world.bob, options={"prompt": "first light"})
    assert await visibility_of_latest_image(app, app.world.bob) == "private"


async def test_private_off_makes_new_images_public_and_private_on_makes_them_private_again(
        veil_app):
    app = veil_app
    alice = app.world.alice
    off = await app.run("private off", user=alice)
    assert off.ephemeral and "**off**" in off.content
    await app.run("imagine", user=alice, options={"prompt": "open sky"})
    assert await visibility_of_latest_image(app, alice) == "public"
    assert "Private mode is **off**" in (await app.run("private status", user=alice)).content

    on = await app.run("private on", user=alice)
    assert on.ephemeral and "**on**" in on.content
    await app.run("imagine", user=alice, options={"prompt": "closed room"})
    assert await visibility_of_latest_image(app, alice) == "private"
    assert "Private mode is **on**" in (await app.run("private status", user=alice)).content


async def test_a_server_that_forces_private_mode_wins_over_a_public_request(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.permit(app.world.general)
    await app.run("private off", user=alice)
    forced = await app.run("admin force-private", user=app.world.moderator,
                           options={"setting": "on"})
    assert "Forced private mode is now **on**" in forced.content

    await app.run("imagine", user=alice, options={"prompt": "a loud parade", "private": False})
    assert await visibility_of_latest_image(app, alice) == "private"
    assert image_attachments(app.double.all_guild_channel_messages()) == []
    assert len(app.double.dm_messages(alice)) == 1
    status = await app.run("private status", user=alice)
    assert "forces private mode" in status.content
    off = await app.run("private off", user=alice)
    assert "forces private mode" in off.content


async def test_privacy_lists_what_is_stored_and_the_server_policy_only_to_the_asker(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.permit(app.world.gallery)
    await app.run("imagine", user=alice, options={"prompt": "a quiet lake", "count": 2})
    handle = await app.run("privacy", user=alice)
    assert handle.ephemeral
    text = handle.content
    assert "What Veil keeps about you" in text
    assert "Images: 2" in text
    assert "Private mode: on" in text
    assert "This server's policy" in text
    assert f"<#{app.world.gallery.id}>" in text
    assert "a quiet lake" not in text
    assert app.double.messages_in(app.world.general) == []


async def test_privacy_in_a_dm_shows_only_what_is_stored(veil_app):
    app = veil_app
    handle = await app.run("privacy", user=app.world.alice, guild=None)
    assert "What Veil keeps about you" in handle.content
    assert "This server's policy" not in handle.content


async def test_privacy_says_which_generator_draws_and_whether_it_runs_on_this_machine(veil_app):
    from bot.generate import ComfyUIGenerator, GenerationQueue, SDWebUIGenerator

    app = veil_app
    handle = await app.run("privacy", user=app.world.alice, guild=None)
    assert "drawn by Veil's built-in generator (no model, no network), on the machine Veil " \
           "runs on" in handle.content
    local = ComfyUIGenerator("http://127.0.0.1:8188")
    app.bot.queue = GenerationQueue(local)
    handle = await app.run("privacy", user=app.world.alice, guild=None)
    assert "drawn by ComfyUI, on the machine Veil runs on" in handle.content
    remote = SDWebUIGenerator("http://gpu.example:7860")
    app.bot.queue = GenerationQueue(remote)
    handle = await app.run("privacy", user=app.world.alice, guild=None)
    assert "Stable Diffusion WebUI (AUTOMATIC1111 or Forge), on another machine: prompts " \
           "travel to it over the network" in handle.content
    assert "gpu.example" not in handle.content
    await local.close()
    await remote.close()


def read_zip(data: bytes) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(files.pop("veil-export.json")), files


EXPORT_LINK = re.compile(r"https://veil\.example/x/([A-Za-z0-9_-]{43})(?![A-Za-z0-9_-])")


@contextlib.asynccontextmanager
async def link_server(app):
    """The real link server over the bot's Veil, as a person's browser would reach it."""
    server = TestServer(create_app(app.veil, public_url="https://veil.example"))
    async with TestClient(server) as client:
        yield client


async def test_export_dms_a_one_time_link_that_downloads_every_image_and_the_records(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.run("imagine", user=alice, options={"prompt": "a paper boat", "count": 2})
    ids = await image_ids(app, alice)
    before = len(app.double.dm_messages(alice))

    handle = await app.run("export", user=alice)

    assert handle.ephemeral
    assert "Preparing your export" in texts(handle)
    assert "Sent your export's download link to your DMs" in handle.messages[-1].content
    [dm] = app.double.dm_messages(alice)[before:]
    assert not dm.attachments and dm.flags & (1 << 2), "a link, with no preview fetched"
    assert "works **once**" in dm.content and "2 images" in dm.content
    token = EXPORT_LINK.search(dm.content).group(1)
    async with link_server(app) as client:
        response = await client.post(f"/x/{token}")
        document, images = read_zip(await response.read())
        assert (await client.post(f"/x/{token}")).status == 404, "it works once"
    assert document["user_id"] == str(alice.id)
    assert {entry["public_id"] for entry in document["images"]} == ids
    assert {entry["prompt"] for entry in document["images"]} == {"a paper boat"}
    assert sorted(images) == sorted(f"images/veil-{i}.png" for i in ids)
    assert all(data.startswith(b"\x89PNG") for data in images.values())
    assert list(app.veil.data_dir.joinpath("exports").iterdir()) == []
    assert image_attachments(app.double.all_guild_channel_messages()) == []
    assert EXPORT_LINK.pattern not in everything_shown_to_others(app)
    assert token not in everything_shown_to_others(app).replace(dm.content, "")


async def test_export_with_closed_dms_gives_the_link_in_an_ephemeral_reply(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.run("imagine", user=alice, options={"prompt": "a kite"})
    app.double.close_dms(alice)
    handle = await app.run("export", user=alice)
    [carrier] = [m for m in handle.messages if EXPORT_LINK.search(m.content)]
    assert carrier.ephemeral and "Your DMs are closed" in carrier.content
    assert app.double.all_guild_channel_messages() == []


async def test_two_exports_at_once_by_one_user_give_one_link_and_the_cooldown_message(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.run("imagine", user=alice, options={"prompt": "twins", "count": 2})
    before = len(app.double.dm_messages(alice))
    first, second = await asyncio.gather(
        app.double.slash("export", user=alice, guild=app.world.guild,
                         channel=app.world.general),
        app.double.slash("export", user=alice, guild=app.world.guild,
                         channel=app.world.general))
    await app.settle(first)
    await app.settle(second)
    links = [m for m in app.double.dm_messages(alice)[before:] if EXPORT_LINK.search(m.content)]
    assert len(links) == 1
    refused = [h for h in (first, second) if "Sent your export" not in texts(h)]
    assert len(refused) == 1
    assert "Your export is being prepared" in texts(refused[0])
    again = await app.run("export", user=alice)
    assert "You can ask for another one in" in texts(again)


async def test_deleting_an_image_drops_the_waiting_export(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.run("imagine", user=alice, options={"prompt": "a lantern", "count": 2})
    await app.run("export", user=alice)
    [dm] = [m for m in app.double.dm_messages(alice) if EXPORT_LINK.search(m.content)]
    token = EXPORT_LINK.search(dm.content).group(1)
    image = sorted(await image_ids(app, alice))[0]

    await app.veil.images.delete(image, Viewer(alice.id))

    assert list(app.veil.data_dir.joinpath("exports").iterdir()) == []
    async with link_server(app) as client:
        assert (await client.post(f"/x/{token}")).status == 404


async def forget_me_prompt(app, user):
    handle = await app.run("forget-me", user=user, settle=False)
    prompt = await handle.wait_original()
    assert prompt.ephemeral
    assert "cannot be undone" in prompt.content
    return handle, prompt


async def alice_with_a_library(app):
    """Alice: one private image in DMs, one public image posted in a permitted channel, a
    share with bob; bob has an image of his own."""
    alice, bob = app.world.alice, app.world.bob
    await app.permit(app.world.gallery)
    await app.run("imagine", user=alice, options={"prompt": "private diary"})
    await app.run("imagine", user=alice, channel=app.world.gallery,
                  options={"prompt": "public mural", "private": False})
    await app.veil.sharing.grant(Viewer(alice.id, guild_id=app.world.guild.id), "user", bob.id)
    await app.run("imagine", user=bob, options={"prompt": "bob's own"})
    assert len(app.double.messages_in(app.world.gallery)) == 1


async def count(app, sql: str, *params) -> int:
    return await app.veil.ctx.db.fetchval(sql, params)


async def test_forget_me_cancelled_keeps_everything(veil_app):
    app = veil_app
    alice = app.world.alice
    await alice_with_a_library(app)
    handle, prompt = await forget_me_prompt(app, alice)
    await app.click(prompt, button_id(prompt, "Cancel"), user=alice)
    await app.settle(handle)

    assert "Nothing was deleted" in handle.messages[-1].content
    assert await count(app, "SELECT count(*) FROM images WHERE owner_id = ?", alice.id) == 2
    assert await count(app, "SELECT count(*) FROM users WHERE user_id = ?", alice.id) == 1
    assert await count(app, "SELECT count(*) FROM grants WHERE owner_id = ?", alice.id) == 1
    assert app.double.deleted_messages == []


async def test_forget_me_confirmed_retracts_every_message_and_erases_rows_and_key(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    await alice_with_a_library(app)
    shared = await app.veil.ctx.db.fetchval(
        "SELECT public_id FROM images WHERE owner_id = ? AND visibility = 'private'", (alice.id,))
    await app.run("view", user=bob, options={"image": shared})
    await app.run("export", user=alice)
    assert len(list(app.veil.data_dir.joinpath("exports").iterdir())) == 1
    alice_messages = [m for m in app.double.dm_messages(alice) if m.attachments]
    alice_messages += app.double.messages_in(app.world.gallery)
    bob_copy = [m for m in app.double.dm_messages(bob) if shared in m.content and m.attachments]
    assert len(alice_messages) == 2 and len(bob_copy) == 1
    assert await app.veil.ctx.owner_key(alice.id) is not None

    handle, prompt = await forget_me_prompt(app, alice)
    await app.click(prompt, button_id(prompt, "Forget me"), user=alice)
    await app.settle(handle)

    assert "Done. Deleted 2 images and retracted 3 messages" in handle.messages[-1].content
    assert list(app.veil.data_dir.joinpath("exports").iterdir()) == []
    assert all(m.deleted for m in alice_messages + bob_copy)
    assert app.double.messages_in(app.world.gallery) == []
    for table, column in (("users", "user_id"), ("images", "owner_id"), ("grants", "owner_id")):
        assert await count(app, f"SELECT count(*) FROM {table} WHERE {column} = ?", alice.id) == 0
    assert await count(app, "SELECT count(*) FROM grants WHERE grantee_id = ?", bob.id) == 0
    assert await app.veil.ctx.owner_key(alice.id) is None
    assert await count(app, "SELECT count(*) FROM images WHERE owner_id = ?", bob.id) == 1
    assert image_dms(app, bob)


async def test_forget_me_in_a_dm_erases_images_made_in_dms(veil_app):
    app = veil_app
    alice = app.world.alice
    await app.run("imagine", user=alice, guild=None, options={"prompt": "dm sketch"})
    [dm] = image_dms(app, alice)
    handle = await app.run("forget-me", user=alice, guild=None, settle=False)
    prompt = await handle.wait_original()
    await app.click(prompt, button_id(prompt, "Forget me"), user=alice)
    await app.settle(handle)
    assert dm.deleted
    assert await count(app, "SELECT count(*) FROM images WHERE owner_id = ?", alice.id) == 0
