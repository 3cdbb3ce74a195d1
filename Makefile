# The README's commands. `make run` starts the app; `make test` runs everything CI runs.
.PHONY: run test lint bench migration

run:
	scripts/bootstrap
	.venv/bin/tmsi run

test:
	scripts/test

lint:
	scripts/bootstrap --dev
	.venv/bin/ruff check tmsi tests bench
	.venv/bin/ruff format --check tmsi tests bench
	.venv/bin/mypy

bench:
	scripts/bootstrap --dev
	.venv/bin/python -m bench

migration:
	scripts/regen-migration
