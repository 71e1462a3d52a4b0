"""`sidecar decode`: check a Go `state.json` or service document and print it back in Go's
bytes."""

from __future__ import annotations

import argparse
import sys

from sidecar.state import codec


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Return nothing; add `decode` and its arguments to `commands`."""
    decode = commands.add_parser(
        "decode", help="read a Go state.json or service JSON document, print it as Go would"
    )
    decode.add_argument("file", help="the document, or - for stdin")


def main(args: argparse.Namespace) -> int:
    """Run `sidecar decode`; return the exit status (1: unreadable, or refused as Go would)."""
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
