#!/usr/bin/env bash
# `make run`: set up .venv (no Debian packages, no dockerd) and run the most complete product
# there is on this host.
#
#   scripts/run.sh [ARGS...]
#
# Without ARGS: `sidecar discover` (this host's Docker discovery and health checks, live,
# until Ctrl-C) when a Docker Engine answers, else `sidecar simulate` (a simulated cluster).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh venv >&2
if [ $# -gt 0 ]; then
	exec .venv/bin/sidecar "$@"
fi
if timeout 5 docker info >/dev/null 2>&1; then
	exec .venv/bin/sidecar discover
fi
echo "run.sh: no Docker Engine answers (start dockerd, or run 'make test' once);" \
	"running the cluster simulation instead" >&2
exec .venv/bin/sidecar simulate
