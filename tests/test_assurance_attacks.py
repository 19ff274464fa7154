"""Attacks on the guarantees: link guessing and tampering, replays, concurrent operations, and
plaintext hunting in the raw data folder after crashes (DESIGN guarantees 2, 3, 5, 7, 9)."""

from __future__ import annotations

import asyncio
import random
import secrets
import string
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.core.errors import NotFound
from bot.core.links import TOKEN_CHARS
from bot.core.veil import Veil
from bot.images import sanitize_image
from bot.web import RateLimit, create_app
from tests.conftest import ALICE, BOB, GUILD, png, viewer
from tests.test_core_crash import run_killed

ALPHABET = string.ascii_letters + string.digits + "-_"
PROXY = "127.0.0.1"


def raw_bytes(data_dir: Path) -> bytes:
    """Every byte in the data folder: database, WAL, blobs, staged files, key file."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


# Links under attack ------------------------------------------------------------------------------


@pytest.fixture
async def web(veil, clock):
    app = create_app(veil, public_url="https://veil.example", trusted_proxies=[PROXY],
                     clock=clock, rate_limit=RateLimit(burst=20, per_second=1.0))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.slow
async def test_ten_thousand_random_guesses_find_nothing_and_the_holder_still_gets_through(
        veil, web):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    real = await veil.links.create(image.public_id, viewer(ALICE))
    rng = random.Random(1234)
    guesses = ["".join(rng.choice(ALPHABET) for _ in range(TOKEN_CHARS)) for _ in range(10_000)]
    statuses: dict[int, int] = {}
    for start in range(0, len(guesses), 200):
        batch = guesses[start:start + 200]
        # Guessers spread over 50 addresses, as a botnet would be.
        responses = await asyncio.gather(*(
            web.get(f"/l/{token}/image", headers={"X-Forwarded-For": f"203.0.113.{i % 50}",
                                                  "User-Agent": "Mozilla/5.0 Firefox/130"})
            for i, token in enumerate(batch)))
        for response in responses:
            statuses[response.status] = statuses.get(response.status, 0) + 1
            response.release()
    assert statuses.get(200, 0) == 0
    assert statuses.get(429, 0) > 8_000, statuses  # the limiter engaged for every guesser
    holder = await web.get(f"/l/{real.token}/image",
                           headers={"X-Forwarded-For": "198.51.100.7",
                                    "User-Agent": "Mozilla/5.0 Firefox/130"})
    assert holder.status == 200
    assert await veil.links.resolve(guesses[0]) is None


async def test_every_single_character_change_to_a_token_is_rejected(veil):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    real = await veil.links.create(image.public_id, viewer(ALICE))
    tampered = set()
    for position in range(TOKEN_CHARS):
        for char in "Aa0-_zZ9":
            candidate = real.token[:position] + char + real.token[position + 1:]
            if candidate != real.token:
                tampered.add(candidate)
    tampered |= {real.token[:n] for n in range(TOKEN_CHARS)}
    tampered |= {real.token + c for c in "A0-"}
    results = await asyncio.gather(*(veil.links.resolve(t) for t in tampered))
    assert len(tampered) > 350
    assert all(r is None for r in results)
    assert await veil.links.resolve(real.token) is not None


async def test_a_replayed_token_is_refused_after_revocation_expiry_or_its_last_view(veil, clock):
    image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    revoked = await veil.links.create(image.public_id, viewer(ALICE))
    expiring = await veil.links.create(image.public_id, viewer(ALICE), expires_in=60)
    single = await veil.links.create(image.public_id, viewer(ALICE), max_views=1)
    assert await veil.links.fetch(single.token) is not None
    await veil.links.revoke(revoked.link.public_id, viewer(ALICE))
    clock.advance(60)
    for token in (revoked.token, expiring.token, single.token):
        for _ in range(3):
            assert await veil.links.fetch(token) is None


# Concurrency -------------------------------------------------------------------------------------


async def test_two_hundred_concurrent_operations_lose_no_update_and_serve_nothing_late(veil):
    """Shares, unshares, link views, opens and deletes race on one data folder. A serve that
    started after a delete or a revoke completed must fail; view counts must add up."""
    images = [await veil.images.create(ALICE, png((i, 0, 0)), guild_id=GUILD, source="upload")
              for i in range(12)]
    links = {i.public_id: await veil.links.create(i.public_id, viewer(ALICE), max_views=4)
             for i in images}
    for image in images:
        await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=image.public_id)
    # Events are ordered by a counter taken when an operation starts or completes.
    clock = iter(range(1_000_000))
    deleted_at: dict[str, int] = {}
    revoked_at: dict[str, int] = {}
    served: list[tuple[str, int]] = []
    bob_served: list[tuple[str, int]] = []
    fetched: dict[str, int] = dict.fromkeys(links, 0)
    rng = random.Random(99)

    async def delete(pid):
        try:
            await veil.images.delete(pid, viewer(ALICE))
        except NotFound:
            return  # a racing delete of the same image got there first
        deleted_at[pid] = next(clock)

    async def unshare(pid):
        await veil.sharing.revoke(viewer(ALICE), "user", BOB, image_public_id=pid)
        revoked_at[pid] = next(clock)

    async def bob_opens(pid):
        started = next(clock)
        try:
            await veil.images.open(pid, viewer(BOB))
        except NotFound:
            return
        served.append((pid, started))
        bob_served.append((pid, started))

    async def link_view(pid):
        started = next(clock)
        if await veil.links.fetch(links[pid].token) is not None:
            fetched[pid] += 1
            served.append((pid, started))

    operations = []
    doomed = {i.public_id for i in images[:4]}
    unshared = {i.public_id for i in images[4:8]}
    for _ in range(200):
        pid = rng.choice(images).public_id
        kind = rng.random()
        if pid in doomed and kind < 0.1:
            operations.append(delete(pid))
        elif pid in unshared and kind < 0.2:
            operations.append(unshare(pid))
        elif kind < 0.6:
            operations.append(bob_opens(pid))
        else:
            operations.append(link_view(pid))
    await asyncio.gather(*operations, return_exceptions=False)

    for pid, started in served:
        assert started < deleted_at.get(pid, 10**9), f"{pid} served after its deletion"
    for pid, started in bob_served:
        assert started < revoked_at.get(pid, 10**9), f"{pid} served to Bob after the unshare"
    assert deleted_at and revoked_at and bob_served and any(fetched.values())
    for pid, link in links.items():
        assert fetched[pid] <= 4
        if pid not in deleted_at:
            [stored] = [x for x in await veil.links.links_of(viewer(ALICE))
                        if x.public_id == link.link.public_id]
            assert stored.views == fetched[pid], "a counted view was lost or invented"
    for pid in deleted_at:
        with pytest.raises(NotFound):
            await veil.images.open(pid, viewer(ALICE))


# Plaintext hunting after crashes -----------------------------------------------------------------


@pytest.mark.slow  # a subprocess killed at each failpoint
@pytest.mark.parametrize("failpoint", ["create:staged", "create:before-commit",
                                       "create:committed"])
async def test_after_a_crash_while_creating_no_plaintext_or_prompt_is_on_disk(data_dir,
                                                                               failpoint):
    async with await Veil.open(data_dir):
        pass
    run_killed(data_dir, failpoint, "create")
    async with await Veil.open(data_dir):
        pass
    clean = sanitize_image(png((1, 2, 3))).data  # what the crashed process stored, encrypted
    raw = raw_bytes(data_dir)
    assert clean not in raw and clean[16:48] not in raw
    assert b"crash prompt" not in raw


@pytest.mark.slow  # a subprocess killed at a failpoint
async def test_a_deleted_image_is_unrecoverable_from_the_raw_data_folder(data_dir):
    async with await Veil.open(data_dir) as veil:
        image = await veil.images.create(ALICE, png((4, 5, 6)), guild_id=GUILD,
                                         source="generated", prompt="remember the lighthouse")
        wrapped = await veil.ctx.db.fetchval("SELECT wrapped_key FROM images WHERE id = ?",
                                             (image.id,))
        sealed_prompt = await veil.ctx.db.fetchval("SELECT prompt_ct FROM images WHERE id = ?",
                                                   (image.id,))
        blob = (data_dir / "blobs" / image.blob_name[:2] / f"{image.blob_name}.img").read_bytes()
    run_killed(data_dir, "delete:committed", "delete", image.public_id)
    async with await Veil.open(data_dir):
        pass
    raw = raw_bytes(data_dir)
    for secret in (wrapped, sealed_prompt, blob[:64], b"remember the lighthouse"):
        assert secret not in raw


async def test_random_bytes_never_open_as_a_link(veil):
    for _ in range(2000):
        assert await veil.links.resolve(secrets.token_urlsafe(32)) is None
