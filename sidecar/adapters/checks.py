"""Health checks: run one check (`run_check`) and keep many services checked (`CheckRunner`).

An adapter: it runs checks and reports raw outcomes. Thresholds (rise/fall), templating and
whether External checks are allowed at all are decided by the core (`sidecar.state.discovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
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


class CheckRunner:
    """Keeps the wanted services checked, one loop per service, and puts every outcome on
    `queue` as `(service_id, outcome, at_ns)`.

    A new service is checked at once, then every `interval` seconds counted from the start of
    the previous check; at most one check per service is in flight, so a hung target costs
    one `timeout` per interval and never piles up.
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
        self._loops: dict[str, tuple[CheckSpec, asyncio.Task[None]]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._wake: dict[str, asyncio.Event] = {}
        self._docker_health: dict[str, str | None] = {}
        self._last: dict[str, bool | None] = {}
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
        return frozenset(self._loops)

    def update(
        self,
        specs: Mapping[str, CheckSpec],
        docker_health: Mapping[str, str | None] = NO_DOCKER_HEALTH,
    ) -> None:
        """Return nothing; make the wanted checks `specs` (by service ID) the running ones.

        New services are checked at once, removed ones stop, a changed spec restarts its
        service's loop. A changed `docker_health` re-runs that service's Docker check at once.
        Must be called from within the running event loop.
        """
        if self._closed:
            raise RuntimeError("CheckRunner is closed")
        for service_id in list(self._loops):
            spec, _ = self._loops[service_id]
            if specs.get(service_id) != spec:
                self._stop(service_id)
        for service_id, spec in specs.items():
            health = docker_health.get(service_id)
            changed = self._docker_health.get(service_id) != health
            self._docker_health[service_id] = health
            if service_id not in self._loops:
                self._start(service_id, spec)
            elif changed and spec.type is CheckType.DOCKER:
                self._wake[service_id].set()
        for service_id in set(self._docker_health) - set(specs):
            del self._docker_health[service_id]

    def _start(self, service_id: str, spec: CheckSpec) -> None:
        self._wake[service_id] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            self._run(service_id, spec), name=f"check {service_id}"
        )
        self._loops[service_id] = (spec, task)

    def _stop(self, service_id: str) -> None:
        _, task = self._loops.pop(service_id)
        del self._wake[service_id]
        self._last.pop(service_id, None)
        # Cancelled before its next step, so it reports nothing more; kept until it has
        # finished cleaning up (an External check is killed and reaped) for close().
        task.cancel()
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _run(self, service_id: str, spec: CheckSpec) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake[service_id]
        session = self._client()
        while True:
            started = loop.time()
            wake.clear()
            outcome = await run_check(
                spec,
                timeout=self._timeout,
                session=session,
                docker_health=self._docker_health.get(service_id),
            )
            self._report(service_id, spec, outcome)
            await self._queue.put((service_id, outcome, self._clock()))
            delay = started + self._interval - loop.time()
            if delay <= 0:
                await asyncio.sleep(0)  # took longer than the interval: run again right away
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    def _report(self, service_id: str, spec: CheckSpec, outcome: CheckOutcome) -> None:
        previous = self._last.get(service_id)
        self._last[service_id] = outcome.healthy
        log.debug(
            "check %s %s %r: %s (%s)",
            *(service_id, spec.type, spec.args, outcome.healthy, outcome.detail),
        )
        if previous is True and outcome.healthy is False:
            log.warning(
                "check %s %s %r turned unhealthy: %s",
                *(service_id, spec.type, spec.args, outcome.detail),
            )

    async def close(self) -> None:
        """Return once every check is cancelled and the owned HTTP session is closed."""
        self._closed = True
        for service_id in list(self._loops):
            self._stop(service_id)
        tasks = list(self._stopping)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
