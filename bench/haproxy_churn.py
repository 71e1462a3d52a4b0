"""Benchmark: backend churn under HTTP load, runtime API vs a reload per change; and the
render + plan time of a 10,000-service routing table.

    .venv/bin/python bench/haproxy_churn.py [--changes 100] [--interval 0.05]
        [--connections 16] [--skip-naive] [--render-only] [--repeat 7] [--seed 1] [--time-limit 120]

Everything runs on loopback (127.0.0.0/8) from a temporary directory; every process it
starts (the backends, HAProxy, wrk) is stopped on the way out, also on error or
Ctrl-C. Parts, one after the other (never at once: the machine has 2 cores):

1. **ours**: `sidecar.adapters.haproxy.Haproxy` (managed, master-worker) driven by
   `sidecar.reconcile.loop.Reconciler` (default min_wait/max_wait), serving one service
   `web` on BIND:8080 from a pool of 6 backends, 3 of them in the first table.
   Under `wrk --latency` load, N backend changes (alternately one instance of the pool joins
   and one leaves, never fewer than 2 serving; every backend process keeps running, only
   the table changes), each `update(table)` + `await settled()`, INTERVAL apart.
2. **naive** (the Go Sidecar's way, sidecar-behaviour.md §5.1-5.2): a separate HAProxy,
   not master-worker (the template's `daemon`), on its own bind IP. On every change: render
   with `desired()`, write the file, `/bin/bash -c "haproxy -c -f CFG"`, then Go's default
   reload command through `/bin/bash -c`:
   ``haproxy -f CFG -p PID `[[ -f PID ]] && echo "-sf $(cat PID)"` ``. Same backends, same
   change sequence, same wrk options.
3. **render + plan at 10,000 services** (1 instance each, service ports 10000-19999): the
   routing table, `desired()` and `plan()` against the Actual of the same state with one
   server replaced (a server-only change: del + add + write, no reload). Median and max.

wrk runs from 1 s before the first change to 1 s after the last one and is then stopped
with SIGINT (it prints its figures): the same threads, connections and URL for both, the
duration is whatever the changes took (shown, with requests/s). Figures are reported as
measured, no retries. Targets: ours 0 failed requests and 0 reloads; render + plan
<= 200 ms (the headline figure includes the routing table; its parts are shown).

The backends are one HAProxy answering on each backend's address itself (`http-request
return`). busybox httpd, tried first, listens with a backlog of 9: under this load the
kernel dropped SYNs to it (the TcpExt ListenOverflows shown), each costing a 1 s
retransmission, which was the ~1 s p99 of both runs, changes or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import alive, kill_pids, pids_mentioning, sigterm_as_interrupt

from sidecar.adapters.haproxy import Haproxy, HaproxyOptions
from sidecar.reconcile.desired import Desired, HaproxySettings, desired
from sidecar.reconcile.haproxy_answers import ProcInfo
from sidecar.reconcile.haproxy_text import clear_caches
from sidecar.reconcile.loop import Reconciler
from sidecar.reconcile.plans import Actual, apply, plan
from sidecar.state import merge, times, views
from sidecar.state.model import ClusterState, Port, Service, Status

T0 = 1_767_225_600 * times.NANOS_PER_SECOND
SERVICE, SERVICE_PORT, POOL, FIRST = "web", 8080, 6, 3
MIN_SERVING = 2
WARMUP, TAIL = 1.0, 1.0
SETTLE_LIMIT = 30.0  # one change; far above anything seen
COMMAND_LIMIT = 15.0  # one naive command (Go has no limit; the adapter uses 15 s)
BODY = b"<html><body>sidecar churn backend</body></html>\n"

log = logging.getLogger("bench.haproxy_churn")


# ---------------------------------------------------------------------------- addresses


def _free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


def pick_ips(
    count: int, rng: random.Random, port: int | None = None, avoid: Sequence[str] = ()
) -> list[str]:
    """Return `count` distinct 127.0.0.x (x in 100..249, shuffled, none in `avoid`); with
    `port`, only addresses where it is free."""
    candidates = [f"127.0.0.{x}" for x in range(100, 250) if f"127.0.0.{x}" not in avoid]
    rng.shuffle(candidates)
    chosen = [ip for ip in candidates if port is None or _free(ip, port)][:count]
    if len(chosen) < count:
        raise RuntimeError(f"fewer than {count} free loopback addresses for port {port}")
    return chosen


def pick_port(ip: str, rng: random.Random, taken: set[int]) -> int:
    """Return a free TCP port on `ip` below the ephemeral range, not in `taken`."""
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        if port not in taken and _free(ip, port):
            taken.add(port)
            return port
    raise RuntimeError(f"no free port found on {ip}")


# ---------------------------------------------------------------------------- processes


def listen_overflows() -> int:
    """Return the kernel's TcpExt ListenOverflows (system-wide): SYNs dropped because an
    accept queue was full, each costing the client a 1 s SYN retransmission."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(row.get("ListenOverflows", 0))
    return 0


def stop_popen(proc: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)


@dataclass(frozen=True, slots=True)
class Backend:
    index: int
    ip: str
    port: int


class Backends:
    """The pool: one HAProxy answering on every backend's address by itself (`http-request
    return`), with a normal listen backlog. (busybox httpd's backlog of 9 made the kernel
    drop SYNs under this load: 1 s retransmissions in both runs, changes or not.)"""

    def __init__(self, root: Path, pool: Sequence[Backend]) -> None:
        self.pool = tuple(pool)
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        config = [
            "global",
            "\tmaxconn 4000",
            "defaults",
            "\tmode http",
            "\ttimeout connect 2s",
            "\ttimeout client 30s",
            "\ttimeout server 30s",
        ]
        for number, b in enumerate(self.pool):
            config += [
                f"frontend backend-{number}",
                f"\tbind {b.ip}:{b.port} backlog 1024",
                "\thttp-request return status 200 content-type text/html "
                f'string "{BODY.decode().strip()}"',
            ]
        cfg = self.root / "backends.cfg"
        cfg.write_text("\n".join(config) + "\n")
        self.procs.append(
            subprocess.Popen(
                ["haproxy", "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        for b in self.pool:
            if not wait_http(f"http://{b.ip}:{b.port}/", limit=5.0):
                raise RuntimeError(f"backend {b.ip}:{b.port} does not answer")

    def all_running(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            stop_popen(proc)


def wait_http(url: str, *, limit: float) -> bool:
    """Return whether `url` answers 200 within `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                if answer.status == 200 and answer.read().strip() == BODY.strip():
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- wrk


@dataclass
class WrkFigures:
    requests: int = 0
    duration: float = 0.0
    non_2xx_3xx: int = 0
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0
    latency: dict[str, float] = field(default_factory=dict)  # p50, p99, max in ms
    raw: str = ""

    @property
    def socket_errors(self) -> int:
        return self.connect + self.read + self.write + self.timeout

    @property
    def failed(self) -> int:
        return self.non_2xx_3xx + self.socket_errors


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    """Return a wrk duration (`536.00us`, `1.36ms`, `2.10s`) in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def parse_wrk(text: str) -> WrkFigures:
    """Return wrk 4.1's figures from its output. Raises ValueError when it has none."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    if total is None:
        raise ValueError(f"no request count in wrk's output: {text!r}")
    figures = WrkFigures(
        requests=int(total.group(1)), duration=_ms(total.group(2) + total.group(3)) / 1000
    )
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors is not None:
        figures.connect, figures.read, figures.write, figures.timeout = map(int, errors.groups())
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    figures.non_2xx_3xx = int(non.group(1)) if non else 0
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if latency is not None:
        figures.latency["max"] = _ms(latency.group(3))
    for percent in ("50", "99"):
        found = re.search(rf"^\s+{percent}%\s+(\S+)", text, re.MULTILINE)
        if found is not None:
            figures.latency[f"p{percent}"] = _ms(found.group(1))
    figures.raw = text
    return figures


class Wrk:
    """wrk against one URL, started now and stopped (SIGINT: it prints its figures) later."""

    def __init__(self, url: str, connections: int, limit: float) -> None:
        threads = min(2, connections)
        self.argv = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, int(limit))}s",
            "--timeout",
            "2s",
            "--latency",
            url,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> WrkFigures:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=5)
        return parse_wrk(out.decode(errors="replace"))

    def kill(self) -> None:
        if self.proc is not None:
            stop_popen(self.proc, sig=signal.SIGKILL)


# ---------------------------------------------------------------------------- tables


def instance(backend: Backend, generation: int) -> Service:
    """Return the record of one instance on `backend` (a new ID each time it joins)."""
    return Service(
        id=f"b{backend.index}g{generation:03d}",
        name=SERVICE,
        image="bench/web:1",
        created=T0 + generation,
        hostname=f"node-{backend.index}",
        ports=(Port(type="tcp", port=backend.port, service_port=SERVICE_PORT, ip=backend.ip),),
        updated=T0,
        proxy_mode="http",
        status=Status.ALIVE,
    )


def table_of(records: Sequence[Service]) -> views.RoutingTable:
    state = merge.merge_records(ClusterState(hostname="bench"), records, now=T0).state
    table = views.routing_table(state)
    if table.excluded:
        raise RuntimeError(f"the routing table leaves out instances: {table.excluded}")
    return table


def change_sequence(
    pool: Sequence[Backend], changes: int, rng: random.Random
) -> tuple[list[views.RoutingTable], list[str]]:
    """Return the first table, then one table per change, and a description of each change:
    alternately an idle backend of the pool joins and a serving one leaves (never fewer than
    MIN_SERVING serving)."""
    serving = {b.index: instance(b, 0) for b in pool[:FIRST]}
    tables, what = [table_of(list(serving.values()))], ["start"]
    for change in range(1, changes + 1):
        idle = [b for b in pool if b.index not in serving]
        join = idle and (change % 2 == 1 or len(serving) <= MIN_SERVING)
        if join:
            backend = rng.choice(idle)
            serving[backend.index] = instance(backend, change)
            what.append(f"+{backend.index}")
        else:
            index = rng.choice(sorted(serving))
            del serving[index]
            what.append(f"-{index}")
        tables.append(table_of([serving[i] for i in sorted(serving)]))
    return tables, what


# ---------------------------------------------------------------------------- results


@dataclass
class Run:
    label: str
    wrk: WrkFigures = field(default_factory=WrkFigures)
    changes: int = 0
    change_times: list[float] = field(default_factory=list)  # seconds per change
    joins: list[bool] = field(default_factory=list)  # per change: an instance joined
    listen_overflows: int = 0  # system-wide TcpExt ListenOverflows during the load
    reloads: int = 0
    master_reloads: int | None = None
    runtime_ops: int = 0
    runtime_commands: int = 0
    errors: list[str] = field(default_factory=list)
    deferred: int = 0  # applies where a deletion waited for requests in flight
    fallbacks: int = 0
    notes: list[str] = field(default_factory=list)


class FixedAddresses:
    """The address adapter for loopback: the bind IP is always there (127.0.0.0/8 is on
    `lo`), nothing is ever bound."""

    def __init__(self, ip: str) -> None:
        self.ip = ip

    def bound(self) -> frozenset[str]:
        return frozenset({self.ip})

    def bind(self, ip: str) -> bool:
        raise AssertionError(f"asked to bind {ip}, which is on loopback")


async def _wait_http(url: str, limit: float) -> bool:
    return await asyncio.to_thread(wait_http, url, limit=limit)


async def run_ours(
    root: Path,
    bind_ip: str,
    stats_ports: tuple[int, int],
    tables: Sequence[views.RoutingTable],
    whats: Sequence[str],
    args: argparse.Namespace,
) -> Run:
    run = Run("ours (runtime)")
    d = root / "ours"
    d.mkdir()
    options = HaproxyOptions(
        config_file=d / "haproxy.cfg",
        pid_file=d / "haproxy.pid",
        master_socket=d / "master.sock",
        admin_socket=d / "admin.sock",
    )
    settings = HaproxySettings(
        bind_ip=bind_ip,
        admin_socket=str(d / "admin.sock"),
        stats_port=stats_ports[0],
        stats_backend_port=stats_ports[1],
    )

    def exited(_code: int) -> None:
        reconciler.poke()  # plan again: the loop starts HAProxy again

    haproxy = Haproxy(options, on_exit=exited)
    reconciler = Reconciler(haproxy, FixedAddresses(bind_ip), settings)
    task = asyncio.create_task(reconciler.run())
    url = f"http://{bind_ip}:{SERVICE_PORT}/"
    wrk = Wrk(url, args.connections, limit=args.time_limit + WARMUP + TAIL + 5)
    try:
        reconciler.update(tables[0])
        async with asyncio.timeout(SETTLE_LIMIT):
            first = await reconciler.settled()
        if first is None or first.error is not None:
            raise RuntimeError(f"HAProxy did not start: {first}")
        if not await _wait_http(url, 5.0):
            raise RuntimeError(f"HAProxy does not serve {url}")
        before: ProcInfo | None = await haproxy.proc_info()
        stats, counters = (
            dataclasses.replace(reconciler.stats),
            dataclasses.replace(haproxy.counters),
        )
        overflows = listen_overflows()
        wrk.start()
        await asyncio.sleep(WARMUP)
        deadline = time.monotonic() + args.time_limit
        for table, what in zip(tables[1:], whats[1:], strict=True):
            if time.monotonic() > deadline:
                run.notes.append(f"time limit reached after {run.changes} changes")
                break
            began = time.perf_counter()
            reconciler.update(table)
            async with asyncio.timeout(SETTLE_LIMIT):
                outcome = await reconciler.settled()
            run.change_times.append(time.perf_counter() - began)
            run.changes += 1
            run.joins.append(what.startswith("+"))
            if outcome is not None and outcome.error is not None:
                run.errors.append(outcome.error)
            if outcome is not None and outcome.deferred is not None:
                run.deferred += 1
            if outcome is not None and outcome.fallback:
                run.fallbacks += 1
            await asyncio.sleep(args.interval)
        await asyncio.sleep(TAIL)
        run.wrk = await asyncio.to_thread(wrk.stop)
        run.listen_overflows = listen_overflows() - overflows
        after = await haproxy.proc_info()
        run.reloads = reconciler.stats.reloads - stats.reloads
        run.runtime_ops = reconciler.stats.runtime_ops - stats.runtime_ops
        run.runtime_commands = haproxy.counters.runtime_ops - counters.runtime_ops
        if before is not None and after is not None:
            run.master_reloads = after.reloads - before.reloads
        if haproxy.counters.exits:
            run.notes.append(f"HAProxy exited {haproxy.counters.exits} time(s)")
        # What runs must be what was wanted: planning again finds nothing to do.
        actual = dataclasses.replace(await haproxy.read_actual(), bound_ips=frozenset({bind_ip}))
        if reconciler.last_desired is not None:
            left = plan(reconciler.last_desired, actual)
            if left:
                run.notes.append(
                    "after the last change, plan() still wants: "
                    + "; ".join(a.describe() for a in left)
                )
    finally:
        wrk.kill()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await haproxy.close()
        await asyncio.to_thread(kill_pids, pids_mentioning(str(d)))
    return run


async def _shell(command: str) -> tuple[int, str]:
    """Run `command` through /bin/bash -c as Go does (output captured); bounded in time."""
    proc = await asyncio.create_subprocess_exec(
        "/bin/bash",
        "-c",
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(COMMAND_LIMIT):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return -1, f"timed out after {COMMAND_LIMIT:g}s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


class GoReloader:
    """The Go Sidecar's WriteAndReload: write the file, verify, reload, all through bash."""

    def __init__(self, d: Path, settings: HaproxySettings) -> None:
        self.settings = settings
        self.cfg, self.pid = d / "haproxy.cfg", d / "haproxy.pid"
        cfg, pid = str(self.cfg), str(self.pid)
        self.verify = f"haproxy -c -f {cfg}"
        self.reload = f'haproxy -f {cfg} -p {pid} `[[ -f {pid} ]] && echo "-sf $(cat {pid})"`'
        self.seen: set[int] = set()
        self.most_alive = 0

    async def write_and_reload(self, table: views.RoutingTable) -> str | None:
        """Return None, or the error Go would return."""
        self.cfg.write_text(desired(table, self.settings).config)
        code, out = await _shell(self.verify)
        if code != 0:
            return f"Failed to verify HAproxy config! ({out})"
        code, out = await _shell(self.reload)
        with contextlib.suppress(OSError, ValueError):
            self.seen.update(int(p) for p in self.pid.read_text().split())
        self.most_alive = max(self.most_alive, sum(alive(p) for p in self.seen))
        if code != 0:
            return f"Error running '{self.reload}': exit status {code}\n{out}"
        return None

    def stop(self) -> None:
        kill_pids(sorted(self.seen | set(pids_mentioning(str(self.cfg.parent)))))


async def run_naive(
    root: Path,
    bind_ip: str,
    stats_ports: tuple[int, int],
    tables: Sequence[views.RoutingTable],
    whats: Sequence[str],
    args: argparse.Namespace,
) -> Run:
    run = Run("naive (reload)")
    d = root / "naive"
    d.mkdir()
    settings = HaproxySettings(
        bind_ip=bind_ip,
        admin_socket=str(d / "admin.sock"),
        stats_port=stats_ports[0],
        stats_backend_port=stats_ports[1],
    )
    go = GoReloader(d, settings)
    url = f"http://{bind_ip}:{SERVICE_PORT}/"
    wrk = Wrk(url, args.connections, limit=args.time_limit + WARMUP + TAIL + 5)
    try:
        error = await go.write_and_reload(tables[0])
        if error is not None:
            raise RuntimeError(f"HAProxy did not start: {error}")
        if not await _wait_http(url, 5.0):
            raise RuntimeError(f"HAProxy does not serve {url}")
        overflows = listen_overflows()
        wrk.start()
        await asyncio.sleep(WARMUP)
        deadline = time.monotonic() + args.time_limit
        for table, what in zip(tables[1:], whats[1:], strict=True):
            if time.monotonic() > deadline:
                run.notes.append(f"time limit reached after {run.changes} changes")
                break
            began = time.perf_counter()
            error = await go.write_and_reload(table)
            run.change_times.append(time.perf_counter() - began)
            run.changes += 1
            run.joins.append(what.startswith("+"))
            if error is None:
                run.reloads += 1
            else:
                run.errors.append(error)
            await asyncio.sleep(args.interval)
        await asyncio.sleep(TAIL)
        run.wrk = await asyncio.to_thread(wrk.stop)
        run.listen_overflows = listen_overflows() - overflows
        run.notes.append(
            f"{len(go.seen)} HAProxy processes in all, at most {go.most_alive} alive at once"
        )
    finally:
        wrk.kill()
        await asyncio.to_thread(go.stop)
    return run


# ---------------------------------------------------------------------------- part 3


def big_state(services: int, variant: int = 0) -> ClusterState:
    """Return a state of `services` services, one instance each, service ports from 10000;
    for `variant` > 0, service 0's instance is replaced by another (its ID and port depend on
    the variant): consecutive variants differ by one server."""
    records = []
    for i in range(services):
        host = i % 1000
        replaced = variant > 0 and i == 0
        records.append(
            Service(
                id=f"{i:012x}" if not replaced else f"{i:012x}-v{variant}",
                name=f"service-{i:05d}",
                image=f"registry.example/service-{i}:1",
                created=T0,
                hostname=f"host-{host:04d}",
                ports=(
                    Port(
                        type="tcp",
                        port=20000 + (i % 1000) + (variant if replaced else 0),
                        service_port=10000 + i,
                        ip=f"10.{host // 250}.{host % 250}.1",
                    ),
                ),
                updated=T0,
                proxy_mode="http",
                status=Status.ALIVE,
            )
        )
    return merge.merge_records(ClusterState(hostname="bench"), records, now=T0).state


@dataclass
class RenderFigures:
    routing: list[float]
    render: list[float]
    plan: list[float]  # the file's parse cached by the last apply, as in the loop
    cold: list[float]  # neither config parsed before
    kinds: tuple[str, ...]
    config_bytes: int

    @property
    def total(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.routing, self.render, self.plan, strict=True)]


def render_and_plan(services: int, repeat: int) -> RenderFigures:
    """Time the loop's pure path at `services` services, as the loop runs it: each turn a
    state one server away from the last, planned against what the last turn applied (whose
    config that turn parsed, so it is cached). Then plan() from cold, separately."""
    gc.collect()  # as `sidecar run` does once started: what the imports made is not scanned
    gc.freeze()
    settings = HaproxySettings(bind_ip="127.0.0.1")
    table = views.routing_table(big_state(services))
    if len(table.services) != services or table.excluded:
        raise RuntimeError(
            f"routing table: {len(table.services)} services, {len(table.excluded)} excluded"
        )
    clear_caches()
    actual: Actual = apply(Actual(), plan(desired(table, settings), Actual()))
    routing, render, planning, cold = [], [], [], []
    kinds: tuple[str, ...] = ()
    size = 0
    before = actual
    for turn in range(1, repeat + 1):
        state = big_state(services, variant=turn)
        gc.collect()  # the debt of building the state is not the loop's: start level
        t0 = time.perf_counter()
        table = views.routing_table(state)
        t1 = time.perf_counter()
        want = desired(table, settings)
        # As the loop keeps it: the text and the bind IPs, not the rendered structure.
        want = Desired(want.config, bind_ips=want.bind_ips)
        t2 = time.perf_counter()
        actions = plan(want, actual)
        t3 = time.perf_counter()
        routing.append(t1 - t0)
        render.append(t2 - t1)
        planning.append(t3 - t2)
        kinds, size = tuple(a.kind for a in actions), len(want.config)
        if "reload" in kinds or "start" in kinds:
            raise RuntimeError(f"expected a server-only plan, got {kinds}")
        before, actual = actual, apply(actual, actions)
        del state, table
    for _ in range(repeat):
        clear_caches()  # neither config parsed before
        gc.collect()
        t0 = time.perf_counter()
        plan(want, before)
        cold.append(time.perf_counter() - t0)
    return RenderFigures(routing, render, planning, cold, kinds, size)


# ---------------------------------------------------------------------------- report


def _ms_text(values: Sequence[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"


def report(runs: Sequence[Run], args: argparse.Namespace, render: RenderFigures | None) -> None:
    print()
    print(
        f"churn: {args.changes} backend changes under wrk load ({args.connections} "
        f"connections), same sequence"
    )
    print(
        f"{'':<17}{'requests':>9}{'failed':>9}{'socket-errors':>15}{'reloads':>9}"
        f"{'runtime-ops':>13}"
    )
    for r in runs:
        print(
            f"{r.label:<17}{r.wrk.requests:>9,}{r.wrk.failed:>9,}{r.wrk.socket_errors:>15,}"
            f"{r.reloads:>9}{r.runtime_ops if r.label.startswith('ours') else '-':>13}"
        )
    print()
    for r in runs:
        w = r.wrk
        lat = ", ".join(f"{k} {v:.1f} ms" for k, v in w.latency.items())
        print(f"{r.label}:")
        print(
            f"  wrk: {w.requests:,} requests in {w.duration:.1f} s "
            f"({w.requests / w.duration if w.duration else 0:,.0f}/s); latency {lat}"
        )
        print(
            f"  non-2xx/3xx {w.non_2xx_3xx}; socket errors: connect {w.connect}, "
            f"read {w.read}, write {w.write}, timeout {w.timeout}"
        )
        if r.change_times:
            joins = [t for t, j in zip(r.change_times, r.joins, strict=True) if j]
            leaves = [t for t, j in zip(r.change_times, r.joins, strict=True) if not j]
            print(
                f"  {r.changes} changes, each applied in {_ms_text(r.change_times)}"
                + (f"; joins {_ms_text(joins)}" if joins else "")
                + (f"; leaves {_ms_text(leaves)}" if leaves else "")
            )
        print(
            f"  kernel listen overflows (system-wide) during the load: {r.listen_overflows}"
            " (each a 1 s SYN retransmission to a backend)"
        )
        if r.master_reloads is not None:
            print(
                f"  reloads: loop {r.reloads}, master's counter +{r.master_reloads}; "
                f"runtime ops {r.runtime_ops} ({r.runtime_commands} API commands), "
                f"fallbacks {r.fallbacks}"
            )
        print(f"  errors: {len(r.errors)}" + (f" (first: {r.errors[0]!r})" if r.errors else ""))
        if r.deferred:
            print(
                f"  deletions that waited for requests in flight (server in maintenance "
                f"meanwhile, retried): {r.deferred}"
            )
        for note in r.notes:
            print(f"  {note}")
    if render is not None:
        alone = [a + b for a, b in zip(render.render, render.plan, strict=True)]
        print()
        print(
            f"render+plan at 10,000 services: desired() + plan() {_ms_text(alone)} "
            "— target <= 200 ms"
        )
        print(
            f"  desired() {_ms_text(render.render)}; plan() {_ms_text(render.plan)} (the file "
            f"parsed by the last apply, as in the loop), from cold {_ms_text(render.cold)}"
        )
        print(
            f"  with the routing table first ({_ms_text(render.routing)}): {_ms_text(render.total)}"
        )
        print(
            f"  {args.repeat} repeats; config {render.config_bytes:,} bytes; plan: "
            f"{', '.join(render.kinds)}"
        )


# ---------------------------------------------------------------------------- main


async def churn(
    root: Path, backends: Backends, args: argparse.Namespace, rng: random.Random
) -> list[Run]:
    tables, what = change_sequence(backends.pool, args.changes, rng)
    print(f"sequence ({len(what) - 1} changes): {' '.join(what[1:])}")
    bind_ips = pick_ips(2, rng, port=SERVICE_PORT, avoid=[b.ip for b in backends.pool])
    taken: set[int] = set()
    stats = [pick_port("0.0.0.0", rng, taken) for _ in range(4)]
    runs = []
    print(f"ours on {bind_ips[0]}:{SERVICE_PORT} (stats {stats[0]}/{stats[1]}) ...")
    runs.append(await run_ours(root, bind_ips[0], (stats[0], stats[1]), tables, what, args))
    if not backends.all_running():
        raise RuntimeError("a backend process stopped during the run")
    if not args.skip_naive:
        print(f"naive on {bind_ips[1]}:{SERVICE_PORT} (stats {stats[2]}/{stats[3]}) ...")
        await asyncio.sleep(1.0)  # let the first HAProxy's last processes go
        runs.append(await run_naive(root, bind_ips[1], (stats[2], stats[3]), tables, what, args))
        if not backends.all_running():
            raise RuntimeError("a backend process stopped during the run")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--render-only", action="store_true", help="part 3 only")
    parser.add_argument("--repeat", type=int, default=7, help="repeats of part 3")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--time-limit", type=float, default=120.0, help="seconds of changes, at most, per run"
    )
    args = parser.parse_args()
    if args.changes < 1 or args.connections < 1 or args.repeat < 1 or args.interval < 0:
        parser.error("--changes, --connections and --repeat must be >= 1, --interval >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for tool in ("haproxy", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")

    if args.render_only:
        report([], args, render_and_plan(10_000, args.repeat))
        return
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="sidecar-churn-"))
    backends: Backends | None = None
    try:
        with sigterm_as_interrupt():
            ips = pick_ips(POOL, rng)
            taken: set[int] = set()
            pool = [Backend(i, ip, pick_port(ip, rng, taken)) for i, ip in enumerate(ips)]
            backends = Backends(root, pool)
            backends.start()
            print("backends: " + ", ".join(f"{b.index}={b.ip}:{b.port}" for b in pool))
            runs = asyncio.run(churn(root, backends, args, rng))
            backends.stop()
            print(f"render + plan at 10,000 services, {args.repeat} repeats ...")
            render = render_and_plan(10_000, args.repeat)
            report(runs, args, render)
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        if backends is not None:
            backends.stop()
        kill_pids(pids_mentioning(str(root)))
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
