"""The `sidecar` command line.

One module per command, each adding its parser and running it: `run` (the daemon,
`sidecar.daemon`), `plan` (what would change on this host's HAProxy for a cluster state: the
config diff, the runtime and address actions with their reasons, the instances left out),
`discover` (this host's discovery and health checks, live: what it would announce to the
cluster), `simulate` (a whole cluster of sidecars running the pure core in virtual time) and
`decode` (check a Go `state.json` or service document and print it back in Go's bytes).
`shared` holds what several of them use: the log set-up and the configuration's loading.
Each command builds its parts through `sidecar.parts`, as the daemon does.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sidecar import __version__
from sidecar.cli import decode, discover, plan, run, simulate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    simulate.add_parser(commands)
    discover.add_parser(commands)
    decode.add_parser(commands)
    plan.add_parser(commands)
    run.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "discover":
        return discover.main(args)
    if args.command == "simulate":
        return simulate.main(args)
    if args.command == "plan":
        return plan.main(args)
    if args.command == "run":
        return run.main(args)
    if args.command == "decode":
        return decode.main(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse allows no other
