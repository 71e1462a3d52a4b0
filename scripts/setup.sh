#!/usr/bin/env bash
# Install what the tests need; quick and silent-ish when everything is already there.
#
#   scripts/setup.sh          Debian packages (as root) + .venv
#   scripts/setup.sh system   Debian packages only
#   scripts/setup.sh venv     .venv only (python3 -m venv, pip >= 25.1, pip install -e . --group ...)
#
# The venv is reinstalled only when pyproject.toml (or the Python it was made with) changes:
# a stamp file in .venv records the hash of both.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

what=${1:-all}
case $what in all | system | venv) ;; *)
	echo "usage: $0 [all|system|venv]" >&2
	exit 2
	;;
esac

log() { printf 'setup: %s\n' "$*"; }

# Debian package -> why we need it. Installed only when missing.
PACKAGES=(
	docker.io      # dockerd (the client at /usr/local/bin/docker may be newer; either works)
	haproxy        # HAProxy 2.6 for the haproxy-marked tests
	iproute2       # ip netns, ip addr
	iptables       # docker's port publishing; bridges between test namespaces
	busybox-static # the rootfs of the local test image (no registry here)
	curl           # ad-hoc checks, e.g. from inside a namespace
	socat          # talks to HAProxy's admin socket in manual checks
	wrk            # load for benchmarks
	chromium       # headless browser for the UI tests (driven by Playwright, the `ui` group)
)

installed() {
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# apt_install PKG...: non-interactive install as root, with `apt-get update` first (once per
# run, retried once: a mirror hiccup should not fail CI), never starting daemons.
apt_updated=0
apt_install() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup: missing Debian packages: $* (run as root to install them)" >&2
		return 1
	fi
	log "installing Debian packages: $*"
	local t0=$SECONDS policy=/usr/sbin/policy-rc.d made_policy=0 rc=0 try
	# Keep package scripts from starting daemons (dockerd): test.sh starts and stops its own.
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	for try in 1 2; do
		rc=0
		if [ "$apt_updated" -eq 0 ]; then
			apt-get update -q </dev/null || rc=$?
			[ "$rc" -eq 0 ] && apt_updated=1
		fi
		[ "$rc" -eq 0 ] && { apt-get install -y -q --no-install-recommends \
			-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
			"$@" </dev/null || rc=$?; }
		[ "$rc" -eq 0 ] && break
		[ "$try" -eq 1 ] && log "apt-get failed (exit $rc); retrying in 5s" && sleep 5
	done
	[ "$made_policy" -eq 1 ] && rm -f "$policy"
	[ "$rc" -eq 0 ] && log "Debian packages installed ($((SECONDS - t0))s)"
	return "$rc"
}

setup_system() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		installed "$p" || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		log "Debian packages present"
		return 0
	fi
	apt_install "${missing[@]}"
}

pip_supports_group() {
	# pip >= 25.1 knows `--group` (PEP 735 dependency groups).
	"$1" -m pip --version | awk '{ split($2, v, "."); exit !((v[1] > 25) || (v[1] == 25 && v[2] >= 1)) }'
}

setup_venv() {
	local py=.venv/bin/python
	local t0=$SECONDS
	if [ ! -x "$py" ]; then
		# Debian's own python3 needs python3-venv for `-m venv` (pyenv's Python does not).
		if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
			apt_install python3-venv
		fi
		log "creating .venv with $(command -v python3) ($(python3 -V 2>&1))"
		python3 -m venv .venv
	fi
	local want stamp=.venv/.sidecar-setup-stamp
	want=$({
		cat pyproject.toml
		"$py" -VV
	} | sha256sum | cut -d' ' -f1)
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/pytest ]; then
		log ".venv up to date"
		return 0
	fi
	if ! pip_supports_group "$py"; then
		log "upgrading pip in .venv (need >= 25.1 for --group)"
		"$py" -m pip install -q --disable-pip-version-check 'pip>=25.1'
	fi
	log "installing sidecar (editable) with groups test, lint, ui"
	"$py" -m pip install -q --disable-pip-version-check -e . --group test --group lint --group ui
	echo "$want" >"$stamp"
	log ".venv ready ($((SECONDS - t0))s)"
}

case $what in
all)
	setup_system
	setup_venv
	;;
system) setup_system ;;
venv) setup_venv ;;
esac
