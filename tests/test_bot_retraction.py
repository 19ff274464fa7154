"""When access ends, every copy it produced is retracted (guarantee 5), end to end against the
Discord double: for each access-ending event, Discord receives a DELETE of every message that
carried the image to the person whose access ended, and none of anyone else's.

Copies are fetched as people would (/view in the server, which answers by DM); the events are
the real commands (or, for expiry and role changes, what Discord or the clock does).
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from bot.core.ledger import OWNER
from bot.core.models import Viewer
from tests.conftest import FakeClock
from tests.e2e import App, app_in, app_settings, bot_running, image_dms, new_image, texts

DELETE = re.compile(r"/channels/(\d+)/messages/(\d+)$")


def deleted_ids(app: App) -> set[int]:
    """Every message the bot asked Discord to delete."""
    return {int(DELETE.search(c.path).group(2)) for c in app.double.calls
            if c.method == "DELETE" and DELETE.search(c.path)}


async def copy_for(app: App, user, image: str, **kwargs) -> int:
    """``user`` asks for the image with /view; returns the id of the DM that carried it."""
    before = {m.id for m in image_dms(app, user)}
    await app.run("view", user=user, options={"image": image}, **kwargs)
    [new] = [m for m in image_dms(app, user) if m.id not in before]
    return new.id


async def eventually(condition, limit_s: float = 5.0) -> None:
    """Background work (the expiry sweep, the retraction worker) within seconds."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not within seconds"
        await asyncio.sleep(0.02)


def carol(app: App):
    person = app.double.add_user("carol")
    app.double.add_member(app.world.guild, person)
    return person


async def test_unsharing_deletes_the_grantees_copies_and_nobody_elses(veil_app):
    app = veil_app
    alice, bob, other = app.world.alice, app.world.bob, carol(veil_app)
    image = await new_image(app, alice)
    for person in (bob, other):
        await app.run("share", user=alice, options={"target": person, "image": image})
    bobs = {await copy_for(app, bob, image), await copy_for(app, bob, image)}
    others, alices = await copy_for(app, other, image), await copy_for(app, alice, image)
    handle = await app.run("unshare", user=alice, options={"target": bob, "image": image})
    assert handle.response_type == 5  # deferred at once, whatever the retractions take
    assert "Retracted 2 messages" in texts(handle)
    assert deleted_ids(app) == bobs
    assert {others, alices}.isdisjoint(deleted_ids(app))


async def test_removing_a_group_member_deletes_only_their_copies(veil_app):
    app = veil_app
    alice, bob, other = app.world.alice, app.world.bob, carol(veil_app)
    image = await new_image(app, alice)
    await app.run("group create", user=alice, options={"name": "friends"})
    for person in (bob, other):
        await app.run("group add", user=alice, options={"name": "friends", "member": person})
    await app.run("group share", user=alice, options={"name": "friends"})
    bobs, others = await copy_for(app, bob, image), await copy_for(app, other, image)
    handle = await app.run("group remove", user=alice, options={"name": "friends",
                                                                 "member": bob})
    assert handle.response_type == 5 and "Retracted 1 message" in texts(handle)
    assert deleted_ids(app) == {bobs} and others not in deleted_ids(app)


async def test_deleting_a_group_deletes_every_members_copies(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("group create", user=alice, options={"name": "friends"})
    await app.run("group add", user=alice, options={"name": "friends", "member": bob})
    await app.run("group share", user=alice, options={"name": "friends", "image": image})
    bobs, alices = await copy_for(app, bob, image), await copy_for(app, alice, image)
    await app.veil.sharing.delete_group(alice.id, "friends")
    await eventually(lambda: bobs in deleted_ids(app))
    assert alices not in deleted_ids(app)


async def test_a_share_that_expires_has_its_copies_deleted_within_seconds(veil_app):
    app = veil_app
    clock = FakeClock(time.time())
    app.veil.ctx.clock = clock
    alice, bob, other = app.world.alice, app.world.bob, carol(veil_app)
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob, "expires": "1h"})
    await app.run("share", user=alice, options={"target": other})
    bobs, others = await copy_for(app, bob, image), await copy_for(app, other, image)
    clock.advance(3600)
    app.bot.wake_grant_expiry()  # the sweep sleeps until the expiry; the fake clock jumped
    await eventually(lambda: bobs in deleted_ids(app))
    assert others not in deleted_ids(app)


async def test_going_private_deletes_copies_sent_because_it_was_public_only(veil_app):
    app = veil_app
    alice, bob, other = app.world.alice, app.world.bob, carol(veil_app)
    await app.permit(app.world.gallery)
    await app.run("imagine", user=alice, channel=app.world.gallery,
                  options={"prompt": "a public picture", "private": False})
    [post] = app.double.messages_in(app.world.gallery)
    [record] = await app.veil.images.owned(alice.id, limit=1)
    image = record.public_id
    await app.run("share", user=alice, options={"target": other, "image": image})
    bobs = await copy_for(app, bob, image)  # public in the server: a DM in #general
    others, alices = await copy_for(app, other, image), await copy_for(app, alice, image)
    handle = await app.run("visibility", user=alice, options={"image": image,
                                                               "setting": "private"})
    assert handle.response_type == 5 and "Deleted 2 copies" in texts(handle)
    assert deleted_ids(app) == {post.id, bobs}
    assert {others, alices}.isdisjoint(deleted_ids(app))


async def report_seen_by_moderator(app: App) -> tuple[str, int, int]:
    """Alice shares an image with Bob; Bob reports it; the moderator views it. Returns the
    image, the moderator's copy and the report's number."""
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob, "image": image})
    await app.run("report", user=bob, options={"image": image, "reason": "abuse"})
    [report] = await app.veil.moderation.reports(app.world.guild.id)
    return image, await copy_for(app, app.world.moderator, image), report.id


async def test_closing_a_report_deletes_the_moderators_copy(veil_app):
    app = veil_app
    image, mods, report = await report_seen_by_moderator(app)
    bobs = await copy_for(app, app.world.bob, image)
    handle = await app.run("admin report-close", user=app.world.moderator,
                           options={"report": report})
    assert "Retracted 1 copy moderators had received" in texts(handle)
    assert deleted_ids(app) == {mods} and bobs not in deleted_ids(app)


async def test_a_report_losing_force_deletes_the_moderators_copy(veil_app):
    app = veil_app
    image, mods, _ = await report_seen_by_moderator(app)
    handle = await app.run("unshare", user=app.world.alice, options={"target": app.world.bob})
    assert mods in deleted_ids(app)
    assert "Retracted" in texts(handle)


async def test_deleting_an_image_deletes_every_copy_and_no_other_images(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image, kept = await new_image(app, alice), await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob})
    copies = {await copy_for(app, bob, image), await copy_for(app, alice, image)}
    other = await copy_for(app, bob, kept)
    removal = await app.veil.images.delete(image, Viewer(alice.id))
    assert (await app.bot.retract_now(removal.retraction_ids)).done == 2
    assert deleted_ids(app) == copies and other not in deleted_ids(app)


async def test_a_grantee_forgetting_themselves_loses_the_copies_shared_with_them(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob})
    bobs = await copy_for(app, bob, image)
    await app.veil.privacy.forget(bob.id)
    await eventually(lambda: bobs in deleted_ids(app))


async def test_a_role_taken_away_is_retracted_at_the_members_next_command(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    artists = app.double.add_role(app.world.guild, "Artists")
    image = await new_image(app, alice)
    app.double.set_roles(app.world.guild, bob, [artists])
    await app.run("share", user=alice, options={"target": artists})
    bobs = await copy_for(app, bob, image)
    alices = await copy_for(app, alice, image)
    await app.run("gallery", user=bob)  # still has the role: nothing happens
    assert bobs not in deleted_ids(app)
    app.double.set_roles(app.world.guild, bob, [])  # Veil has no members intent: unheard
    await asyncio.sleep(0.1)
    assert bobs not in deleted_ids(app)
    await app.run("gallery", user=bob)  # the interaction shows the role is gone
    await eventually(lambda: bobs in deleted_ids(app))
    assert alices not in deleted_ids(app)


@pytest.fixture
async def members_intent_app(tmp_path):
    async with app_in(tmp_path / "data", VEIL_MEMBERS_INTENT="on") as app:
        yield app


async def test_with_the_members_intent_a_role_taken_away_is_retracted_at_once(
        members_intent_app):
    app = members_intent_app
    alice, bob = app.world.alice, app.world.bob
    artists = app.double.add_role(app.world.guild, "Artists")
    app.double.set_roles(app.world.guild, bob, [artists])
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": artists})
    bobs = await copy_for(app, bob, image)
    app.double.set_roles(app.world.guild, bob, [])  # a moderator takes the role away
    await eventually(lambda: bobs in deleted_ids(app))


async def test_a_retraction_discord_forbids_is_shown_to_the_owner_and_not_retried(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob})
    await copy_for(app, bob, image)
    app.double.fail_next("DELETE", DELETE.pattern, status=403, code=50013)
    handle = await app.run("unshare", user=alice, options={"target": bob})
    assert "beyond my reach (see /privacy)" in texts(handle)
    privacy = texts(await app.run("privacy", user=alice))
    assert "Copies I could not retract" in privacy and image in privacy
    assert "permission" in privacy
    tries = len([c for c in app.double.calls if c.method == "DELETE"])
    await app.bot.deliverer.retract_due()
    assert len([c for c in app.double.calls if c.method == "DELETE"]) == tries


async def test_a_message_already_gone_counts_as_retracted(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob})
    bobs = await copy_for(app, bob, image)
    app.double.fail_next("DELETE", DELETE.pattern, status=404, code=10008,
                         message="Unknown Message")
    handle = await app.run("unshare", user=alice, options={"target": bob})
    assert "Retracted 1 message" in texts(handle)
    assert await app.veil.ledger.outbox_size() == 0
    assert bobs in deleted_ids(app)


async def test_a_command_retracts_and_reports_only_its_own_retractions(veil_app):
    app = veil_app
    alice, bob = app.world.alice, app.world.bob
    # The background worker is busy elsewhere (stopped here), and thirty retractions of
    # someone else's copies are due: a command must neither wait for them nor count them.
    [worker] = [t for t in app.bot._background if t.get_name() == "retract"]
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    other_image = await new_image(app, bob)
    record = await app.veil.ctx.image(other_image)
    for message_id in range(1, 31):
        await app.veil.ledger.record(record, kind="dm", channel_id=999, message_id=message_id,
                                     recipient_id=bob.id, basis=OWNER)
    await app.veil.images.delete(other_image, Viewer(bob.id))
    image = await new_image(app, alice)
    await app.run("share", user=alice, options={"target": bob})
    bobs = await copy_for(app, bob, image)
    handle = await app.run("unshare", user=alice, options={"target": bob})
    assert texts(handle).endswith("Retracted 1 message I had sent them.")
    assert deleted_ids(app) == {bobs}
    assert await app.veil.ledger.outbox_size() == 30  # left to the worker


@pytest.mark.slow
async def test_a_copy_sent_just_before_a_crash_is_found_at_start_up_and_retracted_later(
        tmp_path):
    """SIGKILL between Discord's answer and the record (failpoint ``deliver:sent``): the bot
    that starts next finds its own message in that DM, records it, and deleting the image then
    deletes that message like any other copy."""
    import os
    import signal
    import sys
    from pathlib import Path

    from bot.core.veil import Veil
    from tests.discord_double import DiscordDouble
    from tests.e2e import png

    root = await asyncio.to_thread(lambda: Path(__file__).resolve().parent.parent)
    async with DiscordDouble() as double:
        world = double.populate()
        settings = app_settings(double, tmp_path / "data")
        async with await Veil.open(settings.data_dir) as veil:
            image = (await veil.images.create(world.alice.id, png(), guild_id=world.guild.id,
                                              source="upload")).public_id
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.deliverscript", str(settings.data_dir),
            double.api_base, double.token, str(world.alice.id), image, cwd=root,
            env={**os.environ, "VEIL_FAILPOINT": "deliver:sent"},
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        [sent] = image_dms(App(double, world, None, None), world.alice)  # type: ignore[arg-type]

        # The next start, a while later: the pending row is stale, so it is reconciled.
        clock = FakeClock(time.time() + 600)
        async with await Veil.open(settings.data_dir, clock=clock) as veil:
            assert await veil.images.deliveries(image) == [("dm", sent.channel_id, None)]
            async with bot_running(double, world, settings, veil) as app:

                async def recorded() -> list:
                    return await veil.images.deliveries(image)

                for _ in range(250):
                    if await recorded() == [("dm", sent.channel_id, sent.id)]:
                        break
                    await asyncio.sleep(0.02)
                assert await recorded() == [("dm", sent.channel_id, sent.id)]
                await veil.images.delete(image, Viewer(world.alice.id))
                await eventually(lambda: sent.id in deleted_ids(app))
                assert image_dms(app, world.alice) == []
        double.assert_no_unhandled()
