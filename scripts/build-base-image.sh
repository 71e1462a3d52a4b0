#!/usr/bin/env bash
# Build the local Debian base of the sidecar image (no registry is reachable, so nothing is
# pulled):
#
#   scripts/build-base-image.sh [IMAGE]      default: sidecar-base:bookworm
#
# `debootstrap --variant=minbase bookworm` (Debian's package, installed when missing) makes a
# rootfs from Debian's mirror; it is slimmed (no apt lists or caches, no docs, man pages or
# locales) and fed to `docker import`. The image carries the label sidecar-base.hash, a hash
# of this script: when the image exists with that hash the build is skipped, so one machine
# builds it once. docker/Dockerfile takes it as `--build-arg BASE=sidecar-base:bookworm`.
#
# MIRROR (default http://deb.debian.org/debian) and SUITE (default bookworm) can be set.
set -euo pipefail

IMAGE=${1:-sidecar-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say() { echo "build-base-image: $*"; }
die() {
	echo "build-base-image: $*" >&2
	exit 1
}

hash=$( (
	cat "${BASH_SOURCE[0]}"
	echo "$SUITE $MIRROR"
) | sha256sum | cut -c1-16)
current=$(docker image inspect -f '{{ index .Config.Labels "sidecar-base.hash" }}' "$IMAGE" \
	2>/dev/null || true)
if [ "$current" = "$hash" ]; then
	say "$IMAGE is up to date ($hash)"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null; then
	say "installing Debian's debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap \
		</dev/null >/dev/null ||
		{ apt-get update -q </dev/null >/dev/null &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				debootstrap </dev/null >/dev/null; } ||
		die "cannot install debootstrap"
fi

root=$(mktemp -d /tmp/sidecar-base-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

t0=$SECONDS
say "debootstrap --variant=minbase $SUITE from $MIRROR (a minute or two)"
if ! debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1; then
	tail -n 30 "$root.log" >&2
	rm -f "$root.log"
	die "debootstrap failed (its last lines above)"
fi
rm -f "$root.log"
say "debootstrap done ($((SECONDS - t0))s)"

# The same sources a Debian image has, with security updates.
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
# Later `apt-get install`s in an image leave no docs, man pages or locales behind (what the
# official slim images do).
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,lintian} "$root"/var/lib/apt/lists/* \
	"$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
	"$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
	-exec rm -rf {} +
# glibc's iconv modules (8 MB): neither Python nor HAProxy converts charsets through iconv.
find "$root/usr/lib" -path '*/gconv/*' -name '*.so' -delete
# The host's name and resolver are Docker's to set.
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"

say "importing $IMAGE ($hash)"
tar -C "$root" --numeric-owner -cf - . |
	docker import \
		--message "Debian $SUITE minbase from debootstrap ($hash)" \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV LANG=C.UTF-8' \
		--change "LABEL sidecar-base.hash=$hash sidecar-base.suite=$SUITE" \
		--change 'CMD ["bash"]' \
		- "$IMAGE" >/dev/null

out=$(docker run --rm --network none "$IMAGE" cat /etc/debian_version)
say "built $IMAGE (Debian $out, $(docker image inspect -f '{{ .Size }}' "$IMAGE" |
	awk '{ printf "%.0f MB", $1 / 1e6 }'), $((SECONDS - t0))s)"
