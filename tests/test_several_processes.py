"""Several processes on one data folder, as an operator runs them: the bot, a link server,
`check`, `sweep`, `rotate-key`. Real subprocesses where the point is two processes; two Veil
objects on one folder (two connections, two key rings) where one process stands for another."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bot.core.blobs import BlobInfo, export_key
from bot.core.crypto import MissingMasterKey, key_id, new_key, read_key_file_all
from bot.core.errors import QueueFull, TryAgain
from bot.core.images import STAGING_BOUND_S
from bot.core.keys import MasterKeyError
from bot.core.leases import LeaseHeld
from bot.core.limits import GenerationSlots
from bot.core.veil import Veil
from bot.generate import GenerationQueue
from bot.generate.base import GenerationRequest
from bot.web import RateLimit, create_app, start_web
from db import Database, open_database
from tests.blobstores import stored_images
from tests.conftest import ALICE, BOB, GUILD, OTHER_GUILD, png, viewer

ROOT = Path(__file__).resolve().parent.parent


def cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=data_dir.parent, env={
        **clean, "VEIL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=60)


def start(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(path.exists):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.02)


def on(database_url: str | None) -> dict[str, str]:
    """The environment that points a subprocess at this test's database (none: SQLite)."""
    return {} if database_url is None else {"VEIL_DATABASE_URL": database_url}


async def on_store(data_dir: Path, database_url: str | None, sql: str) -> list:
    """Run one statement on the test's database directly (through the adapter, no Veil)."""
    db = await open_database(database_url or data_dir / "veil.db")
    try:
        if sql.lstrip().upper().startswith("SELECT"):
            return list(await db.fetchall(sql))
        async with db.transaction() as tx:
            await tx.execute(sql)
        return []
    finally:
        await db.close()


async def stored_key_ids(data_dir: Path, database_url: str | None) -> tuple[str, set[str]]:
    [(current,)] = await on_store(data_dir, database_url,
                                  "SELECT value FROM meta WHERE key = 'master_key_id'")
    named = await on_store(data_dir, database_url, "SELECT DISTINCT master_key_id FROM users")
    return current, {r[0] for r in named}


# Key rotation -----------------------------------------------------------------------------

@pytest.mark.slow
async def test_rotate_key_while_two_processes_read_and_write_fails_no_read_and_loses_nothing(
        data_dir, tmp_path, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        for owner in (ALICE, BOB):
            await veil.images.create(owner, png(), guild_id=GUILD, source="upload")
    workers = []
    for n in range(2):
        folder = tmp_path / f"worker{n}"
        folder.mkdir()
        workers.append((folder, start("-m", "tests.workerscript", str(data_dir), "load",
                                      str(folder), str(7_000_000 + n * 100_000),
                                      **on(database_url))))
    try:
        for folder, proc in workers:
            await wait_for(folder / "ready", proc)
        await asyncio.sleep(0.3)
        for _ in range(2):
            rotated = await asyncio.to_thread(cli, data_dir, "rotate-key", **on(database_url))
            assert rotated.returncode == 0, rotated.stderr
            await asyncio.sleep(0.3)
    finally:
        for folder, _ in workers:
            (folder / "stop").touch()
    results, errors = [], []
    for _, proc in workers:
        out, err = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out))
        errors.append(err[-3000:])
    assert all(r["failures"] == 0 for r in results), errors
    assert all(r["reads"] > 0 and r["created"] for r in results)

    # After a restart, with only what is on disk: every image opens, and the key file holds
    # exactly the key every owner key is wrapped under.
    current, named = await stored_key_ids(data_dir, database_url)
    assert named == {current}
    assert [key_id(k) for k in read_key_file_all(data_dir / "master.key")] == [current]
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        rows = await veil.ctx.db.fetchall("SELECT public_id, owner_id FROM images")
        assert len(rows) == 2 + sum(len(r["created"]) for r in results)
        for public_id, owner in rows:
            await veil.images.open(public_id, viewer(owner))
    print(f"\nrotate-key x2 under load: {sum(r['reads'] for r in results)} reads and "
          f"{sum(len(r['created']) for r in results)} new owners in 2 other processes, "
          f"{sum(r['failures'] for r in results)} failed; {len(rows)} images open after restart")


async def test_a_process_picks_up_a_key_rotated_by_another_without_a_restart(
        data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as bot, \
            await Veil.open(data_dir, database_url=database_url) as admin:
        before = await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        old_id = bot.ctx.keys.current_id
        await admin.rotate_master_key()
        # The bot's very next read and its next new user both use the new key.
        await bot.images.open(before.public_id, viewer(ALICE))
        made = await bot.images.create(BOB, png(), guild_id=GUILD, source="upload")
        current, named = await stored_key_ids(data_dir, database_url)
        assert current != old_id and named == {current}
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.images.open(made.public_id, viewer(BOB))


async def test_a_user_made_while_a_rotation_runs_is_never_left_under_the_old_key(
        data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as bot, \
            await Veil.open(data_dir, database_url=database_url) as admin:
        await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        # The bot creates a user in the middle of the rotation's steps, with the old key
        # still current in its memory: it must follow the database, not its memory.
        stale = bot.ctx.keys.current_id
        await admin.rotate_master_key()
        bot.ctx.keys.current_id = stale
        made = await bot.images.create(BOB, png(), guild_id=GUILD, source="upload")
        current, named = await stored_key_ids(data_dir, database_url)
        assert named == {current} != {stale}
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.images.open(made.public_id, viewer(BOB))


async def test_a_process_given_its_key_in_the_environment_refuses_clearly_after_a_rotation(
        data_dir, database_url):
    old, new = new_key(), new_key()
    async with await Veil.open(data_dir, database_url=database_url, master_key=old) as bot:
        image = await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        async with await Veil.open(data_dir, database_url=database_url, master_key=old) as admin:
            await admin.rotate_master_key(new)
        with pytest.raises(MissingMasterKey, match="Restart this process with the new key"):
            await bot.images.create(BOB, png(), guild_id=GUILD, source="upload")
        with pytest.raises(MissingMasterKey):
            await bot.images.open(image.public_id, viewer(ALICE))
        assert await bot.ctx.db.fetchval("SELECT count(*) FROM users") == 1  # nothing wrapped
    async with await Veil.open(data_dir, database_url=database_url, master_key=new) as veil:
        await veil.images.open(image.public_id, viewer(ALICE))


@pytest.mark.slow  # a subprocess killed at a failpoint
async def test_a_rotation_interrupted_after_the_switch_is_finished_by_the_next_start(
        data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    proc = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "tests.crashscript", str(data_dir), "rotate"], cwd=ROOT,
        env={**os.environ, "VEIL_FAILPOINT": "rotate:committed", **on(database_url)},
        capture_output=True)
    assert proc.returncode == -9
    assert len(read_key_file_all(data_dir / "master.key")) == 2  # the job is half done
    # The crashed rotation's lease runs out; until then the next start leaves the job alone.
    async with await Veil.open(data_dir, database_url=database_url,
                               clock=lambda: time.time() + 300) as veil:
        await veil.images.open(image.public_id, viewer(ALICE))
    current, named = await stored_key_ids(data_dir, database_url)
    assert named == {current}
    assert [key_id(k) for k in read_key_file_all(data_dir / "master.key")] == [current]


# Repair against a live upload ---------------------------------------------------------------

@pytest.mark.slow
async def test_check_started_during_a_slow_upload_leaves_the_upload_intact(
        data_dir, tmp_path, database_url):
    async with await Veil.open(data_dir, database_url=database_url):
        pass
    hold = tmp_path / "hold"
    hold.mkdir()
    upload = start("-m", "tests.crashscript", str(data_dir), "create",
                   VEIL_PAUSE=f"create:staged@{hold}", **on(database_url))
    try:
        await wait_for(hold / "reached", upload)
        for command in ("check", "sweep"):  # both run start-up repair in their own process
            result = await asyncio.to_thread(cli, data_dir, command, **on(database_url))
            assert result.returncode == 0, result.stderr
    finally:
        (hold / "release").touch()
    _, err = await asyncio.to_thread(upload.communicate, timeout=60)
    assert upload.returncode == 0, err[-3000:]
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        (public_id,) = [r[0] for r in await veil.ctx.db.fetchall("SELECT public_id FROM images")]
        content, _ = await veil.images.open(public_id, viewer(ALICE))
        assert content.data
        assert await stored_images(veil) == {(await veil.ctx.image(public_id)).blob_name}


async def test_an_upload_that_repair_judged_abandoned_refuses_to_commit_a_row_without_blob(
        data_dir, clock, database_url):
    async with await Veil.open(data_dir, database_url=database_url, clock=clock) as bot, \
            await Veil.open(data_dir, database_url=database_url,
                            clock=lambda: clock() + STAGING_BOUND_S + 1) as later:
        put = bot.ctx.blobs.put

        async def slow_put(key: str, data: bytes) -> None:
            await put(key, data)
            await later.images.repair()  # a repair that runs when this upload looks dead

        bot.ctx.blobs.put = slow_put  # type: ignore[method-assign]
        with pytest.raises(TryAgain, match="took too long"):
            await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        assert await bot.ctx.db.fetchval("SELECT count(*) FROM images") == 0
        assert await stored_images(bot) == set()


# The writer connection after a cancelled wait ------------------------------------------------

async def test_a_task_cancelled_while_waiting_for_the_write_lock_never_wedges_the_writer(
        tmp_path):
    db = await Database.open(tmp_path / "veil.db")
    other = sqlite3.connect(tmp_path / "veil.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process is writing

        async def write() -> None:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO meta (key, value) VALUES ('a', 'b')")

        waiting = asyncio.create_task(write())
        await asyncio.sleep(0.3)  # waiting for the write lock (retrying BEGIN IMMEDIATE)
        waiting.cancel()
        await asyncio.sleep(0.1)
        other.execute("COMMIT")  # a BEGIN still pending anywhere would now go through
        with pytest.raises(asyncio.CancelledError):
            await waiting
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('c', 'd')")
        assert await db.fetchval("SELECT value FROM meta WHERE key = 'c'") == "d"
        assert await db.fetchval("SELECT value FROM meta WHERE key = 'a'") is None
    finally:
        other.close()
        await db.close()


# Erasure against create -----------------------------------------------------------------------

async def test_an_image_made_while_forget_me_runs_is_refused_not_cascaded_away(
        data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as bot, \
            await Veil.open(data_dir, database_url=database_url) as other:
        await bot.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        job = await bot.erasures.request("forget", ALICE, None, None)
        # Another process stores an image for Alice between the request and the loop.
        with pytest.raises(TryAgain, match="being erased"):
            await other.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        named = {r[0] for r in await other.ctx.db.fetchall("SELECT blob_name FROM images")}
        assert await stored_images(other) == named  # the refused image left no object
        removal = await bot.erasures.run(job)
        assert len(removal.image_ids) == 1
        # Once the erasure is done, Alice is a new user like any other.
        await other.images.create(ALICE, png(), guild_id=GUILD, source="upload")


async def test_a_purge_blocks_new_images_in_its_server_only(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.erasures.request("purge", ALICE, GUILD, 1)
        with pytest.raises(TryAgain):
            await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        await veil.images.create(ALICE, png(), guild_id=OTHER_GUILD, source="upload")


async def test_a_user_row_is_never_deleted_around_the_deletion_path(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as veil:
        await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        # SQLite: a trigger (its foreign key cannot change in place); PostgreSQL: the foreign
        # key itself, ON DELETE RESTRICT.
        refused = ((sqlite3.IntegrityError, "remove the images first") if database_url is None
                   else (asyncpg.ForeignKeyViolationError, "images_owner_id_fkey"))
        with pytest.raises(refused[0], match=refused[1]):
            async with veil.ctx.db.transaction() as tx:
                await tx.execute("DELETE FROM users WHERE user_id = ?", (ALICE,))
        assert await veil.ctx.db.fetchval("SELECT count(*) FROM images") == 1


# Leases ---------------------------------------------------------------------------------------

async def test_a_periodic_job_runs_once_per_period_across_processes(data_dir, clock, database_url):
    runs: list[str] = []

    def job(name: str):
        async def run() -> str:
            runs.append(name)
            return name
        return run

    async with await Veil.open(data_dir, database_url=database_url, clock=clock) as bot, \
            await Veil.open(data_dir, database_url=database_url, clock=clock) as web:
        assert await bot.leases.once_per("retention", 600, job("bot")) == "bot"
        assert await web.leases.once_per("retention", 600, job("web")) is None
        clock.advance(599)
        assert await web.leases.once_per("retention", 600, job("web")) is None
        clock.advance(2)  # the bot's lease ran out (it may have died): the next taker runs
        assert await web.leases.once_per("retention", 600, job("web")) == "web"
        assert await bot.leases.once_per("retention", 600, job("bot")) is None
    assert runs == ["bot", "web"]


async def test_a_key_rotation_refuses_while_another_process_rotates(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as one, \
            await Veil.open(data_dir, database_url=database_url) as two:
        async with one.leases.holding("rotate-key", 60, busy="busy"):
            with pytest.raises(LeaseHeld, match="Another process is rotating"):
                await two.rotate_master_key()
        await two.rotate_master_key()


async def test_two_sweeps_at_once_remove_and_audit_each_expired_image_once(
        data_dir, clock, database_url):
    async with await Veil.open(data_dir, database_url=database_url, clock=clock) as bot, \
            await Veil.open(data_dir, database_url=database_url, clock=clock) as cli_sweep:
        for n in range(6):
            await bot.images.create(ALICE, png((n, 3, 3)), guild_id=GUILD, source="upload",
                                    expires_in=60)
        clock.advance(61)
        first, second = await asyncio.gather(bot.retention.sweep(), cli_sweep.retention.sweep())
        assert first.images + second.images == 6
        assert await bot.ctx.db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'retention.expire'") == 6


# Backups and crypto-shredding -----------------------------------------------------------------

def backup(data_dir: Path, to: Path, *, with_key: bool) -> Path:
    """What an operator's backup holds: the database (through SQLite's backup API), the blobs,
    and, for a backup made carelessly, the master key file too."""
    to.mkdir(mode=0o700)
    with sqlite3.connect(data_dir / "veil.db") as src, sqlite3.connect(to / "veil.db") as dst:
        src.backup(dst)
    shutil.copytree(data_dir / "blobs", to / "blobs")
    if with_key:
        shutil.copy2(data_dir / "master.key", to / "master.key")
    return to


async def test_a_backup_from_before_forget_me_opens_only_until_the_key_is_rotated(
        data_dir, tmp_path):
    async with await Veil.open(data_dir) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
        careless = backup(data_dir, tmp_path / "careless", with_key=True)
        data_only = backup(data_dir, tmp_path / "data-only", with_key=False)
        await veil.privacy.forget(ALICE)
        # Stated in the README: a backup that holds the master key with the database still
        # opens a forgotten person's images. Forget-me cannot reach into it.
        async with await Veil.open(careless) as restored:
            await restored.images.open(image.public_id, viewer(ALICE))
        # A backup of the data alone, restored with the key as it is today: also readable,
        # until the key is rotated after forget-me...
        shutil.copy2(data_dir / "master.key", data_only / "master.key")
        async with await Veil.open(data_only) as restored:
            await restored.images.open(image.public_id, viewer(ALICE))
        await veil.rotate_master_key()
    # ...and from then on the old backup never opens again: the only key that unwrapped
    # Alice's key is gone from master.key, and the database never held it.
    shutil.copy2(data_dir / "master.key", data_only / "master.key")
    with pytest.raises(MasterKeyError, match="not the one"):
        await Veil.open(data_only)


# Shared limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-server"])
async def test_two_link_servers_share_one_budget_of_failed_guesses(
        data_dir, clock, shared, database_url):
    limit = RateLimit(burst=4, per_second=0.001)
    async with await Veil.open(data_dir, database_url=database_url, clock=clock) as one, \
            await Veil.open(data_dir, database_url=database_url, clock=clock) as two:
        servers = [await start_web(create_app(v, public_url="http://127.0.0.1", clock=clock,
                                              rate_limit=limit, shared_limits=shared),
                                   "127.0.0.1", 0) for v in (one, two)]
        try:
            async with aiohttp.ClientSession() as session:
                async def guess(server, n: int) -> int:
                    async with session.get(f"{server.url}/l/{'Q' * 42}{n}") as response:
                        return response.status

                # Behind a load balancer a guesser's requests alternate between servers.
                statuses = [await guess(servers[n % 2], n) for n in range(8)]
        finally:
            for server in servers:
                await server.stop()
    if shared:
        assert statuses == [404] * 4 + [429] * 4
    else:
        assert statuses == [404] * 8  # each server alone would allow twice the budget


class HeldGenerator:
    """A generator that draws nothing until the test lets it go."""

    name = "held"

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def generate(self, request: GenerationRequest, progress: object = None) -> list[bytes]:
        await self.gate.wait()
        return [b"image"]

    async def close(self) -> None:
        pass


async def test_the_per_user_generation_limit_holds_across_two_bot_processes(data_dir, database_url):
    async with await Veil.open(data_dir, database_url=database_url) as one, \
            await Veil.open(data_dir, database_url=database_url) as two:
        gate = asyncio.Event()
        slots = [GenerationSlots(v.ctx, per_user_limit=2, lifetime_s=60) for v in (one, two)]
        queues = [GenerationQueue(HeldGenerator(gate), per_user_limit=2, slots=s)
                  for s in slots]
        request = GenerationRequest(prompt="a lighthouse")
        # One request in each shard's queue: each alone is under the limit of 2...
        held = [asyncio.create_task(q.submit(ALICE, request)) for q in queues]
        await asyncio.sleep(0.1)
        # ...but a third, in either process, is over it.
        with pytest.raises(QueueFull):
            await queues[1].submit(ALICE, request)
        gate.set()
        await asyncio.gather(*held)
        assert await slots[0].held(ALICE) == 0  # both slots given back
        assert await queues[1].submit(ALICE, request) == [b"image"]


async def test_an_export_another_process_starts_during_a_sweep_is_not_taken_for_an_orphan(
        data_dir):
    async with await Veil.open(data_dir) as bot, await Veil.open(data_dir) as cli_sweep:
        listed = cli_sweep.ctx.blobs.scan

        async def export_starts_meanwhile(prefix: str) -> AsyncIterator[list[BlobInfo]]:
            # The bot begins an export (row first, then the object) while the sweep looks.
            with sqlite3.connect(data_dir / "veil.db") as conn:
                conn.execute("INSERT INTO exports (user_id, state, file_name, created_at)"
                             " VALUES (?, 'preparing', 'fresh', ?)", (ALICE, time.time()))
            await bot.ctx.blobs.put(export_key("fresh"), b"sealed export")
            async for batch in listed(prefix):
                yield batch

        cli_sweep.ctx.blobs.scan = export_starts_meanwhile  # type: ignore[method-assign]
        await cli_sweep.exports.sweep()
        assert await bot.ctx.blobs.exists(export_key("fresh"))


@pytest.mark.slow  # a subprocess killed at a failpoint
async def test_a_rotation_with_keys_in_the_environment_killed_half_way_is_run_again_as_it_was(
        data_dir, database_url):
    old, new = "11" * 32, "22" * 32
    async with await Veil.open(data_dir, database_url=database_url,
                               master_key=bytes.fromhex(old)) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    killed = await asyncio.to_thread(cli, data_dir, "rotate-key", **on(database_url),
                                     VEIL_MASTER_KEY=old,
                                     VEIL_NEW_MASTER_KEY=new, VEIL_FAILPOINT="rotate:committed")
    assert killed.returncode == -9
    busy = await asyncio.to_thread(cli, data_dir, "rotate-key", **on(database_url),
                                   VEIL_MASTER_KEY=old,
                                   VEIL_NEW_MASTER_KEY=new)
    assert busy.returncode == 2 and "stopped while rotating" in busy.stderr
    # The dead process's lease runs out.
    await on_store(data_dir, database_url, "UPDATE leases SET expires_at = 0")
    again = await asyncio.to_thread(cli, data_dir, "rotate-key", **on(database_url),
                                    VEIL_MASTER_KEY=old,
                                    VEIL_NEW_MASTER_KEY=new)
    assert again.returncode == 0, again.stderr
    async with await Veil.open(data_dir, database_url=database_url,
                               master_key=bytes.fromhex(new)) as veil:
        await veil.images.open(image.public_id, viewer(ALICE))
