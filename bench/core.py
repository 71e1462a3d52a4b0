"""Benchmark of the pure core: merge throughput, decode+merge of gossip, routing table build.

    .venv/bin/python bench/core.py [--repeat N]

Prints, for a cluster state of 1,000 hosts x 10 services:
  * records merged per second, merged one call per record (`merge_record`) and in batches as
    the loop merges what it received since its last turn (`merge_records`, 100 per batch);
  * gossip messages decoded (Go JSON bytes) and merged per second, the same two ways;
  * the time to build the routing table of 10,000 services, and to encode the state.
Each figure is the best of N runs (default 5): the machine is shared and noisy. Targets
(issue 2): >= 100,000 merges/s, >= 30,000 decode+merge/s, <= 100 ms routing table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from sidecar.state import codec, merge, times, views
from sidecar.state.model import ClusterState, Port, Service, Status

NOW = 1_767_225_600 * times.NANOS_PER_SECOND
HOSTS, PER_HOST, BATCH = 1000, 10, 100


def record(host: int, index: int, updated: int) -> Service:
    return Service(
        id=f"{host * PER_HOST + index:012x}",
        name=f"service-{index}",
        image=f"registry.example/service-{index}:1.{host % 7}",
        created=NOW - 3600 * times.NANOS_PER_SECOND,
        hostname=f"host-{host:04d}",
        ports=(
            Port(
                type="tcp",
                port=20000 + index,
                service_port=8000 + index,
                ip=f"10.{host // 250}.{host % 250}.1",
            ),
        ),
        updated=updated,
        proxy_mode="http",
        status=Status.ALIVE,
    )


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat

    records = [record(h, i, NOW) for h in range(HOSTS) for i in range(PER_HOST)]
    state = merge.merge_records(ClusterState(hostname="bench"), records, now=NOW).state
    newer = [r.with_updated(NOW + 1000) for r in records]  # every merge replaces a record
    messages = [codec.encode_service(r.with_updated(NOW + 2000)) for r in records]
    batches = [newer[i : i + BATCH] for i in range(0, len(newer), BATCH)]
    message_batches = [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]
    count = len(records)

    def one_by_one() -> None:
        current = state
        for r in newer:
            current = merge.merge_record(current, r, now=NOW).state

    def batched() -> None:
        current = state
        for batch in batches:
            current = merge.merge_records(current, batch, now=NOW).state

    def decode_one_by_one() -> None:
        current = state
        for raw in messages:
            current = merge.merge_record(current, codec.decode_service(raw), now=NOW).state

    def decode_batched() -> None:
        current = state
        for batch in message_batches:
            decoded = [codec.decode_service(raw) for raw in batch]
            current = merge.merge_records(current, decoded, now=NOW).state

    print(f"state: {HOSTS} hosts x {PER_HOST} services = {count} records; best of {repeat}")
    for label, run, target in [
        ("merges/s, one call per record", one_by_one, 100_000),
        (f"merges/s, batches of {BATCH}", batched, 100_000),
        ("decode+merge/s, one call per message", decode_one_by_one, 30_000),
        (f"decode+merge/s, batches of {BATCH}", decode_batched, 30_000),
    ]:
        rate = count / best_of(repeat, run)
        print(f"  {label:<40} {rate:>10,.0f}   (target >= {target:,})")
    routing = best_of(repeat, lambda: views.routing_table(state)) * 1000
    print(f"  {'routing table of 10,000 services, ms':<40} {routing:>10.1f}   (target <= 100)")
    encode = best_of(repeat, lambda: codec.encode_state(state)) * 1000
    size = len(codec.encode_state(state))
    print(f"  {'encode state.json, ms':<40} {encode:>10.1f}   ({size:,} bytes)")


if __name__ == "__main__":
    main()
