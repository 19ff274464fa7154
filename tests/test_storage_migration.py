"""Moving a deployment between stores (`python -m bot migrate-storage`): every row and every
image arrives, access works there exactly as before, a second run adds nothing, and the way
back gives the same store again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.core.blobs import image_key, pack_image, unpack_image
from bot.core.errors import NotFound
from bot.core.ledger import OWNER, Basis
from bot.core.veil import Veil
from bot.storage_migration import NOT_COPIED, TABLES, MigrationError, copy_store
from tests.conftest import ALICE, ARTISTS, BOB, CAROL, GUILD, MOD, png, viewer

MASTER = bytes.fromhex("7a" * 32)


async def fill(veil: Veil) -> dict[str, Any]:
    """A store with something in every table that is copied."""
    made: dict[Any, Any] = {}
    for n, owner in enumerate((ALICE, ALICE, BOB)):
        image = await veil.images.create(owner, png((n * 40, 90, 200)), guild_id=GUILD,
                                         source="generated", prompt=f"prompt {n}")
        made.setdefault(owner, []).append(image.public_id)
    first, second = made[ALICE]
    alice = viewer(ALICE)
    await veil.sharing.grant(alice, "user", BOB, image_public_id=first)
    await veil.sharing.grant(alice, "role", ARTISTS, image_public_id=second, expires_in=3600)
    await veil.sharing.create_group(ALICE, "friends")
    await veil.sharing.add_member(ALICE, "friends", CAROL)
    await veil.sharing.grant(alice, "group", (await veil.sharing.group(ALICE, "friends")).id)
    # A share made, used and taken back: its copy waits for retraction, and its id must never
    # be handed out again, in any store.
    taken_back = await veil.sharing.grant(alice, "user", MOD, image_public_id=second)
    [shown] = [i for i in await veil.images.owned(ALICE) if i.public_id == second]
    await veil.ledger.record(shown, kind="dm", channel_id=600, message_id=601,
                             recipient_id=MOD, basis=Basis("grant", grant_id=taken_back.id))
    await veil.sharing.revoke(alice, "user", MOD, image_public_id=second)
    link = await veil.links.create(first, alice, max_views=5, password="correct horse")
    opened = await veil.links.login(await veil.links.resolve(link.token), "correct horse")
    assert opened.session is not None
    await veil.moderation.allow_channel(GUILD, 77, MOD)
    await veil.moderation.update_policy(GUILD, MOD, retention_days=30)
    await veil.moderation.report(viewer(BOB), first, "not for me")
    [image] = [i for i in await veil.images.owned(ALICE) if i.public_id == first]
    await veil.ledger.record(image, kind="dm", channel_id=555, message_id=556,
                             recipient_id=ALICE, basis=OWNER)
    await veil.images.open(first, viewer(BOB))  # a view in the owner's log
    made["link"] = link
    return made


async def dump(veil: Veil) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table's rows, in key order, as plain tuples."""
    out = {}
    for table in TABLES:
        rows = await veil.ctx.db.fetchall(
            f"SELECT * FROM {table.name} ORDER BY {', '.join(table.key)}")
        # When each store's objects were last listed for orphans is the store's own matter.
        out[table.name] = [tuple(r) for r in rows if table.name != "meta"
                           or r[0] != "orphan_sweep_at"]
    return out


@pytest.fixture
async def source(tmp_path: Path):
    veil = await Veil.open(tmp_path / "source", master_key=MASTER)
    try:
        yield veil
    finally:
        await veil.close()


@pytest.fixture
async def target(tmp_path: Path):
    veil = await Veil.open(tmp_path / "target", master_key=MASTER)
    try:
        yield veil
    finally:
        await veil.close()


async def test_every_row_and_every_image_arrives_and_opens_for_the_same_people(source, target):
    made = await fill(source)
    report = await copy_store(source, target)
    assert await dump(target) == await dump(source)
    assert report.images == 3 and report.blobs_added == 3
    first, second = made[ALICE]
    # Access holds in the target as it did: the grantee and the link holder see, others don't.
    await target.images.open(first, viewer(BOB))
    await target.images.open(second, viewer(CAROL))  # through the group's all-images share
    assert await target.links.fetch(made["link"].token) is None  # locked: password first
    with pytest.raises(NotFound):
        await target.images.open(first, viewer(MOD))


async def test_a_second_run_adds_nothing(source, target):
    await fill(source)
    await copy_store(source, target)
    before = await dump(target)
    again = await copy_store(source, target)
    assert again.rows_added == 0 and again.blobs_added == 0
    assert await dump(target) == before


async def test_the_way_back_gives_the_same_store(source, target, tmp_path):
    await fill(source)
    await copy_store(source, target)
    async with await Veil.open(tmp_path / "back", master_key=MASTER) as back:
        report = await copy_store(target, back)
        assert await dump(back) == await dump(source)
        assert report.images == 3


async def test_a_share_id_given_out_before_the_move_is_never_given_again(source, target):
    await fill(source)
    highest = await source.ctx.db.fetchval("SELECT seq FROM sqlite_sequence WHERE name = 'grants'")
    assert highest > await source.ctx.db.fetchval("SELECT max(id) FROM grants")  # a revoked one
    await copy_store(source, target)
    fresh = await target.sharing.grant(viewer(BOB), "user", CAROL)
    assert fresh.id > highest


async def test_an_image_whose_blob_is_missing_is_named_and_the_copy_is_not_called_done(
        source, target):
    made = await fill(source)
    broken = made[BOB][0]
    blob = await source.ctx.db.fetchval("SELECT blob_name FROM images WHERE public_id = ?",
                                        (broken,))
    key = image_key(blob)
    container = unpack_image(await source.ctx.blobs.get(key))
    await source.ctx.blobs.put(key, pack_image(b"not what was written", container["thumb"]))
    with pytest.raises(MigrationError, match=f"1 of 3 images do not open.*{broken}"):
        await copy_store(source, target)


def test_every_table_of_the_schema_is_copied_or_named_as_left_behind(tmp_path):
    import asyncio

    asyncio.run(_open_and_close(tmp_path / "data"))
    with sqlite3.connect(tmp_path / "data" / "veil.db") as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    assert tables == {t.name for t in TABLES} | set(NOT_COPIED)


async def _open_and_close(data_dir: Path) -> None:
    async with await Veil.open(data_dir, master_key=MASTER):
        pass
