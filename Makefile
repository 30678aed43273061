# `make check` is what CI runs after installing: lint, format, types, import rules, every test tier.
PYTHON ?= python

.PHONY: check lint format typecheck imports test test-unit bench

check: lint typecheck imports test

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .

typecheck:
	mypy

imports:
	lint-imports

test:
	$(PYTHON) -m pytest

test-unit:
	$(PYTHON) -m pytest tests/unit -q

bench:
	$(PYTHON) -m bench
