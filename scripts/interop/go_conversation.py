"""Hand check of interop with the Go Sidecar (issue 12); never run in CI.

A Python `GossipTransport` ("py-node" at 10.77.0.1:7946, one service py-web) talks to a Go
node started with `scripts/interop/run-go-node.sh` in namespace goint1 at 10.77.0.2. It
prints the member and record events it sees and what it holds at the end, and records every
datagram and TCP stream Go sent to `$CAPTURE_DIR/<mode>.jsonl` (base64; the source of
`tests/fixtures/go/`).

    usage: go_conversation.py py-joins-go|go-joins-py [SECONDS] [leave]

Set-up (root): a veth pair gi-h (10.77.0.1/24, here) and gi-n (10.77.0.2/24, in goint1).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import sys
import time
from typing import Any

from sidecar.adapters import gossip
from sidecar.cluster import codec
from sidecar.cluster.membership import Address, Config
from sidecar.cluster.peer import Output, Peer
from sidecar.state.model import Port, Service, Status

HERE = Address(bytes([10, 77, 0, 1]), 7946)
GO = ("10.77.0.2", 7946)
META = b'{"ClusterName":"default","State":"Running"}'


class Recorder:
    """Writes what Go sent, one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "w")  # noqa: SIM115 - open for the whole run
        self.chunks: dict[int, bytearray] = {}

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps({"t": time.time(), **row}) + "\n")
        self.file.flush()

    def watch_streams(self) -> None:
        """Record every complete incoming stream, as received (wraps StreamParser.feed)."""
        feed = codec.StreamParser.feed

        def recording_feed(parser: codec.StreamParser, data: bytes) -> Any:
            buffer = self.chunks.setdefault(id(parser), bytearray())
            buffer.extend(data)
            result = feed(parser, data)
            if result is not None:
                raw = bytes(self.chunks.pop(id(parser)))
                self.write({"kind": "stream_bytes", "b64": base64.b64encode(raw).decode()})
            return result

        codec.StreamParser.feed = recording_feed  # type: ignore[method-assign]


def print_output(out: Output) -> None:
    for event in out.members:
        print("member", event.kind.value, event.member.name, flush=True)
    for change in out.changes:
        s = change.service
        print("change", s.hostname, s.name, s.status.name, flush=True)
    for line in out.rejected:
        print("REJECTED", line, flush=True)


async def main(mode: str, seconds: float, leave: bool) -> None:
    recorder = Recorder(os.path.join(os.environ.get("CAPTURE_DIR", "/tmp"), f"{mode}.jsonl"))
    recorder.watch_streams()
    peer = Peer(
        Config(name="py-node", addr=HERE.ip, port=HERE.port, meta=META),
        random.Random(1),
        now=time.monotonic_ns(),
    )
    datagrams = peer.datagrams

    def recording_datagrams(packets: Any, *, now: int, wall: int) -> Output:
        packets = list(packets)
        for data, source in packets:
            row = {"kind": "udp", "from": gossip.show(source)}
            recorder.write({**row, "b64": base64.b64encode(data).decode()})
        return datagrams(packets, now=now, wall=wall)

    peer.datagrams = recording_datagrams  # type: ignore[method-assign]
    transport = gossip.GossipTransport(
        peer, bind_host="10.77.0.1", bind_port=7946, on_output=print_output
    )
    await transport.start()
    service = Service(
        id="py0000000001",
        name="py-web",
        image="py-web:1",
        created=time.time_ns(),
        hostname="py-node",
        ports=(Port(type="tcp", port=28080, service_port=28080, ip="10.77.0.1"),),
        updated=0,
        proxy_mode="http",
        status=Status.ALIVE,
    )
    transport.observe([service])
    if mode == "py-joins-go":
        print("joined", await transport.join([GO]), flush=True)
    await asyncio.sleep(seconds)
    members = {m.name: (m.state.name, m.incarnation) for m in peer.membership.members.values()}
    print("members:", members, flush=True)
    print("records:", [(r.hostname, r.name, r.status.name) for r in peer.state.records()])
    print("stats:", transport.stats, flush=True)
    await (transport.leave() if leave else transport.stop())


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], float(args[1]) if len(args) > 1 else 30.0, args[2:3] == ["leave"]))
