# The two commands a newcomer needs: `make demo` and `make test`. Both install uv when it is
# missing (from PyPI, into the user's Python) and sync the locked environment first.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen

.PHONY: help bootstrap demo test lint format clean

help:
	@echo "make demo   the whole pipeline on the embedded corpus -> runs/demo/report/index.html"
	@echo "make test   lint, type-check and the full test suite"
	@echo "make lint   ruff + mypy only;  make clean  remove runs/ and .prefect/"

bootstrap:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --break-system-packages --user uv
	$(UV) sync --frozen

demo: bootstrap
	$(RUN) codecflow pipeline --config configs/demo.yaml

lint: bootstrap
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy models schemas

test: lint
	$(RUN) pytest

format: bootstrap
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

clean:
	rm -rf runs .prefect
