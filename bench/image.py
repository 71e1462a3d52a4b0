"""Benchmark: the sidecar container image — its size, the time from `docker run` to its API
answering, and the time `docker stop` takes.

    .venv/bin/python bench/image.py [--runs 5] [--image sidecar:local]

Builds the image first with `scripts/build-image.sh IMAGE` (on the local debootstrap base,
built too when missing; a cached build takes a second). Then RUNS times, one after the other:
`docker run -d` with docker/run's flags (the Docker socket, `--label SidecarDiscover=false`,
`SIDECAR_SEEDS`, `--net=host`, `--cap-add NET_ADMIN`) and, as tests/integration/test_image.py
does, the API, gossip and HAProxy on fresh 127.0.0.x addresses and free stats ports; the time
from invoking the `docker` CLI to `GET /api/services.json` answering 200 (polled every 10 ms,
at most 30 s); then `docker stop` (Docker's 10 s bound) timed, and the container's exit code.

Targets (issue 13): image <= 160 MB; `docker run` -> API answering <= 2 s; `docker stop`
well inside Docker's 10 s (exit code 0, no SIGKILL).

Traffic goes to loopback only. Each container carries the labels sidecar-bench=image and this
run's id and is removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import statistics
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from daemon import Loopback
from procs import sigterm_as_interrupt

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "scripts" / "build-image.sh"
RUN_ID = uuid.uuid4().hex[:8]
LABELS = {"sidecar-bench": "image", "sidecar-bench-run": RUN_ID}
API_TIMEOUT = 30.0
POLL = 0.01
SIZE_TARGET_MB = 160.0
START_TARGET_S = 2.0


def api_answers(host: str, port: int) -> bool:
    """Return whether GET /api/services.json on a loopback address answers 200 now."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the benchmark only sends traffic to loopback, not to {host}")
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/api/services.json")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def docker(*args: str, timeout: float = 60.0) -> str:
    """Return the stdout of `docker ARGS`; raise naming the command when it fails."""
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout.strip()


@dataclass
class Figures:
    size_mb: float = 0.0
    build_s: float = 0.0
    start_s: list[float] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


def build(image: str) -> float:
    """Return the seconds scripts/build-image.sh took to build `image`."""
    t0 = time.monotonic()
    done = subprocess.run(
        ["bash", str(BUILD), image], capture_output=True, text=True, timeout=900, check=False
    )
    print(done.stdout.strip())
    if done.returncode != 0:
        raise SystemExit(f"{BUILD} failed:\n{done.stderr}")
    return time.monotonic() - t0


def one_run(image: str, loopback: Loopback, index: int, figures: Figures) -> None:
    """`docker run` as docker/run does, timed to the API answering; then `docker stop`."""
    ip = loopback.address(ports=(7777, 7946))
    name = f"sidecar-bench-image-{RUN_ID}-{index}"
    env = {
        "SIDECAR_SEEDS": ip,
        "ADVERTISE_IP": ip,
        "SIDECAR_HTTP_ADDRESS": f"{ip}:7777",
        "HAPROXY_BIND_IP": loopback.address(),
        "HAPROXY_STATS_PORT": str(loopback.port()),
        "HAPROXY_STATS_BACKEND_PORT": str(loopback.port()),
    }
    labels = [word for k, v in LABELS.items() for word in ("--label", f"{k}={v}")]
    environment = [word for k, v in env.items() for word in ("-e", f"{k}={v}")]
    t0 = time.monotonic()
    docker(
        "run", "-d", "--name", name, "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "--label", "SidecarDiscover=false", *labels, *environment,
        "--net=host", "--cap-add", "NET_ADMIN", image,
    )  # fmt: skip
    deadline = t0 + API_TIMEOUT
    while not api_answers(ip, 7777):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: no API on {ip}:7777 after {API_TIMEOUT:g}s")
        time.sleep(POLL)
    started = time.monotonic() - t0
    t0 = time.monotonic()
    docker("stop", "-t", "10", name, timeout=30)
    stopped = time.monotonic() - t0
    code = int(docker("inspect", "-f", "{{ .State.ExitCode }}", name))
    docker("rm", name)
    figures.start_s.append(started)
    figures.stop_s.append(stopped)
    figures.exit_codes.append(code)
    print(
        f"run {index + 1}: docker run -> API {started:.2f}s, "
        f"docker stop {stopped:.2f}s, exit {code}"
    )


def spread(values: Sequence[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, max {max(values):.2f} s (min {min(values):.2f})"


def report(image: str, figures: Figures) -> None:
    print()
    print(f"image {image}: {figures.size_mb:.0f} MB (target <= {SIZE_TARGET_MB:g} MB)")
    print(f"build (scripts/build-image.sh): {figures.build_s:.1f} s")
    print(f"docker run -> /api/services.json 200, {len(figures.start_s)} runs: ", end="")
    print(f"{spread(figures.start_s)} (target <= {START_TARGET_S:g} s)")
    print(f"docker stop: {spread(figures.stop_s)}; exit codes {sorted(set(figures.exit_codes))}")


def remove_containers() -> None:
    with contextlib.suppress(Exception):
        ids = docker("ps", "-aq", "--filter", f"label=sidecar-bench-run={RUN_ID}").split()
        if ids:
            docker("rm", "-f", *ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="docker runs timed (5)")
    parser.add_argument("--image", default="sidecar:local", help="tag built (sidecar:local)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be 1..100")
    figures = Figures()
    loopback = Loopback()
    try:
        with sigterm_as_interrupt():
            figures.build_s = build(args.image)
            figures.size_mb = int(docker("image", "inspect", "-f", "{{ .Size }}", args.image)) / 1e6
            for index in range(args.runs):
                one_run(args.image, loopback, index, figures)
            report(args.image, figures)
    except KeyboardInterrupt:
        print("interrupted; removing its containers", flush=True)
        raise SystemExit(130) from None
    finally:
        remove_containers()
    if any(figures.exit_codes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
