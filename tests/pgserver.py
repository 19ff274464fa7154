"""A throwaway PostgreSQL cluster for the test session, started from the installed binaries.

``PgServer.start()`` runs ``initdb`` into a fresh temporary folder and starts ``postgres`` on a
free 127.0.0.1 port with no unix socket at all (nothing in a shared place such as
/var/run/postgresql). As root it runs both as the ``postgres`` user (initdb refuses root). The
postmaster is killed when this process dies, even by SIGKILL (PR_SET_PDEATHSIG), and
``stop()`` removes the folder. Durability is switched off (fsync, full-page writes): a crash of
the test machine loses nothing anyone needs.

Each test gets its own database copied from a migrated template (``CREATE DATABASE .. TEMPLATE
.. STRATEGY FILE_COPY``, ~70 ms on a busy 2-core machine, about what truncating the 22 tables
costs, ~90 ms), which leaves no state behind at all: not even a sequence moved on. Dropping it
afterwards costs ~60 ms more.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "veil"
TEMPLATE = "veil_template"
_PR_SET_PDEATHSIG = 1
_DIR_PREFIX = "veil-pg-"


def find_bindir() -> Path | None:
    """Where initdb and postgres are: beside initdb on PATH, or Debian's versioned folder."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child after the user switch (which would clear it), before exec.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _remove_stale_folders() -> None:
    """Folders left by a session that was killed: its postmaster died with it (PDEATHSIG)."""
    for folder in Path(tempfile.gettempdir()).glob(_DIR_PREFIX + "*"):
        pid_file = folder / "data" / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            continue  # another session's server, still running
        except (OSError, ValueError, IndexError):
            pass
        if folder.stat().st_mtime < time.time() - 60:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PgServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    template_ready: bool = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def create_database(self) -> str:
        """A fresh database copied from the migrated template (made on first use); its URL."""
        import asyncpg

        from db.postgres import PostgresDatabase

        admin = await asyncpg.connect(self.url())
        try:
            if not self.template_ready:
                await admin.execute(f"CREATE DATABASE {TEMPLATE}")
                await (await PostgresDatabase.open(self.url(TEMPLATE), pool_min=1)).close()
                self.template_ready = True
            name = f"veil_test_{next(self._names)}"
            # FILE_COPY copies the template's files (one checkpoint, cheap with fsync off):
            # measured 73 ms against 202 ms for WAL_LOG, which writes every page to the WAL.
            await admin.execute(
                f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
        finally:
            await admin.close()
        return self.url(name)

    async def drop_database(self, url: str) -> None:
        import asyncpg

        admin = await asyncpg.connect(self.url())
        try:
            await admin.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        finally:
            await admin.close()

    @classmethod
    def start(cls, bindir: Path, *, timeout_s: float = 30.0, durable: bool = False) -> PgServer:
        """durable: fsync and full-page writes on, as a real server (for benchmarks)."""
        _remove_stale_folders()
        root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        run_as: dict[str, object] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(root, account.pw_uid, account.pw_gid)
            run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        data = root / "data"
        try:
            subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                check=True, capture_output=True, cwd=root, **run_as)  # type: ignore[call-overload]
            port = _free_port()
            speed = [] if durable else ["-c", "fsync=off", "-c", "full_page_writes=off",
                                        "-c", "shared_buffers=32MB"]
            process = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "synchronous_commit=off", "-c", "max_connections=200",
                 "-c", "log_min_messages=fatal", *speed],
                stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "wb"),  # noqa: SIM115
                cwd=root, preexec_fn=_die_with_parent,
                **run_as)  # type: ignore[call-overload]
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        server = cls(root, port, process)
        server._wait_ready(timeout_s)
        return server

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.root / "server.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"postgres exited at start-up:\n{log}")
            # Accepting TCP is not enough (it answers "starting up"): wait for the ready line.
            pid_file = self.root / "data" / "postmaster.pid"
            with contextlib.suppress(OSError):
                if "ready" in pid_file.read_text():
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"postgres did not start within {timeout_s} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGQUIT: immediate shutdown, no checkpoint (the folder is removed anyway).
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
