#!/usr/bin/env bash
# The whole check, as CI runs it (through `make test` and .ci/run):
#
#   scripts/test.sh [all] [PYTEST_ARGS...]   Debian packages, .venv, dockerd, test image, then
#                                            ruff format --check, ruff check, mypy, lint-imports,
#                                            pytest. Every check runs; any failure -> exit 1.
#   scripts/test.sh lint                     .venv, then ruff format --check, ruff check, mypy,
#                                            lint-imports
#   scripts/test.sh unit [PYTEST_ARGS...]    .venv, then pytest tests/unit tests/property
#
# dockerd is started only if no engine answers, and then stopped on exit (also on failure or
# interrupt); an engine that was already running is left alone.
#
# Under CI=true: SIDECAR_REQUIRE=docker,haproxy,netns,cluster,browser (a marked test whose
# component is missing fails instead of skipping) and SIDECAR_HYPOTHESIS_PROFILE=ci, unless already set.
# SIDECAR_PYTEST_TIMEOUT (seconds; CI default 3000, else 0 = none): pytest gets SIGINT then,
# so it prints its summary and the test it was in, and the run fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=all
case ${1:-} in all | lint | unit)
	mode=$1
	shift
	;;
esac

if [ "${CI:-}" = true ]; then
	export SIDECAR_REQUIRE=${SIDECAR_REQUIRE:-docker,haproxy,netns,cluster,browser}
	export SIDECAR_HYPOTHESIS_PROFILE=${SIDECAR_HYPOTHESIS_PROFILE:-ci}
	# CI kills a run at 90 min without a word; interrupt pytest first so it reports where it was.
	PYTEST_TIMEOUT=${SIDECAR_PYTEST_TIMEOUT:-3000}
else
	PYTEST_TIMEOUT=${SIDECAR_PYTEST_TIMEOUT:-0}
fi

DOCKERD_LOG=${SIDECAR_DOCKERD_LOG:-/var/log/sidecar-test-dockerd.log}
DOCKERD_PIDFILE=${SIDECAR_DOCKERD_PIDFILE:-/run/sidecar-test-dockerd.pid}
DOCKERD_WAIT=${SIDECAR_DOCKERD_WAIT:-60}
IMAGE=sidecar-test-busybox:latest

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'test.sh: %s\n' "$*" >&2
	exit 1
}

# ------------------------------------------------------------------ dockerd

started_dockerd=0

engine_answers() {
	timeout 10 docker info >/dev/null 2>&1
}

dockerd_log_tail() {
	echo "---- last lines of $DOCKERD_LOG ----" >&2
	tail -n 40 "$DOCKERD_LOG" >&2 || true
	echo "----" >&2
}

start_dockerd() {
	if engine_answers; then
		say "dockerd: an engine already answers; using it and leaving it running"
		return 0
	fi
	command -v dockerd >/dev/null || die "no engine answers and dockerd is not installed"
	[ "$(id -u)" -eq 0 ] || die "no engine answers and starting dockerd needs root"
	say "dockerd: starting (log: $DOCKERD_LOG)"
	# --live-restore: containers keep running while the Engine restarts, as on a production
	# host; the Engine-restart test relies on it.
	dockerd --live-restore </dev/null >"$DOCKERD_LOG" 2>&1 &
	local pid=$!
	echo "$pid" >"$DOCKERD_PIDFILE"
	started_dockerd=1
	local t0=$SECONDS
	until engine_answers; do
		if ! kill -0 "$pid" 2>/dev/null; then
			dockerd_log_tail
			die "dockerd (pid $pid) exited during start-up"
		fi
		if ((SECONDS - t0 >= DOCKERD_WAIT)); then
			dockerd_log_tail
			die "dockerd (pid $pid) did not answer within ${DOCKERD_WAIT}s"
		fi
		sleep 1
	done
	say "dockerd: up (pid $pid) after $((SECONDS - t0))s"
}

stop_dockerd() {
	[ "$started_dockerd" -eq 1 ] || return 0
	started_dockerd=0
	local pid
	pid=$(cat "$DOCKERD_PIDFILE" 2>/dev/null) || return 0
	say "dockerd: stopping the engine this run started (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 60; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "test.sh: dockerd (pid $pid) ignored SIGTERM for 30s; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
	rm -f "$DOCKERD_PIDFILE"
}

on_exit() {
	local rc=$?
	stop_dockerd
	exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ checks

failed=()

# check NAME COMMAND...: run one check, time it, remember a failure and go on.
check() {
	local name=$1 t0=$SECONDS rc=0
	shift
	say "$name: $*"
	"$@" || rc=$?
	if [ "$rc" -eq 0 ]; then
		say "$name: ok ($((SECONDS - t0))s)"
	else
		say "$name: FAILED with exit code $rc ($((SECONDS - t0))s)"
		failed+=("$name")
	fi
}

# timed NAME COMMAND...: a setup step; a failure ends the run.
timed() {
	local name=$1 t0=$SECONDS
	shift
	"$@" || die "$name failed"
	say "$name: done ($((SECONDS - t0))s)"
}

# pytest ARGS...: the venv's pytest, interrupted (SIGINT) after $PYTEST_TIMEOUT seconds.
pytest() {
	if [ "$PYTEST_TIMEOUT" -gt 0 ]; then
		local rc=0
		timeout --signal=INT --kill-after=60 "$PYTEST_TIMEOUT" .venv/bin/pytest "$@" || rc=$?
		[ "$rc" -eq 124 ] && echo "test.sh: pytest interrupted after ${PYTEST_TIMEOUT}s" >&2
		return "$rc"
	fi
	.venv/bin/pytest "$@"
}

lint_checks() {
	check "ruff format" .venv/bin/ruff format --check .
	check "ruff check" .venv/bin/ruff check .
	check "mypy" .venv/bin/mypy
	check "lint-imports" .venv/bin/lint-imports
}

run_unit() {
	local dirs=() d rc=0
	for d in tests/unit tests/property; do
		[ -d "$d" ] && dirs+=("$d")
	done
	if [ ${#dirs[@]} -eq 0 ]; then
		say "pytest: no tests/unit or tests/property yet"
		return 0
	fi
	pytest "${dirs[@]}" "$@" || rc=$?
	if [ "$rc" -eq 5 ]; then
		say "pytest: no unit or property tests collected yet"
		rc=0
	fi
	return "$rc"
}

t_start=$SECONDS
export PATH="$PWD/.venv/bin:$PATH"
say "mode=$mode CI=${CI:-} SIDECAR_REQUIRE=${SIDECAR_REQUIRE:-} \
SIDECAR_HYPOTHESIS_PROFILE=${SIDECAR_HYPOTHESIS_PROFILE:-dev}"

case $mode in
all)
	timed "setup (Debian packages, .venv)" bash scripts/setup.sh all
	timed "dockerd" start_dockerd
	timed "test image" bash scripts/build-test-image.sh "$IMAGE"
	# The Debian base of the sidecar image (tests/integration/test_image.py builds the image on
	# it): debootstrap, about a minute on a fresh machine; skipped when it exists.
	timed "sidecar base image (debootstrap, cached)" bash scripts/build-base-image.sh
	lint_checks
	check "pytest" pytest "$@"
	;;
lint)
	timed "setup (.venv)" bash scripts/setup.sh venv
	lint_checks
	;;
unit)
	timed "setup (.venv)" bash scripts/setup.sh venv
	check "pytest (unit, property)" run_unit "$@"
	;;
esac

if [ ${#failed[@]} -gt 0 ]; then
	say "FAILED after $((SECONDS - t_start))s: $(printf '%s; ' "${failed[@]}")"
	exit 1
fi
say "all checks ok after $((SECONDS - t_start))s"
