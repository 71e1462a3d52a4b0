"""Benchmark: from `docker run` of a healthy labelled container to its ALIVE observation.

    .venv/bin/python bench/discovery.py [--containers 20]

Needs a running Docker Engine and the local image `sidecar-test-busybox:latest`
(`bash scripts/build-test-image.sh`). Runs `sidecar.host.HostDiscovery`, the discovery the
daemon will run — `DockerDiscovery` (list + events) -> `observe_container` (labels) ->
`CheckRunner` (the default HttpGet check, first run at once) -> `record_result` — and, one
container at a time, measures the time from `docker run` returning (the container started;
busybox httpd answers within milliseconds) to the pipeline's first ALIVE for it. Prints
p50/p99/max over N containers. Target (issue 3): p50 <= 300 ms. The Go Sidecar polls Docker
every 1 s and first checks 3 s later: 3-6 s on this kind of machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import docker

from sidecar.adapters.docker import DockerDiscovery
from sidecar.host import HostDiscovery, HostObservation
from sidecar.state.discovery import DiscoveryPolicy
from sidecar.state.model import Status

IMAGE = "sidecar-test-busybox:latest"
POLICY = DiscoveryPolicy(hostname="bench", advertise_ip="127.0.0.1")


async def measure(count: int) -> list[tuple[float, float]]:
    out: asyncio.Queue[HostObservation] = asyncio.Queue()
    host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=3.0, check_timeout=1.0)
    alive_at: dict[str, float] = {}

    async def watch() -> None:
        while True:
            observation = await out.get()
            for service in observation.services:
                if service.status is Status.ALIVE:
                    alive_at.setdefault(service.id, time.perf_counter())

    tasks = [asyncio.create_task(host.run(out)), asyncio.create_task(watch())]
    client = docker.from_env()
    latencies: list[tuple[float, float]] = []
    try:
        await asyncio.sleep(0.5)  # the initial listing
        for index in range(count):
            called = time.perf_counter()
            container = await asyncio.to_thread(
                client.containers.run,
                IMAGE,
                detach=True,
                publish_all_ports=True,
                labels={
                    "ServiceName": f"bench-{index}",
                    "ServicePort_80": "8080",
                    "sidecar-test": "1",
                },
            )
            started = time.perf_counter()
            service_id = container.id[:12]
            try:
                for _ in range(2500):
                    if service_id in alive_at:
                        break
                    await asyncio.sleep(0.002)
                else:
                    raise RuntimeError(f"container {service_id} never became ALIVE")
                alive = alive_at[service_id]
                latencies.append((max(alive - started, 0.0), alive - called))
            finally:
                await asyncio.to_thread(container.remove, force=True)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=20)
    count = parser.parse_args().containers
    pairs = asyncio.run(measure(count))
    print(f"ALIVE observation of a new container, over {count} containers:")
    for label, values in [
        ("after `docker run` returned (started)", sorted(a for a, _ in pairs)),
        (
            "after `docker run` was called (incl. Docker's own create+start)",
            sorted(b for _, b in pairs),
        ),
    ]:
        p50 = statistics.median(values) * 1000
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))] * 1000
        print(f"  {label}")
        print(f"    p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   max {values[-1] * 1000:7.1f} ms")
    print("  target: p50 <= 300 ms (from the container's start)")


if __name__ == "__main__":
    main()
