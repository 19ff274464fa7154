"""The two ways to run the suite: `make test-fast` (the edit-test loop) leaves out the slow tests
and every run on PostgreSQL; `make test` (what CI runs) leaves out nothing.

Each lane's selection is read from the Makefile itself (`make -n`) and collected by pytest in a
subprocess, over three files that hold every kind of test: one over both backends
(``test_core_store``), the PostgreSQL adapter's own tests, some on the cluster and some not
(``test_postgres``), and slow tests beside a PostgreSQL-only sample (``test_assurance_files``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ("tests/test_core_store.py", "tests/test_postgres.py", "tests/test_assurance_files.py")
ADAPTER = "tests/test_postgres.py::"
# Tests that take the cluster without being parametrized over the backends.
ON_THE_CLUSTER = tuple(ADAPTER + name for name in (
    "test_postgresql_rows_read_like_sqlite_rows",
    "test_write_transactions_on_postgresql_run_one_at_a_time",
    "test_a_task_cancelled_while_waiting_for_the_write_lock_never_wedges_the_writers",
))
# One of the adapter's tests that need no server: they belong in the fast lane.
NO_SERVER = ADAPTER + "test_parameters_become_numbered_but_literals_casts_and_comments_stay"

pytestmark = pytest.mark.slow  # three pytest start-ups in subprocesses


def _pytest_arguments(target: str) -> list[str]:
    """The arguments that `make <target>` passes to pytest."""
    printed = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    [command] = [line for line in printed.splitlines() if " -m pytest" in line]
    words = shlex.split(command)
    return words[words.index("pytest") + 1:]


def _collected(arguments: list[str]) -> set[str]:
    """Test ids that pytest would run with these arguments, over FILES."""
    kept = [a for a in arguments if a not in ("-q",)]
    if "-n" in kept:  # the spread over workers changes nothing in what is selected
        at = kept.index("-n")
        del kept[at:at + 2]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *kept, *FILES], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if "::" in line}


def _runs_on_postgresql(test_id: str) -> bool:
    params = test_id.partition("[")[2].rstrip("]")
    return "postgresql" in params.split("-") or test_id.partition("[")[0] in ON_THE_CLUSTER


def test_the_fast_lane_leaves_out_slow_tests_and_postgresql_runs_and_make_test_keeps_them():
    everything = _collected(_pytest_arguments("test"))
    fast = _collected(_pytest_arguments("test-fast"))
    slow = _collected(["-m", "slow"])

    on_postgresql = {t for t in everything if _runs_on_postgresql(t)}
    assert len(on_postgresql) > 10 and set(ON_THE_CLUSTER) <= {
        t.partition("[")[0] for t in on_postgresql}, "make test runs every PostgreSQL test"
    assert slow and slow <= everything, "make test runs the slow tests"
    assert fast == everything - slow - on_postgresql
    assert NO_SERVER in fast
    assert any(t.endswith("[sqlite-folder]") for t in fast), "each test's SQLite run stays"
