# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast web check lint lock bench clean

# Exactly the versions in requirements.lock (hash-checked), then Veil itself without
# dependencies: every machine and CI test the same code. pyproject.toml keeps version ranges for
# those who install Veil as a library; `make lock` re-pins after a change there.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m bot run

web: $(STAMP)
	$(PY) -m bot web

check: $(STAMP)
	$(PY) -m bot check

# The tests keep Python's bytecode caches (__pycache__, ignored by git) even where
# PYTHONDONTWRITEBYTECODE is set: without them every run compiles each module again, pytest
# rewrites every test file again, and each bot test compiles the cogs it loads again.
test test-fast: export PYTHONDONTWRITEBYTECODE :=

# Everything: what CI runs (.ci/run).
test: $(STAMP)
	$(PY) -m pytest -q

# The edit-test loop, in under a minute: every test not marked slow, on SQLite only (the
# PostgreSQL runs, marked by tests/conftest.py, cost a third of the CPU; `make test` has them),
# on every core (pytest-xdist workers; each test has its own folder and ports).
# Two workers per core: many tests wait on a subprocess or a socket, and one worker per core kept
# only 1.2 of 2 cores busy (idle 2-core machine, fresh clone: 74 s with -n 2, 55 s with -n 4).
FAST_WORKERS ?= $(shell echo $$(( 2 * $$(nproc 2>/dev/null || echo 1) )))
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not postgresql" -n $(FAST_WORKERS)

# Style and types: ruff, then mypy (configured in pyproject.toml). CI runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Re-pin every dependency (and its hashes) from the ranges in pyproject.toml.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --extra test --generate-hashes --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
