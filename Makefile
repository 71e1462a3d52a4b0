# Thin wrapper: the logic lives in scripts/. Run as root on Debian 12 for `make test`.
#
#   make test    everything CI runs: Debian packages, .venv, dockerd, test image, then
#                ruff format --check, ruff check, mypy, lint-imports, pytest
#   make lint    .venv, then ruff format --check, ruff check, mypy, lint-imports
#   make unit    .venv, then pytest tests/unit tests/property (no system setup)
#   make run     .venv, then `sidecar run`: the daemon with this host's defaults (scripts/run.sh);
#                `make run ARGS='simulate --nodes 8'` runs another command
#   make setup   Debian packages and .venv only
#   make image   (re)build the local test image sidecar-test-busybox:latest
#   make clean-test-leftovers   remove containers and namespaces a crashed test run left
#
# PYTEST_ARGS='-k smoke -x' passes arguments to pytest in `make test` and `make unit`.

PYTEST_ARGS ?=
ARGS ?=

.PHONY: test lint unit run setup image clean-test-leftovers

test:
	bash scripts/test.sh all $(PYTEST_ARGS)

lint:
	bash scripts/test.sh lint

unit:
	bash scripts/test.sh unit $(PYTEST_ARGS)

run:
	bash scripts/run.sh $(ARGS)

setup:
	bash scripts/setup.sh all

image:
	bash scripts/build-test-image.sh

clean-test-leftovers:
	bash scripts/clean-test-leftovers.sh
