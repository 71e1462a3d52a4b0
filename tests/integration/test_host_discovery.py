"""This host's discovery end to end: real containers -> labels -> real checks -> records."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from sidecar.adapters.docker import DockerDiscovery
from sidecar.host import HostDiscovery, HostObservation
from sidecar.state import discovery
from sidecar.state.discovery import CheckType, DiscoveryPolicy
from sidecar.state.model import Port, Status

pytestmark = pytest.mark.docker

POLICY = DiscoveryPolicy(hostname="test-host", advertise_ip="127.0.0.1")


async def next_matching(queue, predicate, *, within):
    """Return the first HostObservation from `queue` for which `predicate` holds."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            item: HostObservation = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            break
        if predicate(item):
            return item
    raise AssertionError(f"no matching observation within {within} s")


def by_id(observation, container):
    return next((s for s in observation.services if s.id == container.id[:12]), None)


def test_labelled_containers_are_served_checked_rejected_and_dropped(
    docker_client, test_image, run_container
):
    async def scenario():
        host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=1.0)
        async with host.running() as out:
            good = await asyncio.to_thread(
                run_container,
                test_image,
                labels={
                    "ServiceName": "web",
                    "ServicePort_80": "8080",
                    "ServicePort_443": "8443",
                    "HealthCheck": "HttpGet",
                    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/",
                    "ProxyMode": "http",
                },
                publish_all_ports=True,
            )
            bad = await asyncio.to_thread(
                run_container,
                test_image,
                labels={"ServiceName": "evil", "ProxyMode": "udp"},
                publish_all_ports=True,
            )
            await asyncio.to_thread(good.reload)
            published = {
                key: int(bindings[0]["HostPort"])
                for key, bindings in good.attrs["NetworkSettings"]["Ports"].items()
            }
            alive = await next_matching(
                out,
                lambda o: (s := by_id(o, good)) is not None and s.status is Status.ALIVE,
                within=10,
            )
            service = by_id(alive, good)
            assert service.name == "web"
            assert service.hostname == "test-host"
            assert service.proxy_mode == "http"
            assert service.image == test_image
            assert service.ports == (
                Port(type="tcp", port=published["80/tcp"], service_port=8080, ip="127.0.0.1"),
                Port(type="tcp", port=published["443/tcp"], service_port=8443, ip="127.0.0.1"),
            )
            assert host.check_for(service.id).type is CheckType.HTTP_GET
            assert host.check_for(service.id).args == (f"http://127.0.0.1:{published['80/tcp']}/")
            rejected = (
                next((r for r in alive.rejected if r.id == bad.id[:12]), None)
                or (
                    await next_matching(
                        out, lambda o: any(r.id == bad.id[:12] for r in o.rejected), within=5
                    )
                ).rejected[0]
            )
            assert "label ProxyMode='udp' is not one of http, tcp, ws" in rejected.reason
            assert by_id(alive, bad) is None

            stopped_at = time.monotonic()
            await asyncio.to_thread(good.stop, timeout=1)
            returned = time.monotonic()
            await next_matching(out, lambda o: by_id(o, good) is None, within=5)
            gone = time.monotonic()
            print(
                f"gone {1000 * (gone - returned):.0f} ms after stop() returned "
                f"({1000 * (gone - stopped_at):.0f} ms after it was called)"
            )
            assert gone - returned < 1.0

    asyncio.run(scenario())


def test_a_container_that_fails_its_check_is_unhealthy(docker_client, test_image, run_container):
    async def scenario():
        host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=0.5)
        async with host.running() as out:
            sick = await asyncio.to_thread(
                run_container,
                test_image,
                labels={
                    "ServiceName": "sick",
                    "ServicePort_80": "8080",
                    "HealthCheck": "HttpGet",
                    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/no-such-page",
                },
                publish_all_ports=True,
            )
            await next_matching(
                out,
                lambda o: (s := by_id(o, sick)) is not None and s.status is Status.UNHEALTHY,
                within=10,
            )

    asyncio.run(scenario())


def test_opt_out_image_fallback_and_regex_namer_on_real_containers(
    docker_client, test_image, run_container
):
    namer = discovery.regex_namer(r"^/sc-test-(.+)-named-[0-9]+$")

    async def scenario():
        policy = DiscoveryPolicy(hostname="test-host", advertise_ip="127.0.0.1", namer=namer)
        host = HostDiscovery(policy, docker=DockerDiscovery(), check_interval=1.0)
        async with host.running() as out:
            hidden = await asyncio.to_thread(
                run_container, test_image, labels={"SidecarDiscover": "FALSE"}
            )
            unnamed = await asyncio.to_thread(run_container, test_image)
            named = await asyncio.to_thread(
                run_container, test_image, name=f"sc-test-{uuid.uuid4().hex[:6]}-named-1"
            )
            found = await next_matching(
                out,
                lambda o: by_id(o, unnamed) is not None and by_id(o, named) is not None,
                within=10,
            )
            assert by_id(found, unnamed).name == test_image  # no match: the image name
            assert by_id(found, named).name == named.name.split("-named-")[0][len("sc-test-") :]
            assert by_id(found, hidden) is None
            assert all(r.id != hidden.id[:12] for r in found.rejected)

    asyncio.run(scenario())


SEED_LABELS = {  # ../shared/seed/docker-README.md, "Testing", run with -P
    "HealthCheck": "HttpGet",
    "ServicePort_80": "8080",
    "ServicePort_443": "8443",
    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/",
}


def test_the_seed_example_and_bad_labels_side_by_side(docker_client, test_image, run_container):
    bad_labels = {
        "port": ({"ServicePort_80": "eighty"}, "label ServicePort_80='eighty' is not a port"),
        "mode": ({"ProxyMode": "https"}, "label ProxyMode='https' is not one of"),
        "name": ({"ServiceName": "web\nlisten evil"}, "contains a control character"),
        "template": (
            {"HealthCheck": "HttpGet", "HealthCheckArgs": "{{ .Name }}"},
            "is not one of {{ host }}",
        ),
        "external": (
            {"HealthCheck": "External", "HealthCheckArgs": "/bin/true"},
            "external checks disabled",
        ),
    }

    async def scenario():
        host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=1.0)
        async with host.running() as out:
            seed = await asyncio.to_thread(
                run_container, test_image, labels=SEED_LABELS, publish_all_ports=True
            )
            bad = {
                key: await asyncio.to_thread(
                    run_container, test_image, labels=labels, publish_all_ports=True
                )
                for key, (labels, _) in bad_labels.items()
            }
            published = {
                key: int(bindings[0]["HostPort"])
                for key, bindings in seed.attrs["NetworkSettings"]["Ports"].items()
            }
            found = await next_matching(
                out,
                lambda o: (
                    (s := by_id(o, seed)) is not None
                    and s.status is Status.ALIVE
                    and len(o.rejected) == len(bad)
                ),
                within=10,
            )
            service = by_id(found, seed)
            # What the Go Sidecar produces for it, minus its duplicate "::" ports.
            assert service.name == test_image
            assert service.image == test_image
            assert service.proxy_mode == "http"
            assert service.ports == (
                Port(type="tcp", port=published["80/tcp"], service_port=8080, ip="127.0.0.1"),
                Port(type="tcp", port=published["443/tcp"], service_port=8443, ip="127.0.0.1"),
            )
            assert host.check_for(service.id).args == (f"http://127.0.0.1:{published['80/tcp']}/")
            reasons = {r.id: r.reason for r in found.rejected}
            for key, (_, reason) in bad_labels.items():
                assert reason in reasons[bad[key].id[:12]], (key, reasons)
                assert by_id(found, bad[key]) is None

    asyncio.run(scenario())


def test_docker_healthcheck_is_the_check_without_a_label(docker_client, test_image, run_container):
    async def scenario():
        host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=5.0)
        async with host.running() as out:
            healthy = await asyncio.to_thread(
                run_container,
                test_image,
                labels={"ServiceName": "dhc"},
                healthcheck={"test": ["CMD", "true"], "interval": 300_000_000, "retries": 1},
            )
            sick = await asyncio.to_thread(
                run_container,
                test_image,
                labels={"ServiceName": "dhc-sick"},
                healthcheck={"test": ["CMD", "false"], "interval": 300_000_000, "retries": 1},
            )
            found = await next_matching(
                out,
                lambda o: (
                    (a := by_id(o, healthy)) is not None
                    and a.status is Status.ALIVE
                    and (b := by_id(o, sick)) is not None
                    and b.status is Status.UNHEALTHY
                ),
                within=15,
            )
            assert host.check_for(by_id(found, healthy).id).type is CheckType.DOCKER

    asyncio.run(scenario())


def test_a_burst_of_starts_and_removals_is_followed(docker_client, test_image, run_container):
    count = 8
    run = uuid.uuid4().hex[:8]

    async def scenario():
        host = HostDiscovery(POLICY, docker=DockerDiscovery(), check_interval=5.0)
        async with host.running() as out:
            containers = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        run_container,
                        test_image,
                        labels={"ServiceName": f"burst-{i}", "HealthCheck": "AlwaysSuccessful"},
                        name=f"sc-test-burst-{run}-{i}",  # the factory's names are sequential
                    )
                    for i in range(count)
                )
            )
            ids = {c.id[:12] for c in containers}
            await next_matching(
                out,
                lambda o: ids <= {s.id for s in o.services if s.status is Status.ALIVE},
                within=10,
            )
            removed = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(c.remove, force=True) for c in containers))
            await next_matching(out, lambda o: not ids & {s.id for s in o.services}, within=10)
            took = 1000 * (time.monotonic() - removed)
            print(f"all {count} gone {took:.0f} ms after the removals began")

    asyncio.run(scenario())
