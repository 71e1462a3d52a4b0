#!/usr/bin/env bash
# Build the sidecar container image from this checkout on the local Debian base:
#
#   scripts/build-image.sh [IMAGE]      default: sidecar:local
#
# The base (sidecar-base:bookworm) is made first by scripts/build-base-image.sh when missing
# (no registry here). BASE=<image> builds on another base, e.g. the Dockerfile's default
# python:3.11-slim-bookworm where a registry answers. The dependencies come as wheels this
# machine's pip downloads (build/image-wheels/; FETCH_WHEELS=0: the build asks PyPI itself). Docker's layer cache makes a rebuild
# after a code change quick: the dependencies' layer is reused while pyproject.toml is the
# same. The image gets the labels sidecar-test=1 (a cleanup finds it) and sidecar.base.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE=${1:-sidecar:local}
BASE=${BASE:-sidecar-base:bookworm}

if [ "$BASE" = sidecar-base:bookworm ]; then
	bash scripts/build-base-image.sh "$BASE"
fi

t0=$SECONDS
log=$(mktemp /tmp/sidecar-image-build.XXXXXX)
trap 'rm -f "$log"' EXIT
# The dependencies' wheels, fetched by this machine's pip (its index and certificates): the
# build then needs no network of its own. The base's Python must be this one's version.
wheels=build/image-wheels
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
if [ "${FETCH_WHEELS:-1}" = 1 ]; then
	want=$("$py" -c 'import sys, tomllib; print(sys.version_info[:2], tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])')
	if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$want" ]; then
		echo "build-image: fetching the dependencies' wheels into $wheels"
		rm -rf "$wheels"
		mkdir -p "$wheels"
		"$py" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >"$wheels/requirements.txt"
		"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: -d "$wheels" \
			-r "$wheels/requirements.txt" 'setuptools>=77' >"$log" 2>&1 || {
			tail -n 20 "$log" >&2
			echo "build-image: pip download failed" >&2
			exit 1
		}
		echo "$want" >"$wheels/.stamp"
	fi
fi
echo "build-image: building $IMAGE on $BASE"
# The legacy builder: the Engine here has no BuildKit client (buildx); both read .dockerignore.
if ! DOCKER_BUILDKIT=0 docker build -q -f docker/Dockerfile --build-arg "BASE=$BASE" \
	--label sidecar-test=1 --label "sidecar.base=$BASE" -t "$IMAGE" . >"$log" 2>&1; then
	tail -n 40 "$log" >&2
	echo "build-image: docker build failed (its last lines above)" >&2
	exit 1
fi
size=$(docker image inspect -f '{{ .Size }}' "$IMAGE" | awk '{ printf "%.0f MB", $1 / 1e6 }')
echo "build-image: built $IMAGE ($size, $((SECONDS - t0))s)"
