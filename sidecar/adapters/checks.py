"""Health checks: run one check (`run_check`) and keep many services checked (`CheckRunner`).

An adapter: it runs checks and reports raw outcomes. Thresholds (rise/fall), templating and
whether External checks are allowed at all are decided by the core (`sidecar.state.discovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import aiohttp

from sidecar.state.discovery import CheckSpec, CheckType, status_from_docker_health

log = logging.getLogger("sidecar.checks")

OUTPUT_LIMIT: Final = 4096  # bytes of an External check's output kept for the detail
REAP_TIMEOUT: Final = 1.0  # seconds to wait for a killed External check to be reaped
NO_DOCKER_HEALTH: Final[Mapping[str, str | None]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One check's raw result: healthy, unhealthy, or None (no result yet), and why."""

    healthy: bool | None
    detail: str


# ---------------------------------------------------------------------- one check


async def run_check(
    spec: CheckSpec,
    *,
    # The check owns its timeout: it names it in the outcome and kills what overran it.
    timeout: float,  # noqa: ASYNC109
    session: aiohttp.ClientSession,
    docker_health: str | None = None,
) -> CheckOutcome:
    """Return the outcome of running `spec` once, within `timeout` seconds; never raises
    (except CancelledError)."""
    try:
        if spec.type is CheckType.HTTP_GET:
            return await _http_get(spec.args, within=timeout, session=session)
        if spec.type is CheckType.TCP:
            return await _tcp(spec.args, within=timeout)
        if spec.type is CheckType.ALWAYS_SUCCESSFUL:
            return CheckOutcome(healthy=True, detail="always successful")
        if spec.type is CheckType.DOCKER:
            healthy = status_from_docker_health(docker_health)
            return CheckOutcome(healthy=healthy, detail=f"docker health: {docker_health or 'none'}")
        if spec.type is CheckType.EXTERNAL:
            return await _external(spec.args, within=timeout)
        return CheckOutcome(healthy=False, detail=f"unknown check type {spec.type!r}")
    except Exception as exc:  # a bug here must not kill the service's check loop
        log.exception("check %s %r crashed", spec.type, spec.args)
        return CheckOutcome(healthy=False, detail=f"check crashed: {type(exc).__name__}: {exc}")


def _timed_out(seconds: float) -> str:
    return f"timed out after {seconds:g} s"


def _os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror.lower() if exc.strerror else (str(exc) or type(exc).__name__)


async def _http_get(url: str, *, within: float, session: aiohttp.ClientSession) -> CheckOutcome:
    """Return healthy for a 2xx/3xx answer to GET `url` (redirects not followed)."""
    try:
        async with session.get(
            url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=within)
        ) as response:
            status = response.status
    except TimeoutError:
        return CheckOutcome(healthy=False, detail=_timed_out(within))
    except aiohttp.ClientConnectorError as exc:
        return CheckOutcome(healthy=False, detail=_os_error(exc.os_error))
    except aiohttp.InvalidURL:
        return CheckOutcome(healthy=False, detail=f"invalid URL {url!r}")
    except aiohttp.ClientError as exc:
        return CheckOutcome(healthy=False, detail=f"{type(exc).__name__}: {exc}"[:200])
    except (OSError, ValueError) as exc:
        return CheckOutcome(healthy=False, detail=f"{type(exc).__name__}: {exc}"[:200])
    if 200 <= status < 400:
        return CheckOutcome(healthy=True, detail=f"HTTP {status}")
    return CheckOutcome(healthy=False, detail=f"HTTP {status}")


def split_host_port(address: str) -> tuple[str, int]:
    """Return (host, port) of `host:port` or `[v6]:port`; raises ValueError naming it."""
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{address!r} is not [host]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{address!r} is not host:port (write IPv6 as [::1]:80)")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port_text)


async def _tcp(address: str, *, within: float) -> CheckOutcome:
    """Return healthy when a TCP connection to `address` opens within `within` seconds."""
    try:
        host, port = split_host_port(address)
    except ValueError as exc:
        return CheckOutcome(healthy=False, detail=str(exc))
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return CheckOutcome(healthy=False, detail=_timed_out(within))
    except OSError as exc:
        return CheckOutcome(healthy=False, detail=_os_error(exc))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckOutcome(healthy=True, detail=f"connected to {address}")


async def _read_bounded(stream: asyncio.StreamReader) -> bytes:
    """Return the first OUTPUT_LIMIT bytes of `stream`, reading (and dropping) the rest to
    EOF so that the process never blocks on a full pipe."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < OUTPUT_LIMIT:
            kept += chunk[: OUTPUT_LIMIT - len(kept)]
    return bytes(kept)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # The check runs in a session of its own, so this also kills what it started
    # (`sh -c 'sleep 10'`), which would otherwise keep the output pipe open.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait (bounded) for a killed process to be reaped and its pipes to close."""
    try:
        async with asyncio.timeout(REAP_TIMEOUT):
            await process.wait()
    except TimeoutError:
        # A descendant that left the session still holds the pipe: stop waiting for it.
        log.warning("external check pid %d: output pipe still open after kill", process.pid)
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()


async def _external(command: str, *, within: float) -> CheckOutcome:
    """Return healthy when `command` (split with shell rules, run without a shell) exits 0
    within `within` seconds; the process is killed on timeout."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return CheckOutcome(healthy=False, detail=f"cannot split command {command!r}: {exc}")
    if not argv:
        return CheckOutcome(healthy=False, detail="empty command")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return CheckOutcome(healthy=False, detail=f"cannot run {argv[0]!r}: {_os_error(exc)}")
    assert process.stdout is not None
    try:
        async with asyncio.timeout(within):
            output = await _read_bounded(process.stdout)
            code = await process.wait()
    except TimeoutError:
        _kill_group(process)
        await _reap(process)
        return CheckOutcome(healthy=False, detail=_timed_out(within))
    except BaseException:  # cancelled: do not leave the process running
        _kill_group(process)
        await _reap(process)
        raise
    if code == 0:
        return CheckOutcome(healthy=True, detail="exit 0")
    lines = output.decode("utf-8", "replace").strip().splitlines()
    first = lines[0][:200] if lines else ""
    return CheckOutcome(healthy=False, detail=f"exit {code}: {first}" if first else f"exit {code}")


# ---------------------------------------------------------------------- many services

Report = tuple[str, CheckOutcome, int]

# A wake-up this close to a due time starts the check: the loop fires timers up to its clock
# resolution early, and services due within it are started together.
_DUE_SLACK: Final = 0.001


@dataclass(slots=True, eq=False)
class _Service:
    """One checked service: plain data between its checks, plus the task of the one in
    flight. Compared by identity: a restarted service is a new record."""

    id: str
    spec: CheckSpec
    docker_health: str | None  # kept for a Docker check only
    due: float = 0.0  # loop time of the next check; meaningful while `task` is None
    last: bool | None = None  # the last outcome, for the turned-unhealthy warning
    task: asyncio.Task[None] | None = None  # the check in flight
    rerun: bool = False  # check again as soon as the one in flight has finished


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class CheckRunner:
    """Keeps the wanted services checked and puts every outcome on `queue` as
    `(service_id, outcome, at_ns)`, in the order the checks finish.

    A new service is checked at once, then every `interval` seconds counted from the start of
    the previous check; at most one check per service is in flight, so a hung target costs
    one `timeout` per interval and never piles up.

    One scheduler task keeps a heap of due times; a due service's check runs in a task of its
    own that lives only as long as the check, reports, and schedules the next one. Between
    checks a service costs a small record and a heap entry.
    """

    def __init__(
        self,
        queue: asyncio.Queue[Report],
        *,
        interval: float = 3.0,
        timeout: float | None = None,
        clock: Callable[[], int] = time.time_ns,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"check interval must be positive, not {interval}")
        self._queue = queue
        self._interval = interval
        self._timeout = interval * 0.8 if timeout is None else timeout
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._services: dict[str, _Service] = {}
        # (due, tiebreak, service): a service has one valid entry while no check of it is in
        # flight; entries of stopped services and superseded due times are skipped lazily.
        self._heap: list[tuple[float, int, _Service]] = []
        self._tiebreak = itertools.count()
        self._scheduler: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # what the scheduler sleeps on
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        """Return the HTTP session, made on first use (inside the running loop)."""
        if self._session is None:
            # force_close: each check opens its own connection, so a server that stopped
            # accepting connections is not reported healthy through a kept-alive one.
            # limit=0: checks of many services never queue behind each other.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                trust_env=False,
                headers={"User-Agent": "sidecar-health-check"},
            )
        return self._session

    def services(self) -> frozenset[str]:
        """Return the IDs of the services being checked."""
        return frozenset(self._services)

    def update(
        self,
        specs: Mapping[str, CheckSpec],
        docker_health: Mapping[str, str | None] = NO_DOCKER_HEALTH,
    ) -> None:
        """Return nothing; make the wanted checks `specs` (by service ID) the running ones.

        New services are checked at once, removed ones stop, a changed spec restarts its
        service's checks. A changed `docker_health` re-runs that service's Docker check at
        once (right after the one in flight, if any). Must be called from within the running
        event loop.
        """
        if self._closed:
            raise RuntimeError("CheckRunner is closed")
        loop = asyncio.get_running_loop()
        for service_id, running in list(self._services.items()):
            if specs.get(service_id) != running.spec:
                self._stop(service_id)
        now = loop.time()
        for service_id, spec in specs.items():
            health = docker_health.get(service_id) if spec.type is CheckType.DOCKER else None
            service = self._services.get(service_id)
            if service is None:
                service = self._services[service_id] = _Service(service_id, spec, health)
                self._schedule(service, now)
            elif health != service.docker_health:
                service.docker_health = health
                if service.task is None:
                    self._schedule(service, now)
                else:
                    service.rerun = True
        if len(self._heap) > 2 * len(self._services) + 64:  # mostly skipped entries
            self._heap[:] = [entry for entry in self._heap if self._is_due_entry(entry)]
            heapq.heapify(self._heap)
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = loop.create_task(self._run_scheduler(), name="check scheduler")

    def _stop(self, service_id: str) -> None:
        service = self._services.pop(service_id)
        task, service.task = service.task, None
        if task is not None:
            # Cancelled before its next step, so it reports nothing; kept until it has
            # finished cleaning up (an External check is killed and reaped) for close().
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _is_due_entry(self, entry: tuple[float, int, _Service]) -> bool:
        due, _, service = entry
        return (
            service.task is None
            and service.due == due
            and self._services.get(service.id) is service
        )

    def _schedule(self, service: _Service, due: float) -> None:
        """Return nothing; have `service` checked at loop time `due`."""
        service.due = due
        entry = (due, next(self._tiebreak), service)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry and self._waiter is not None:
            _wake_up(self._waiter)  # earlier than what the scheduler sleeps until

    async def _run_scheduler(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            now = loop.time()
            while heap and heap[0][0] <= now + _DUE_SLACK:
                entry = heapq.heappop(heap)
                if self._is_due_entry(entry):
                    try:
                        self._launch(entry[2], loop)
                    except Exception:  # a bug here must not stop every service's checks
                        log.exception("cannot start check %s; retrying", entry[2].id)
                        self._schedule(entry[2], now + self._interval)
            # Nothing awaited since the heap was read, so a wake-up cannot be missed: what
            # was scheduled meanwhile is in the heap, what is scheduled later sets `waiter`.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(heap[0][0], _wake_up, waiter) if heap else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def _launch(self, service: _Service, loop: asyncio.AbstractEventLoop) -> None:
        service.rerun = False
        service.task = loop.create_task(
            self._check(service, loop.time(), service.docker_health),
            name=f"check {service.id}",
        )

    async def _check(self, service: _Service, started: float, docker_health: str | None) -> None:
        """Run one check of `service`, report it and schedule the next, unless the service
        was stopped meanwhile (then it is cancelled, or at least reports nothing)."""
        try:
            try:
                outcome = await run_check(
                    service.spec,
                    timeout=self._timeout,
                    session=self._client(),
                    docker_health=docker_health,
                )
            except Exception as exc:  # run_check never raises; should it, keep checking
                log.exception(
                    "check %s %s %r crashed", service.id, service.spec.type, service.spec.args
                )
                detail = f"check crashed: {type(exc).__name__}: {exc}"
                outcome = CheckOutcome(healthy=False, detail=detail)
            if self._services.get(service.id) is service:
                self._report(service, outcome)
                await self._queue.put((service.id, outcome, self._clock()))
        except Exception:
            log.exception("reporting check %s failed", service.id)
        finally:
            if self._services.get(service.id) is service:  # else stopped: nothing follows
                service.task = None
                if service.rerun:
                    self._schedule(service, asyncio.get_running_loop().time())
                else:
                    # Took longer than the interval: due at once, started by the scheduler
                    # after a trip through the loop.
                    self._schedule(service, started + self._interval)

    def _report(self, service: _Service, outcome: CheckOutcome) -> None:
        previous = service.last
        service.last = outcome.healthy
        spec = service.spec
        log.debug(
            "check %s %s %r: %s (%s)",
            *(service.id, spec.type, spec.args, outcome.healthy, outcome.detail),
        )
        if previous is True and outcome.healthy is False:
            log.warning(
                "check %s %s %r turned unhealthy: %s",
                *(service.id, spec.type, spec.args, outcome.detail),
            )

    async def close(self) -> None:
        """Return once every check is cancelled (External ones killed and reaped), the
        scheduler has stopped and the owned HTTP session is closed."""
        self._closed = True
        for service_id in list(self._services):
            self._stop(service_id)
        self._heap.clear()
        tasks = list(self._stopping)
        if self._scheduler is not None:
            self._scheduler.cancel()
            tasks.append(self._scheduler)
            self._scheduler = None
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
