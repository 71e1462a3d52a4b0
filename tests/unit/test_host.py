"""HostDiscovery's folding, with scripted sources: the Engine-outage grace, the static file's
error."""

from __future__ import annotations

import asyncio
import time

from sidecar.adapters.static import StaticSnapshot
from sidecar.host import HostDiscovery, SourceEnded
from sidecar.state.discovery import (
    CheckSpec,
    CheckType,
    ContainerFacts,
    ContainerListing,
    DiscoveryPolicy,
    EngineUnreachable,
    Observed,
    Rejected,
)
from sidecar.state.model import Status
from tests.builders import service as record

POLICY = DiscoveryPolicy(hostname="vm", advertise_ip="127.0.0.1")
FACTS = ContainerFacts(
    id="abcdef123456" + "0" * 52,
    name="/web",
    image="web:1",
    created=0,
    labels={"ServiceName": "web", "HealthCheck": "AlwaysSuccessful"},
)


class ScriptedDocker:
    """Stands in for DockerDiscovery: a listing, then the Engine goes away for good."""

    async def run(self, out: asyncio.Queue) -> None:
        await out.put(ContainerListing((FACTS,), at=time.time_ns()))
        await asyncio.sleep(0.2)
        await out.put(EngineUnreachable(since=time.time_ns()))
        await asyncio.Event().wait()


def test_services_survive_a_short_outage_and_go_once_the_grace_is_over():
    grace = 0.5

    async def scenario() -> list[tuple[float, int]]:
        host = HostDiscovery(POLICY, docker=ScriptedDocker(), grace=int(grace * 1e9))
        began = time.monotonic()
        seen: list[tuple[float, int]] = []
        async with host.running() as out, asyncio.timeout(5):
            while not seen or seen[-1][1] != 0 or len(seen) < 3:
                observation = await out.get()
                seen.append((time.monotonic() - began, len(observation.services)))
        return seen

    seen = asyncio.run(scenario())
    counts = [count for _, count in seen]
    assert counts[0] == 0  # before the first listing
    assert 1 in counts  # served while the Engine answered, and through the outage
    gone_at = next(at for at, count in seen if count == 0 and at > 0.1)
    # The Engine went away at ~0.2 s; the services go at ~0.2 + grace, not before.
    assert 0.2 + grace - 0.05 <= gone_at <= 0.2 + grace + 1.0, seen


class CrashingDocker:
    """A Docker source with a bug: one listing, then it dies."""

    async def run(self, out: asyncio.Queue) -> None:
        await out.put(ContainerListing((FACTS,), at=time.time_ns()))
        await asyncio.sleep(0.1)
        raise KeyError("Labels")


def test_a_source_that_stops_stops_the_discovery_naming_it():
    async def scenario() -> tuple[list[int], BaseException | None]:
        host = HostDiscovery(POLICY, docker=CrashingDocker())
        out: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(host.run(out))
        async with asyncio.timeout(5):
            await asyncio.wait([task])
        counts = []
        while not out.empty():
            counts.append(len(out.get_nowait().services))
        return counts, task.exception()

    counts, error = asyncio.run(scenario())
    assert 1 in counts  # it served what the source saw while it ran
    assert isinstance(error, SourceEnded)
    assert str(error) == "Docker discovery stopped: KeyError('Labels')"
    assert isinstance(error.__cause__, KeyError)


class ScriptedStatic:
    """Stands in for StaticDiscovery: a good file, a broken one (last good kept), fixed."""

    def __init__(self) -> None:
        self.break_it = asyncio.Event()
        self.fix_it = asyncio.Event()

    async def run(self, out: asyncio.Queue) -> None:
        service = record(
            "vm",
            "0123456789ab",
            name="static-web",
            image="img",
            ports=(),
            at=0,
            created=0,
            status=Status.UNKNOWN,
        )
        good = (Observed(service, CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "")),)
        refused = (Rejected("ba9876543210", "bad\nname", "target 1.Service.Name ..."),)
        await out.put(StaticSnapshot(good, refused))
        await self.break_it.wait()
        await out.put(StaticSnapshot(good, refused, "static.json is 9 bytes, more than ..."))
        await self.fix_it.wait()
        await out.put(StaticSnapshot(good, refused))
        await asyncio.Event().wait()


def test_the_static_files_error_is_carried_until_it_is_fixed():
    async def scenario() -> list[tuple[tuple[str, ...], int, str | None]]:
        static = ScriptedStatic()
        host = HostDiscovery(POLICY, static=static)
        seen = []
        async with host.running() as out, asyncio.timeout(5):
            while len(seen) < 4:
                observation = await out.get()
                seen.append(
                    (
                        tuple(s.name for s in observation.services),
                        len(observation.rejected),
                        observation.static_error,
                    )
                )
                assert host.static_error == observation.static_error
                if observation.services:
                    static.break_it.set()
                if observation.static_error:
                    static.fix_it.set()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == ((), 0, None)  # before the first snapshot
    served = ("static-web",)
    assert seen[1:] == [
        (served, 1, None),
        (served, 1, "static.json is 9 bytes, more than ..."),  # the last good still served
        (served, 1, None),
    ]


class SteadyDocker:
    """A Docker source that lists FACTS once, then nothing changes."""

    async def run(self, out: asyncio.Queue) -> None:
        await out.put(ContainerListing((FACTS,), at=time.time_ns()))
        await asyncio.Event().wait()


def test_each_served_service_has_its_check_and_last_outcome():
    async def scenario() -> tuple[dict, dict]:
        host = HostDiscovery(POLICY, docker=SteadyDocker())
        async with host.running() as out, asyncio.timeout(5):
            observation = await out.get()
            while not observation.services:
                observation = await out.get()
            before = host.last_checks()  # served: its check is there (run or not yet)
            while observation.services[0].status is not Status.ALIVE:
                observation = await out.get()
            return before, host.last_checks()

    before, after = asyncio.run(scenario())
    spec = CheckSpec(type=CheckType.ALWAYS_SUCCESSFUL, args="")
    assert {k: v.spec for k, v in before.items()} == {"abcdef123456": spec}
    last = after["abcdef123456"]
    assert (last.spec, last.outcome.healthy) == (spec, True)
    assert 0 < last.at <= time.time_ns()


def test_an_observation_is_settled_once_every_source_reported_and_every_service_was_checked():
    async def scenario() -> list[tuple[bool, int, bool]]:
        host = HostDiscovery(POLICY, docker=SteadyDocker())
        seen = []
        async with host.running() as out, asyncio.timeout(5):
            while not seen or not seen[-1][0]:
                observation = await out.get()
                checked = all(last.outcome is not None for last in host.last_checks().values())
                seen.append((observation.settled, len(observation.services), checked))
            return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (False, 0, True)  # before Docker's first listing: not settled
    assert seen[-1] == (True, 1, True)  # listed, and its one service checked
    assert all(not settled for settled, _, _ in seen[:-1])


def test_a_host_without_services_is_settled_once_its_sources_reported():
    async def scenario() -> list[bool]:
        host = HostDiscovery(POLICY, docker=EmptyDocker())
        async with host.running() as out, asyncio.timeout(5):
            first = await out.get()
            second = await out.get()
        return [first.settled, second.settled]

    assert asyncio.run(scenario()) == [False, True]


class EmptyDocker:
    """A Docker source that lists no container, then nothing changes."""

    async def run(self, out: asyncio.Queue) -> None:
        await asyncio.sleep(0.05)
        await out.put(ContainerListing((), at=time.time_ns()))
        await asyncio.Event().wait()
