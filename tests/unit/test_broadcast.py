"""The broadcast scheduler: what an owner sends, how often, computed against what it sent."""

from __future__ import annotations

import dataclasses
from functools import partial

from sidecar.state import broadcast, merge
from sidecar.state.model import ClusterState, Status
from tests.builders import T0, S, service

ME = "me"

observed = partial(service, ME, at=0)  # an observation, not yet stamped


def run(schedule, state, start, seconds_):
    """Call `due` once a second; return the schedule and what was sent at each second."""
    sent = {}
    for k in range(seconds_):
        schedule, out = broadcast.due(schedule, state, now=start + k * S)
        if out:
            sent[k] = out
    return schedule, sent


def test_a_new_record_goes_out_at_once_then_four_more_times_fifty_ns_apart():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    _, sent = run(broadcast.Schedule(), state, T0, 10)
    assert sorted(sent) == [0, 1, 2, 3, 4]
    assert [out[0].updated - T0 for out in sent.values()] == [0, 50, 100, 150, 200]
    assert all(out[0].status is Status.ALIVE and len(out) == 1 for out in sent.values())


def test_an_unchanged_record_is_only_sent_in_the_minute_refresh():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    schedule, _ = run(broadcast.Schedule(), state, T0, 10)
    schedule, sent = run(schedule, state, T0 + 10 * S, 50)
    assert sent == {}
    _, sent = run(schedule, state, T0 + 60 * S, 10)
    assert list(sent) == [0]  # one send, at 60 s after the last refresh


def test_a_change_is_sent_even_when_the_state_was_updated_first():
    # Go's race (§12 item 8): the tracker updates the state before the broadcaster looks.
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    schedule, _ = run(broadcast.Schedule(), state, T0, 10)
    state = merge.stamp(state, [observed("a", status=Status.UNHEALTHY)], now=T0 + 10 * S).state
    _, sent = run(schedule, state, T0 + 10 * S, 10)
    assert len(sent) == 5
    assert sent[0][0].status is Status.UNHEALTHY


def test_a_tombstone_goes_out_ten_times_two_copies_a_batch():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    schedule, _ = run(broadcast.Schedule(), state, T0, 10)
    state = merge.stamp(state, [], now=T0 + 10 * S).state
    _, sent = run(schedule, state, T0 + 10 * S, 15)
    assert len(sent) == 10
    assert all(len(out) == 2 and out[0].status is Status.TOMBSTONE for out in sent.values())
    assert sent[9][0].updated == T0 + 10 * S + 9 * broadcast.REPEAT_STEP


def test_a_new_version_while_pending_restarts_the_count():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    schedule, _ = run(broadcast.Schedule(), state, T0, 2)
    state = merge.stamp(state, [observed("a", status=Status.UNHEALTHY)], now=T0 + 2 * S).state
    _, sent = run(schedule, state, T0 + 2 * S, 10)
    assert len(sent) == 5
    assert all(out[0].status is Status.UNHEALTHY for out in sent.values())


def test_records_about_others_are_enqueued_ten_times():
    other = observed("x").with_status(Status.TOMBSTONE, updated=T0)
    other = dataclasses.replace(other, hostname="peer")
    schedule = broadcast.enqueue(broadcast.Schedule(), [other], now=T0)
    _, sent = run(schedule, ClusterState(hostname=ME), T0, 15)
    assert len(sent) == 10
    assert all(out == (out[0],) and out[0].hostname == "peer" for out in sent.values())


def test_peer_records_are_never_scheduled_by_the_owner_rules():
    peer = dataclasses.replace(observed("x"), hostname="peer", updated=T0)
    state = merge.merge_record(ClusterState(hostname=ME), peer, now=T0).state
    _, sent = run(broadcast.Schedule(), state, T0, 70)
    assert sent == {}


def test_a_record_restamped_to_stay_fresh_is_sent_once():
    state = merge.stamp(ClusterState(hostname=ME), [observed("a")], now=T0).state
    schedule, _ = run(broadcast.Schedule(), state, T0, 10)
    later = T0 + merge.REFRESH_AFTER
    state = merge.stamp(state, [observed("a")], now=later).state
    _, sent = run(schedule, state, later, 20)
    assert list(sent) == [0]
    assert sent[0][0].updated == later
