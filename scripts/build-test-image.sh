#!/usr/bin/env bash
# Build the local test image (no registry is reachable, so nothing is pulled):
#
#   scripts/build-test-image.sh [IMAGE]      default: sidecar-test-busybox:latest
#
# A rootfs made of Debian's busybox-static (/bin/busybox and one symlink per applet) is fed to
# `docker import`. The image EXPOSEs 80/tcp and 443/tcp (so `docker run -P` publishes them)
# and by default serves /www on port 80 with busybox httpd: GET / and GET /version answer 200.
# It carries the label sidecar-test=1 (so a cleanup finds it) and sidecar-test.hash, a hash of
# this script and of the busybox binary: when both are unchanged the build is skipped.
set -euo pipefail

IMAGE=${1:-sidecar-test-busybox:latest}
BUSYBOX=${BUSYBOX:-/bin/busybox}

die() {
	echo "build-test-image: $*" >&2
	exit 1
}

[ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install Debian's busybox-static (scripts/setup.sh)"
# A dynamically linked busybox (Debian's `busybox`) would not run in an empty rootfs.
ldd_out=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
if [[ $ldd_out != *"not a dynamic executable"* ]]; then
	die "$BUSYBOX is dynamically linked: install busybox-static instead of busybox"
fi

hash=$(cat "${BASH_SOURCE[0]}" "$BUSYBOX" | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "sidecar-test.hash" }}' "$IMAGE" \
	2>/dev/null || true)
if [ "$current" = "$hash" ]; then
	echo "build-test-image: $IMAGE is up to date ($hash)"
	exit 0
fi

root=$(mktemp -d /tmp/sidecar-test-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,www,tmp,proc,sys,dev,root}
chmod 1777 "$root/tmp"
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
	>"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf '<!doctype html>\n<title>sidecar-test</title>\n<p>sidecar-test-busybox</p>\n' \
	>"$root/www/index.html"
printf 'sidecar-test-busybox %s\n' "$hash" >"$root/www/version"

echo "build-test-image: importing $IMAGE ($hash)"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf - . |
	docker import \
		--message "sidecar test image from busybox-static ($hash)" \
		--change 'EXPOSE 80/tcp' \
		--change 'EXPOSE 443/tcp' \
		--change 'ENV PATH=/bin' \
		--change 'WORKDIR /' \
		--change "LABEL sidecar-test=1 sidecar-test.hash=$hash" \
		--change 'CMD ["httpd", "-f", "-p", "80", "-h", "/www"]' \
		- "$IMAGE" >/dev/null

# Sanity check: the applets run inside the image.
out=$(docker run --rm --label sidecar-test=1 --network none "$IMAGE" cat /www/version)
[ "$out" = "sidecar-test-busybox $hash" ] || die "image check failed: got '$out'"
echo "build-test-image: built $IMAGE"
