"""The gossip transport: UDP and TCP on the gossip port, moving bytes and timers for a `Peer`.

`GossipTransport` owns one `sidecar.cluster.peer.Peer` (the pure host: membership, the node
protocol, the codec) and decides nothing: it hands the peer what arrives, with `now`
(`time.monotonic_ns()`) and `wall` (`time.time_ns()`), and carries out every `Output` — sends
its datagrams from the gossip socket, opens its TCP exchanges as tasks, and hands its member
and record events to the `on_output` callback. A timer calls `Peer.tick` by
`Peer.next_wakeup()`, rescheduled after every input.

The wire (cluster-wire.md §1): one port for UDP and TCP. UDP datagrams read in one event-loop
turn (at most `UDP_BATCH`) go to the peer together. A TCP connection carries one exchange:
the stream is parsed as bytes arrive (`codec.StreamParser`, never waiting for EOF: Go does
not half-close), answered if the peer has a reply, and closed; the whole exchange is bounded
by `TCP_TIMEOUT` and by `Limits.stream_bytes`, and at most `MAX_CONNECTIONS` are open at once
(one more is closed as soon as it is accepted). Outgoing exchanges (push/pull, TCP user
messages, fallback pings) are bounded the same way. Peer input is untrusted: whatever it sends
costs a counter and a rate-limited warning (`REJECT_LOG_INTERVAL` per kind), never the node.
A peer of another cluster (its cluster name is not ours) is refused, counted as `cluster_name`
and logged once per address and name (`FOREIGN_LOGGED` of them at most).

Life cycle: `start()`, `join(seeds)` (or `join_until_answered`, a task the daemon runs),
`observe`/`drain` for this host's news, then `leave()` (gossip the leave for up to
`LEAVE_GRACE`, then stop) or `stop()` (at once). `stop()` cancels every task this transport
started and closes its sockets; cancel a running `join_until_answered` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.cluster import codec
from sidecar.cluster.crypto import Keyring
from sidecar.cluster.errors import DecodeError
from sidecar.cluster.membership import Address, TcpPing
from sidecar.cluster.messages import Ack, NodeState, Ping, PushPull, Stream, User
from sidecar.cluster.peer import Output, Peer
from sidecar.state.model import Service

log = logging.getLogger("sidecar.gossip")

TCP_TIMEOUT: Final = 10.0
"""Seconds for a whole TCP exchange, the connect included (Go's TCPTimeout)."""
MAX_CONNECTIONS: Final = 64
"""Incoming TCP connections open at once; one more is closed when accepted."""
MAX_OUTGOING: Final = 256
"""Outgoing TCP exchanges in flight at once; one more is dropped (and counted)."""
UDP_BATCH: Final = 64
"""Datagrams read in one event-loop turn and handed to the peer together."""
UDP_BUFFER: Final = 65_536
"""Bytes read per datagram; Go reads into the same size."""
SOCKET_BUFFER: Final = 2 << 20
"""UDP receive and send buffer asked of the kernel (Go asks 2 MiB), best effort."""
LEAVE_GRACE: Final = 1.0
"""Seconds `leave()` keeps gossiping the leave before stopping."""
STOP_GRACE: Final = 0.3
"""Seconds `stop()` waits for its cancelled tasks to finish."""
TIMER_RETRY: Final = 0.1
"""Seconds before the timer runs again after the peer failed on a tick."""
REJECT_LOG_INTERVAL: Final = 10.0
"""Seconds between two warnings of the same kind of rejected input."""
FOREIGN_LOGGED: Final = 256
"""Peers of other clusters (address and name) remembered as logged; later ones are logged
as any rejected input, rate-limited (a flood of made-up sources must not grow memory)."""
JOIN_FIRST_DELAY: Final = 1.0
JOIN_MAX_DELAY: Final = 30.0
ANY_HOST: Final = frozenset({"", "0.0.0.0"})


# ---------------------------------------------------------------------- pure helpers


def ipv4_address(host: str, port: int) -> Address:
    """Return the `Address` of a dotted IPv4 `host` and `port`; ValueError names a bad one."""
    try:
        return Address(socket.inet_aton(host), port)
    except OSError:
        raise ValueError(f"not an IPv4 address: {host!r}") from None


def show(address: Address) -> str:
    """Return `address` as `ip:port` (IPv4) or `[hex]:port`."""
    if len(address.ip) == 4:
        return f"{socket.inet_ntoa(address.ip)}:{address.port}"
    return f"[{address.ip.hex()}]:{address.port}"


def rejection_kind(line: str) -> str:
    """Return the kind of a rejection line, the words before its first ` from `
    (`packet`, `push/pull`, `record`, `stream`...), or `other`."""
    kind, found, _ = line.partition(" from ")
    return kind if found and kind else "other"


def stream_kind(message: Stream) -> str:
    """Return the counter name of a stream message."""
    if isinstance(message, PushPull):
        return "push_pull"
    if isinstance(message, Ping):
        return "ping"
    if isinstance(message, User):
        return "user"
    return "other"


def backoff(first: float, most: float) -> Iterable[float]:
    """Yield `first`, then each delay doubled, up to `most`, for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


class RejectLog:
    """Which rejection lines to write: at most one per kind every `interval` seconds."""

    def __init__(self, interval: float = REJECT_LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def admit(self, kind: str, now: float) -> int | None:
        """Return, when a line of `kind` may be written at `now`, how many of that kind were
        dropped since the last one written; None when this one is dropped (and counted)."""
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._dropped.pop(kind, 0)


@dataclass
class GossipStats:
    """What the transport moved and refused, for `/metrics` (plain counters)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    """UDP payload bytes received."""
    bytes_out: int = 0
    """UDP payload bytes sent."""
    datagrams_ignored: int = 0
    """Received datagrams larger than `UDP_BUFFER - 1` bytes."""
    send_failures: int = 0
    """Datagrams the kernel would not take (full buffer, unreachable, not IPv4)."""
    streams_in: dict[str, int] = field(default_factory=dict)
    """Complete incoming TCP streams by kind (`push_pull`, `ping`, `user`, `other`)."""
    streams_out: dict[str, int] = field(default_factory=dict)
    """Outgoing TCP exchanges started, by kind (`push_pull`, `ping`, `user`)."""
    stream_failures_in: dict[str, int] = field(default_factory=dict)
    """Incoming TCP connections ended without a complete stream: `malformed`, `timeout`,
    `eof`, `refused` (over `MAX_CONNECTIONS`)."""
    stream_failures_out: dict[str, int] = field(default_factory=dict)
    """Outgoing TCP exchanges that failed, by kind."""
    stream_bytes_in: int = 0
    stream_bytes_out: int = 0
    push_pulls_ok: int = 0
    push_pulls_failed: int = 0
    tcp_pings_acked: int = 0
    tcp_pings_failed: int = 0
    outgoing_dropped: int = 0
    """Outgoing TCP exchanges not started: `MAX_OUTGOING` in flight."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rejected input by kind (`rejection_kind`)."""
    peer_errors: int = 0
    """Inputs on which the peer raised (a bug: logged with its traceback)."""


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


# ---------------------------------------------------------------------- the transport


class GossipTransport:
    """UDP and TCP on (`bind_host`, `bind_port`) for one `Peer`; see the module docstring."""

    def __init__(
        self,
        peer: Peer,
        *,
        bind_host: str = "0.0.0.0",
        bind_port: int | None = None,
        on_output: Callable[[Output], None] | None = None,
        keyring: Keyring | None = None,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        tcp_timeout: float = TCP_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        udp_batch: int = UDP_BATCH,
        leave_grace: float = LEAVE_GRACE,
    ) -> None:
        """`bind_port` defaults to the peer's advertised port (0: any free port, the same for
        UDP and TCP); `keyring` must be the peer's (it decrypts streams and encrypts pings).
        The peer must have been made with `now=time.monotonic_ns()`."""
        ipv4_address(bind_host or "0.0.0.0", 0)  # refuse a bad address before binding
        self.peer = peer
        self.stats = GossipStats()
        self._bind_host = bind_host or "0.0.0.0"
        self._bind_port = peer.membership.config.port if bind_port is None else bind_port
        self._on_output = on_output
        self._keyring = keyring
        self._limits = limits
        self._tcp_timeout = tcp_timeout
        self._max_connections = max_connections
        self._udp_batch = udp_batch
        self._leave_grace = leave_grace
        self._rejects = RejectLog()
        self._foreign_logged: set[tuple[bytes, str]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._inbound: set[_Inbound] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_wake: int | None = None
        self._started = False
        self._closing = False
        self.port = self._bind_port
        """The port bound (UDP and TCP), known after `start()`."""

    # ------------------------------------------------------------------ life cycle

    @property
    def address(self) -> Address:
        """Return the address this host advertises (the peer's `Config.addr` and port)."""
        config = self.peer.membership.config
        return Address(config.addr, config.port)

    @property
    def open_connections(self) -> int:
        """Return how many incoming TCP connections are open."""
        return len(self._inbound)

    @property
    def running(self) -> bool:
        """Return whether the transport is started and not stopping."""
        return self._started and not self._closing

    async def start(self) -> None:
        """Bind UDP and TCP and start the timer; OSError names the address it cannot bind."""
        if self._started:
            raise RuntimeError("the gossip transport was already started")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.setblocking(False)  # noqa: FBT003 (the socket API)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    udp.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            udp.bind((self._bind_host, self._bind_port))
            self.port = udp.getsockname()[1]
            self._server = await loop.create_server(
                lambda: _Inbound(self),
                self._bind_host,
                self.port,
                family=socket.AF_INET,
                reuse_address=True,
            )
        except OSError as exc:
            udp.close()
            self._closing = True
            raise OSError(
                exc.errno, f"gossip: cannot bind {self._bind_host}:{self.port}: {exc}"
            ) from exc
        self._udp = udp
        loop.add_reader(udp.fileno(), self._read_udp)
        log.info(
            "gossip: listening on %s:%d (UDP and TCP), advertising %s as %r",
            self._bind_host,
            self.port,
            show(self.address),
            self.peer.name,
        )
        self._reschedule()

    async def stop(self) -> None:
        """Stop at once (no leave: see `leave`): cancel every task this transport started,
        close its connections and sockets. Takes at most about `STOP_GRACE`."""
        if self._closing:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._udp is not None and self._loop is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for connection in list(self._inbound):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), STOP_GRACE)
        await asyncio.sleep(0)  # the aborted connections' connection_lost callbacks run
        log.info("gossip: stopped (%s)", show(self.address))

    async def leave(self) -> None:
        """Leave the cluster gracefully, gossip the leave until it is sent (the peer's queue
        drained) or `leave_grace` passed, then stop."""
        if not self.running:
            return
        self._input("leave", lambda now, wall: self.peer.leave(now=now, wall=wall))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._leave_grace
        for _ in range(int(self._leave_grace / 0.02) + 1):
            remaining = deadline - loop.time()
            if remaining <= 0 or not self._leave_pending():
                break
            await asyncio.sleep(min(0.02, remaining))
        await self.stop()

    def _leave_pending(self) -> bool:
        """Return whether gossip still has something to send and someone to send it to."""
        membership = self.peer.membership
        others = any(
            m.name != self.peer.name and m.state is not NodeState.DEAD
            for m in membership.members.values()
        )
        return others and bool(membership.queued())

    async def __aenter__(self) -> GossipTransport:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ this host's news

    def observe(self, running: Iterable[Service]) -> None:
        """Hand the peer what this host runs now (gossiped at once when it changed)."""
        records = tuple(running)
        self._input("observe", lambda now, wall: self.peer.observe(records, now=now, wall=wall))

    def drain(self, service_id: str) -> bool:
        """Drain an own service; return False when there is no such service (or the transport
        is not running)."""
        found = False

        def step(now: int, wall: int) -> Output:
            nonlocal found
            out = self.peer.drain(service_id, now=now, wall=wall)
            found = out is not None
            return out or Output()

        self._input("drain", step)
        return found

    # ------------------------------------------------------------------ join

    async def join(self, seeds: Sequence[tuple[str, int]]) -> int:
        """Push/pull (join) with every seed (hostnames resolved, IPv4; this host skipped) at
        once; return how many answered."""
        targets, _ = await self._resolve(seeds)
        return await self._join(targets)

    async def join_until_answered(
        self,
        seeds: Sequence[tuple[str, int]],
        *,
        first_delay: float = JOIN_FIRST_DELAY,
        max_delay: float = JOIN_MAX_DELAY,
    ) -> int:
        """Join, trying again after `first_delay` s, doubling to `max_delay`, until a seed
        answers; return how many answered (0 at once when the only seed is this host)."""
        for delay in backoff(first_delay, max_delay):
            targets, failures = await self._resolve(seeds)
            if not targets and not failures:
                log.info("gossip: no seed but this host: a cluster of one until others join")
                return 0
            answered = await self._join(targets)
            if answered:
                log.info("gossip: joined through %d of %d seed address(es)", answered, len(targets))
                return answered
            reasons = [*failures, *(f"{show(t)} did not answer" for t in targets)]
            log.warning(
                "gossip: could not join (%s); trying again in %g s", "; ".join(reasons), delay
            )
            await asyncio.sleep(delay)
        raise AssertionError("backoff() never ends")  # pragma: no cover

    async def _join(self, targets: Sequence[Address]) -> int:
        if not targets:
            return 0
        results = await asyncio.gather(*(self.push_pull(t, join=True) for t in targets))
        return sum(results)

    async def _resolve(self, seeds: Sequence[tuple[str, int]]) -> tuple[list[Address], list[str]]:
        """Return the seeds' IPv4 addresses other than this host's, and why others failed.

        This host's are its advertise and bind addresses and, when it advertises one that is
        not loopback, a loopback address at its port: the seed README's `SIDECAR_SEEDS=127.0.0.1`
        names the host itself (Go, bound to every address, joins itself there)."""
        loop = asyncio.get_running_loop()
        own = {self.address}
        if self._bind_host not in ANY_HOST:
            own.add(ipv4_address(self._bind_host, self.port))
        loopback_is_own = self.address.ip[0] != 127  # 127.0.0.0/8
        targets: list[Address] = []
        failures: list[str] = []
        for host, port in seeds:
            try:
                async with asyncio.timeout(self._tcp_timeout):
                    infos = await loop.getaddrinfo(
                        host, port, family=socket.AF_INET, type=socket.SOCK_STREAM
                    )
            except (OSError, TimeoutError) as exc:
                failures.append(f"seed {host!r}: {exc or 'resolution timed out'}")
                continue
            for info in infos:
                address = ipv4_address(str(info[4][0]), port)
                itself = loopback_is_own and address.port == self.port and address.ip[0] == 127
                if not itself and address not in own and address not in targets:
                    targets.append(address)
        return targets, failures

    # ------------------------------------------------------------------ TCP out

    async def push_pull(self, to: Address, *, join: bool = False) -> bool:
        """Push/pull with `to` and merge its reply; return whether it answered with a
        push/pull of our cluster."""
        _bump(self.stats.streams_out, "push_pull")
        try:
            async with asyncio.timeout(self._tcp_timeout), self._connection(to) as (reader, writer):
                request = self.peer.push_pull_request(join=join)
                writer.write(request)
                self.stats.stream_bytes_out += len(request)
                await writer.drain()
                reply = await self._read_stream(reader)
        except (OSError, TimeoutError, DecodeError) as exc:
            self.stats.push_pulls_failed += 1
            _bump(self.stats.stream_failures_out, "push_pull")
            log.debug("gossip: push/pull with %s failed: %s", show(to), _why(exc))
            return False
        self._input(
            "push/pull reply",
            lambda now, wall: self.peer.push_pull_reply(reply, to, now=now, wall=wall),
        )
        ok = (
            isinstance(reply, PushPull)
            and reply.cluster_name == self.peer.membership.config.cluster_name
        )
        if ok:
            self.stats.push_pulls_ok += 1
        else:
            self.stats.push_pulls_failed += 1
        return ok

    async def tcp_ping(self, to: Address, ping: Ping, *, deadline: int) -> bool:
        """Send `ping` over TCP to `to`; return whether the Ack with its `seq_no` came back
        before `deadline` (monotonic ns)."""
        _bump(self.stats.streams_out, "ping")
        timeout = (deadline - time.monotonic_ns()) / 1e9
        try:
            if timeout <= 0:
                raise TimeoutError("the deadline had passed")
            async with asyncio.timeout(timeout), self._connection(to) as (reader, writer):
                data = self._encode_stream(ping)
                writer.write(data)
                self.stats.stream_bytes_out += len(data)
                await writer.drain()
                reply = await self._read_stream(reader)
        except (OSError, TimeoutError, DecodeError) as exc:
            log.debug("gossip: TCP ping %d to %s failed: %s", ping.seq_no, show(to), _why(exc))
            return False
        return isinstance(reply, Ack) and reply.seq_no == ping.seq_no

    async def _run_tcp_ping(self, ping: TcpPing) -> None:
        acked = await self.tcp_ping(ping.to, ping.ping, deadline=ping.deadline)
        if acked:
            self.stats.tcp_pings_acked += 1
        else:
            self.stats.tcp_pings_failed += 1
            _bump(self.stats.stream_failures_out, "ping")
        seq_no = ping.ping.seq_no
        self._input(
            "TCP ping result",
            lambda now, wall: self.peer.tcp_ping_result(seq_no, now=now, wall=wall, acked=acked),
        )

    async def _send_user(self, to: Address, data: bytes) -> None:
        _bump(self.stats.streams_out, "user")
        try:
            async with asyncio.timeout(self._tcp_timeout), self._connection(to) as (_, writer):
                writer.write(data)
                self.stats.stream_bytes_out += len(data)
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            _bump(self.stats.stream_failures_out, "user")
            log.debug("gossip: TCP user message to %s failed: %s", show(to), _why(exc))

    @contextlib.asynccontextmanager
    async def _connection(
        self, to: Address
    ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """Yield a connection to `to`: closed after the exchange, reset if it failed."""
        if len(to.ip) != 4:
            raise OSError(f"not an IPv4 address: {to.ip.hex()}")
        local = None if self._bind_host in ANY_HOST else (self._bind_host, 0)
        reader, writer = await asyncio.open_connection(
            socket.inet_ntoa(to.ip), to.port, local_addr=local
        )
        try:
            yield reader, writer
        except BaseException:
            writer.transport.abort()
            raise
        writer.close()

    async def _read_stream(self, reader: asyncio.StreamReader) -> Stream:
        """Return the stream `reader` delivers, parsed as it arrives (complete, or at EOF)."""
        parser = codec.StreamParser(limits=self._limits, keyring=self._keyring)
        while True:
            data = await reader.read(UDP_BUFFER)
            if not data:
                return parser.finish()
            self.stats.stream_bytes_in += len(data)
            message = parser.feed(data)
            if message is not None:
                return message

    def _encode_stream(self, message: Stream) -> bytes:
        nonce = os.urandom(12) if self._keyring is not None else None
        return codec.encode_stream(message, keyring=self._keyring, nonce=nonce)

    # ------------------------------------------------------------------ UDP

    def _read_udp(self) -> None:
        """Read what arrived (at most `udp_batch` datagrams) and hand it over at once."""
        udp = self._udp
        if udp is None or self._closing:
            return
        batch: list[tuple[bytes, Address]] = []
        for _ in range(self._udp_batch):
            try:
                data, (host, port) = udp.recvfrom(UDP_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                log.debug("gossip: UDP receive failed: %s", exc)
                break
            if len(data) >= UDP_BUFFER:
                self.stats.datagrams_ignored += 1
                continue
            self.stats.datagrams_in += 1
            self.stats.bytes_in += len(data)
            batch.append((data, ipv4_address(host, port)))
        if batch:
            self._input(
                "datagrams", lambda now, wall: self.peer.datagrams(batch, now=now, wall=wall)
            )

    def _sendto(self, data: bytes, to: Address) -> None:
        udp = self._udp
        if udp is None or self._closing:
            return
        if len(to.ip) != 4:
            self.stats.send_failures += 1
            return
        try:
            udp.sendto(data, (socket.inet_ntoa(to.ip), to.port))
        except OSError as exc:  # a full buffer (BlockingIOError) included: UDP may drop
            self.stats.send_failures += 1
            log.debug("gossip: UDP send to %s failed: %s", show(to), exc)
            return
        self.stats.datagrams_out += 1
        self.stats.bytes_out += len(data)

    # ------------------------------------------------------------------ TCP in

    def _accepted(self, connection: _Inbound) -> bool:
        """Register an incoming connection; return False when it is one too many."""
        if self._closing or len(self._inbound) >= self._max_connections:
            _bump(self.stats.stream_failures_in, "refused")
            self._warn(
                "connection",
                f"connection from {show(connection.source)}: {self._max_connections} "
                "gossip connections are open, closed at once",
            )
            return False
        self._inbound.add(connection)
        return True

    def _answer(self, message: Stream, source: Address) -> bytes | None:
        """Return the reply to a complete incoming stream, handing the peer its output."""
        _bump(self.stats.streams_in, stream_kind(message))
        reply: bytes | None = None

        def step(now: int, wall: int) -> Output:
            nonlocal reply
            reply, out = self.peer.stream(message, source, now=now, wall=wall)
            return out

        self._input("stream", step)
        if reply is not None:
            self.stats.stream_bytes_out += len(reply)
        return reply

    # ------------------------------------------------------------------ the peer's output

    def _input(self, what: str, step: Callable[[int, int], Output]) -> None:
        """Run one input on the peer with the clocks, and carry out its output."""
        if self._closing:
            return
        try:
            out = step(time.monotonic_ns(), time.time_ns())
        except Exception:
            self.stats.peer_errors += 1
            log.exception("gossip: the peer failed on %s", what)
            self._reschedule(at_least=TIMER_RETRY)
            return
        self._take(out)

    def _take(self, out: Output) -> None:
        for datagram in out.datagrams:
            self._sendto(datagram.data, datagram.to)
        for stream in out.streams:
            self._spawn(self._send_user(stream.to, stream.data))
        for ping in out.tcp_pings:
            self._spawn(self._run_tcp_ping(ping))
        for target in out.push_pulls:
            self._spawn(self._push_pull_quietly(target))
        for line in out.rejected:
            self._reject(line)
        for source, cluster_name in out.foreign:
            self._refuse_foreign(source, cluster_name)
        if self._on_output is not None and (
            out.members or out.changes or out.changed or out.rejected
        ):
            try:
                self._on_output(out)
            except Exception:
                log.exception("gossip: the output callback failed")
        self._reschedule()

    async def _push_pull_quietly(self, target: Address) -> None:
        await self.push_pull(target, join=False)

    def _spawn(self, exchange: Coroutine[Any, Any, None]) -> None:
        if self._closing or self._loop is None:
            exchange.close()
            return
        if len(self._tasks) >= MAX_OUTGOING:
            exchange.close()
            self.stats.outgoing_dropped += 1
            return
        task = self._loop.create_task(exchange)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gossip: a TCP exchange failed", exc_info=task.exception())

    def _refuse_foreign(self, source: Address, cluster_name: str) -> None:
        _bump(self.stats.rejected, "cluster_name")
        ours = self.peer.membership.config.cluster_name
        line = f"{show(source)}: its cluster name {cluster_name!r} is not ours ({ours!r})"
        key = (source.ip, cluster_name)
        if key in self._foreign_logged:
            return
        if len(self._foreign_logged) >= FOREIGN_LOGGED:
            self._warn("cluster_name", line)
            return
        self._foreign_logged.add(key)
        log.warning("gossip: refused %s; not logged again for this address and name", line)

    def _reject(self, line: str) -> None:
        kind = rejection_kind(line)
        _bump(self.stats.rejected, kind)
        self._warn(kind, line)

    def _warn(self, kind: str, line: str) -> None:
        dropped = self._rejects.admit(kind, time.monotonic())
        if dropped is None:
            return
        if dropped:
            log.warning(
                "gossip: rejected %s (and %d more %s line(s) in the last %g s, not logged)",
                line,
                dropped,
                kind,
                REJECT_LOG_INTERVAL,
            )
        else:
            log.warning("gossip: rejected %s", line)

    # ------------------------------------------------------------------ the timer

    def _reschedule(self, *, at_least: float = 0.0) -> None:
        """(Re)arm the timer for the peer's next wakeup."""
        loop = self._loop
        if loop is None or self._closing:
            return
        wake = self.peer.next_wakeup()
        if self._timer is not None and self._timer_wake == wake and not at_least:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(at_least, (wake - time.monotonic_ns()) / 1e9)
        self._timer_wake = wake
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_wake = None
        self._input("tick", lambda now, wall: self.peer.tick(now=now, wall=wall))


class _Inbound(asyncio.Protocol):
    """One incoming TCP connection: one stream parsed as it arrives, answered, closed; the
    whole exchange within the transport's TCP timeout."""

    def __init__(self, owner: GossipTransport) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._parser = codec.StreamParser(limits=owner._limits, keyring=owner._keyring)
        self._deadline: asyncio.TimerHandle | None = None
        self._done = False
        self.source = Address(bytes(4), 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        with contextlib.suppress(TypeError, ValueError):
            self.source = ipv4_address(peer[0], peer[1])
        if not self._owner._accepted(self):
            self._done = True
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._owner._tcp_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        self._owner.stats.stream_bytes_in += len(data)
        try:
            message = self._parser.feed(data)
        except DecodeError as exc:
            self._fail("malformed", str(exc))
            return
        if message is not None:
            self._complete(message)

    def eof_received(self) -> bool:
        if not self._done:
            try:
                self._parser.finish()
            except DecodeError as exc:
                self._fail("eof", str(exc))
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
        self._owner._inbound.discard(self)

    def abort(self) -> None:
        """Reset the connection now."""
        self._done = True
        if self._transport is not None:
            self._transport.abort()

    def _complete(self, message: Stream) -> None:
        self._done = True
        transport = self._transport
        assert transport is not None
        transport.pause_reading()
        reply = self._owner._answer(message, self.source)
        if reply is not None and not transport.is_closing():
            transport.write(reply)
        transport.close()  # after the reply is written; the deadline still bounds that

    def _fail(self, why: str, reason: str) -> None:
        _bump(self._owner.stats.stream_failures_in, why)
        self._owner._reject(f"stream from {show(self.source)}: {reason}")
        self.abort()

    def _expire(self) -> None:
        if self._done:
            log.debug("gossip: reply to %s not taken within the deadline", show(self.source))
            self.abort()
            return
        self._fail("timeout", f"not complete within {self._owner._tcp_timeout:g} s")


def _why(exc: BaseException) -> str:
    """Return an exception's message, or its type's name when it has none (a timeout)."""
    return str(exc) or type(exc).__name__
