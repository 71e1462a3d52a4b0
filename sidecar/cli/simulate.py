"""`sidecar simulate`: a whole cluster of sidecars running the pure core in virtual time
(`sidecar.simulate`)."""

from __future__ import annotations

import argparse

from sidecar import simulate


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--loss must be in [0, 1), got {text}")
    return value


def _node_count(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"--nodes must be 2..10000, got {text}")
    return value


def _duration_seconds(text: str) -> int:
    value = int(text)
    if not 30 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"--duration must be 30..3600 seconds, got {text}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Return nothing; add `simulate` and its arguments to `commands`."""
    sim = commands.add_parser("simulate", help="simulate a cluster of sidecars (virtual time)")
    sim.add_argument("--nodes", type=_node_count, default=5, help="hosts in the cluster (5)")
    sim.add_argument("--loss", type=_fraction, default=0.2, help="UDP packet loss, 0..1 (0.2)")
    sim.add_argument("--seed", type=int, default=1, help="random seed (1)")
    sim.add_argument(
        "--duration", type=_duration_seconds, default=60, help="virtual seconds to run (60)"
    )


def main(args: argparse.Namespace) -> int:
    """Run `sidecar simulate`, printing its report line by line; return the exit status."""
    lines = simulate.run(args.nodes, loss=args.loss, seed=args.seed, duration=args.duration)
    for line in lines:
        print(line, flush=True)
    return 0
