# The two commands a newcomer needs: `make demo` and `make test`. Both install uv when it is
# missing (from PyPI, into the user's Python) and sync the locked environment first: `make demo`
# everything the pipeline needs (every extra), `make test` that plus the dev tools (pytest, mypy,
# moto, playwright). Commands run from .venv/bin, so nothing needs uv (or ~/.local/bin) on PATH.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
BIN := .venv/bin

.PHONY: help uv bootstrap bootstrap-dev demo test test-fast lint format clean chromium slurm server server-stop docs docs-serve

help:
	@echo "make demo       the whole pipeline on the embedded corpus -> runs/demo/report/index.html"
	@echo "make test       lint, type-check and the full test suite"
	@echo "make test-fast  lint and the tests not marked slow (the inner loop)"
	@echo "make lint       ruff, mypy and the import contract (lint-imports)"
	@echo "make docs       the documentation site -> site/index.html (strict: broken links fail)"
	@echo "make docs-serve the site on http://127.0.0.1:8000, rebuilt on every change"
	@echo "make clean      remove runs/"
	@echo "make server       a local Prefect server + worker with every deployment -> http://127.0.0.1:4200 (runs/ on :4201)"
	@echo "make server-stop  stop what make server started (logs and database stay in runs/server)"

# Bytecode compiled once at install: where PYTHONDONTWRITEBYTECODE is set (as on the CI machines),
# every Python process would otherwise recompile torch's sources: a 2-rank torchrun launch took
# 30 s without compiled bytecode and 18 s with it on a 2-core machine.
uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --break-system-packages --user uv

bootstrap: uv
	$(UV) sync --frozen --all-extras --no-dev --compile-bytecode

bootstrap-dev: uv
	$(UV) sync --frozen --all-extras --compile-bytecode

demo: bootstrap
	$(BIN)/codecflow demo

lint: bootstrap-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy codecflow
	$(BIN)/lint-imports

# The browser test (tests/ops/test_browser.py) drives Debian's chromium through Playwright, without
# `playwright install`: installed with apt-get when missing (as root, or through sudo).
chromium:
	@[ -e /usr/bin/chromium ] || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
		$$sudo apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The Slurm test (tests/ops/test_slurm.py) starts its own munged, slurmctld and slurmd on 127.0.0.1
# from Debian's slurm-wlm and munge: installed with apt-get when missing, as chromium.
slurm:
	@[ -e /usr/sbin/slurmctld ] && [ -e /usr/sbin/munged ] || { \
		if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
		$$sudo apt-get update -q && \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }

# UV is passed on: the packaging tests build the wheel and install it into fresh venvs with it.
test: lint chromium slurm
	CODECFLOW_UV="$(UV)" $(BIN)/pytest

test-fast: lint
	CODECFLOW_UV="$(UV)" $(BIN)/pytest -m "not slow" -x

format: bootstrap-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The documentation site (mkdocs.yml, docs/): MkDocs with Material; the CLI reference and the API
# reference are generated from the configs and the docstrings (docs/hooks.py, mkdocstrings).
# tests/test_docs.py builds it strictly in `make test`.
docs: bootstrap-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: bootstrap-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

# A Prefect server (its own database under runs/server/prefect), the work pool codecflow-local, the
# `gpu` concurrency limit, a worker and every deployment of prefect.yaml: see codecflow/cli/server.py.
server: bootstrap
	$(BIN)/codecflow server start

server-stop:
	$(BIN)/codecflow server stop

clean:
	@# A server started by `make server` keeps its database and PIDs in runs/server: stop it first.
	@[ ! -f runs/server/pids.json ] || $(BIN)/codecflow server stop
	rm -rf runs .prefect
