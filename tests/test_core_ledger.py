"""The delivery ledger (guarantee 5): every copy records why it was sent, every event that ends
that reason queues its retraction in the same transaction, and nobody else's copy goes with it.

Copies are "sent" here by calling the ledger as the bot does around a real send: ``deliver``
writes the pending row (checking the basis), then records the message id. Message ids are
unique per copy, so a test can name exactly which copies an event queued.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from bot.core.errors import NotFound
from bot.core.ledger import BASIS_HOLDS_SQL, OWNER, PUBLIC, Basis
from tests.conftest import ALICE, ARTISTS, BOB, CAROL, GUILD, MOD, png, viewer
from tests.loopback import serving

_messages = itertools.count(1000)
ROOT = Path(__file__).resolve().parent.parent


async def _image(veil, owner=ALICE, *, public=False):
    return await veil.images.create(owner, png(), guild_id=GUILD, source="upload",
                                    requested_private=not public)


async def deliver(veil, image, who, *, roles=(), mod=False, channel=False) -> int:
    """Send ``who`` a copy the way the bot does: the access check decides the basis, a pending
    row is written first, then the message id is recorded. Returns the message id."""
    if channel:
        basis, recipient, kind = PUBLIC, None, "channel"
    else:
        _, decision = await veil.images.check_view(image.public_id,
                                                   viewer(who, *roles, mod=mod))
        basis, recipient, kind = Basis.of(decision), who, "dm"
    pending = await veil.ledger.begin([image], recipient_id=recipient, basis=basis, kind=kind,
                                      channel_id=7, guild_id=GUILD)
    message_id = next(_messages)
    await veil.ledger.complete(pending, message_id=message_id)
    return message_id


async def queued(veil) -> set[int]:
    rows = await veil.ctx.db.fetchall("SELECT message_id FROM retractions")
    return {r[0] for r in rows}


async def ended_but_kept(veil) -> int:
    """Recorded copies whose basis no longer holds: the ledger's invariant says none."""
    return await veil.ctx.db.fetchval(
        "SELECT count(*) FROM deliveries d WHERE d.state = 'sent' AND d.unretractable IS NULL"
        f" AND NOT {BASIS_HOLDS_SQL}", {"now": veil.ctx.now()})


# Each access-ending event ------------------------------------------------------------------

async def test_unsharing_one_image_retracts_that_grantees_copies_of_it_only(veil):
    one, two = await _image(veil), await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=one.public_id)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=two.public_id)
    await veil.sharing.grant(viewer(ALICE), "user", CAROL, image_public_id=one.public_id)
    bobs = await deliver(veil, one, BOB)
    bobs_other = await deliver(veil, two, BOB)
    carols = await deliver(veil, one, CAROL)
    alices = await deliver(veil, one, ALICE)
    _, ids = await veil.sharing.revoke(viewer(ALICE), "user", BOB, image_public_id=one.public_id)
    assert await queued(veil) == {bobs} and len(ids) == 1
    assert {bobs_other, carols, alices}.isdisjoint(await queued(veil))
    assert await ended_but_kept(veil) == 0


async def test_unsharing_a_role_retracts_every_copy_sent_through_it(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS)
    bobs = await deliver(veil, image, BOB, roles=[ARTISTS])
    carols = await deliver(veil, image, CAROL, roles=[ARTISTS])
    await veil.sharing.revoke(viewer(ALICE), "role", ARTISTS)
    assert await queued(veil) == {bobs, carols}


async def test_removing_a_group_member_retracts_only_that_members_copies(veil):
    image = await _image(veil)
    await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.add_member(ALICE, "friends", BOB)
    await veil.sharing.add_member(ALICE, "friends", CAROL)
    group = await veil.sharing.group(ALICE, "friends")
    await veil.sharing.grant(viewer(ALICE), "group", group.id)
    bobs, carols = await deliver(veil, image, BOB), await deliver(veil, image, CAROL)
    _, ids = await veil.sharing.remove_member(ALICE, "friends", BOB)
    assert await queued(veil) == {bobs} and len(ids) == 1
    assert carols not in await queued(veil)


async def test_deleting_a_group_retracts_every_members_copies(veil):
    image = await _image(veil)
    await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.add_member(ALICE, "friends", BOB)
    group = await veil.sharing.group(ALICE, "friends")
    await veil.sharing.grant(viewer(ALICE), "group", group.id, image_public_id=image.public_id)
    bobs = await deliver(veil, image, BOB)
    assert len(await veil.sharing.delete_group(ALICE, "friends")) == 1
    assert await queued(veil) == {bobs}


async def test_an_expired_share_is_swept_and_its_copies_retracted(veil, clock):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, expires_in=60)
    await veil.sharing.grant(viewer(ALICE), "user", CAROL)
    bobs, carols = await deliver(veil, image, BOB), await deliver(veil, image, CAROL)
    clock.advance(59)
    assert (await veil.retention.expire_grants())[0] == 0
    assert await veil.retention.next_grant_expiry() == pytest.approx(clock.now + 1)
    clock.advance(1)
    dropped, ids = await veil.retention.expire_grants()
    assert dropped == 1 and len(ids) == 1
    assert await queued(veil) == {bobs}
    assert carols not in await queued(veil)


async def test_two_expiry_sweeps_at_once_queue_nothing_twice(veil, clock):
    image = await _image(veil)
    for user in (BOB, CAROL):
        await veil.sharing.grant(viewer(ALICE), "user", user, expires_in=10)
        await deliver(veil, image, user)
    clock.advance(10)
    first, second = await asyncio.gather(veil.retention.expire_grants(),
                                         veil.retention.expire_grants())
    assert sorted([first[0], second[0]]) == [0, 2]
    assert len(first[1]) + len(second[1]) == 2
    assert await veil.ledger.outbox_size() == 2


async def test_going_private_retracts_copies_sent_because_it_was_public_and_nothing_else(veil):
    image = await _image(veil, public=True)
    await veil.sharing.grant(viewer(ALICE), "user", CAROL)
    post = await deliver(veil, image, None, channel=True)
    bobs = await deliver(veil, image, BOB)  # public in this server: basis public
    carols = await deliver(veil, image, CAROL)  # shared with her: basis grant
    alices = await deliver(veil, image, ALICE)
    _, ids = await veil.images.set_visibility(image.public_id, viewer(ALICE), "private")
    assert await queued(veil) == {post, bobs} and len(ids) == 2
    assert {carols, alices}.isdisjoint(await queued(veil))


async def test_closing_a_report_retracts_the_moderators_copy(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    bobs = await deliver(veil, image, BOB)
    report = await veil.moderation.report(viewer(BOB), image.public_id, "abuse")
    mods = await deliver(veil, image, MOD, mod=True)
    assert await veil.ctx.db.fetchval(
        "SELECT basis || ':' || report_id FROM deliveries WHERE message_id = ?",
        (mods,)) == f"report:{report.id}"
    ids = await veil.moderation.close_report(viewer(MOD, mod=True), report.id)
    assert await queued(veil) == {mods} and len(ids) == 1
    assert bobs not in await queued(veil)


async def test_a_report_losing_force_retracts_the_moderators_copy(veil):
    """The reporter's share ends, so the report no longer lets moderators see the image."""
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.moderation.report(viewer(BOB), image.public_id, "abuse")
    mods = await deliver(veil, image, MOD, mod=True)
    bobs = await deliver(veil, image, BOB)
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    assert await queued(veil) == {mods, bobs}


async def test_a_report_losing_force_when_its_share_expires_retracts_the_moderators_copy(
        veil, clock):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, expires_in=30)
    await veil.moderation.report(viewer(BOB), image.public_id, "abuse")
    mods = await deliver(veil, image, MOD, mod=True)
    clock.advance(30)
    await veil.retention.expire_grants()
    assert mods in await queued(veil)


async def test_deleting_an_image_retracts_every_copy_of_it(veil):
    image, other = await _image(veil, public=True), await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    copies = {await deliver(veil, image, who) for who in (ALICE, BOB, CAROL)}
    copies.add(await deliver(veil, image, None, channel=True))
    kept = await deliver(veil, other, BOB)
    removal = await veil.images.delete(image.public_id, viewer(ALICE))
    assert await queued(veil) == copies and len(removal.retraction_ids) == 4
    assert kept not in await queued(veil)


async def test_a_grantee_forgetting_themselves_retracts_what_they_received_through_shares(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.sharing.grant(viewer(ALICE), "user", CAROL)
    bobs, carols = await deliver(veil, image, BOB), await deliver(veil, image, CAROL)
    removal = await veil.privacy.forget(BOB)
    assert await queued(veil) == {bobs} and removal.retraction_ids
    assert carols not in await queued(veil)


async def test_a_reporter_forgetting_themselves_retracts_the_moderators_copy(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS)
    await veil.moderation.report(viewer(BOB, ARTISTS), image.public_id, "spam")
    mods = await deliver(veil, image, MOD, mod=True)
    await veil.privacy.forget(BOB)
    assert mods in await queued(veil)


async def test_a_role_taken_away_retracts_what_came_through_that_role_in_that_server(veil):
    image = await _image(veil)
    other_role = ARTISTS + 1
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS, image_public_id=image.public_id)
    await veil.sharing.grant(viewer(ALICE), "role", other_role)
    through_artists = await deliver(veil, image, BOB, roles=[ARTISTS])
    through_other = await deliver(veil, image, CAROL, roles=[other_role])
    assert await veil.sharing.roles_now(BOB, GUILD, frozenset({ARTISTS, GUILD})) == ()
    assert await veil.sharing.roles_now(BOB, GUILD, frozenset({GUILD}))
    assert await queued(veil) == {through_artists}
    assert through_other not in await queued(veil)


# Recording ---------------------------------------------------------------------------------

async def test_a_copy_whose_share_was_revoked_in_flight_is_retracted_when_recorded(veil):
    """The race from the issue: the DM is on its way while the owner unshares."""
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB))
    pending = await veil.ledger.begin([image], recipient_id=BOB, basis=Basis.of(decision),
                                      kind="dm", channel_id=7)
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)  # while Discord answers
    recorded = await veil.ledger.complete(pending, message_id=77)
    assert not recorded.kept and await queued(veil) == {77}
    assert await ended_but_kept(veil) == 0


async def test_a_channel_post_of_an_image_deleted_in_flight_is_retracted(veil):
    image = await _image(veil, public=True)
    pending = await veil.ledger.begin([image], recipient_id=None, basis=PUBLIC, kind="channel",
                                      channel_id=7)
    await veil.images.delete(image.public_id, viewer(ALICE))
    recorded = await veil.ledger.complete(pending, message_id=78)
    assert not recorded.kept and await queued(veil) == {78}


async def test_nothing_is_sent_when_the_basis_ended_before_the_send(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB))
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    with pytest.raises(NotFound):
        await veil.ledger.begin([image], recipient_id=BOB, basis=Basis.of(decision), kind="dm",
                                channel_id=7)
    assert await veil.ctx.db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_share_ids_are_never_reused_so_an_old_copy_is_never_someone_elses(veil):
    image = await _image(veil)
    first = await veil.sharing.grant(viewer(ALICE), "user", BOB)
    bobs = await deliver(veil, image, BOB)
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    await veil.ledger.claim()
    second = await veil.sharing.grant(viewer(ALICE), "user", CAROL)
    assert second.id != first.id
    carols = await deliver(veil, image, CAROL)
    await veil.sharing.revoke(viewer(ALICE), "user", CAROL)
    assert await queued(veil) == {bobs, carols}


async def test_a_crash_between_the_send_and_the_record_is_reconciled(veil, clock):
    image = await _image(veil)
    await veil.ledger.begin([image], recipient_id=ALICE, basis=OWNER, kind="dm", channel_id=7)
    assert await veil.ledger.pending() == []  # not stale yet: maybe still being sent
    clock.advance(600)
    [(delivery_id, recipient, channel, public_id, _)] = await veil.ledger.pending()
    assert (recipient, channel, public_id) == (ALICE, 7, image.public_id)
    assert (await veil.ledger.reconcile(delivery_id, 555)).kept
    assert await veil.images.deliveries(image.public_id) == [("dm", 7, 555)]
    removal = await veil.images.delete(image.public_id, viewer(ALICE))
    assert await queued(veil) == {555} and removal.retractions_queued == 1


async def test_a_pending_copy_never_found_after_a_crash_is_forgotten(veil, clock):
    image = await _image(veil)
    pending = await veil.ledger.begin([image], recipient_id=ALICE, basis=OWNER, kind="dm",
                                      channel_id=7)
    clock.advance(600)
    assert not (await veil.ledger.reconcile(pending.ids[0], None)).kept
    assert await veil.ctx.db.fetchval("SELECT count(*) FROM deliveries") == 0


async def test_a_copy_no_bot_can_delete_is_listed_for_the_owner_with_its_reason(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.ledger.record(image, kind="dm", channel_id=9, message_id=90, recipient_id=BOB,
                             basis=Basis("grant", grant_id=(await veil.sharing.grants_by(
                                 ALICE))[0].id), unretractable="a channel I am not in")
    [copy] = await veil.ledger.unretractable_copies(ALICE)
    assert (copy.image_ref, copy.recipient_id, copy.reason) == (
        image.public_id, BOB, "a channel I am not in")
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    assert await veil.ledger.outbox_size() == 0  # nothing to try: it stays listed instead


# The outbox --------------------------------------------------------------------------------

async def _queued_one(veil, message_id=5):
    image = await _image(veil)
    await veil.ledger.record(image, kind="dm", channel_id=4, message_id=message_id,
                             recipient_id=ALICE, basis=OWNER)
    await veil.images.delete(image.public_id, viewer(ALICE))
    return image


async def test_a_permanent_refusal_is_kept_stuck_shown_to_the_owner_and_not_retried_soon(
        veil, clock):
    image = await _queued_one(veil)
    [job] = await veil.ledger.claim()
    assert await veil.ledger.failed(job, error="Discord refused: no permission", permanent=True)
    [stuck] = await veil.ledger.stuck(ALICE)
    assert (stuck.image_ref, stuck.message_id) == (image.public_id, 5)
    assert "refused" in stuck.reason
    assert await veil.ledger.stuck(BOB) == []
    clock.advance(6 * 3600)
    assert await veil.ledger.claim() == []
    clock.advance(18 * 3600)
    assert [j.message_id for j in await veil.ledger.claim()] == [5]


async def test_a_retraction_that_keeps_failing_ends_stuck_not_dropped(veil, clock):
    await _queued_one(veil)
    for attempt in range(1, 13):
        [job] = await veil.ledger.claim()
        became_stuck = await veil.ledger.failed(job, error="Discord answered 503",
                                                permanent=False)
        assert became_stuck == (attempt == 12)
        clock.advance(3601)
    [stuck] = await veil.ledger.stuck(ALICE)
    assert "gave up after 12 attempts" in stuck.reason
    assert await veil.ledger.outbox_size() == 1


async def test_a_claimed_retraction_is_not_taken_by_another_worker_until_its_lease_ends(
        veil, data_dir, clock, database_url):
    from bot.core.veil import Veil

    await _queued_one(veil)
    other = await Veil.open(data_dir, clock=clock, database_url=database_url)
    try:
        [job] = await veil.ledger.claim()
        assert await other.ledger.claim() == []
        clock.advance(121)  # the first worker died holding it
        [again] = await other.ledger.claim()
        assert again.id == job.id
        assert not await veil.ledger.done(job)  # its claim was lost: it must not count
        assert await other.ledger.done(again)
    finally:
        await other.close()


@pytest.mark.slow
async def test_two_drainer_processes_delete_every_message_exactly_once(tmp_path):
    """Two real processes drain one outbox on one data folder at the same time."""
    import subprocess
    import sys
    from collections import Counter

    from aiohttp import web

    from bot.core.veil import Veil

    data_dir = tmp_path / "data"
    async with await Veil.open(data_dir) as veil:
        image = await _image(veil)
        for message_id in range(1, 201):
            await veil.ledger.record(image, kind="dm", channel_id=3, message_id=message_id,
                                     recipient_id=BOB, basis=PUBLIC)
        await veil.images.delete(image.public_id, viewer(ALICE))
        assert await veil.ledger.outbox_size() == 200

    deletions: Counter[int] = Counter()
    workers: dict[int, str] = {}

    async def delete_message(request: web.Request) -> web.Response:
        message_id = int(request.match_info["message"])
        deletions[message_id] += 1
        workers[message_id] = request.headers["X-Worker"]
        await asyncio.sleep(0.002)  # as slow as a real round trip, so the drainers interleave
        return web.Response(status=204)

    app = web.Application()
    app.router.add_delete("/channels/{channel}/messages/{message}", delete_message)
    async with serving(app) as url:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.drainscript", str(data_dir), url,
            cwd=ROOT, stderr=subprocess.PIPE) for _ in range(2)]
        results = [await asyncio.wait_for(p.communicate(), 120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert set(deletions) == set(range(1, 201))
    assert set(deletions.values()) == {1}, "a message was deleted twice"
    assert len(set(workers.values())) == 2, "only one drainer did any work"
    async with await Veil.open(data_dir) as veil:
        assert await veil.ledger.outbox_size() == 0


async def test_a_copy_whose_access_ended_and_came_back_while_in_flight_is_still_retracted(veil):
    """It was sent while the image was private: access given again later does not excuse it."""
    image = await _image(veil, public=True)
    pending = await veil.ledger.begin([image], recipient_id=BOB, basis=PUBLIC, kind="dm",
                                      channel_id=7)
    await veil.images.set_visibility(image.public_id, viewer(ALICE), "private")
    await veil.images.set_visibility(image.public_id, viewer(ALICE), "public")
    assert not (await veil.ledger.complete(pending, message_id=79)).kept
    assert await queued(veil) == {79}


# Races: a copy on its way while its access ends ---------------------------------------------

async def _race_setup(veil, event: str):
    """An image, someone who may see it, and the operation that ends their access."""
    image = await _image(veil, public=event == "going private")
    who, roles, mod = BOB, (), False
    if event in ("revoke", "delete"):
        await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
        end = lambda: veil.sharing.revoke(viewer(ALICE), "user", BOB)  # noqa: E731
        if event == "delete":
            end = lambda: veil.images.delete(image.public_id, viewer(ALICE))  # noqa: E731
    elif event == "group removal":
        await veil.sharing.create_group(ALICE, "g")
        await veil.sharing.add_member(ALICE, "g", BOB)
        group = await veil.sharing.group(ALICE, "g")
        await veil.sharing.grant(viewer(ALICE), "group", group.id)
        end = lambda: veil.sharing.remove_member(ALICE, "g", BOB)  # noqa: E731
    elif event == "report close":
        report = await veil.moderation.report(viewer(ALICE), image.public_id, "mine")
        who, mod = MOD, True
        end = lambda: veil.moderation.close_report(viewer(MOD, mod=True), report.id)  # noqa: E731
    else:
        end = lambda: veil.images.set_visibility(  # noqa: E731
            image.public_id, viewer(ALICE), "private")
    return image, who, roles, mod, end


@pytest.mark.slow
@pytest.mark.parametrize("event", ["revoke", "group removal", "report close", "going private",
                                   "delete"])
async def test_a_copy_racing_the_end_of_its_access_is_never_kept(tmp_path, event):
    """Many rounds: a delivery (check, pending row, a send of random length, the record) and
    the event run at once, on two connections to one data folder as two processes would. In
    every round the copy is either never sent or queued for retraction; never kept."""
    import random

    from bot.core.veil import Veil

    rng = random.Random(event)
    sent_rounds = 0
    for round_ in range(25):
        data_dir = tmp_path / f"r{round_}"
        async with await Veil.open(data_dir) as veil, await Veil.open(data_dir) as other:
            setup = await _race_setup(other, event)
            sent = await _race_once(veil, rng, *setup)
            assert await ended_but_kept(veil) == 0
            if sent is not None:
                sent_rounds += 1
                assert await queued(veil) == {sent}, f"round {round_}: copy kept"
    assert sent_rounds, "no round sent a copy: the race was never run"


async def _race_once(veil, rng, image, who, roles, mod, end) -> int | None:
    """The delivery and the event at once; the message id sent, or None if refused."""
    sent: list[int] = []

    async def delivery() -> None:
        await asyncio.sleep(rng.random() * 0.004)
        try:
            _, decision = await veil.images.check_view(image.public_id,
                                                       viewer(who, *roles, mod=mod))
            pending = await veil.ledger.begin([image], recipient_id=who,
                                              basis=Basis.of(decision), kind="dm",
                                              channel_id=7)
        except NotFound:
            return  # refused before anything was sent
        await asyncio.sleep(rng.random() * 0.004)  # Discord answering
        sent.append(next(_messages))
        await veil.ledger.complete(pending, message_id=sent[0])

    async def ending() -> None:
        await asyncio.sleep(rng.random() * 0.006)
        await end()

    await asyncio.gather(delivery(), ending())
    return sent[0] if sent else None
