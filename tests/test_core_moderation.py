"""Moderators remove without viewing; reports; forget-me; audit (guarantees 5, 6, 8)."""

from __future__ import annotations

import pytest

from bot.core.errors import Forbidden, NotFound
from tests.conftest import ALICE, BOB, GUILD, MOD, OTHER_GUILD, png, viewer


async def test_a_moderator_cannot_view_a_private_image(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(MOD, mod=True))


async def test_a_moderator_can_view_one_image_after_a_grantee_reports_it(veil):
    reported = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    other = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.moderation.report(viewer(BOB), reported.public_id, "harassment")
    _, decision = await veil.images.open(reported.public_id, viewer(MOD, mod=True))
    assert decision.via == "report"
    with pytest.raises(NotFound):
        await veil.images.open(other.public_id, viewer(MOD, mod=True))
    with pytest.raises(NotFound):  # moderators of another server learn nothing
        await veil.images.open(reported.public_id, viewer(MOD, guild=OTHER_GUILD, mod=True))


async def test_a_stranger_cannot_report_an_image_they_cannot_see(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    with pytest.raises(NotFound):
        await veil.moderation.report(viewer(BOB), image.public_id, "spam")


async def test_takedown_removes_an_image_from_this_server_only(veil):
    here = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    there = await veil.images.create(ALICE, png(), guild_id=OTHER_GUILD, source="upload")
    removal = await veil.moderation.takedown(viewer(MOD, mod=True), here.public_id)
    assert removal.image_ids == (here.public_id,)
    with pytest.raises(NotFound):
        await veil.moderation.takedown(viewer(MOD, mod=True), there.public_id)
    assert await veil.ctx.image(there.public_id) is not None


async def test_a_member_without_moderator_rights_cannot_purge(veil):
    with pytest.raises(Forbidden):
        await veil.moderation.purge(viewer(BOB), ALICE)


async def test_purge_removes_every_image_a_member_made_in_this_server(veil):
    made_here = [await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
                 for _ in range(3)]
    elsewhere = await veil.images.create(ALICE, png(), guild_id=OTHER_GUILD, source="upload")
    removal = await veil.moderation.purge(viewer(MOD, mod=True), ALICE)
    assert set(removal.image_ids) == {i.public_id for i in made_here}
    assert await veil.ctx.image(elsewhere.public_id) is not None
    actions = [e.action for e in await veil.moderation.audit(GUILD)]
    assert actions.count("admin.purge") == 4  # one per image and one for the purge


async def test_forget_me_destroys_the_users_key_and_everything_of_theirs(veil, at_rest, backend):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="generated",
                                     prompt="forget this prompt")
    await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.grant(viewer(ALICE), "user", BOB)
    await veil.sharing.grant(viewer(BOB), "user", ALICE)
    owner_key = await veil.ctx.db.fetchval("SELECT wrapped_key FROM users WHERE user_id = ?",
                                           (ALICE,))
    removal = await veil.privacy.forget(ALICE)
    assert removal.image_ids == (image.public_id,)
    for table, column in (("users", "user_id"), ("images", "owner_id"), ("groups", "owner_id"),
                          ("grants", "owner_id"), ("audit_log", "actor_id")):
        count = await veil.ctx.db.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = ?",
                                           (ALICE,))
        assert count == 0, table
    assert await veil.ctx.db.fetchval(
        "SELECT count(*) FROM grants WHERE grantee_kind = 'user' AND grantee_id = ?",
        (ALICE,)) == 0
    raw = await at_rest()
    if backend == "sqlite":
        # secure_delete and the truncating checkpoint. PostgreSQL keeps the dead row in its WAL
        # until the segment is recycled (docs/STORAGE.md): there the master key, kept outside
        # the database, is what protects it, and deleting the row ends it for every reader.
        assert owner_key not in raw
    assert b"forget this prompt" not in raw


async def test_the_audit_log_names_ids_never_prompts_or_tokens(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="generated",
                                     prompt="my very secret prompt")
    new = await veil.links.create(image.public_id, viewer(ALICE))
    await veil.images.delete(image.public_id, viewer(ALICE))
    rows = await veil.ctx.db.fetchall("SELECT * FROM audit_log")
    text = repr([tuple(r) for r in rows])
    assert "secret prompt" not in text and new.token[16:] not in text
    assert image.public_id in text


async def test_policy_changes_are_kept_and_audited(veil):
    policy = await veil.moderation.update_policy(GUILD, MOD, force_private=True,
                                                 retention_days=30, mod_role_id=77)
    assert policy.force_private and policy.retention_days == 30 and policy.mod_role_id == 77
    await veil.moderation.allow_channel(GUILD, 555, MOD)
    assert (await veil.moderation.policy(GUILD)).permitted_channels == frozenset({555})
    assert await veil.moderation.channel_permitted(GUILD, 555)
    await veil.moderation.deny_channel(GUILD, 555, MOD)
    assert not await veil.moderation.channel_permitted(GUILD, 555)
    actions = {e.action for e in await veil.moderation.audit(GUILD, member_id=MOD)}
    assert {"admin.force_private", "admin.channel-allow", "admin.channel-deny"} <= actions


async def test_a_report_on_a_public_image_stops_counting_once_the_image_is_private(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload",
                                     requested_private=False)
    await veil.moderation.report(viewer(BOB), image.public_id, "spam")
    await veil.images.set_visibility(image.public_id, viewer(ALICE), "private")
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(MOD, mod=True))


async def test_a_report_counts_only_while_the_reporter_is_still_shared_with(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    await veil.moderation.report(viewer(BOB), image.public_id, "abuse")
    await veil.images.open(image.public_id, viewer(MOD, mod=True))
    await veil.sharing.revoke(viewer(ALICE), "user", BOB)
    with pytest.raises(NotFound):
        await veil.images.open(image.public_id, viewer(MOD, mod=True))
    await veil.sharing.grant(viewer(ALICE), "user", BOB)  # shared with Bob again, all images
    await veil.images.open(image.public_id, viewer(MOD, mod=True))


async def test_a_moderator_cannot_keep_a_report_alive_by_reporting_it_again(veil):
    from bot.core.errors import InvalidInput

    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    await veil.moderation.report(viewer(ALICE), image.public_id, "my own image")
    with pytest.raises(InvalidInput, match="already with the moderators"):
        await veil.moderation.report(viewer(MOD, mod=True), image.public_id, "again")


async def test_an_open_report_opens_its_image_to_moderators_only_not_to_other_members(veil):
    """Two guards stand between a report and a member who is not a moderator: the view facts
    look reports up for moderators only, and the rule itself asks for a moderator. Each is
    checked on its own, so neither can quietly go."""
    from bot.core.access import can_view

    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    report = await veil.moderation.report(viewer(ALICE), image.public_id, "my own image")
    _, _, seen_by_member = await veil.ctx.view_facts(image.public_id, viewer(BOB))
    _, _, seen_by_mod = await veil.ctx.view_facts(image.public_id, viewer(MOD, mod=True))
    assert (seen_by_member, seen_by_mod) == (None, report.id)
    as_member = can_view(image, viewer(BOB), now=veil.ctx.now(), live_grant_id=None,
                         open_report=report.id)
    as_mod = can_view(image, viewer(MOD, mod=True), now=veil.ctx.now(), live_grant_id=None,
                      open_report=report.id)
    assert (as_member.allowed, as_mod.allowed, as_mod.report_id) == (False, True, report.id)
