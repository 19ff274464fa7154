"""A process killed with SIGKILL at any step of create, delete, forget-me or key rotation leaves
a store that start-up repair makes whole: no orphan blob, no row without a blob, no plaintext,
every surviving image readable (guarantee 9). Each case runs on the data folder and on an
S3-compatible store (the crashed process and the one that repairs share the bucket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.core.images import STAGING_BOUND_S
from bot.core.veil import Veil
from tests.blobstores import both_stores, image_stored, store_env, stored_images
from tests.conftest import ALICE, BOB, GUILD, OTHER_GUILD, png, viewer

ROOT = Path(__file__).resolve().parent.parent
# A subprocess started and killed for every case.
pytestmark = [pytest.mark.slow, both_stores]


def after_the_staging_bound() -> float:
    return time.time() + STAGING_BOUND_S + 1


def run_killed(data_dir: Path, failpoint: str, operation: str, *args: str,
               blob_options: dict[str, Any] | None = None) -> None:
    env = {**os.environ, "VEIL_FAILPOINT": failpoint, **store_env(blob_options or {})}
    proc = subprocess.run([sys.executable, "-m", "tests.crashscript", str(data_dir), operation,
                           *args], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


async def assert_consistent(veil: Veil) -> list[str]:
    """Every row has its blob, every blob its row, no upload pending; returns surviving ids."""
    rows = await veil.ctx.db.fetchall("SELECT public_id, blob_name, owner_id FROM images")
    assert await veil.ctx.db.fetchval("SELECT count(*) FROM staged_blobs") == 0
    assert await stored_images(veil) == {r[1] for r in rows}
    for public_id, _, owner in rows:
        await veil.images.open(public_id, viewer(owner))
    return [r[0] for r in rows]


@pytest.mark.parametrize(("failpoint", "survives"), [
    ("create:staged", False),
    ("create:before-commit", False),
    ("create:committed", True),
])
async def test_a_crash_while_creating_leaves_no_orphan_and_no_half_image(data_dir, failpoint,
                                                                          survives,
                                                                          blob_options):
    async with await Veil.open(data_dir, **blob_options):  # make the folder and its key first
        pass
    run_killed(data_dir, failpoint, "create", blob_options=blob_options)
    # Right after the crash its object may as well be another process's live upload: repair
    # resolves it once its intent is older than the bound.
    async with await Veil.open(data_dir, **blob_options) as veil:
        named = {r[0] for r in await veil.ctx.db.fetchall("SELECT blob_name FROM images")}
        left = await stored_images(veil) - named
        assert bool(left) == (failpoint in ("create:staged", "create:before-commit"))
    async with await Veil.open(data_dir, clock=after_the_staging_bound,
                               **blob_options) as veil:
        survivors = await assert_consistent(veil)
        assert len(survivors) == (1 if survives else 0)
        if survives:
            assert await veil.images.prompt(survivors[0], viewer(ALICE)) == "crash prompt"


async def test_a_crash_after_a_delete_commits_leaves_no_blob_after_restart(data_dir,
                                                                           blob_options):
    async with await Veil.open(data_dir, **blob_options) as veil:
        keep = await veil.images.create(ALICE, png((9, 9, 9)), guild_id=GUILD, source="upload")
        doomed = await veil.images.create(ALICE, png((7, 7, 7)), guild_id=GUILD,
                                          source="upload")
    run_killed(data_dir, "delete:committed", "delete", doomed.public_id,
               blob_options=blob_options)
    assert await image_stored(data_dir, blob_options, doomed.blob_name)  # the crash left it
    async with await Veil.open(data_dir, **blob_options) as veil:
        assert await assert_consistent(veil) == [keep.public_id]
    assert not await image_stored(data_dir, blob_options, doomed.blob_name)


ERASURE_STEPS = ["erase:requested", "delete:committed", "erase:images-gone",
                 "erase:before-commit", "erase:committed"]


@pytest.mark.parametrize("failpoint", ERASURE_STEPS)
async def test_a_crash_at_any_step_of_forget_me_is_resumed_and_destroys_the_key(data_dir,
                                                                               failpoint,
                                                                               blob_options):
    async with await Veil.open(data_dir, **blob_options) as veil:
        images = [await veil.images.create(ALICE, png((n, 1, 1)), guild_id=GUILD,
                                           source="upload") for n in range(3)]
        bob = await veil.images.create(BOB, png(), guild_id=GUILD, source="upload")
        await veil.sharing.grant(viewer(ALICE), "user", BOB, image_public_id=images[0].public_id)
    run_killed(data_dir, failpoint, "forget", blob_options=blob_options)
    async with await Veil.open(data_dir, **blob_options) as veil:
        assert await assert_consistent(veil) == [bob.public_id]
        db = veil.ctx.db
        # The key is what makes every copy of Alice's data unreadable: it must be gone.
        assert await db.fetchval("SELECT count(*) FROM users WHERE user_id = ?", (ALICE,)) == 0
        assert await db.fetchval("SELECT count(*) FROM grants WHERE owner_id = ?", (ALICE,)) == 0
        assert await db.fetchval("SELECT count(*) FROM erasures") == 0
        assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'user.forget'"
                                 " AND image_ref IS NULL") == 1
    for image in images:
        assert not await image_stored(data_dir, blob_options, image.blob_name)


@pytest.mark.parametrize("failpoint", ERASURE_STEPS)
async def test_a_crash_at_any_step_of_a_purge_is_resumed_and_spares_other_servers(data_dir,
                                                                                  failpoint,
                                                                                  blob_options):
    async with await Veil.open(data_dir, **blob_options) as veil:
        here = [await veil.images.create(ALICE, png((n, 2, 2)), guild_id=GUILD,
                                         source="upload") for n in range(2)]
        elsewhere = await veil.images.create(ALICE, png(), guild_id=OTHER_GUILD,
                                             source="upload")
    run_killed(data_dir, failpoint, "purge", blob_options=blob_options)
    async with await Veil.open(data_dir, **blob_options) as veil:
        assert await assert_consistent(veil) == [elsewhere.public_id]
        assert await veil.ctx.db.fetchval("SELECT count(*) FROM erasures") == 0
        assert await veil.ctx.db.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'admin.purge' AND image_ref IS NULL"
            " AND target_user = ?", (ALICE,)) == 1
    for image in here:
        assert not await image_stored(data_dir, blob_options, image.blob_name)


@pytest.mark.parametrize("failpoint", ["rotate:key-written", "rotate:before-commit",
                                       "rotate:committed"])
async def test_a_crash_during_key_rotation_never_loses_the_key(data_dir, failpoint,
                                                                blob_options):
    async with await Veil.open(data_dir, **blob_options) as veil:
        await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    run_killed(data_dir, failpoint, "rotate", blob_options=blob_options)
    async with await Veil.open(data_dir, **blob_options) as veil:
        assert len(await assert_consistent(veil)) == 1
    assert not (data_dir / "master.key.next").exists()
