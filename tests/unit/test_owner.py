"""The state owner (`sidecar.owner`) over a host alone: its clock, its sinks, its readers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial

from sidecar.owner import SoloNode, StateOwner
from sidecar.state.model import ChangeEvent, ClusterState, Status
from sidecar.state.times import seconds
from tests import builders
from tests.builders import T0

service = partial(builders.service, "me", ports=((30001, 8080),), ip="10.0.0.1", at=0)


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Sink:
    """What the owner handed its sink: each state, and the events of each change."""

    def __init__(self) -> None:
        self.states: list[ClusterState] = []
        self.events: list[list[str]] = []

    def __call__(self, state: ClusterState, events: Sequence[ChangeEvent]) -> None:
        self.states.append(state)
        self.events.append([f"{e.service.id} {e.service.status.label()}" for e in events])


def solo(clock: Clock) -> tuple[StateOwner, Sink]:
    sink = Sink()
    return StateOwner(SoloNode("me", "default", "10.0.0.1", clock=clock), [sink]), sink


def test_observations_are_stamped_with_the_clock_given_and_each_change_reaches_the_sinks():
    clock = Clock(T0)
    owner, sink = solo(clock)
    owner.observe([service("a1"), service("b2", status=Status.UNHEALTHY)])
    assert {(r.id, r.updated) for r in owner.state().own_records()} == {("a1", T0), ("b2", T0)}
    assert sink.states == [owner.state()]
    assert sorted(sink.events[0]) == ["a1 Alive", "b2 Unhealthy"]
    assert (owner.merges, dict(owner.events)) == (1, {"Alive": 1, "Unhealthy": 1})
    owner.observe([service("a1"), service("b2", status=Status.UNHEALTHY)])
    assert len(sink.states) == 1  # nothing changed: no sink called
    clock.now = T0 + seconds(2)
    owner.observe([service("a1")])
    assert owner.state().get("me", "b2").status is Status.TOMBSTONE
    assert owner.state().get("me", "b2").updated == T0 + seconds(2)
    assert sink.events[1:] == [["b2 Tombstone"]]
    assert owner.events["Tombstone"] == 1


def test_a_drain_returns_the_drained_record_and_none_for_an_unknown_id():
    clock = Clock(T0)
    owner, sink = solo(clock)
    owner.observe([service("a1")])
    clock.now = T0 + seconds(1)
    assert owner.drain("nope") is None
    assert len(sink.states) == 1
    drained = owner.drain("a1")
    assert drained is not None
    assert (drained.status, drained.updated) == (Status.DRAINING, T0 + seconds(1))
    assert sink.states[-1].get("me", "a1") == drained
    assert sink.events[-1] == ["a1 Draining"]


def test_the_tick_expires_with_the_clock_given():
    clock = Clock(T0)
    owner, sink = solo(clock)
    owner.observe([service("a1")])
    clock.now = T0 + seconds(1)
    owner.tick()
    assert len(sink.states) == 1
    assert owner.state().get("me", "a1").status is Status.ALIVE


def test_a_host_alone_is_its_only_member():
    owner, _ = solo(Clock(T0))
    [me] = owner.node.members()
    assert (me.name, me.state, me.address, me.last_change) == ("me", "alive", "10.0.0.1", None)


def test_a_slow_reader_of_changes_skips_to_the_newest_state():
    clock = Clock(T0)
    owner, _ = solo(clock)

    async def scenario() -> list[set[str]]:
        changes = owner.changes()
        first = await anext(changes)
        owner.observe([service("a1")])
        clock.now += seconds(1)
        owner.observe([service("a1"), service("b2")])
        second = await anext(changes)  # two changes happened: only the newest is seen
        waiting = asyncio.create_task(anext(changes))
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing new: it waits
        clock.now += seconds(1)
        owner.observe([service("b2")])
        third = await asyncio.wait_for(waiting, 5)
        return [
            {r.id for r in s.records() if r.status is Status.ALIVE} for s in (first, second, third)
        ]

    assert asyncio.run(scenario()) == [set(), {"a1", "b2"}, {"b2"}]
