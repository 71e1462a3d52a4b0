"""`facts_from_container`: the Engine's JSON for a container -> `ContainerFacts`, unjudged.

The attrs below are what Docker 20.10 returned for a container of the test image run with
`-P`, a label and a HEALTHCHECK (captured from the real Engine, trimmed).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from typing import Any

from sidecar.adapters.docker import DockerDiscovery, facts_from_container, relevant_action
from sidecar.state.discovery import (
    ContainerFacts,
    DockerObservation,
    EngineUnreachable,
    PublishedPort,
)

CONTAINER_ID = "eb2409375e419514d22d29d0cb0c9036700b11f16ffb28b56f62dd8e45c58963"

INSPECTED: dict[str, Any] = {
    "Id": CONTAINER_ID,
    "Created": "2026-11-25T08:53:52.135309983Z",
    "Path": "httpd",
    "Args": ["-f", "-p", "80", "-h", "/www"],
    "State": {
        "Status": "running",
        "Running": True,
        "Pid": 19331,
        "StartedAt": "2026-11-25T08:53:52.414780167Z",
        "FinishedAt": "0001-01-01T00:00:00Z",
        "Health": {
            "Status": "healthy",
            "FailingStreak": 0,
            "Log": [
                {
                    "Start": "2026-11-25T08:53:52.915306901Z",
                    "End": "2026-11-25T08:53:52.955754886Z",
                    "ExitCode": 0,
                    "Output": "",
                }
            ],
        },
    },
    "Image": "sha256:c40459f9915636b190a376faed58d82e408818f22b41e5a2b391926a4bf32431",
    "Name": "/sc-scratch-1",
    "Config": {
        "Hostname": "eb2409375e41",
        "ExposedPorts": {"443/tcp": {}, "80/tcp": {}, "53/udp": {}},
        "Env": ["PATH=/bin"],
        "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 500000000, "Retries": 1},
        "Image": "sidecar-test-busybox:latest",
        "Labels": {"ServicePort_80": "8080", "sidecar-test": "1"},
    },
    "NetworkSettings": {
        "Ports": {
            "443/tcp": [
                {"HostIp": "0.0.0.0", "HostPort": "32768"},
                {"HostIp": "::", "HostPort": "32768"},
            ],
            "80/tcp": [
                {"HostIp": "0.0.0.0", "HostPort": "32769"},
                {"HostIp": "::", "HostPort": "32769"},
            ],
            # Exposed but not published: the Engine lists it with no bindings.
            "53/udp": None,
        },
    },
}

LISTED: dict[str, Any] = {
    "Id": CONTAINER_ID,
    "Names": ["/sc-scratch-1"],
    "Image": "sidecar-test-busybox:latest",
    "ImageID": "sha256:c40459f9915636b190a376faed58d82e408818f22b41e5a2b391926a4bf32431",
    "Command": "httpd -f -p 80 -h /www",
    "Created": 1795596832,
    "Ports": [
        {"IP": "0.0.0.0", "PrivatePort": 443, "PublicPort": 32768, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 443, "PublicPort": 32768, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32769, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 80, "PublicPort": 32769, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"},
    ],
    "Labels": {"ServicePort_80": "8080", "sidecar-test": "1"},
    "State": "running",
    "Status": "Up 1 second (healthy)",
}

PORTS = (
    PublishedPort(private_port=443, type="tcp", public_port=32768, host_ip="0.0.0.0"),
    PublishedPort(private_port=443, type="tcp", public_port=32768, host_ip="::"),
    PublishedPort(private_port=80, type="tcp", public_port=32769, host_ip="0.0.0.0"),
    PublishedPort(private_port=80, type="tcp", public_port=32769, host_ip="::"),
)


def test_an_inspected_container_gives_every_fact():
    assert facts_from_container(INSPECTED) == ContainerFacts(
        id=CONTAINER_ID,
        name="/sc-scratch-1",
        image="sidecar-test-busybox:latest",
        created=1_795_596_832_135_309_983,
        labels={"ServicePort_80": "8080", "sidecar-test": "1"},
        ports=PORTS,
        health="healthy",
    )


def test_ipv4_and_ipv6_duplicate_bindings_are_both_kept():
    ports = facts_from_container(INSPECTED).ports
    assert [(p.private_port, p.host_ip) for p in ports if p.public_port == 32769] == [
        (80, "0.0.0.0"),
        (80, "::"),
    ]


def test_an_unpublished_port_is_skipped():
    attrs = copy.deepcopy(INSPECTED)
    attrs["NetworkSettings"]["Ports"]["8000/tcp"] = []
    attrs["NetworkSettings"]["Ports"]["9000/tcp"] = [{"HostIp": "", "HostPort": ""}]
    ports = facts_from_container(attrs).ports
    assert {p.private_port for p in ports} == {80, 443}


def test_a_specific_host_ip_and_udp_are_kept_as_given():
    attrs = copy.deepcopy(INSPECTED)
    attrs["NetworkSettings"]["Ports"] = {
        "53/udp": [{"HostIp": "127.0.0.5", "HostPort": "5353"}],
        "8080/tcp": [{"HostIp": "", "HostPort": "18080"}],
    }
    assert facts_from_container(attrs).ports == (
        PublishedPort(private_port=53, type="udp", public_port=5353, host_ip="127.0.0.5"),
        PublishedPort(private_port=8080, type="tcp", public_port=18080, host_ip=""),
    )


def test_the_healthcheck_status_is_passed_on_and_none_without_one():
    starting = copy.deepcopy(INSPECTED)
    starting["State"]["Health"]["Status"] = "starting"
    assert facts_from_container(starting).health == "starting"

    unhealthy = copy.deepcopy(INSPECTED)
    unhealthy["State"]["Health"]["Status"] = "unhealthy"
    assert facts_from_container(unhealthy).health == "unhealthy"

    without = copy.deepcopy(INSPECTED)
    del without["State"]["Health"]
    del without["Config"]["Healthcheck"]
    assert facts_from_container(without).health is None


def test_created_keeps_the_nanoseconds_and_any_offset_is_resolved():
    attrs = copy.deepcopy(INSPECTED)
    attrs["Created"] = "2026-11-25T09:53:52.000000001+01:00"
    assert facts_from_container(attrs).created == 1_795_596_832_000_000_001


def test_the_image_is_the_name_the_user_ran_not_the_sha():
    assert facts_from_container(INSPECTED).image == "sidecar-test-busybox:latest"


def test_no_labels_and_no_ports_give_empty_facts():
    attrs = copy.deepcopy(INSPECTED)
    attrs["Config"]["Labels"] = None
    attrs["NetworkSettings"]["Ports"] = {}
    facts = facts_from_container(attrs)
    assert facts.labels == {}
    assert facts.ports == ()


def test_a_list_entry_gives_the_same_facts_but_seconds_and_no_health():
    facts = facts_from_container(LISTED)
    inspected = facts_from_container(INSPECTED)
    assert facts.id == inspected.id
    assert facts.name == inspected.name
    assert facts.image == inspected.image
    assert facts.labels == inspected.labels
    assert facts.ports == inspected.ports
    assert facts.created == 1_795_596_832_000_000_000
    assert facts.health is None


def test_relevant_actions_include_health_status_with_its_suffix():
    for action in ("start", "die", "stop", "destroy", "rename", "health_status: healthy"):
        assert relevant_action(action), action
    for action in ("create", "kill", "attach", "exec_start: sh", "resize", "top"):
        assert not relevant_action(action), action


def test_an_unreachable_engine_is_reported_once_and_never_as_an_empty_snapshot(tmp_path, caplog):
    """No Engine at all (a socket path that does not exist): one EngineUnreachable with the
    injected clock's time, retries with backoff, no listing, and cancel stops it at once."""
    clock = iter(range(1_000, 10**9, 1_000))
    discovery = DockerDiscovery(
        base_url=f"unix://{tmp_path}/no-such.sock", clock=lambda: next(clock), backoff_cap=0.05
    )

    async def scenario() -> list[DockerObservation]:
        out: asyncio.Queue[DockerObservation] = asyncio.Queue()
        task = asyncio.create_task(discovery.run(out))
        await asyncio.sleep(0.5)  # about ten retries
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=1)
        return [out.get_nowait() for _ in range(out.qsize())]

    emitted = asyncio.run(scenario())
    assert emitted == [EngineUnreachable(since=1_000)]
    warnings = [r for r in caplog.records if r.name == "sidecar.docker"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
