"""The merge rule of sidecar-behaviour.md §2.3 and the owner's rules of DESIGN.md 2-3."""

from __future__ import annotations

from functools import partial
from typing import Any

from sidecar.state import merge, node
from sidecar.state.model import ClusterState, Service, Status
from tests.builders import T0, S, cluster_state, service

ME = "me"


def record(
    *, host: str = "peer", sid: str = "abc123abc123", port: int = 32000, **fields: Any
) -> Service:
    """Return a record of image `web:1` whatever its name, created 100 s before T0."""
    return service(host, sid, image="web:1", ports=((port, 8080),), created=T0 - 100 * S, **fields)


state_with = partial(cluster_state, ME)


def test_unknown_id_is_stored_with_an_event_from_unknown_and_relayed():
    new = record(status=Status.TOMBSTONE)
    result = merge.merge_record(ClusterState(hostname=ME), new, now=T0)
    assert result.state.get("peer", new.id) == new
    assert [(e.service, e.previous_status, e.time) for e in result.events] == [
        (new, Status.UNKNOWN, new.updated)
    ]
    assert result.relay == (new,)


def test_strictly_newer_replaces_every_field_and_is_relayed():
    old = record(at=T0)
    new = record(at=T0 + 1, port=33000, name="web2")
    result = merge.merge_record(state_with(old), new, now=T0)
    assert result.state.get("peer", old.id) == new
    assert result.events == ()  # same status: no event
    assert result.relay == (new,)
    assert result.state.servers["peer"].last_updated == new.updated


def test_status_change_is_an_event_with_the_previous_status():
    result = merge.merge_record(
        state_with(record(at=T0)), record(at=T0 + 1, status=Status.UNHEALTHY), now=T0
    )
    (event,) = result.events
    assert (event.previous_status, event.service.status) == (Status.ALIVE, Status.UNHEALTHY)
    assert result.state.last_changed == T0 + 1
    assert result.state.servers["peer"].last_changed == T0 + 1


def test_older_record_is_ignored_and_not_relayed():
    state = state_with(record(at=T0 + 5, status=Status.ALIVE))
    result = merge.merge_record(state, record(at=T0, status=Status.TOMBSTONE), now=T0)
    assert result.state.get("peer", "abc123abc123") == state.get("peer", "abc123abc123")
    assert result.events == result.relay == ()


def test_a_tombstone_does_not_beat_a_newer_alive_record():
    state = state_with(record(at=T0 + 5))
    result = merge.merge_record(state, record(at=T0 + 4, status=Status.TOMBSTONE), now=T0)
    assert result.state.get("peer", "abc123abc123").status is Status.ALIVE


def test_equal_timestamps_are_decided_by_status_then_content_whatever_the_order():
    alive, tombstone = record(at=T0), record(at=T0, status=Status.TOMBSTONE)
    one = state_with(alive, tombstone).get("peer", alive.id)
    other = state_with(tombstone, alive).get("peer", alive.id)
    assert one == other == tombstone
    a, b = record(at=T0, port=1), record(at=T0, port=2)
    assert state_with(a, b).get("peer", a.id) == state_with(b, a).get("peer", a.id)


def test_same_record_twice_changes_nothing_the_second_time():
    state = state_with(record())
    result = merge.merge_record(state, record(), now=T0)
    assert result.state is state
    assert result.relay == result.events == ()


def test_a_newer_alive_is_taken_as_it_is_after_a_drain():
    # Owners keep their own drain (stamp): an ALIVE newer than a DRAINING means the owner
    # undid it. Go keeps DRAINING on receipt here, which a reordered or lost UNHEALTHY in
    # between turned into a drain that never ends.
    state = state_with(record(at=T0, status=Status.DRAINING))
    result = merge.merge_record(state, record(at=T0 + 10, port=33000), now=T0)
    shown = result.state.get("peer", "abc123abc123")
    assert shown.status is Status.ALIVE
    assert shown.updated == T0 + 10
    assert shown.ports[0].port == 33000
    assert [(e.previous_status, e.service.status) for e in result.events] == [
        (Status.DRAINING, Status.ALIVE)
    ]
    assert result.relay == (shown,)


def test_unhealthy_clears_draining_and_a_later_alive_is_alive_again():
    state = state_with(record(at=T0, status=Status.DRAINING))
    state = merge.merge_record(state, record(at=T0 + 1, status=Status.UNHEALTHY), now=T0).state
    assert state.get("peer", "abc123abc123").status is Status.UNHEALTHY
    state = merge.merge_record(state, record(at=T0 + 2), now=T0).state
    assert state.get("peer", "abc123abc123").status is Status.ALIVE


def test_a_drain_undone_at_its_owner_ends_everywhere_whatever_peers_missed():
    owner, peer = node.Node.start("owner"), node.Node.start("peer")
    alive = record(host="owner", at=T0)
    owner = node.observe(owner, [alive], now=T0).node
    peer = node.receive(peer, owner.state.own_records(), now=T0).node
    owner = node.drain(owner, alive.id, now=T0 + 1).node
    drained = list(owner.state.own_records())
    owner = node.observe(owner, [alive.with_status(Status.UNHEALTHY, updated=0)], now=T0 + 2).node
    owner = node.observe(owner, [alive], now=T0 + 3).node
    assert owner.state.get("owner", alive.id).status is Status.ALIVE
    # The peer got the drain and the ALIVE, never the UNHEALTHY in between.
    step = node.receive(peer, [*drained, *owner.state.own_records()], now=T0 + 4)
    assert step.node.state.get("owner", alive.id).status is Status.ALIVE
    # What it relays does not bring the drain back to its owner.
    owner = node.receive(owner, step.send, now=T0 + 5).node
    owner = node.observe(owner, [alive], now=T0 + 6).node
    assert owner.state.get("owner", alive.id).status is Status.ALIVE


def test_stale_records_are_dropped_from_every_source():
    now = T0 + merge.STALE_AFTER + 1
    for host in ("peer", ME):
        result = merge.merge_record(ClusterState(hostname=ME), record(host=host), now=now)
        assert result.state.servers == {}


def test_own_records_from_peers_are_stored_but_never_relayed():
    result = merge.merge_record(ClusterState(hostname=ME), record(host=ME), now=T0)
    assert result.state.get(ME, "abc123abc123") is not None
    assert result.relay == ()


def test_merge_state_takes_every_record_of_the_remote():
    remote = state_with(record(sid="a1"), record(host="other", sid="b1"))
    result = merge.merge_state(ClusterState(hostname=ME), remote, now=T0)
    assert {(r.hostname, r.id) for r in result.state.records()} == {
        ("peer", "a1"),
        ("other", "b1"),
    }
    assert len(result.relay) == 2


# ------------------------------------------------------------------------- own records


def observed(sid: str = "abc123abc123", *, status: Status = Status.ALIVE, port: int = 32000):
    return record(host=ME, sid=sid, at=0, status=status, port=port)


def test_stamp_stores_a_new_observation_at_now():
    result = merge.stamp(ClusterState(hostname=ME), [observed()], now=T0)
    assert result.state.get(ME, "abc123abc123").updated == T0
    assert [e.previous_status for e in result.events] == [Status.UNKNOWN]
    assert result.relay == ()


def test_stamp_leaves_an_unchanged_record_alone_until_it_needs_a_refresh():
    state = merge.stamp(ClusterState(hostname=ME), [observed()], now=T0).state
    again = merge.stamp(state, [observed()], now=T0 + S)
    assert again.state is state
    later = T0 + merge.REFRESH_AFTER
    refreshed = merge.stamp(state, [observed()], now=later).state
    assert refreshed.get(ME, "abc123abc123").updated == later


def test_owner_versions_strictly_increase_even_when_the_clock_does_not():
    state = merge.stamp(ClusterState(hostname=ME), [observed()], now=T0).state
    flipped = merge.stamp(state, [observed(status=Status.UNHEALTHY)], now=T0).state
    assert flipped.get(ME, "abc123abc123").updated == T0 + merge.OWNER_STEP
    back = merge.stamp(flipped, [observed()], now=T0 - S).state  # clock stepped back
    assert back.get(ME, "abc123abc123").updated == T0 + 2 * merge.OWNER_STEP


def test_stamp_tombstones_own_records_no_longer_observed():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a"), observed("b")], now=T0).state
    result = merge.stamp(state, [observed("a")], now=T0 + S)
    gone = result.state.get(ME, "b")
    assert (gone.status, gone.updated) == (Status.TOMBSTONE, T0 + S)
    assert [(e.service.id, e.previous_status) for e in result.events] == [("b", Status.ALIVE)]
    # and it stays a tombstone without new versions
    assert merge.stamp(result.state, [observed("a")], now=T0 + 2 * S).state is result.state


def test_owner_outvotes_what_peers_said_about_it():
    # A peer declared us dead while we were unreachable; we are back and still running.
    state = merge.stamp(ClusterState(hostname=ME), [observed()], now=T0).state
    tombstone = record(host=ME, at=T0 + 5 * S, status=Status.TOMBSTONE)
    state = merge.merge_record(state, tombstone, now=T0 + 5 * S).state
    state = merge.stamp(state, [observed()], now=T0 + S).state
    mine = state.get(ME, "abc123abc123")
    assert mine.status is Status.ALIVE
    assert mine.updated == T0 + 5 * S + merge.OWNER_STEP


def test_drain_marks_an_own_record_and_stamp_keeps_the_drained_ids_draining():
    state = merge.stamp(ClusterState(hostname=ME), [observed()], now=T0).state
    drained = merge.drain(state, "abc123abc123", now=T0 + S)
    assert drained is not None
    assert [e.service.status for e in drained.events] == [Status.DRAINING]
    kept = merge.stamp(drained.state, [observed()], now=T0 + 2 * S, drained={"abc123abc123"})
    assert kept.state.get(ME, "abc123abc123").status is Status.DRAINING
    undone = merge.stamp(drained.state, [observed()], now=T0 + 2 * S)
    assert undone.state.get(ME, "abc123abc123").status is Status.ALIVE
    assert merge.drain(state, "unknown", now=T0) is None
    assert merge.drain(state_with(record()), "abc123abc123", now=T0) is None  # not ours


# -------------------------------------------------------------------- expiry and death


def test_unheard_records_expire_to_tombstones_one_second_after_their_version():
    state = state_with(record(sid="a", at=T0), record(sid="d", at=T0, status=Status.DRAINING))
    result = merge.expire(state, now=T0 + merge.ALIVE_LIFESPAN + 1)
    expired = result.state.get("peer", "a")
    assert (expired.status, expired.updated) == (Status.TOMBSTONE, T0 + S)
    assert result.relay == (expired,)
    assert result.state.get("peer", "d").status is Status.DRAINING
    later = merge.expire(state, now=T0 + merge.DRAINING_LIFESPAN + 1).state
    assert later.get("peer", "d").status is Status.TOMBSTONE


def test_records_heard_within_their_lifespan_do_not_expire():
    state = state_with(record(at=T0))
    assert merge.expire(state, now=T0 + merge.ALIVE_LIFESPAN).state is state


def test_old_tombstones_and_empty_servers_are_deleted():
    state = state_with(
        record(sid="t", at=T0, status=Status.TOMBSTONE), record(host="x", sid="t", at=T0)
    )
    now = T0 + merge.TOMBSTONE_LIFESPAN + 1
    state = merge.expire(state, now=now).state
    assert "peer" not in state.servers
    assert state.get("x", "t").status is Status.TOMBSTONE  # expired just now, kept 3 h


def test_a_dead_node_has_every_live_record_tombstoned_newer_than_what_we_had():
    state = state_with(
        record(sid="a", at=T0 + 9 * S),
        record(sid="b", at=T0, status=Status.TOMBSTONE),
        record(host="other", sid="c"),
    )
    result = merge.tombstone_node(state, "peer", stamped_by=T0 + 10 * S)
    a = result.state.get("peer", "a")
    assert (a.status, a.updated) == (Status.TOMBSTONE, T0 + 9 * S + merge.EXPIRY_BUMP)
    assert result.state.get("peer", "b").updated == T0  # already a tombstone: untouched
    assert result.state.get("other", "c").status is Status.ALIVE
    assert result.relay == (a,)
    assert merge.tombstone_node(state, ME, stamped_by=T0).state is state


def test_every_live_record_of_a_dead_node_is_buried_whatever_its_status():
    live = [
        record(sid=f"s{i}", at=T0 + i * S, status=status, port=32000 + i)
        for i, status in enumerate(
            (Status.ALIVE, Status.UNHEALTHY, Status.DRAINING, Status.UNKNOWN, Status.ALIVE)
        )
    ]
    state = state_with(*live, now=T0 + 5 * S)
    result = merge.tombstone_node(state, "peer", stamped_by=T0 + 10 * S)
    buried = {r.id: r for r in result.relay}
    assert sorted(buried) == [r.id for r in live]
    for before in live:
        after = result.state.get("peer", before.id)
        assert after == buried[before.id]
        assert (after.status, after.updated) == (
            Status.TOMBSTONE,
            before.updated + merge.EXPIRY_BUMP,
        )
    assert sorted((e.service.id, e.previous_status) for e in result.events) == [
        (r.id, r.status) for r in live
    ]


def test_a_record_its_owner_stamped_after_its_death_is_not_buried():
    # The owner is back (restarted, or a partition healed) before membership says so: its
    # news stays, or each host would bury it as it came and the owner outvote each burial.
    state = state_with(record(sid="old", at=T0), record(sid="new", at=T0 + 6 * S))
    result = merge.tombstone_node(state, "peer", stamped_by=T0 + 5 * S)
    assert result.state.get("peer", "old").status is Status.TOMBSTONE
    assert result.state.get("peer", "new").status is Status.ALIVE
    assert [r.id for r in result.relay] == ["old"]


def test_every_host_writes_the_same_tombstone_of_a_dead_node_so_none_is_news():
    # Hosts learn of the death at different times; their tombstones must not be news to
    # each other, or a death costs n² messages in an n-host cluster.
    state = state_with(record(sid="a", at=T0))
    early = merge.tombstone_node(state, "peer", stamped_by=T0 + 3 * S).state
    late = merge.tombstone_node(state, "peer", stamped_by=T0 + 7 * S)
    relayed = merge.merge_records(early, late.relay, now=T0 + 8 * S)
    assert relayed.state is early
    assert relayed.relay == ()
