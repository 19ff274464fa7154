"""Robustness across the bot: unexpected faults, Discord failing, missing permissions, people
who left, commands where they do not belong, help text, intents, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from types import SimpleNamespace

import discord
import pytest

from bot.core.models import Viewer
from bot.logs import Redactor
from cogs._replies import message_for
from tests.e2e import button_id, image_attachments, image_dms, image_ids, post_public_image

PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)  # members, presences, message content
REFERENCE = re.compile(r"reference `([0-9a-f]{8})`")
PLACEHOLDER_DESCRIPTIONS = {"", "…", "...", "-"}


@pytest.fixture
def debug_logs(caplog):
    """Every log record at DEBUG, from before the bot connects (list this fixture first)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def all_log_text(caplog) -> str:
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    handler = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(handler.format(r) for r in records)


# Unexpected faults --------------------------------------------------------------------------


async def test_an_unexpected_fault_gives_the_user_a_reference_that_matches_the_log(
        debug_logs, veil_app, monkeypatch):
    app = veil_app

    async def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app.veil.images, "create", broken)
    handle = await app.run("imagine", user=app.world.alice,
                           options={"prompt": "a heron nobody may know about"})

    [answer] = [m for m in handle.messages if "Something went wrong" in m.content]
    assert all(m.ephemeral for m in handle.messages)
    assert "disk on fire" not in answer.content
    reference = REFERENCE.search(answer.content).group(1)
    [logged] = [r for r in debug_logs.records if r.name == "veil.errors"]
    assert logged.levelno == logging.ERROR
    assert reference in logged.getMessage()
    assert logged.exc_info is not None
    assert "heron" not in all_log_text(debug_logs)
    assert "heron" not in debug_logs.text


async def test_an_unexpected_fault_in_an_admin_command_is_reported_the_same_way(veil_app,
                                                                                monkeypatch):
    app = veil_app

    async def broken(guild_id):
        raise RuntimeError("stats table missing")

    monkeypatch.setattr(app.veil.moderation, "stats", broken)
    handle = await app.run("admin stats", user=app.world.moderator)
    assert handle.ephemeral
    assert REFERENCE.search(handle.content)
    assert app.double.messages_in(app.world.general) == []


async def test_an_expected_error_shows_its_own_message_and_logs_no_fault(veil_app, caplog):
    app = veil_app
    handle = await app.run("admin takedown", user=app.world.moderator,
                           options={"image": "nosuchimage"})
    assert "No image with that id" in handle.messages[-1].content
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Discord failing ----------------------------------------------------------------------------


async def test_a_passing_discord_server_error_on_an_admin_reply_still_gets_the_answer_through(
        veil_app):
    app = veil_app
    app.double.fail_next("POST", r"/interactions/\d+/[^/]+/callback", status=503)
    handle = await app.run("admin force-private", user=app.world.moderator,
                           options={"setting": "on"})
    assert len(app.double.calls_to("POST", r"/interactions/\d+/[^/]+/callback")) == 2
    assert handle.ephemeral
    assert "Forced private mode is now **on**" in handle.content
    assert (await app.veil.moderation.policy(app.world.guild.id)).force_private


async def test_a_discord_server_error_while_sending_to_dms_is_explained(veil_app):
    app = veil_app
    app.double.fail_next("POST", r"/channels/\d+/messages$", status=503)
    handle = await app.run("export", user=app.world.alice)
    assert handle.ephemeral
    # The export is ready (and its cooldown spent), so its link comes here instead.
    assert "Discord would not let me DM you just now" in handle.messages[-1].content
    assert "/x/" in handle.messages[-1].content
    assert "reference" not in handle.messages[-1].content


async def test_a_retraction_that_discord_refuses_now_is_kept_for_a_retry(veil_app):
    app = veil_app
    world = app.world
    image, post = await post_public_image(app, world.alice)
    app.double.fail_next("DELETE", r"/channels/\d+/messages/\d+$", status=503)

    handle = await app.run("admin takedown", user=world.moderator, options={"image": image})

    assert "Deleted 1 image" in handle.messages[-1].content
    assert "1 message carrying it is not retracted yet" in handle.messages[-1].content
    assert "keep trying" in handle.messages[-1].content
    assert not post.deleted
    assert await app.veil.images.pending_retraction_count() == 1
    assert await image_ids(app, world.alice) == set()


# Missing permissions ------------------------------------------------------------------------


async def test_a_permitted_channel_where_the_bot_may_not_post_gets_the_image_by_dm(veil_app):
    app = veil_app
    world = app.world
    await app.permit(world.gallery)
    app.double.deny_channel(world.gallery)
    handle = await app.run("imagine", user=world.alice, channel=world.gallery,
                           options={"prompt": "x", "private": False})
    assert app.double.messages_in(world.gallery) == []
    assert len(image_dms(app, world.alice)) == 1
    assert "missing permission" in handle.messages[-1].content


async def test_allowing_a_channel_where_the_bot_may_not_post_warns_the_moderator(veil_app):
    app = veil_app
    app.double.deny_channel(app.world.gallery)
    handle = await app.run("admin channel-allow", user=app.world.moderator,
                           options={"channel": app.world.gallery})
    assert "cannot post" in handle.content
    ok = await app.run("admin channel-allow", user=app.world.moderator,
                       options={"channel": app.world.general})
    assert "cannot post" not in ok.content


async def test_commands_still_answer_in_a_channel_where_the_bot_may_not_post(veil_app):
    app = veil_app
    app.double.deny_channel(app.world.general)
    privacy = await app.run("privacy", user=app.world.alice)
    assert privacy.ephemeral and "What Veil keeps about you" in privacy.content
    policy = await app.run("admin policy", user=app.world.moderator)
    assert "Forced private mode" in policy.content


# People who left ----------------------------------------------------------------------------


async def test_a_member_who_left_can_still_be_purged_and_audited(veil_app):
    app = veil_app
    world = app.world
    await app.run("imagine", user=world.alice, options={"prompt": "left behind"})
    [dm] = image_dms(app, world.alice)
    app.double.remove_member(world.guild, world.alice)

    handle = await app.run("admin purge", user=world.moderator, options={"member": world.alice},
                           settle=False)
    prompt = await handle.wait_original()
    await app.click(prompt, button_id(prompt, "Purge"), user=world.moderator)
    await app.settle(handle)
    assert await image_ids(app, world.alice) == set()
    assert dm.deleted

    audit = await app.run("admin audit", user=world.moderator, options={"member": world.alice})
    assert "admin.purge" in audit.content


async def test_a_member_who_left_keeps_their_own_commands_in_dms(veil_app):
    app = veil_app
    await app.run("imagine", user=app.world.alice, options={"prompt": "kept"})
    app.double.remove_member(app.world.guild, app.world.alice)
    status = await app.run("privacy", user=app.world.alice, guild=None)
    assert "Images: 1" in status.content
    export = await app.run("export", user=app.world.alice, guild=None)
    assert "Sent your export" in export.messages[-1].content


# Where commands belong ----------------------------------------------------------------------


async def test_private_mode_commands_work_in_dms(veil_app):
    app = veil_app
    handle = await app.run("private off", user=app.world.alice, guild=None)
    assert "**off**" in handle.content
    assert "forces" not in handle.content
    status = await app.run("private status", user=app.world.alice, guild=None)
    assert "Private mode is **off**" in status.content


async def test_every_command_and_option_has_help_text(veil_app):
    commands = veil_app.double.all_commands()
    assert commands
    missing = []

    def walk(node: dict, path: str) -> None:
        if node.get("description", "").strip() in PLACEHOLDER_DESCRIPTIONS:
            missing.append(path)
        for option in node.get("options") or []:
            walk(option, f"{path} {option['name']}")

    for command in commands:
        if command.type == 1:
            walk(command.payload, command.name)
    assert missing == []


async def test_the_bot_needs_no_privileged_intent(veil_app):
    app = veil_app
    intents = app.bot.intents
    assert not (intents.members or intents.presences or intents.message_content)
    assert app.double.gateway.active_session.intents & PRIVILEGED_INTENTS == 0


# Secrets ------------------------------------------------------------------------------------


async def test_tokens_and_prompts_never_reach_a_log_record(debug_logs, veil_app):
    app = veil_app
    world = app.world
    prompt = "the combination is 4 8 15 16"
    await app.permit(world.gallery)
    await app.run("imagine", user=world.alice, options={"prompt": prompt})
    await app.run("imagine", user=world.alice, channel=world.gallery,
                  options={"prompt": prompt + " again", "private": False})
    [image, *_] = sorted(await image_ids(app, world.alice))
    link = await app.run("link create", user=world.alice, options={"image": image})
    url = next(m.content for m in link.messages if "/l/" in m.content)
    link_token = re.search(r"/l/(\S+)", url).group(1)
    core_link = await app.veil.links.create(image, Viewer(world.alice.id))
    exported = await app.run("export", user=world.alice)
    await app.run("admin audit", user=world.moderator)
    await app.run("admin retention", user=world.moderator, options={"days": 30})

    text = all_log_text(debug_logs)
    assert "WebSocket" in text or "discord" in text, "debug logging was not captured"
    assert app.double.token not in text
    assert link_token not in text and core_link.token not in text
    assert "combination" not in text
    assert link.token not in text and exported.token not in text
    assert image_attachments(app.double.all_guild_channel_messages())


async def test_the_bot_closes_promptly_even_right_after_a_retraction_wake_up(veil_app):
    app = veil_app
    await asyncio.sleep(0.1)  # the retraction loop is parked, waiting for work
    app.bot.wake_retractions()
    started = time.monotonic()
    closing = asyncio.create_task(app.bot.close())
    done, _ = await asyncio.wait({closing}, timeout=2)
    assert closing in done, "close() is stuck waiting for the retraction loop"
    assert time.monotonic() - started < 1
    assert app.bot.is_closed()


def test_closed_dms_are_explained_as_such_not_as_a_missing_channel_permission():
    response = SimpleNamespace(status=403, reason="Forbidden")
    closed = discord.Forbidden(response, {"code": 50007, "message": "Cannot send messages"})
    missing = discord.Forbidden(response, {"code": 50013, "message": "Missing Permissions"})
    assert "DMs are closed" in message_for(closed)
    assert "missing a permission in this channel" in message_for(missing)


def test_the_log_redactor_keeps_each_line_but_not_its_payload_tokens_or_secrets():
    redactor = Redactor()
    redactor.add_secrets("bot-token-123")

    def redacted(msg: str, *args) -> str:
        record = logging.LogRecord("discord.http", logging.DEBUG, __file__, 1, msg, args, None)
        redactor.filter(record)
        return record.getMessage()

    assert redacted("%s %s with %s has returned %s", "POST",
                    "http://d/api/v10/interactions/11/aW50ZXJhY3Rpb246abc/callback",
                    '{"content": "a secret prompt"}', 200) == (
        "POST http://d/api/v10/interactions/11/<token>/callback with <body withheld> "
        "has returned 200")
    assert redacted("WebSocket Event: %s", {"op": 0, "t": "INTERACTION_CREATE",
                                            "d": {"token": "x"}}) == (
        "WebSocket Event: <op 0 INTERACTION_CREATE payload withheld>")
    assert redacted("sent %s", {"content": "a secret prompt"}) == "sent <dict withheld>"
    assert redacted("100% sure") == "100% sure"
    assert redacted("login with %s", "bot-token-123") == "login with <secret>"
    assert redacted("%(who)s said %(what)s", {"who": "bob", "what": ["x"]}) == (
        "bob said <list withheld>")


# A burst of commands (issue 12) ----------------------------------------------------------------

async def test_a_burst_of_commands_at_once_is_answered_in_full_each_acknowledged_first(veil_app):
    """Thirty members run /gallery at the same moment: every one is acknowledged, then
    answered."""
    app = veil_app
    members = [app.double.add_user(f"member{n}") for n in range(30)]
    for member in members:
        app.double.add_member(app.world.guild, member)
    handles = await asyncio.gather(*(
        app.double.slash("gallery", user=member, guild=app.world.guild,
                         channel=app.world.general) for member in members))
    for handle in handles:
        await app.settle(handle)
    assert [h.response_type for h in handles] == [5] * len(members)
    assert all(h.original is not None and "Nothing here yet" in h.original.content
               for h in handles)


async def test_the_bot_freezes_what_start_up_made_once_it_is_ready(tmp_path):
    """make_bot (what `python -m bot run` uses) moves start-up's objects out of the garbage
    collector's reach when READY arrives, so no full collection walks them during a burst."""
    import gc

    from bot.client import make_bot
    from bot.config import load_settings
    from bot.core.veil import Veil
    from bot.generate import GenerationQueue, ProceduralGenerator
    from tests.discord_double import DiscordDouble

    gc.unfreeze()
    try:
        async with DiscordDouble() as double:
            double.populate()
            settings = load_settings({"DISCORD_TOKEN": double.token,
                                      "VEIL_DATA_DIR": str(tmp_path / "data"),
                                      "VEIL_WEB_ENABLED": "off",
                                      "VEIL_PUBLIC_URL": "https://veil.example"})
            async with await Veil.open(settings.data_dir) as veil:
                bot = make_bot(settings=settings, veil=veil,
                               queue=GenerationQueue(ProceduralGenerator()),
                               guild_ready_timeout=0.01)
                assert gc.get_freeze_count() == 0
                async with double.running(bot):
                    await bot.wait_until_ready()
                    for _ in range(100):
                        if gc.get_freeze_count():
                            break
                        await asyncio.sleep(0.01)
                    assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # this test process runs many bots: leave its collector as it was
