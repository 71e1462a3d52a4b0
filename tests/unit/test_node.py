"""The core's one node protocol (`sidecar.state.node`): examples of each step."""

from __future__ import annotations

from sidecar.state import node
from sidecar.state.model import Status
from sidecar.state.times import seconds
from tests import builders
from tests.builders import T0


def service(sid="a1", *, host="me", status=Status.ALIVE, updated=0):
    return builders.service(
        host, sid, ports=((30001, 8080),), ip="10.0.0.1", at=updated, status=status
    )


def test_a_new_service_is_stamped_and_sent_at_once():
    step = node.observe(node.Node.start("me"), [service()], now=T0)
    assert step.changed
    assert [(e.service.id, e.service.status) for e in step.events] == [("a1", Status.ALIVE)]
    assert [(r.id, r.updated) for r in step.send] == [("a1", T0)]  # the eager push
    again = node.observe(step.node, [service()], now=T0 + 10)
    assert not again.changed
    assert again.send == ()  # nothing new: the repeat waits for its second


def test_ticks_repeat_a_change_then_fall_quiet():
    step = node.observe(node.Node.start("me"), [service()], now=T0)
    sent = []
    current = step.node
    for k in range(1, 8):
        step = node.tick(current, now=T0 + seconds(k))
        current = step.node
        sent.extend(step.send)
    assert [r.updated - T0 for r in sent] == [50, 100, 150, 200]  # 4 repeats after the first


def test_a_stopped_service_becomes_a_tombstone_sent_twice_per_batch():
    first = node.observe(node.Node.start("me"), [service()], now=T0)
    step = node.observe(first.node, [], now=T0 + seconds(1))
    assert [e.service.status for e in step.events] == [Status.TOMBSTONE]
    assert [r.status for r in step.send] == [Status.TOMBSTONE, Status.TOMBSTONE]


def test_news_from_a_peer_is_relayed_once_and_old_news_not_at_all():
    theirs = service("b2", host="peer", updated=T0)
    step = node.receive(node.Node.start("me"), [theirs], now=T0)
    assert step.send == (theirs,)
    again = node.receive(step.node, [theirs], now=T0 + 1)
    assert not again.changed
    assert again.send == ()


def test_a_peers_tombstone_about_a_service_that_runs_here_is_outvoted():
    running = node.observe(node.Node.start("me"), [service()], now=T0).node
    forged = service(status=Status.TOMBSTONE, updated=T0 + seconds(5))
    step = node.receive(running, [forged], now=T0 + seconds(1))
    own = step.node.state.get("me", "a1")
    assert own.status is Status.ALIVE
    assert own.updated > forged.updated


def test_a_dead_peers_services_are_tombstoned_announced_and_stay_dead():
    theirs = service("b2", host="peer", updated=T0)
    known = node.receive(node.Node.start("me"), [theirs], now=T0).node
    step = node.peer_died(known, "peer", now=T0 + seconds(1))
    assert [r.status for r in step.wrote] == [Status.TOMBSTONE]
    assert step.node.state.get("peer", "b2").status is Status.TOMBSTONE
    announced = node.tick(step.node, now=T0 + seconds(1))
    assert [(r.hostname, r.status) for r in announced.send] == [("peer", Status.TOMBSTONE)]
    # A late relay of a record it stamped before its death (a repeat: +50 ns) does not
    # bring it back.
    late = node.receive(announced.node, [theirs.with_updated(T0 + 50)], now=T0 + seconds(2))
    assert late.node.state.get("peer", "b2").status is Status.TOMBSTONE
    back = node.peer_back(late.node, "peer")
    assert back.dead_peers == {}


def test_a_late_relay_of_a_dead_peers_record_is_buried_whatever_comes_with_it():
    # Only the hosts of a step's records are looked at again: each of them, in any order.
    theirs = service("b2", host="peer", updated=T0)
    known = node.receive(node.Node.start("me"), [theirs], now=T0).node
    dead = node.peer_died(known, "peer", now=T0 + seconds(5)).node
    other = service("c3", host="other", updated=T0 + seconds(6))
    # Stamped before the death but after what the burial wrote (T0 + 1 s): merged, then
    # buried again.
    late = theirs.with_updated(T0 + seconds(3))
    for batch in ([other, late], [late, other]):
        step = node.receive(dead, batch, now=T0 + seconds(6))
        assert step.node.state.get("peer", "b2").status is Status.TOMBSTONE
        assert step.node.state.get("other", "c3").status is Status.ALIVE
    quiet = node.receive(dead, [other], now=T0 + seconds(6))
    assert quiet.wrote == ()  # nothing of the dead peer's is buried again


def test_a_dead_peer_back_with_records_stamped_after_its_death_is_believed_at_once():
    # A restarted host's join push/pull reaches us before its refutation does: its fresh
    # records stand (burying them made the owner outvote each burial, for seconds).
    theirs = service("b2", host="peer", updated=T0)
    known = node.receive(node.Node.start("me"), [theirs], now=T0).node
    dead = node.peer_died(known, "peer", now=T0 + seconds(5)).node
    assert dead.state.get("peer", "b2").status is Status.TOMBSTONE
    restarted = service("b2", host="peer", updated=T0 + seconds(9))
    step = node.receive_state(
        dead,
        node.receive(node.Node.start("peer"), [restarted], now=T0 + seconds(9)).node.state,
        now=T0 + seconds(9),
    )
    assert step.node.state.get("peer", "b2") == restarted
    assert [r.status for r in step.send] == [Status.ALIVE]  # relayed as any news


def test_a_node_never_declares_itself_dead():
    running = node.observe(node.Node.start("me"), [service()], now=T0).node
    step = node.peer_died(running, "me", now=T0 + 1)
    assert step.node is running
    assert not step.changed


def test_a_push_pull_state_is_merged_and_its_news_relayed():
    peer = node.observe(node.Node.start("peer"), [service("b2", host="peer")], now=T0).node
    step = node.receive_state(node.Node.start("me"), peer.state, now=T0 + 1)
    assert [r.id for r in step.send] == ["b2"]
    assert step.node.state.get("peer", "b2") is not None


def test_a_drain_is_announced_at_once_and_an_unknown_id_is_none():
    running = node.observe(node.Node.start("me"), [service()], now=T0).node
    step = node.drain(running, "a1", now=T0 + seconds(2))
    assert step is not None
    assert [r.status for r in step.send] == [Status.DRAINING]
    assert node.drain(running, "nope", now=T0) is None


def test_expiry_tombstones_are_written_and_announced_by_the_tick():
    theirs = service("b2", host="peer", updated=T0)
    known = node.receive(node.Node.start("me"), [theirs], now=T0).node
    step = node.tick(known, now=T0 + seconds(81))
    assert [(r.id, r.status) for r in step.wrote] == [("b2", Status.TOMBSTONE)]
    assert [(r.id, r.status) for r in step.send] == [("b2", Status.TOMBSTONE)]


def test_a_drain_lasts_while_the_service_passes_its_checks_and_ends_when_it_fails():
    step = node.observe(node.Node.start("me"), [service()], now=T0)
    drained = node.drain(step.node, "a1", now=T0 + 1)
    assert drained is not None
    current = node.observe(drained.node, [service()], now=T0 + seconds(40)).node
    assert current.state.get("me", "a1").status is Status.DRAINING
    current = node.observe(current, [service(status=Status.UNHEALTHY)], now=T0 + seconds(41)).node
    current = node.observe(current, [service()], now=T0 + seconds(42)).node
    assert current.state.get("me", "a1").status is Status.ALIVE
    assert current.drained == frozenset()


def test_a_drain_outlives_what_peers_wrote_of_the_record_meanwhile():
    # A partition: the peers declared this host dead and tombstoned its services.
    step = node.observe(node.Node.start("me"), [service()], now=T0)
    current = node.drain(step.node, "a1", now=T0 + 1).node
    tombstone = service(status=Status.TOMBSTONE, updated=T0 + seconds(20))
    current = node.receive(current, [tombstone], now=T0 + seconds(21)).node
    current = node.observe(current, [service()], now=T0 + seconds(22)).node
    assert current.state.get("me", "a1").status is Status.DRAINING


def test_a_restarted_node_takes_the_clusters_drain_of_a_service_it_sees_first():
    before_restart = service(status=Status.DRAINING, updated=T0)
    current = node.receive_state(
        node.Node.start("me"),
        node.receive(node.Node.start("peer"), [before_restart], now=T0).node.state,
        now=T0 + 1,
    ).node
    current = node.observe(current, [service()], now=T0 + seconds(1)).node
    assert current.state.get("me", "a1").status is Status.DRAINING
    # A DRAINING said of a service this node already runs is not a drain of its own.
    other = node.observe(node.Node.start("me"), [service("b2")], now=T0).node
    said = service("b2", status=Status.DRAINING, updated=T0 + seconds(1))
    other = node.receive(other, [said], now=T0 + seconds(2)).node
    other = node.observe(other, [service("b2")], now=T0 + seconds(3)).node
    assert other.state.get("me", "b2").status is Status.ALIVE
