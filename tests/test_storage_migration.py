"""Moving a deployment between stores (`python -m bot migrate-storage`): every row and every
image arrives, access works there exactly as before, a second run adds nothing, and the way
back gives the same store again."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
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
async def target(tmp_path: Path, database_url: str | None):
    """The store moved to: another data folder, or a fresh PostgreSQL database (``backend``)."""
    veil = await Veil.open(tmp_path / "target", master_key=MASTER, database_url=database_url)
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
    highest = await source.ctx.db.fetchval(
        "SELECT seq FROM sqlite_sequence WHERE name = 'grants'")
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
    asyncio.run(_open_and_close(tmp_path / "data"))
    with sqlite3.connect(tmp_path / "data" / "veil.db") as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    assert tables == {t.name for t in TABLES} | set(NOT_COPIED)


async def _open_and_close(data_dir: Path) -> None:
    async with await Veil.open(data_dir, master_key=MASTER):
        pass


# The command, as an operator runs it ---------------------------------------------------------

def migrate(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "bot", "migrate-storage", *args],
                          cwd=data_dir.parent, capture_output=True, text=True, timeout=120,
                          env={**clean, "VEIL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
                               **env})


def with_password(url: str) -> str:
    """The test server trusts every login, so any password works; it must never be shown."""
    return url.replace("://veil@", f"://veil:{SECRET}@", 1)


SECRET = "hunter2-never-shown"
ROOT = Path(__file__).resolve().parent.parent


async def filled_folder(data_dir: Path) -> dict[str, Any]:
    async with await Veil.open(data_dir) as veil:  # the key in master.key, as by default
        return await fill(veil)


@pytest.mark.slow
def test_without_a_target_migrate_storage_says_so_in_one_line_and_touches_nothing(tmp_path):
    data_dir = tmp_path / "data"
    asyncio.run(filled_folder(data_dir))
    before = sorted(p.name for p in data_dir.rglob("*"))
    result = migrate(data_dir)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "VEIL_DATABASE_URL and VEIL_BLOB_URL" in line and "neither is set" in line
    assert sorted(p.name for p in data_dir.rglob("*")) == before


@pytest.mark.slow
async def test_migrate_storage_into_postgresql_and_s3_then_again_then_back(
        tmp_path, database_url_pg, s3_server):
    data_dir = tmp_path / "data"
    await filled_folder(data_dir)
    url = with_password(database_url_pg)
    bucket = s3_server.new_url()
    target = {"VEIL_DATABASE_URL": url, **s3_server.env(bucket)}
    first = await asyncio.to_thread(migrate, data_dir, **target)
    assert first.returncode == 0, first.stderr
    assert "3 new image objects; all 3 images open in the target" in first.stdout
    assert "master.key" in first.stdout and "VEIL_MASTER_KEY" in first.stdout
    again = await asyncio.to_thread(migrate, data_dir, **target)
    assert again.returncode == 0, again.stderr
    assert "Done: 0 new rows" in again.stdout and "nothing was added" in again.stdout
    for output in (first, again):
        shown = output.stdout + output.stderr
        assert SECRET not in shown and s3_server.secret_access_key not in shown
        assert "***" in output.stdout  # the URL is named, its password is not

    key = (data_dir / "master.key").read_text().split()[0]
    back_dir = tmp_path / "back"  # a fresh folder: everything comes back from PostgreSQL and S3
    back = await asyncio.to_thread(migrate, back_dir, "--reverse", **target, VEIL_MASTER_KEY=key)
    assert back.returncode == 0, back.stderr
    assert "3 new image objects; all 3 images open in the target" in back.stdout
    async with await Veil.open(data_dir) as source, \
            await Veil.open(tmp_path / "view", master_key=bytes.fromhex(key),
                            database_url=database_url_pg, blob_url=bucket,
                            s3=s3_server.settings()) as moved, \
            await Veil.open(back_dir, master_key=bytes.fromhex(key)) as returned:
        assert await dump(moved) == await dump(source)
        assert await dump(returned) == await dump(source)


@pytest.mark.slow
async def test_moving_only_the_database_leaves_every_image_in_the_folder(
        tmp_path, database_url_pg):
    data_dir = tmp_path / "data"
    made = await filled_folder(data_dir)
    # Images stored a day ago: older than any grace period repair gives an upload in flight.
    day_ago = time.time() - 86400
    for path in (data_dir / "blobs").rglob("*"):
        os.utime(path, (day_ago, day_ago))
    moved = await asyncio.to_thread(migrate, data_dir, VEIL_DATABASE_URL=database_url_pg)
    assert moved.returncode == 0, moved.stderr
    assert "0 new image objects; all 3 images open in the target" in moved.stdout
    async with await Veil.open(data_dir) as source:
        for public_id in made[ALICE] + made[BOB]:
            [record] = [i for i in await source.images.owned(ALICE) + await source.images.owned(
                BOB) if i.public_id == public_id]
            await source.images.decrypt_unchecked(record)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["migrate:copied:images", "migrate:blobs-written"])
async def test_a_migration_killed_part_way_is_finished_by_running_it_again(
        tmp_path, database_url_pg, s3_server, point):
    data_dir = tmp_path / "data"
    await filled_folder(data_dir)
    bucket = s3_server.new_url()
    target = {"VEIL_DATABASE_URL": database_url_pg, **s3_server.env(bucket)}
    killed = await asyncio.to_thread(migrate, data_dir, **target, VEIL_FAILPOINT=point)
    assert killed.returncode == -9, killed.stderr
    key = bytes.fromhex((data_dir / "master.key").read_text().split()[0])
    # Looked at as migrate-storage does (a process would refuse: tests/test_migration_guard.py).
    async with await Veil.open(tmp_path / "pg-view", master_key=key, database_url=database_url_pg,
                               blob_url=bucket, s3=s3_server.settings(), repair=False,
                               claim=False) as moved:
        assert await moved.ctx.db.fetchval("SELECT count(*) FROM grants") == 0  # not there yet
    again = await asyncio.to_thread(migrate, data_dir, **target)
    assert again.returncode == 0, again.stderr
    assert "all 3 images open in the target" in again.stdout
    async with await Veil.open(data_dir) as source, \
            await Veil.open(tmp_path / "pg-view", master_key=key, database_url=database_url_pg,
                            blob_url=bucket, s3=s3_server.settings()) as moved:
        assert await dump(moved) == await dump(source)


@pytest.mark.slow
async def test_a_target_set_up_under_another_master_key_is_refused_before_anything_is_copied(
        tmp_path, database_url_pg):
    data_dir = tmp_path / "data"
    await filled_folder(data_dir)
    async with await Veil.open(tmp_path / "elsewhere", master_key=bytes.fromhex("11" * 32),
                               database_url=database_url_pg):
        pass  # another deployment's key is now this database's
    result = await asyncio.to_thread(migrate, data_dir, VEIL_DATABASE_URL=database_url_pg)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "another master key" in line and "same one" in line
    async with await Veil.open(tmp_path / "elsewhere", master_key=bytes.fromhex("11" * 32),
                               database_url=database_url_pg) as target:
        assert await target.ctx.db.fetchval("SELECT count(*) FROM users") == 0


@pytest.mark.slow
async def test_check_names_the_database_and_the_image_store_without_their_secrets(
        tmp_path, database_url_pg, s3_server):
    data_dir = tmp_path / "data"
    env = {"VEIL_DATABASE_URL": with_password(database_url_pg), **s3_server.env(
        s3_server.new_url()), "VEIL_MASTER_KEY": "ab" * 32}
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", "check"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
        env={**clean, "VEIL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **env})
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert "PostgreSQL at postgresql://veil:***@127.0.0.1" in shown
    assert "Blobs: s3://" in shown and s3_server.endpoint in shown
    for secret in (SECRET, s3_server.secret_access_key, "ab" * 32):
        assert secret not in shown
