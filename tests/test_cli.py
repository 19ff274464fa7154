"""The command line an operator uses: `python -m bot run|check|rotate-key|sweep`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VEIL_") and k != "DISCORD_TOKEN"}
    clean.update({"VEIL_DATA_DIR": str(tmp_path / "data"), **env})
    # Run from an empty folder so no .env of the developer's is read.
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env={
        **clean, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)


def test_running_without_a_token_says_what_to_fix_and_exits_2(tmp_path):
    result = cli("run", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN is not set" in result.stderr


def test_check_validates_the_data_folder_and_creates_the_key_once(tmp_path):
    first = cli("check", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Settings are valid" in first.stdout
    assert "Generated a new master key" in first.stderr
    key = (tmp_path / "data" / "master.key").read_text()
    assert key.strip() not in first.stdout + first.stderr
    second = cli("check", tmp_path=tmp_path)
    assert "Generated a new master key" not in second.stderr


def test_rotate_key_replaces_the_key_file_and_never_prints_a_key(tmp_path):
    cli("check", tmp_path=tmp_path)
    before = (tmp_path / "data" / "master.key").read_text()
    result = cli("rotate-key", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    after = (tmp_path / "data" / "master.key").read_text()
    assert before != after
    assert after.strip() not in result.stdout + result.stderr
    assert cli("check", tmp_path=tmp_path).returncode == 0


def test_a_wrong_master_key_is_refused_with_advice(tmp_path):
    cli("check", tmp_path=tmp_path, VEIL_MASTER_KEY="11" * 32)
    result = cli("check", tmp_path=tmp_path, VEIL_MASTER_KEY="22" * 32)
    assert result.returncode == 2
    assert "not the one this data folder was encrypted with" in result.stderr


def test_check_names_an_unreachable_comfyui_as_a_warning_not_a_failure(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("check", tmp_path=tmp_path, VEIL_GENERATOR="comfyui",
                 VEIL_COMFYUI_URL=f"http://127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert f"Warning: ComfyUI at http://127.0.0.1:{port} is not reachable" in result.stdout
