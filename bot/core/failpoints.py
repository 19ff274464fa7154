"""Named crash and pause points for the crash-safety and several-process tests.

A test starts a subprocess with ``VEIL_FAILPOINT=<name>``; when the code reaches that point the
process kills itself with SIGKILL, exactly like a power cut or an OOM kill, with no cleanup.
Unset (always, outside those tests), ``reach`` is a dictionary-free comparison and does nothing.

``VEIL_PAUSE=<name>@<folder>`` holds a process at a point instead: it creates
``<folder>/reached`` and waits (blocking the whole process, as a slow disk would) until the test
creates ``<folder>/release``. That lets a test start another process at exactly that moment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_ARMED = os.environ.get("VEIL_FAILPOINT") or None
_PAUSE = os.environ.get("VEIL_PAUSE") or None


def reach(name: str) -> None:
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)


def pause(name: str) -> None:
    if _PAUSE is None:
        return
    point, _, folder = _PAUSE.partition("@")
    if point != name:
        return
    (Path(folder) / "reached").touch()
    deadline = time.monotonic() + 60
    while not (Path(folder) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
