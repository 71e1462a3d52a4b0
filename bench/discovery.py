"""Benchmark: from `docker run` of a healthy labelled container to its ALIVE observation.

    .venv/bin/python bench/discovery.py [--containers 20]

Needs a running Docker Engine and the local image `sidecar-test-busybox:latest`
(`bash scripts/build-test-image.sh`). Runs the discovery pipeline the daemon will run —
`DockerDiscovery` (list + events) -> `observe_container` (labels) -> `CheckRunner` (the
default HttpGet check, first run at once) -> `record_result` (thresholds) — and, one
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

from sidecar.adapters.checks import CheckRunner
from sidecar.adapters.docker import DockerDiscovery, Snapshot
from sidecar.state import discovery
from sidecar.state.discovery import DiscoveryPolicy, Health, Observed
from sidecar.state.model import Status

IMAGE = "sidecar-test-busybox:latest"
POLICY = DiscoveryPolicy(hostname="bench", advertise_ip="127.0.0.1")


async def measure(count: int) -> list[tuple[float, float]]:
    docker_queue: asyncio.Queue = asyncio.Queue()
    check_queue: asyncio.Queue = asyncio.Queue()
    runner = CheckRunner(check_queue, interval=3.0, timeout=1.0)
    source = asyncio.create_task(DockerDiscovery().run(docker_queue))
    health: dict[str, Health] = {}
    specs: dict[str, Observed] = {}
    alive_at: dict[str, float] = {}

    async def pipeline() -> None:
        async def from_docker() -> None:
            while True:
                item = await docker_queue.get()
                if not isinstance(item, Snapshot):
                    continue
                observed = [discovery.observe_container(f, POLICY) for f in item.containers]
                specs.clear()
                specs.update({o.service.id: o for o in observed if isinstance(o, Observed)})
                runner.update(
                    {sid: o.check for sid, o in specs.items()},
                    {discovery.short_id(f.id): f.health for f in item.containers},
                )

        async def from_checks() -> None:
            while True:
                service_id, outcome, _ = await check_queue.get()
                if outcome.healthy is None or service_id not in specs:
                    continue
                check = specs[service_id].check
                health[service_id] = discovery.record_result(
                    health.get(service_id, Health()),
                    healthy=outcome.healthy,
                    rise=check.rise,
                    fall=check.fall,
                )
                if health[service_id].status is Status.ALIVE:
                    alive_at.setdefault(service_id, time.perf_counter())

        await asyncio.gather(from_docker(), from_checks())

    work = asyncio.create_task(pipeline())
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
                for _ in range(500):
                    if service_id in alive_at:
                        break
                    await asyncio.sleep(0.002)
                else:
                    raise RuntimeError(f"container {service_id} never became ALIVE")
                latencies.append((alive_at[service_id] - started, alive_at[service_id] - called))
            finally:
                await asyncio.to_thread(container.remove, force=True)
    finally:
        work.cancel()
        source.cancel()
        await asyncio.gather(work, source, return_exceptions=True)
        await runner.close()
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
