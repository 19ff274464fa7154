"""The command line an operator uses: `python -m bot run|web|check|rotate-key|sweep`, each in a
real subprocess. Every start-up mistake ends in one line saying what to do, and exit code 2."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.discord_double import DiscordDouble
from tests.loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    clean.update({"VEIL_DATA_DIR": str(tmp_path / "data"), **env})
    return {**clean, "PYTHONPATH": str(ROOT)}


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    # Run from an empty folder so no .env of the developer's is read.
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path,
                          env=_env(tmp_path, env), capture_output=True, text=True, timeout=60)


async def cli_against(api_base: str, gateway_url: str, *args: str, tmp_path: Path,
                      **env: str) -> tuple[int, str]:
    """``python -m bot`` with discord.py pointed at ``api_base``; the event loop keeps running
    meanwhile, so a Discord double in this process can answer."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.cliagainst", api_base, gateway_url, *args, cwd=tmp_path,
        env=_env(tmp_path, env), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def one_line_advice(returncode: int, stderr: str) -> str:
    """The single line of advice a failed start printed, after checking it is the only thing
    besides log lines and that no traceback came with it."""
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    advice = [line for line in stderr.splitlines() if line and not LOG_LINE.match(line)]
    assert len(advice) == 1, stderr
    return advice[0]


def test_running_without_a_token_says_what_to_fix_and_exits_2(tmp_path):
    result = cli("run", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN is not set" in result.stderr


def test_a_first_start_without_env_file_says_to_copy_the_example(tmp_path):
    line = one_line_advice(*_rc_err(cli(tmp_path=tmp_path)))
    assert "copy .env.example to .env" in line


def test_a_wrong_token_says_to_reset_it_in_one_line(tmp_path):
    async def attempt() -> tuple[int, str]:
        double = await DiscordDouble().start()
        try:
            return await cli_against(double.api_base, double.gateway_url, "run",
                                     tmp_path=tmp_path, DISCORD_TOKEN="not-the-token",
                                     VEIL_WEB_ENABLED="off")
        finally:
            await double.stop()

    line = one_line_advice(*asyncio.run(attempt()))
    assert "Discord refused DISCORD_TOKEN" in line and "Reset Token" in line
    assert "not-the-token" not in line


def test_sync_with_a_wrong_token_says_to_reset_it_in_one_line(tmp_path):
    async def attempt() -> tuple[int, str]:
        double = await DiscordDouble().start()
        try:
            return await cli_against(double.api_base, double.gateway_url, "sync",
                                     tmp_path=tmp_path, DISCORD_TOKEN="not-the-token")
        finally:
            await double.stop()

    line = one_line_advice(*asyncio.run(attempt()))
    assert "Discord refused DISCORD_TOKEN" in line and "Reset Token" in line


def test_sync_without_a_way_to_reach_discord_says_to_check_the_network(tmp_path):
    port = free_port()
    line = one_line_advice(*asyncio.run(cli_against(
        f"http://127.0.0.1:{port}/api/v10", f"ws://127.0.0.1:{port}/gateway", "sync",
        tmp_path=tmp_path, DISCORD_TOKEN="a-token")))
    assert "cannot reach Discord" in line and "network connection" in line


@pytest.mark.slow
def test_a_port_in_use_stops_the_bot_before_it_sends_discord_anything(tmp_path):
    async def attempt(port: int) -> tuple[int, str, int]:
        double = await DiscordDouble().start()
        try:
            code, stderr = await cli_against(double.api_base, double.gateway_url, "run",
                                             tmp_path=tmp_path, DISCORD_TOKEN=double.token,
                                             VEIL_WEB_PORT=str(port))
            return code, stderr, len(double.all_commands())
        finally:
            await double.stop()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr, synced = asyncio.run(attempt(port))
    line = one_line_advice(code, stderr)
    assert f"VEIL_WEB_PORT {port}" in line and "already in use" in line
    assert synced == 0


def test_no_way_to_reach_discord_says_to_check_the_network_in_one_line(tmp_path):
    port = free_port()  # nobody listens there: connection refused
    line = one_line_advice(*asyncio.run(cli_against(
        f"http://127.0.0.1:{port}/api/v10", f"ws://127.0.0.1:{port}/gateway", "run",
        tmp_path=tmp_path, DISCORD_TOKEN="a-token", VEIL_WEB_ENABLED="off")))
    assert "cannot reach Discord" in line and "network connection" in line


def test_a_port_in_use_names_the_port_and_what_to_change(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_advice(*_rc_err(cli("web", tmp_path=tmp_path,
                                            VEIL_WEB_PORT=str(port))))
    assert f"VEIL_WEB_PORT {port}" in line and "already in use" in line


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_an_unusable_data_folder_says_to_point_veil_data_dir_elsewhere(tmp_path, where):
    (tmp_path / "a-file").write_text("not a folder")
    line = one_line_advice(*_rc_err(cli("check", tmp_path=tmp_path,
                                        VEIL_DATA_DIR=str(tmp_path / where))))
    assert "VEIL_DATA_DIR" in line and where in line


def test_an_unknown_log_level_lists_the_levels(tmp_path):
    line = one_line_advice(*_rc_err(cli("check", tmp_path=tmp_path, VEIL_LOG_LEVEL="LOUD")))
    assert "VEIL_LOG_LEVEL" in line and "DEBUG, INFO, WARNING" in line


def test_a_short_master_key_says_what_a_key_looks_like_without_echoing_it(tmp_path):
    line = one_line_advice(*_rc_err(cli("check", tmp_path=tmp_path, VEIL_MASTER_KEY="zz")))
    assert "64 hex digits" in line and "2 characters" in line
    assert "bytes;" not in line and "zz" not in line


def test_debug_logging_adds_the_traceback_to_the_same_advice(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = cli("check", tmp_path=tmp_path, VEIL_DATA_DIR=str(tmp_path / "a-file"),
                 VEIL_LOG_LEVEL="DEBUG")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Veil cannot start")


def test_help_gives_each_command_a_line_of_its_own(tmp_path):
    result = cli("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    commands = ("run", "web", "check", "rotate-key", "sweep", "sync", "migrate-storage")
    for command in commands:
        [line] = [ln for ln in result.stdout.splitlines() if ln.split()[:1] == [command]]
        assert len(line.split()) > 3, line
    listed = result.stdout.split("commands (default: run):\n", 1)[1].strip().splitlines()
    assert [ln.split()[0] for ln in listed] == list(commands)  # no summary wraps
    assert result.stdout.count("usage:") == 1


def test_a_wrong_number_of_link_server_workers_says_what_to_give(tmp_path):
    result = cli("web", "--workers", "0", tmp_path=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "give a whole number from 1 to 64" in error and "(choose from" not in error


@pytest.mark.slow
def test_a_normal_start_prints_no_voice_warnings_and_ctrl_c_stops_it(tmp_path):
    async def start_and_stop() -> str:
        double = await DiscordDouble().start()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.cliagainst", double.api_base, double.gateway_url,
            "run", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=_env(tmp_path, {
                "DISCORD_TOKEN": double.token, "VEIL_WEB_ENABLED": "off"}))
        assert process.stderr is not None
        stream = process.stderr
        seen: list[str] = []

        async def collect() -> None:
            while line := await stream.readline():
                seen.append(line.decode())

        reader = asyncio.create_task(collect())
        try:
            await double.wait_for(lambda: double.gateway.connected, timeout=30,
                                  what="the bot to connect")
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), 30)
            await reader
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await double.stop()
        assert process.returncode == 0, "".join(seen)
        return "".join(seen)

    stderr = asyncio.run(start_and_stop())
    assert "voice" not in stderr.lower() and "PyNaCl" not in stderr
    assert "Traceback" not in stderr


def _rc_err(result: subprocess.CompletedProcess) -> tuple[int, str]:
    return result.returncode, result.stderr


@pytest.mark.slow  # two or three processes, each importing Veil
def test_check_validates_the_data_folder_and_creates_the_key_once(tmp_path):
    first = cli("check", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Settings are valid" in first.stdout
    assert "Generated a new master key" in first.stderr
    key = (tmp_path / "data" / "master.key").read_text()
    assert key.strip() not in first.stdout + first.stderr
    second = cli("check", tmp_path=tmp_path)
    assert "Generated a new master key" not in second.stderr


@pytest.mark.slow  # two or three processes, each importing Veil
def test_rotate_key_replaces_the_key_file_and_never_prints_a_key(tmp_path):
    cli("check", tmp_path=tmp_path)
    before = (tmp_path / "data" / "master.key").read_text()
    result = cli("rotate-key", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    after = (tmp_path / "data" / "master.key").read_text()
    assert before != after
    assert after.strip() not in result.stdout + result.stderr
    assert cli("check", tmp_path=tmp_path).returncode == 0


@pytest.mark.slow  # two or three processes, each importing Veil
def test_a_wrong_master_key_is_refused_with_advice(tmp_path):
    cli("check", tmp_path=tmp_path, VEIL_MASTER_KEY="11" * 32)
    result = cli("check", tmp_path=tmp_path, VEIL_MASTER_KEY="22" * 32)
    assert result.returncode == 2
    assert "not the one this data folder was encrypted with" in result.stderr


def test_check_names_an_unreachable_comfyui_as_a_warning_not_a_failure(tmp_path):
    port = free_port()
    result = cli("check", tmp_path=tmp_path, VEIL_GENERATOR="comfyui",
                 VEIL_COMFYUI_URL=f"http://127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert f"Warning: ComfyUI at http://127.0.0.1:{port} is not reachable" in result.stdout
