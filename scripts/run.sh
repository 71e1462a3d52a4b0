#!/usr/bin/env bash
# `make run`: set up .venv (no Debian packages, no dockerd) and run the most complete product
# there is on this host.
#
#   scripts/run.sh [ARGS...]
#
# Without ARGS: `sidecar run`, the daemon — Docker discovery (it waits for an Engine if none
# answers yet), health checks, HAProxy managed on a loopback bind address, the HTTP API on
# 0.0.0.0:7777 — until Ctrl-C. Defaults for this host, each overridable from the environment:
#
#   HAPROXY_BIND_IP=127.0.0.168   frontends on loopback: nothing to bind, nothing exposed
#   SIDECAR_ADVERTISE_IP=127.0.0.1  where Docker publishes ports, reachable from here
#   SIDECAR_SEEDS=<the advertise IP>  a cluster of one; name other hosts to join them
#   HAPROXY_STOP_ON_EXIT=true     Ctrl-C stops the HAProxy it started (a daemon leaves it)
#   HAPROXY_CONFIG_FILE, HAPROXY_PID_FILE, HAPROXY_MASTER_SOCKET: under /tmp/sidecar-run
#
# With ARGS, `sidecar ARGS` (e.g. `make run ARGS='simulate --nodes 8'`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh venv >&2
if [ $# -gt 0 ]; then
	exec .venv/bin/sidecar "$@"
fi
if ! command -v haproxy >/dev/null; then
	echo "run.sh: haproxy is not installed (run 'make setup'); serving the API without it" >&2
	export HAPROXY_DISABLE=${HAPROXY_DISABLE:-true}
fi
if ! timeout 5 docker info >/dev/null 2>&1; then
	echo "run.sh: no Docker Engine answers yet; the daemon waits for one (start dockerd," \
		"or run 'make test' once)" >&2
fi
home=/tmp/sidecar-run
mkdir -p "$home"
export HAPROXY_BIND_IP=${HAPROXY_BIND_IP:-127.0.0.168}
export SIDECAR_ADVERTISE_IP=${SIDECAR_ADVERTISE_IP:-127.0.0.1}
# A cluster of one (gossip on the advertise IP's port 7946) unless seeds are given.
export SIDECAR_SEEDS=${SIDECAR_SEEDS:-$SIDECAR_ADVERTISE_IP}
export HAPROXY_STOP_ON_EXIT=${HAPROXY_STOP_ON_EXIT:-true}
export HAPROXY_CONFIG_FILE=${HAPROXY_CONFIG_FILE:-$home/haproxy.cfg}
export HAPROXY_PID_FILE=${HAPROXY_PID_FILE:-$home/haproxy.pid}
export HAPROXY_MASTER_SOCKET=${HAPROXY_MASTER_SOCKET:-$home/haproxy-master.sock}
exec .venv/bin/sidecar run
