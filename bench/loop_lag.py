"""Benchmark: how long the event loop is held up while the reconcile loop applies states of
10,000 services (routing table, render, plan, and the in-memory HAProxy model's apply), with
the pure part on the loop's thread and offloaded to a worker thread (`OFFLOAD_SERVICES`).

    .venv/bin/python bench/loop_lag.py [--services 10000] [--turns 3]

A 10 ms ticker runs beside TURNS reconciles, each of a state one server away from the last,
after a first one that writes and starts; the figure is the ticker's worst lateness. No
HAProxy and no network: the HAProxy is the plan model of tests/unit/test_loop.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests" / "unit")]

from haproxy_churn import big_state  # noqa: E402
from test_loop import Addresses, ModelHaproxy  # noqa: E402

from sidecar.reconcile import loop  # noqa: E402
from sidecar.reconcile.desired import HaproxySettings  # noqa: E402

TICK = 0.01


async def worst_lag(services: int, turns: int, offload_above: int) -> float:
    """Return the ticker's worst lateness (s) over `turns` reconciles."""
    loop.OFFLOAD_SERVICES = offload_above
    states = [big_state(services, variant=v) for v in range(turns + 1)]
    reconciler = loop.Reconciler(
        ModelHaproxy(), Addresses(), HaproxySettings(bind_ip="127.0.0.1"), min_wait=0.0
    )
    running = asyncio.create_task(reconciler.run())
    lags: list[float] = []

    async def ticker() -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(time.perf_counter() - began - TICK)

    ticking: asyncio.Task[None] | None = None
    try:
        for turn, state in enumerate(states):
            reconciler.update(state)
            await reconciler.settled()
            if turn == 0:  # the first apply writes and starts: not what a change costs
                ticking = asyncio.create_task(ticker())
    finally:
        running.cancel()
        if ticking is not None:
            ticking.cancel()
    return max(lags)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    for what, limit in (("on the loop's thread", 10**9), ("in a worker thread", 1000)):
        lag = asyncio.run(worst_lag(args.services, args.turns, limit))
        print(
            f"{args.services:,} services, pure part {what}: the event loop held up"
            f" {lag * 1000:.0f} ms at worst over {args.turns} reconciles"
        )


if __name__ == "__main__":
    main()
