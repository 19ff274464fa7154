"""Named crash points for the crash-safety tests.

A test starts a subprocess with ``VEIL_FAILPOINT=<name>``; when the code reaches that point the
process kills itself with SIGKILL, exactly like a power cut or an OOM kill, with no cleanup.
Unset (always, outside those tests), ``reach`` is a dictionary-free comparison and does nothing.
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("VEIL_FAILPOINT") or None


def reach(name: str) -> None:
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
