"""Every way the cluster state changes: merge, stamp, drain, expire, tombstone a dead node.

Pure: each function takes the state and `now` (nanoseconds) and returns a new state with
what happened (change events, records to send). No I/O, no clock.

Theory of operation
-------------------
A record is identified by `(hostname, id)`. A node keeps the greatest version it received,
and merging a received record is a *join* (commutative, associative, idempotent), so nodes
that receive the same records in any order, any grouping and any number of times end up
with the same records:

* the greatest version under a total order: newer `updated` wins (Go's rule); on equal
  `updated`, the higher status rank wins (`_RANK`: the more cautious status), then the
  greater Go JSON text. Go keeps "first seen" on ties, which makes nodes disagree.
* A drain is sticky at its owner only: `stamp` keeps a service the owner drained DRAINING
  while it is observed ALIVE (the owner's node keeps the set; UNHEALTHY, UNKNOWN or gone
  undoes it), whatever peers said of the record meanwhile. So an owner
  sends ALIVE after DRAINING only once the drain was undone, and a receiver takes the newer
  version as it is. Go also keeps a stored DRAINING against a newer ALIVE *on receipt*;
  a peer that missed the undoing version (lost, or reordered) then showed — and relayed,
  back to the owner too — DRAINING for a healthy service for good. We do not.
* Records older than the tombstone lifespan plus a minute are dropped (Go's stale guard).

A node relays a received record (once, as Go retransmits) when the record it shows for that
key changed, and never relays its own records: the owner announces them itself
(`sidecar.state.broadcast`). Own records are changed only through `stamp` and `drain`, whose
`updated` strictly increases: `max(now, last + 1 µs)`, never equal to the last version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Final

from sidecar.state import codec
from sidecar.state.model import (
    ChangeEvent,
    ClusterState,
    Server,
    Service,
    Status,
)
from sidecar.state.times import NANOS_PER_MICROSECOND, seconds

TOMBSTONE_LIFESPAN: Final = seconds(3 * 3600)
STALE_AFTER: Final = TOMBSTONE_LIFESPAN + seconds(60)
ALIVE_LIFESPAN: Final = seconds(80)
DRAINING_LIFESPAN: Final = seconds(600)
EXPIRY_BUMP: Final = seconds(1)
OWNER_STEP: Final = NANOS_PER_MICROSECOND
REFRESH_AFTER: Final = seconds(30)
"""Own records are re-stamped (same content, new `updated`) once this old, so peers, which
expire records unheard for `ALIVE_LIFESPAN`, always hold a fresh version (push-pull
carries it even if a broadcast is lost)."""

# Tie-break on equal `updated`: the more cautious status wins.
_RANK: Final[Mapping[Status, int]] = {
    Status.ALIVE: 0,
    Status.UNKNOWN: 1,
    Status.UNHEALTHY: 2,
    Status.DRAINING: 3,
    Status.TOMBSTONE: 4,
}


def precedes(older: Service, newer: Service) -> bool:
    """Return whether `older` is strictly below `newer` in the merge order.

    Pure. The order is total: `updated`, then status rank, then the Go JSON text.
    """
    if older.updated != newer.updated:
        return older.updated < newer.updated
    rank_older, rank_newer = _RANK[older.status], _RANK[newer.status]
    if rank_older != rank_newer:
        return rank_older < rank_newer
    return codec.service_json(older) < codec.service_json(newer)


def join(a: Service, b: Service) -> Service:
    """Return the greater of two versions of a record (their least upper bound).

    Pure. Commutative, associative and idempotent; returns `a` itself when `b` adds nothing,
    so callers can test for change with `is`.
    """
    if a.updated == b.updated and a == b:  # the same version again: gossip's usual case
        return a
    return b if precedes(a, b) else a


@dataclass(frozen=True, slots=True)
class MergeResult:
    """A new state, the change events the step caused, and the records to relay to peers."""

    state: ClusterState
    events: tuple[ChangeEvent, ...] = ()
    relay: tuple[Service, ...] = ()


class _Changes:
    """Copy-on-write edits of a state: copies only the servers a step touches."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.entries: dict[str, dict[str, Service]] = {}
        self.meta: dict[str, tuple[int, int]] = {}
        self.last_changed = state.last_changed
        self.events: list[ChangeEvent] = []
        self.relay: list[Service] = []

    def entry(self, hostname: str, service_id: str) -> Service | None:
        edited = self.entries.get(hostname)
        if edited is not None:
            return edited.get(service_id)
        server = self.state.servers.get(hostname)
        return None if server is None else server.entries.get(service_id)

    def _edit(self, hostname: str) -> dict[str, Service]:
        edited = self.entries.get(hostname)
        if edited is None:
            server = self.state.servers.get(hostname)
            edited = {} if server is None else dict(server.entries)
            self.entries[hostname] = edited
            self.meta[hostname] = (
                (server.last_updated, server.last_changed) if server is not None else (0, 0)
            )
        return edited

    def learn(self, record: Service) -> Service | None:
        """Join `record` into what is known; record the event and relay. Return the record
        if it was news, else None."""
        hostname, service_id = record.hostname, record.id
        before = self.entry(hostname, service_id)
        after = record if before is None else join(before, record)
        if after is before:
            return None
        self._edit(hostname)[service_id] = after
        last_updated, last_changed = self.meta[hostname]
        last_updated = max(last_updated, after.updated)
        if before is None or after.status != before.status:
            previous = Status.UNKNOWN if before is None else before.status
            self.events.append(ChangeEvent(after, previous, after.updated))
            last_changed = max(last_changed, after.updated)
            self.last_changed = max(self.last_changed, after.updated)
        self.meta[hostname] = (last_updated, last_changed)
        if hostname != self.state.hostname:
            self.relay.append(after)
        return after

    def delete(self, hostname: str, service_id: str) -> None:
        self._edit(hostname).pop(service_id, None)

    def result(self) -> MergeResult:
        if not self.entries:
            return MergeResult(self.state, tuple(self.events), tuple(self.relay))
        servers = dict(self.state.servers)
        for hostname, entries in self.entries.items():
            if not entries:
                servers.pop(hostname, None)
                continue
            last_updated, last_changed = self.meta[hostname]
            servers[hostname] = Server(
                name=hostname,
                entries=entries,
                last_updated=last_updated,
                last_changed=last_changed,
            )
        state = ClusterState(
            hostname=self.state.hostname,
            cluster_name=self.state.cluster_name,
            servers=servers,
            last_changed=self.last_changed,
        )
        return MergeResult(state, tuple(self.events), tuple(self.relay))


def is_stale(record: Service, *, now: int) -> bool:
    """Return whether a received record is too old to store (Go's `IsStale`).

    Pure.
    """
    return record.updated < now - STALE_AFTER


def merge_records(state: ClusterState, records: Iterable[Service], *, now: int) -> MergeResult:
    """Return the state with `records` merged in, the change events, and what to relay.

    Pure. Records from any host are accepted, this node's own included (e.g. tombstones a
    peer wrote about us while we were unreachable; `stamp` then re-asserts what runs).
    Stale records are dropped.
    """
    changes = _Changes(state)
    for record in records:
        if not is_stale(record, now=now):
            changes.learn(record)
    return changes.result()


def merge_record(state: ClusterState, record: Service, *, now: int) -> MergeResult:
    """Return the state with one received record merged in (see `merge_records`).

    Pure.
    """
    return merge_records(state, (record,), now=now)


def merge_state(state: ClusterState, remote: ClusterState, *, now: int) -> MergeResult:
    """Return the state with every record of a peer's state merged in (push-pull).

    Pure. The remote's own bookkeeping (`LastChanged`, `Hostname`, ...) is ignored, as in Go.
    """
    return merge_records(state, codec.records_of(remote), now=now)


def _next_version(last: Service | None, *, now: int) -> int:
    return now if last is None else max(now, last.updated + OWNER_STEP)


def stamp(
    state: ClusterState,
    observed: Iterable[Service],
    *,
    now: int,
    refresh_after: int = REFRESH_AFTER,
    drained: AbstractSet[str] = frozenset(),
) -> MergeResult:
    """Return the state with this node's observations stamped into its own records.

    Pure. `observed` is what discovery and health checks see now (their `updated` is
    ignored). A record whose content or status differs from the stored one, or that is
    older than `refresh_after`, gets a new version `max(now, last + 1 µs)`. A service in
    `drained` (IDs the owner drained) is DRAINING while it is observed ALIVE. Own records
    (`hostname == state.hostname`) that are no longer observed become tombstones. The
    result's `relay` is empty: the owner announces its records through
    `sidecar.state.broadcast`.
    """
    changes = _Changes(state)
    seen: set[str] = set()
    for observation in observed:
        if observation.hostname == state.hostname:
            seen.add(observation.id)
        entry = changes.entry(observation.hostname, observation.id)
        last = entry
        wanted = observation
        if observation.id in drained and wanted.status is Status.ALIVE:
            wanted = wanted.with_status(Status.DRAINING, updated=wanted.updated)
        if last is None or not wanted.same_content(last) or last.updated <= now - refresh_after:
            changes.learn(wanted.with_updated(_next_version(last, now=now)))
    own = state.servers.get(state.hostname)
    if own is not None:
        for service_id, entry in own.entries.items():
            if service_id not in seen and entry.status is not Status.TOMBSTONE:
                changes.learn(
                    entry.with_status(Status.TOMBSTONE, updated=_next_version(entry, now=now))
                )
    result = changes.result()
    return MergeResult(result.state, result.events)


def drain(state: ClusterState, service_id: str, *, now: int) -> MergeResult | None:
    """Return the state with an own record set to DRAINING, or None if there is no such
    live own record.

    Pure. The new version is `max(now, last + 1 µs)`; it is announced like any other change.
    The caller keeps the ID among its drained ones, for `stamp` to keep it DRAINING while
    the service stays ALIVE.
    """
    current = state.get(state.hostname, service_id)
    if current is None or current.status is Status.TOMBSTONE:
        return None
    if current.status is Status.DRAINING:
        return MergeResult(state)
    changes = _Changes(state)
    changes.learn(current.with_status(Status.DRAINING, updated=_next_version(current, now=now)))
    result = changes.result()
    return MergeResult(result.state, result.events)


def expire(state: ClusterState, *, now: int) -> MergeResult:
    """Return the state with unheard records tombstoned and old tombstones deleted.

    Pure. A record not refreshed for 80 s (10 min if DRAINING) becomes a tombstone at its
    old `updated` + 1 s, so it cannot beat a newer version this node missed; those
    tombstones are in the result's `relay` (Go sends them 10 times). Tombstones older than
    3 h are deleted, and so are servers left without records.
    """
    changes = _Changes(state)
    expired: list[Service] = []
    for hostname, server in state.servers.items():
        for service_id, record in server.entries.items():
            if record.status is Status.TOMBSTONE:
                if record.updated < now - TOMBSTONE_LIFESPAN:
                    changes.delete(hostname, service_id)
                continue
            lifespan = DRAINING_LIFESPAN if record.status is Status.DRAINING else ALIVE_LIFESPAN
            if record.updated < now - lifespan:
                tombstone = record.with_status(
                    Status.TOMBSTONE, updated=record.updated + EXPIRY_BUMP
                )
                after = changes.learn(tombstone)
                if after is not None:
                    expired.append(after)
    result = changes.result()
    return MergeResult(result.state, result.events, tuple(expired))


def tombstone_node(state: ClusterState, hostname: str, *, stamped_by: int) -> MergeResult:
    """Return the state with every live record of a node declared dead at `stamped_by`
    (wall ns) tombstoned, if its owner stamped it by then.

    Pure. Each tombstone is versioned at the record's version + 1 s (as `expire` writes
    them), not at the time of death: every host that learns of the death writes the same
    tombstone, so the cluster gossips one version of it, not one per host (Go's `now` made
    a host's death cost n² messages). A record stamped after the death comes from its owner,
    back (a restart, a healed partition): it is left alone, or each host would bury the
    owner's news as it came and the owner outvote each burial in turn. Records that are
    already tombstones are left alone (Go re-stamps them). The tombstones are in `relay`. A
    node never declares itself dead: for `state.hostname` nothing changes.
    """
    server = state.servers.get(hostname)
    if server is None or hostname == state.hostname:
        return MergeResult(state)
    changes = _Changes(state)
    for record in server.entries.values():
        if record.status is not Status.TOMBSTONE and record.updated <= stamped_by:
            changes.learn(
                record.with_status(Status.TOMBSTONE, updated=record.updated + EXPIRY_BUMP)
            )
    return changes.result()
