#!/usr/bin/env bash
# `make run`: set up .venv (no Debian packages, no dockerd) and run the sidecar command line.
#
#   scripts/run.sh [ARGS...]      default ARGS: simulate
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh venv >&2
exec .venv/bin/sidecar "${@:-simulate}"
