#!/usr/bin/env bash
# Remove what a crashed or interrupted test run left behind: containers labelled
# sidecar-test=1, network namespaces named sc-test-* (with what runs in them, an inner Docker
# Engine of test_image_netpath.py included) and that engine's directories
# /tmp/sc-test-dockerd-* (with the mounts it left there). The test images are kept (a cache;
# `docker rmi sidecar-test-busybox:latest` removes one). Safe to run at any time when no
# test run is in progress.
set -euo pipefail

if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
	ids=$(docker ps -aq --filter label=sidecar-test=1)
	if [ -n "$ids" ]; then
		echo "removing containers: $(echo "$ids" | tr '\n' ' ')"
		# shellcheck disable=SC2086
		docker rm -f $ids >/dev/null
	fi
fi

if command -v ip >/dev/null; then
	for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^sc-test-/ { print $1 }'); do
		echo "removing network namespace $ns"
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns delete "$ns" || true
	done
fi

for dir in /tmp/sc-test-dockerd-*; do
	[ -d "$dir" ] || continue
	echo "removing an inner Docker Engine's directory $dir"
	# Deepest first: dockerd leaves an nsfs bind mount under exec/, containers their rootfs.
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r mount; do
		umount -l "$mount" 2>/dev/null || true
	done
	rm -rf "$dir" || true
done
