"""Merge is a join: commutative, associative and idempotent, equal timestamps included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.state import merge
from sidecar.state.model import ClusterState, Service
from tests.property import strategies

NOW = strategies.BASE

entries = st.lists(strategies.records(hosts=("h",), ids=("x",)), min_size=1, max_size=4).map(
    lambda records: _fold_entry(records)
)


def _fold_entry(records: list[Service]) -> Service:
    entry = records[0]
    for record in records[1:]:
        entry = merge.join(entry, record)
    return entry


def _entries(state: ClusterState) -> dict[tuple[str, str], Service]:
    return {
        (hostname, service_id): entry
        for hostname, server in state.servers.items()
        for service_id, entry in server.entries.items()
    }


def _merged(records: list[Service]) -> dict[tuple[str, str], Service]:
    return _entries(merge.merge_records(ClusterState(hostname="me"), records, now=NOW).state)


@given(entries, entries)
def test_join_is_commutative(a, b):
    assert merge.join(a, b) == merge.join(b, a)


@given(entries, entries, entries)
def test_join_is_associative(a, b, c):
    assert merge.join(merge.join(a, b), c) == merge.join(a, merge.join(b, c))


@given(entries)
def test_join_is_idempotent(a):
    assert merge.join(a, a) == a


@given(entries, entries)
def test_join_is_an_upper_bound(a, b):
    joined = merge.join(a, b)
    assert merge.join(joined, a) == joined
    assert merge.join(joined, b) == joined


@given(st.lists(strategies.records(), max_size=12), st.randoms(use_true_random=False))
def test_merging_records_in_any_order_gives_the_same_state(records, random):
    shuffled = list(records)
    random.shuffle(shuffled)
    assert _merged(records) == _merged(shuffled)


@given(st.lists(strategies.records(), max_size=8), st.data())
def test_merging_duplicates_changes_nothing(records, data):
    repeats = data.draw(st.lists(st.sampled_from(records), max_size=8)) if records else []
    assert _merged(records) == _merged(records + repeats)


@given(st.lists(strategies.records(), max_size=8), st.lists(strategies.records(), max_size=8))
def test_merging_in_batches_equals_merging_all_at_once(first, second):
    state = merge.merge_records(ClusterState(hostname="me"), first, now=NOW).state
    state = merge.merge_records(state, second, now=NOW).state
    assert _entries(state) == _merged(first + second)


@given(st.lists(strategies.records(), max_size=10), st.randoms(use_true_random=False))
def test_a_node_relays_only_what_it_learned(records, random):
    # Go's loop prevention: a record is relayed only when it changed what the node shows,
    # so once a node has seen a set of records, seeing any of them again relays nothing.
    state = ClusterState(hostname="me")
    for record in records:
        result = merge.merge_record(state, record, now=NOW)
        assert len(result.relay) <= 1
        if result.relay:
            assert result.relay[0] == result.state.get(record.hostname, record.id)
        state = result.state
    again = list(records)
    random.shuffle(again)
    for record in again:
        result = merge.merge_record(state, record, now=NOW)
        assert result.relay == ()
        assert result.events == ()
        state = result.state
