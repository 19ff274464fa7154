"""Grants, roles, personal groups and the gallery (DESIGN guarantees 2 and 3, section 3)."""

from __future__ import annotations

import pytest

from bot.core.errors import InvalidInput, NotFound
from tests.conftest import ALICE, ARTISTS, BOB, CAROL, GUILD, png, viewer


async def _image(veil, owner=ALICE):
    return await veil.images.create(owner, png(), guild_id=GUILD, source="upload")


async def test_sharing_one_image_with_a_user_lets_them_see_that_image_only(veil):
    shared, other = await _image(veil), await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=shared.public_id)
    _, decision = await veil.images.open(shared.public_id, viewer(BOB))
    assert decision.via == "grant"
    with pytest.raises(NotFound):
        await veil.images.open(other.public_id, viewer(BOB))


async def test_sharing_all_images_covers_images_made_later_too(veil):
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    later = await _image(veil)
    await veil.images.open(later.public_id, viewer(BOB))


async def test_a_role_grant_works_only_while_the_viewer_has_the_role(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS, image_public_id=image.public_id)
    await veil.images.open(image.public_id, viewer(BOB, ARTISTS))
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(BOB))  # the role was taken away


async def test_a_group_grant_follows_the_groups_membership(veil):
    image = await _image(veil)
    group = await veil.sharing.create_group(ALICE, "Close friends")
    await veil.sharing.add_member(ALICE, "close friends", BOB)
    await veil.sharing.grant(viewer(ALICE), "group", group.id, image_public_id=image.public_id)
    await veil.images.open(image.public_id, viewer(BOB))
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(CAROL))
    await veil.sharing.remove_member(ALICE, "Close friends", BOB)
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(BOB))


async def test_deleting_a_group_deletes_its_grants(veil):
    image = await _image(veil)
    group = await veil.sharing.create_group(ALICE, "team")
    await veil.sharing.add_member(ALICE, "team", BOB)
    await veil.sharing.grant(viewer(ALICE), "group", group.id, image_public_id=image.public_id)
    await veil.sharing.delete_group(ALICE, "team")
    assert await veil.ctx.db.fetchval("SELECT count(*) FROM grants") == 0
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(BOB))


async def test_a_grant_with_an_expiry_stops_on_the_dot(veil, clock):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id,
                             expires_in=3600)
    clock.advance(3599.9)
    await veil.images.open(image.public_id, viewer(BOB))
    clock.advance(0.1)
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(BOB))


async def test_revoking_stops_access_on_the_next_request_and_retracts_what_it_delivered(veil):
    image = await _image(veil)
    grant = await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    _, decision = await veil.images.open(image.public_id, viewer(BOB))
    await veil.images.record_delivery(image, kind="dm", channel_id=44, message_id=440,
                                      recipient_id=BOB, grant_id=decision.grant_id)
    assert decision.grant_id == grant.id
    removed, queued = await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    assert (removed, len(queued)) == (1, 1)
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(BOB))
    assert [r.message_id for r in await veil.images.due_retractions()] == [440]


async def test_only_the_owner_can_share_an_image(veil):
    image = await _image(veil)
    with pytest.raises(NotFound):
        await veil.sharing.grant(viewer(BOB), "user", CAROL, image_public_id=image.public_id)


async def test_sharing_with_yourself_or_an_unknown_group_is_explained(veil):
    with pytest.raises(InvalidInput, match="your own"):
        await veil.sharing.grant(viewer(ALICE), "user", ALICE)
    with pytest.raises(NotFound, match="group"):
        await veil.sharing.grant(viewer(ALICE), "group", 12345)


async def test_sharing_again_renews_rather_than_duplicates(veil, clock):
    await veil.sharing.grant(viewer(ALICE), "user", BOB, expires_in=60)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    [grant] = await veil.sharing.grants_by(ALICE)
    assert grant.expires_at is None


async def test_the_gallery_lists_own_and_shared_images_newest_first_with_pages(veil):
    mine = [await _image(veil, BOB) for _ in range(3)]
    theirs = [await _image(veil, ALICE) for _ in range(2)]
    hidden = await _image(veil, CAROL)
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS)
    page = await veil.images.gallery(viewer(BOB, ARTISTS), per_page=4)
    ids = [i.record.public_id for i in page.items]
    expected = [r.public_id for r in sorted(mine + theirs, key=lambda r: r.id, reverse=True)]
    assert ids == expected[:4] and page.has_more
    assert hidden.public_id not in ids
    second = await veil.images.gallery(viewer(BOB, ARTISTS), page=2, per_page=4)
    assert [i.record.public_id for i in second.items] == expected[4:]
    assert not second.has_more
    without_role = await veil.images.gallery(viewer(BOB), per_page=10)
    assert {i.record.public_id for i in without_role.items} == {r.public_id for r in mine}


async def test_an_image_shared_twice_appears_once_in_the_gallery(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    page = await veil.images.gallery(viewer(BOB))
    assert [i.record.public_id for i in page.items] == [image.public_id]


async def test_group_names_are_validated_and_unique_per_owner(veil):
    with pytest.raises(InvalidInput):
        await veil.sharing.create_group(ALICE, "   ")
    with pytest.raises(InvalidInput):
        await veil.sharing.create_group(ALICE, "x" * 33)
    await veil.sharing.create_group(ALICE, "Friends")
    with pytest.raises(InvalidInput, match="already"):
        await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.create_group(BOB, "Friends")


async def test_a_group_is_found_by_its_name_as_typed_even_with_extra_spaces(veil):
    await veil.sharing.create_group(ALICE, "close   friends")
    group = await veil.sharing.group(ALICE, " close  friends ")
    assert group.name == "close friends"


async def test_images_reachable_through_several_grants_fill_whole_gallery_pages(veil):
    second_role = ARTISTS + 1
    made = [await _image(veil) for _ in range(30)]
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS)
    await veil.sharing.grant(viewer(ALICE), "role", second_role)
    both = viewer(BOB, ARTISTS, second_role)
    first = await veil.images.gallery(both, per_page=25)
    second = await veil.images.gallery(both, page=2, per_page=25)
    assert len(first.items) == 25 and first.has_more
    shown = [i.record.public_id for i in first.items + second.items]
    assert shown == [r.public_id for r in reversed(made)]


async def test_an_expired_image_shared_one_by_one_leaves_the_gallery_before_it_is_swept(
        veil, clock):
    """Images shared one by one are chosen for the page on their ids; one past its own expiry
    (the sweeper has not run yet) must still not be listed, nor leave a page short."""
    made = []
    for n in range(9):
        expires = 60 if n in (1, 4, 5, 8) else None
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload",
                                         expires_in=expires)
        await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
        made.append((image, expires))
    own = await _image(veil, BOB)
    clock.advance(61)
    live = [own.public_id] + [i.public_id for i, e in reversed(made) if e is None]
    shown, page = [], 1
    while True:
        listed = await veil.images.gallery(viewer(BOB), page=page, per_page=2)
        assert len(listed.items) == 2 or not listed.has_more
        shown += [i.record.public_id for i in listed.items]
        if not listed.has_more:
            break
        page += 1
    assert shown == live


async def test_an_expired_image_leaves_the_gallery_of_one_shared_everything_before_it_is_swept(
        veil, clock):
    """Own images and images shared through an all-images grant are chosen on their index
    entries, expiry included: one past its own expiry is not listed, nor leaves a page short."""
    made = [await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload",
                                     expires_in=60 if n in (1, 3) else None) for n in range(5)]
    mine = [await veil.images.create(BOB, png(), guild_id=GUILD, source="upload",
                                     expires_in=60 if n == 0 else None) for n in range(2)]
    await veil.sharing.grant(viewer(ALICE), "role", ARTISTS)
    clock.advance(61)
    live = [mine[1].public_id] + [made[n].public_id for n in (4, 2, 0)]
    first = await veil.images.gallery(viewer(BOB, ARTISTS), per_page=2)
    second = await veil.images.gallery(viewer(BOB, ARTISTS), page=2, per_page=2)
    assert [i.record.public_id for i in first.items + second.items] == live
    assert first.has_more and not second.has_more


async def test_an_expired_share_on_an_earlier_page_does_not_shift_the_later_pages(veil, clock):
    """The first page finds an unswept expired share among its own rows; a later page must
    also count the ones on the pages before it, though none is among the rows it reads."""
    made = []
    for n in range(6):
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload",
                                         expires_in=60 if n == 5 else None)
        await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
        made.append(image)
    own = await _image(veil, BOB)
    clock.advance(61)
    # Newest first: own, the expired one, then five live shares; pages of two.
    live = [own.public_id] + [i.public_id for i in reversed(made[:5])]
    second = await veil.images.gallery(viewer(BOB), page=2, per_page=2)
    assert [i.record.public_id for i in second.items] == live[2:4] and second.has_more
    third = await veil.images.gallery(viewer(BOB), page=3, per_page=2)
    assert [i.record.public_id for i in third.items] == live[4:6] and not third.has_more


@pytest.mark.slow  # twenty readers spin for forty write cycles: 5 s of CPU
async def test_a_revoke_holds_on_the_very_next_read_even_while_other_reads_run(veil):
    """Reads racing on the shared reader connection must not keep an old snapshot alive."""
    import asyncio

    image = await _image(veil)
    other = await _image(veil)
    stop = asyncio.Event()

    async def busy_reader():
        while not stop.is_set():
            await veil.images.gallery(viewer(CAROL))
            try:
                await veil.images.check_view(other.public_id, viewer(BOB))
            except NotFound:
                pass

    readers = [asyncio.create_task(busy_reader()) for _ in range(20)]
    try:
        for _ in range(40):
            await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
            await veil.images.check_view(image.public_id, viewer(BOB))
            await veil.sharing.revoke(viewer(ALICE), "user", BOB,
                                      image_public_id=image.public_id)
            with pytest.raises(NotFound):
                await veil.images.check_view(image.public_id, viewer(BOB))
    finally:
        stop.set()
        await asyncio.gather(*readers)


async def test_unsharing_one_image_says_whether_a_share_of_everything_still_covers_it(veil):
    image = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    await veil.sharing.revoke(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    assert not await veil.sharing.still_covered(ALICE, "user", BOB, image.public_id)
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    assert await veil.sharing.still_covered(ALICE, "user", BOB, image.public_id)
    assert not await veil.sharing.still_covered(ALICE, "user", CAROL, image.public_id)
    assert not await veil.sharing.still_covered(ALICE, "role", BOB, image.public_id)


async def test_gallery_thumbnails_of_others_images_are_logged_views_and_ones_own_are_not(veil):
    mine = await _image(veil, owner=BOB)
    shared = await _image(veil)
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=shared.public_id)
    page = await veil.images.gallery_thumbnails(viewer(BOB))
    assert {(i.record.public_id, i.mine) for i in page.items} == {
        (mine.public_id, True), (shared.public_id, False)}
    assert all(i.thumbnail.thumbnail and i.thumbnail.data for i in page.items)
    [seen] = await veil.images.view_log(viewer(ALICE))
    assert (seen.image_public_id, seen.viewer_id, seen.via) == (shared.public_id, BOB, "gallery")
    assert await veil.images.view_log(viewer(BOB)) == []


async def test_a_view_names_the_share_of_that_very_image_before_a_share_of_all_images(veil):
    """The copy's basis is the narrower share, whichever was made first: revoking the share of
    everything leaves the copy sent on the share of this image alone."""
    image = await _image(veil)
    everything = await veil.sharing.grant(viewer(ALICE), "user", BOB)
    this_one = await veil.sharing.grant(viewer(ALICE), "role", ARTISTS,
                                        image_public_id=image.public_id)
    assert everything.id < this_one.id
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB, ARTISTS))
    assert decision.grant_id == this_one.id
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB))
    assert decision.grant_id == everything.id


async def test_among_live_shares_a_view_names_the_oldest(veil):
    image = await _image(veil)
    group = await veil.sharing.create_group(ALICE, "Close friends")
    await veil.sharing.add_member(ALICE, group.name, BOB)
    by_group = await veil.sharing.grant(viewer(ALICE), "group", group.id,
                                        image_public_id=image.public_id)
    by_name = await veil.sharing.grant(viewer(ALICE), "user", BOB,
                                       image_public_id=image.public_id)
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB))
    assert decision.grant_id == min(by_group.id, by_name.id) == by_group.id
    await veil.sharing.revoke(viewer(ALICE), "group", group.id,
                              image_public_id=image.public_id)
    _, decision = await veil.images.check_view(image.public_id, viewer(BOB))
    assert decision.grant_id == by_name.id


@pytest.mark.sqlite_only("SQLite's query plan")
def test_a_view_check_finds_grants_through_indexes_without_a_scan_or_a_sort(data_dir, veil):
    """Bounded by the grants on the one image and the owner's all-images grants, at any size
    of library or of grants table (issue 12: the check's p99 at a million images)."""
    import sqlite3

    from bot.core.context import view_facts_sql

    conn = sqlite3.connect(data_dir / "veil.db")
    try:
        plan = [row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN " + view_facts_sql("sqlite"),
            {"public_id": "x", "user": BOB, "roles": "[]", "now": 0.0, "moderator": 0})]
    finally:
        conn.close()
    assert not [step for step in plan if step.startswith("SCAN") and "json_each" not in step]
    assert not [step for step in plan if "TEMP B-TREE" in step], plan
    assert "SEARCH g USING INDEX grants_by_image (image_id=?)" in plan, plan
    assert "SEARCH g USING INDEX grants_unique (owner_id=? AND <expr>=?)" in plan, plan
