# The README's commands. `make run` starts the app; `make test` runs everything CI runs.
.PHONY: run test lint bench migration

HOST ?= 127.0.0.1
PORT ?= 8000

run:
	scripts/bootstrap
	.venv/bin/tmsi run --host $(HOST) --port $(PORT)

test:
	scripts/test

lint:
	scripts/bootstrap --dev
	.venv/bin/ruff check tmsi tests bench
	.venv/bin/ruff format --check tmsi tests bench
	.venv/bin/mypy

bench:  # make bench NAME=listings ARGS="--db sqlite"; without NAME: the list
	scripts/bootstrap --dev
	.venv/bin/python -m bench $(NAME) $(ARGS)

migration:
	scripts/regen-migration
