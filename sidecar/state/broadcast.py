"""What this node gossips, and when: a pure scheduler value (DESIGN.md decision 4).

Go decides what is new by comparing fresh discovery output with the shared state, which its
own tracker may already have updated (so a new service can wait 60 s, §12 item 8). Here the
comparison is against what was last *announced*, kept in the schedule itself:

* a new or changed own record (content or status, not just `updated`) is sent 5 times,
  1 s apart, the first time at once; a tombstone 10 times, two copies per batch;
* every repeat carries `updated + k × 50 ns` (k = 0, 1, ...), so peers accept each copy as
  newer and relay it (Go's rule);
* an own record re-stamped only to stay fresh is sent once, and every own record is sent
  once more in a full refresh every 60 s;
* records this node wrote about others (expiry and dead-node tombstones) are sent 10 times
  through `enqueue`.

`due(schedule, state, now=...)` returns the next schedule and the records to send now; the
transport packs them into packets. Relays of received records are not scheduled here: they
are sent once, straight from `merge.MergeResult.relay`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from sidecar.state.model import NEVER, ClusterState, Service, Status
from sidecar.state.times import seconds

ALIVE_COUNT: Final = 5
TOMBSTONE_COUNT: Final = 10
RETRANSMIT: Final = seconds(1)
REPEAT_STEP: Final = 50
FULL_REFRESH: Final = seconds(60)

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Pending:
    """A record being sent `sends_left` more times, `copies` per batch, next at `next_at`."""

    record: Service
    sends_left: int
    copies: int
    next_at: int
    repeat: int = 0


@dataclass(frozen=True, slots=True)
class Schedule:
    """What was last announced of each own record, and the sends still to make."""

    announced: Mapping[Key, Service] = field(default_factory=dict)
    pending: Mapping[Key, Pending] = field(default_factory=dict)
    last_refresh: int = NEVER


def _key(record: Service) -> Key:
    return (record.hostname, record.id)


def _start(record: Service, *, now: int) -> Pending:
    if record.status is Status.TOMBSTONE:
        return Pending(record, TOMBSTONE_COUNT, 2, now)
    return Pending(record, ALIVE_COUNT, 1, now)


def enqueue(schedule: Schedule, records: Iterable[Service], *, now: int) -> Schedule:
    """Return the schedule with records this node wrote about others to send 10 times.

    Pure. For expiry and dead-node tombstones (`merge.expire`, `merge.tombstone_node`).
    """
    pending = dict(schedule.pending)
    for record in records:
        pending[_key(record)] = Pending(record, TOMBSTONE_COUNT, 1, now)
    return Schedule(schedule.announced, pending, schedule.last_refresh)


def due(
    schedule: Schedule, state: ClusterState, *, now: int
) -> tuple[Schedule, tuple[Service, ...]]:
    """Return the next schedule and the records to send now, in a stable order.

    Pure. Call it about once a second; the records come out with their repeat offsets
    already added.
    """
    announced = dict(schedule.announced)
    pending = dict(schedule.pending)
    own: dict[Key, Service] = {}
    for record in state.own_records():
        key = _key(record)
        own[key] = record
        previous = announced.get(key)
        if previous is None or not record.same_content(previous):
            announced[key] = record
            pending[key] = _start(record, now=now)
        elif record.updated > previous.updated and key not in pending:
            # Re-stamped to stay fresh (merge.REFRESH_AFTER): one send is enough.
            announced[key] = record
            pending[key] = Pending(record, 1, 1, now)
    for key in [k for k in announced if k not in own]:
        del announced[key]

    last_refresh = schedule.last_refresh
    if now - last_refresh >= FULL_REFRESH:
        last_refresh = now
        for key, record in own.items():
            if key not in pending and record.status is not Status.TOMBSTONE:
                announced[key] = record
                pending[key] = Pending(record, 1, 1, now)

    out: list[Service] = []
    for key in sorted(pending):
        item = pending[key]
        if item.next_at > now:
            continue
        version = item.record.updated + item.repeat * REPEAT_STEP
        copy = item.record if item.repeat == 0 else item.record.with_updated(version)
        out.extend([copy] * item.copies)
        if item.sends_left <= 1:
            del pending[key]
        else:
            pending[key] = Pending(
                item.record, item.sends_left - 1, item.copies, now + RETRANSMIT, item.repeat + 1
            )
    next_schedule = Schedule(announced, pending, last_refresh)
    return next_schedule, tuple(out)
