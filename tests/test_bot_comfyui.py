"""`/imagine` with the ComfyUI backend, end to end: the real bot against the Discord double, the
real ComfyUI generator against the fake ComfyUI (HTTP + websocket) on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from bot.generate import ComfyUIGenerator, GenerationQueue
from tests.e2e import assert_no_private_image_in_any_channel, button_id, png_chunks
from tests.fake_comfyui import FakeComfyUI, running_comfyui

SECRET = "my sister's wedding dress, unreleased"
TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf"}


@pytest.fixture
async def comfy(veil_app) -> AsyncIterator[FakeComfyUI]:
    """The bot's generator is ComfyUI, served by the fake."""
    async with running_comfyui() as (fake, url):
        generator = ComfyUIGenerator(url, timeout_s=10, reconnect_pause_s=0.01)
        veil_app.bot.queue = GenerationQueue(generator)
        veil_app.bot.get_cog("Imagine").progress_every_s = 0.0
        yield fake
        await generator.close()


async def test_imagine_through_comfyui_shows_progress_delivers_clean_pngs_and_clears_history(
        veil_app, comfy, caplog):
    app = veil_app
    caplog.set_level(logging.DEBUG, logger="veil")
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": SECRET, "count": 2})
    shown = [e.get("content") or "" for e in handle.edits]
    bars = [text for text in shown if "% rendering" in text]
    assert len(bars) >= 4, shown
    assert any(text.startswith("▰▰▰▰▰▰▱▱▱▱▱▱ 50%") for text in bars), bars
    assert shown[-1].startswith("Done:") and "Sent to your DMs" in shown[-1]
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 2
    for attachment in dm.attachments:
        assert TEXT_CHUNKS.isdisjoint(png_chunks(attachment.data))
        assert SECRET.encode() not in attachment.data
    assert SECRET not in dm.content and SECRET not in "\n".join(shown)
    assert len(comfy.finished) == 2 and comfy.kept_prompts == []
    assert SECRET not in caplog.text
    await assert_no_private_image_in_any_channel(app)


async def test_a_failing_comfyui_node_offers_try_again_which_works_once_it_is_fixed(
        veil_app, comfy):
    app = veil_app
    comfy.mode = "fail"
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": SECRET})
    assert "failed while drawing (in its KSampler step)" in handle.original.content
    assert SECRET not in handle.original.content
    assert app.double.dm_messages(app.world.alice) == []
    assert comfy.kept_prompts == []
    comfy.mode = "ok"
    await app.click(handle.original, button_id(handle.original, "Try again"),
                    user=app.world.alice)
    assert "Done:" in handle.original.content
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1
    assert comfy.kept_prompts == []


async def test_a_dropped_comfyui_websocket_still_delivers_the_image(veil_app, comfy):
    app = veil_app
    comfy.mode = "drop"
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": "harbour"})
    assert "Done:" in handle.original.content
    assert comfy.connections >= 2
    [dm] = app.double.dm_messages(app.world.alice)
    assert len(dm.attachments) == 1


async def test_a_slow_comfyui_job_is_given_up_with_try_again_and_stopped_on_the_server(
        veil_app, comfy):
    app = veil_app
    generator = app.bot.queue.generator
    generator._timeout_s = 0.5
    comfy.mode = "slow"
    handle = await app.run("imagine", user=app.world.alice, options={"prompt": SECRET})
    assert "took longer than 0.5 seconds" in handle.original.content
    assert button_id(handle.original, "Try again")
    [prompt_id] = comfy.queue_deletes
    assert comfy.interrupts == [prompt_id] and comfy.kept_prompts == []
    assert app.double.dm_messages(app.world.alice) == []
