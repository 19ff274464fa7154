"""A process killed with SIGKILL at any step of create, delete, forget-me or key rotation leaves
a data folder that start-up repair makes whole: no orphan blob, no row without a blob, no
plaintext, every surviving image readable (guarantee 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.veil import Veil
from tests.conftest import ALICE, GUILD, png, viewer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a subprocess started and killed for every case


def run_killed(data_dir: Path, failpoint: str, operation: str, *args: str) -> None:
    env = {**os.environ, "VEIL_FAILPOINT": failpoint}
    proc = subprocess.run([sys.executable, "-m", "tests.crashscript", str(data_dir), operation,
                           *args], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


async def assert_consistent(veil: Veil) -> list[str]:
    """Every row has its blob, every blob its row, nothing staged; returns surviving ids."""
    rows = await veil.ctx.db.fetchall("SELECT public_id, blob_name FROM images")
    assert list(veil.ctx.blobs.tmp_dir.iterdir()) == []
    assert veil.ctx.blobs.published_names() == {r[1] for r in rows}
    for public_id, _ in rows:
        await veil.images.open(public_id, viewer(ALICE))
    return [r[0] for r in rows]


@pytest.mark.parametrize(("failpoint", "survives"), [
    ("create:staged", False),
    ("create:before-commit", False),
    ("create:committed", True),
])
async def test_a_crash_while_creating_leaves_no_orphan_and_no_half_image(data_dir, failpoint,
                                                                          survives):
    async with await Veil.open(data_dir):  # make the folder and its key first
        pass
    run_killed(data_dir, failpoint, "create")
    async with await Veil.open(data_dir) as veil:
        survivors = await assert_consistent(veil)
        assert len(survivors) == (1 if survives else 0)
        if survives:
            assert await veil.images.prompt(survivors[0], viewer(ALICE)) == "crash prompt"


async def test_a_crash_after_a_delete_commits_leaves_no_blob_after_restart(data_dir):
    async with await Veil.open(data_dir) as veil:
        keep = await veil.images.create(ALICE, png((9, 9, 9)), guild_id=GUILD, source="upload")
        doomed = await veil.images.create(ALICE, png((7, 7, 7)), guild_id=GUILD,
                                          source="upload")
    run_killed(data_dir, "delete:committed", "delete", doomed.public_id)
    assert list((data_dir / "blobs").rglob(f"{doomed.blob_name}.*"))  # the crash left it
    async with await Veil.open(data_dir) as veil:
        assert await assert_consistent(veil) == [keep.public_id]
    assert not list((data_dir / "blobs").rglob(f"{doomed.blob_name}.*"))


async def test_a_crash_during_forget_me_still_erases_after_restart(data_dir):
    async with await Veil.open(data_dir) as veil:
        image = await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    run_killed(data_dir, "delete:committed", "forget")
    async with await Veil.open(data_dir) as veil:
        assert await assert_consistent(veil) == []
    assert not list((data_dir / "blobs").rglob(f"{image.blob_name}.*"))


@pytest.mark.parametrize("failpoint", ["rotate:key-written", "rotate:before-commit",
                                       "rotate:committed"])
async def test_a_crash_during_key_rotation_never_loses_the_key(data_dir, failpoint):
    async with await Veil.open(data_dir) as veil:
        await veil.images.create(ALICE, png(), guild_id=GUILD, source="upload")
    run_killed(data_dir, failpoint, "rotate")
    async with await Veil.open(data_dir) as veil:
        assert len(await assert_consistent(veil)) == 1
    assert not (data_dir / "master.key.next").exists()
