"""The `sidecar` command line.

Today it has `simulate` (a whole cluster of sidecars running the pure core in virtual time)
and `decode` (check a Go `state.json` or service document and print it back in Go's bytes).
`sidecar run` (the daemon) and `sidecar plan` arrive with the adapters; asking for them says
so instead of failing obscurely.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sidecar import __version__, simulate
from sidecar.state import codec

NOT_YET = {
    "run": "the daemon (Docker discovery, health checks, HAProxy, the HTTP API)",
    "plan": "the HAProxy dry-run",
}


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--loss must be in [0, 1), got {text}")
    return value


def _node_count(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 50:
        raise argparse.ArgumentTypeError(f"--nodes must be 2..50, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="simulate a cluster of sidecars (virtual time)")
    sim.add_argument("--nodes", type=_node_count, default=5, help="hosts in the cluster (5)")
    sim.add_argument("--loss", type=_fraction, default=0.2, help="UDP packet loss, 0..1 (0.2)")
    sim.add_argument("--seed", type=int, default=1, help="random seed (1)")
    decode = commands.add_parser(
        "decode", help="read a Go state.json or service JSON document, print it as Go would"
    )
    decode.add_argument("file", help="the document, or - for stdin")
    for name, what in NOT_YET.items():
        commands.add_parser(name, help=f"{what} (not built yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        for line in simulate.run(args.nodes, loss=args.loss, seed=args.seed):
            print(line, flush=True)
        return 0
    if args.command == "decode":
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            try:
                with open(args.file, "rb") as document:
                    raw = document.read()
            except OSError as exc:
                print(f"sidecar decode: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
                return 1
        try:
            if b'"Servers"' in raw or b'"servers"' in raw:
                out = codec.encode_state(codec.decode_state(raw))
            else:
                out = codec.encode_service(codec.decode_service(raw))
        except codec.RecordRejected as exc:
            print(f"sidecar decode: rejected: {exc}", file=sys.stderr)
            return 1
        sys.stdout.write(out.decode() + "\n")
        return 0
    print(
        f"sidecar {args.command}: {NOT_YET[args.command]} is not built yet; "
        "see the README for what runs today (`sidecar simulate`).",
        file=sys.stderr,
    )
    return 1
