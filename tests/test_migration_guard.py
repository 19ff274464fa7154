"""migrate-storage has both stores to itself: it refuses while any Veil process runs on the
source or the target, and no Veil process starts on either while it copies (db.presence). Real
processes: `python -m bot web` over the store, killed or stopped as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.core.veil import StoreInMaintenance, Veil, database_of
from db import open_database
from db.presence import claim_database, holders
from tests.loopback import free_port
from tests.test_storage_migration import MASTER, filled_folder, migrate, with_password

ROOT = Path(__file__).resolve().parent.parent


# The claims themselves, on both databases (fast) --------------------------------------------

async def test_processes_share_a_store_and_maintenance_waits_for_the_last_to_leave(
        data_dir, database_url):
    database = database_of(data_dir, database_url)
    data_dir.mkdir(exist_ok=True)
    first = await claim_database(database, exclusive=False)
    second = await claim_database(database, exclusive=False)
    assert first is not None and second is not None
    assert await claim_database(database, exclusive=True) is None
    await first.release()
    assert await claim_database(database, exclusive=True) is None  # one still runs
    await second.release()
    maintenance = await claim_database(database, exclusive=True)
    assert maintenance is not None
    assert await claim_database(database, exclusive=False) is None
    await maintenance.release()
    again = await claim_database(database, exclusive=False)
    assert again is not None
    await again.release()


async def test_a_veil_refuses_to_open_a_store_in_maintenance_and_holds_its_claim_while_open(
        data_dir, database_url):
    database = database_of(data_dir, database_url)
    data_dir.mkdir(exist_ok=True)
    maintenance = await claim_database(database, exclusive=True)
    assert maintenance is not None
    with pytest.raises(StoreInMaintenance, match="migrate-storage is copying"):
        await Veil.open(data_dir, master_key=MASTER, database_url=database_url)
    await maintenance.release()
    async with await Veil.open(data_dir, master_key=MASTER, database_url=database_url):
        assert await claim_database(database, exclusive=True) is None
        assert len(await holders(database)) == (1 if database_url else 0)  # named on PG
    held = await claim_database(database, exclusive=True)
    assert held is not None  # closing let go
    await held.release()


# The command, against real processes ---------------------------------------------------------

def _env(data_dir: Path, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    return {**clean, "VEIL_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), **env}


@pytest.fixture
async def moving(tmp_path: Path, database_url_pg: str) -> tuple[Path, str, dict[str, str]]:
    """A data folder with three images, its master key, and the PostgreSQL settings of the
    store to move it to."""
    data_dir = tmp_path / "data"
    await filled_folder(data_dir)
    key = (data_dir / "master.key").read_text().split()[0]
    return data_dir, key, {"VEIL_DATABASE_URL": database_url_pg}


async def bot_command(command: str, cwd: Path, env: dict[str, str]
                      ) -> subprocess.CompletedProcess:
    """`python -m bot <command>` run to its end, as an operator would in a second terminal."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot", command], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60)


def _as_in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background (a CI runner's
    `cmd &`) has SIGINT ignored, every child inherits that, and Python then never installs its
    KeyboardInterrupt handler, so the copy would finish, deaf to the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.asynccontextmanager
async def paused_migration(tmp_path: Path, data_dir: Path, target: dict[str, str],
                           step: str) -> AsyncIterator[tuple[subprocess.Popen, Path]]:
    """`python -m bot migrate-storage` started and held at ``migrate:copied:<step>`` (the
    failpoint pause); touch ``<gate>/release`` to let it go on. Killed on the way out if it is
    still running."""
    gate = tmp_path / "gate"
    gate.mkdir()
    copying = await asyncio.to_thread(
        subprocess.Popen, [sys.executable, "-m", "bot", "migrate-storage"], cwd=tmp_path,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_as_in_a_terminal,
        env=_env(data_dir, **target, VEIL_PAUSE=f"migrate:copied:{step}@{gate}"))
    try:
        deadline = time.monotonic() + 30
        while not (gate / "reached").exists():
            assert copying.poll() is None, copying.communicate()
            assert time.monotonic() < deadline, f"the migration never reached the {step}"
            await asyncio.sleep(0.05)
        yield copying, gate
    finally:
        if copying.poll() is None:
            copying.kill()
            copying.wait()


def start_web(data_dir: Path, **env: str) -> subprocess.Popen:
    """`python -m bot web` over ``data_dir`` (and the store ``env`` names), once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bot", "web"], cwd=data_dir.parent,
                               env=_env(data_dir, VEIL_WEB_PORT=str(port), **env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the link server never answered"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process
        except OSError:
            time.sleep(0.05)


def stop(process: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> None:
    process.send_signal(how)
    process.communicate(timeout=20)


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


async def users_in(database_url: str) -> int:
    db = await open_database(database_url)
    try:
        return int(await db.fetchval("SELECT count(*) FROM users"))
    finally:
        await db.close()


@pytest.mark.slow
@pytest.mark.parametrize("side", ["source", "target"])
async def test_migrate_refuses_while_a_link_server_runs_and_copies_once_it_has_stopped(
        tmp_path, moving, database_url_pg, side):
    data_dir, key, _ = moving
    target = {"VEIL_DATABASE_URL": with_password(database_url_pg)}
    web = await asyncio.to_thread(
        start_web, data_dir if side == "source" else tmp_path / "elsewhere",
        **({} if side == "source" else {**target, "VEIL_MASTER_KEY": key}))
    try:
        refused = await asyncio.to_thread(migrate, data_dir, **target)
        line = one_line(refused)
        assert f"1 Veil process is running on the {side}" in line
        # Named: by its command line on this machine (SQLite), by pid and host on PostgreSQL.
        named = (f"(pid {web.pid}: python -m bot web)" if side == "source"
                 else f"(pid {web.pid} on {socket.gethostname()})")
        assert named in line
        assert "Stop every Veil process on it" in line
        assert "hunter2" not in line
        assert await users_in(database_url_pg) == 0  # nothing was copied
    finally:
        await asyncio.to_thread(stop, web)
    moved = await asyncio.to_thread(migrate, data_dir, **target)
    assert moved.returncode == 0, moved.stderr
    assert "all 3 images open in the target" in moved.stdout


@pytest.mark.slow
@pytest.mark.parametrize("side", ["source", "target"])
async def test_a_process_killed_with_sigkill_does_not_block_a_migration(
        tmp_path, moving, side):
    data_dir, key, target = moving
    web = await asyncio.to_thread(
        start_web, data_dir if side == "source" else tmp_path / "elsewhere",
        **({} if side == "source" else {**target, "VEIL_MASTER_KEY": key}))
    await asyncio.to_thread(stop, web, signal.SIGKILL)
    moved = await asyncio.to_thread(migrate, data_dir, **target)
    assert moved.returncode == 0, moved.stderr
    assert "all 3 images open in the target" in moved.stdout


@pytest.mark.slow
async def test_no_process_starts_on_either_store_while_a_migration_copies(
        tmp_path, moving):
    data_dir, key, target = moving
    async with paused_migration(tmp_path, data_dir, target, "images") as (copying, gate):
        on_source = await bot_command(
            "web", tmp_path, _env(data_dir, VEIL_WEB_PORT=str(free_port())))
        line = one_line(on_source)
        assert line.startswith("Veil cannot start: migrate-storage is copying the data folder")
        assert "start again once it has said 'Done'" in line
        on_target = await bot_command(
            "sweep", tmp_path, _env(tmp_path / "elsewhere", **target, VEIL_MASTER_KEY=key))
        assert "migrate-storage is copying the database at" in one_line(on_target)
        (gate / "release").touch()
        out, err = await asyncio.to_thread(copying.communicate, timeout=60)
    assert copying.returncode == 0, err
    assert "all 3 images open in the target" in out
    started = await bot_command(
        "check", tmp_path, _env(tmp_path / "elsewhere", **target, VEIL_MASTER_KEY=key))
    assert started.returncode == 0, started.stderr
    assert "3 images" in started.stdout


@pytest.mark.slow
async def test_a_store_a_killed_migration_half_filled_refuses_processes_until_a_run_finishes_it(
        tmp_path, moving):
    data_dir, key, target = moving
    killed = await asyncio.to_thread(migrate, data_dir, **target,
                                     VEIL_FAILPOINT="migrate:copied:images")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    on_target = _env(tmp_path / "elsewhere", **target, VEIL_MASTER_KEY=key)
    refused = await bot_command("check", tmp_path, on_target)
    line = one_line(refused)
    assert "is the target of a migrate-storage (from SQLite file" in line
    assert "has not finished: run `python -m bot migrate-storage` again" in line
    on_source = await bot_command("check", tmp_path, _env(data_dir))
    assert on_source.returncode == 0, on_source.stderr  # the source is whole: it runs
    finished = await asyncio.to_thread(migrate, data_dir, **target)
    assert finished.returncode == 0, finished.stderr
    started = await bot_command("check", tmp_path, on_target)
    assert started.returncode == 0, started.stderr
    assert "3 images" in started.stdout


@pytest.mark.slow
async def test_ctrl_c_during_a_migration_says_it_is_unfinished_and_the_target_stays_closed(
        tmp_path, moving):
    data_dir, key, target = moving
    async with paused_migration(tmp_path, data_dir, target, "users") as (copying, gate):
        copying.send_signal(signal.SIGINT)
        # asyncio.run turns Ctrl-C into cancelling the copy, at its next await once the pause
        # (a blocked process, like a slow disk) lets go.
        await asyncio.sleep(0.5)
        (gate / "release").touch()
        _, err = await asyncio.to_thread(copying.communicate, timeout=60)
    assert copying.returncode == 130, err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert "interrupted before it finished" in line and "run migrate-storage again" in line
    refused = await bot_command(
        "check", tmp_path, _env(tmp_path / "elsewhere", **target, VEIL_MASTER_KEY=key))
    assert "has not finished" in one_line(refused)
