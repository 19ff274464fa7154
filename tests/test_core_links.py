"""Links in the core: tokens, expiry, view limits, revocation, policy caps (DESIGN section 5)."""

from __future__ import annotations

import asyncio

import pytest

from bot.core.blobs import image_key
from bot.core.crypto import CryptoError
from bot.core.errors import InvalidInput, NotFound, PolicyViolation
from bot.core.links import TOKEN_CHARS
from tests.conftest import ALICE, BOB, GUILD, MOD, png, viewer


async def _link(veil, **options):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    return image, await veil.links.create(image.public_id, viewer(ALICE), **options)


async def test_a_token_is_long_random_and_never_stored(veil, at_rest):
    image, new = await _link(veil)
    assert len(new.token) == TOKEN_CHARS
    await veil.ctx.db.checkpoint()
    raw = await at_rest()
    assert image.public_id.encode() in raw  # the database is in what was read
    assert new.token.encode() not in raw
    assert new.token[16:].encode() not in raw


async def test_a_live_link_serves_the_image_and_counts_one_view(veil):
    image, new = await _link(veil)
    content, link = await veil.links.fetch(new.token, agent="Firefox")
    assert content.record.public_id == image.public_id
    [entry] = await veil.ctx.db.fetchall("SELECT via, link_id, agent FROM view_log")
    assert tuple(entry) == ("link", link.public_id, "Firefox")
    [listed] = await veil.links.links_of(viewer(ALICE))
    assert listed.views == 1


async def test_tampered_and_truncated_tokens_are_unknown(veil):
    _, new = await _link(veil)
    flipped = new.token[:-1] + ("A" if new.token[-1] != "A" else "B")
    assert await veil.links.resolve(flipped) is None
    assert await veil.links.resolve(new.token[:-2]) is None
    assert await veil.links.resolve(new.token + "x") is None
    assert await veil.links.resolve("") is None
    assert await veil.links.resolve(new.token) is not None


async def test_a_link_expires_on_the_dot(veil, clock):
    _, new = await _link(veil, expires_in=600)
    clock.advance(599.999)
    assert await veil.links.resolve(new.token) is not None
    clock.advance(0.001)
    assert await veil.links.resolve(new.token) is None
    assert await veil.links.fetch(new.token) is None


async def test_a_revoked_link_stops_on_the_next_request(veil):
    _, new = await _link(veil)
    await veil.links.revoke(new.link.public_id, viewer(ALICE))
    assert await veil.links.fetch(new.token) is None
    [listed] = await veil.links.links_of(viewer(ALICE))
    assert listed.revoked


async def test_only_the_owner_can_revoke_a_link(veil):
    _, new = await _link(veil)
    with pytest.raises(NotFound):
        await veil.links.revoke(new.link.public_id, viewer(BOB))


async def test_a_view_limit_holds_under_concurrent_fetches(veil):
    _, new = await _link(veil, max_views=3)
    results = await asyncio.gather(*(veil.links.fetch(new.token) for _ in range(30)))
    assert sum(r is not None for r in results) == 3
    assert await veil.links.resolve(new.token) is None


async def _views_and_log(veil, image):
    [listed] = await veil.links.links_of(viewer(ALICE), image.public_id)
    logged = await veil.ctx.db.fetchval("SELECT count(*) FROM view_log WHERE image_id = ?",
                                        (image.id,))
    return listed.views, logged


async def test_a_link_whose_image_is_gone_from_the_store_spends_no_view(veil):
    image, new = await _link(veil, max_views=1)
    await veil.ctx.blobs.delete([image_key(image.blob_name)])
    assert await veil.links.fetch(new.token, agent="Firefox") is None
    assert await _views_and_log(veil, image) == (0, 0)
    assert await veil.links.resolve(new.token) is not None, "the one view is still there"


async def test_a_link_whose_image_does_not_open_spends_no_view(veil):
    image, new = await _link(veil, max_views=1)
    key = image_key(image.blob_name)
    stored = bytearray(await veil.ctx.blobs.get(key))
    stored[-1] ^= 1  # the full picture's tag no longer matches
    await veil.ctx.blobs.put(key, bytes(stored))
    with pytest.raises(CryptoError):
        await veil.links.fetch(new.token, agent="Firefox")
    assert await _views_and_log(veil, image) == (0, 0)


async def test_a_link_to_a_deleted_image_is_unknown(veil):
    image, new = await _link(veil)
    await veil.images.delete(image.public_id, viewer(ALICE))
    assert await veil.links.resolve(new.token) is None


async def test_server_policy_caps_link_lifetime_and_can_turn_links_off(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    await veil.moderation.update_policy(GUILD, MOD, link_max_lifetime=3600)
    with pytest.raises(PolicyViolation, match="1h"):
        await veil.links.create(image.public_id, viewer(ALICE), expires_in=7200)
    default = await veil.links.create(image.public_id, viewer(ALICE))
    assert default.link.expires_at - default.link.created_at == 3600
    await veil.moderation.update_policy(GUILD, MOD, links_enabled=False)
    with pytest.raises(PolicyViolation, match="turned off"):
        await veil.links.create(image.public_id, viewer(ALICE))


async def test_link_options_are_validated(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    with pytest.raises(InvalidInput):
        await veil.links.create(image.public_id, viewer(ALICE), max_views=0)
    with pytest.raises(NotFound):
        await veil.links.create(image.public_id, viewer(BOB))


async def test_turning_links_off_stops_links_that_already_exist(veil):
    _, new = await _link(veil)
    await veil.moderation.update_policy(GUILD, MOD, links_enabled=False)
    assert await veil.links.resolve(new.token) is None
    await veil.moderation.update_policy(GUILD, MOD, links_enabled=True)
    assert await veil.links.resolve(new.token) is not None


async def test_a_lowered_server_maximum_shortens_existing_links(veil, clock):
    _, new = await _link(veil, expires_in=86400)
    await veil.moderation.update_policy(GUILD, MOD, link_max_lifetime=3600)
    clock.advance(3601)
    assert await veil.links.resolve(new.token) is None


async def test_raising_the_server_maximum_again_does_not_revive_a_shortened_link(veil, clock):
    _, new = await _link(veil, expires_in=86400)
    await veil.moderation.update_policy(GUILD, MOD, link_max_lifetime=3600)
    clock.advance(3601)
    await veil.moderation.update_policy(GUILD, MOD, link_max_lifetime=7 * 86400)
    assert await veil.links.resolve(new.token) is None
