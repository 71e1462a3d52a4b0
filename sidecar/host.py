"""What runs on this host: Docker and static discovery plus health checks, through the core.

`HostDiscovery` runs the Docker adapter, the static-file adapter and the check runner, and
folds what they report with the core's pure functions (`observe_container`,
`containers_to_serve`, `record_result`, `with_health`) into `HostObservation`s: the records
this host serves, each with the status its checks decided, and the containers rejected with
their reasons. It emits a new one whenever what it would say changes. The daemon's state
owner (`sidecar.owner`) stamps them into the cluster state; `bench/discovery.py` measures
them.

It decides nothing itself: every rule is in `sidecar.state.discovery`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, assert_never

from sidecar.adapters.checks import CheckOutcome, CheckRunner, Report
from sidecar.adapters.listeners import service_name
from sidecar.adapters.static import StaticDiscovery, StaticSnapshot
from sidecar.state import discovery
from sidecar.state.discovery import (
    CheckSpec,
    ContainerFacts,
    ContainerListing,
    DiscoveryPolicy,
    EngineUnreachable,
    Health,
    Observed,
    Rejected,
)
from sidecar.state.model import Service
from sidecar.supervise import PartEnded, supervised

if TYPE_CHECKING:  # the Docker SDK is imported only where Docker discovery is configured
    from sidecar.adapters.docker import DockerDiscovery

log = logging.getLogger("sidecar.host")


class SourceEnded(RuntimeError):
    """A source of observations (Docker, the static file, the checks) stopped for good."""


@dataclass(frozen=True, slots=True)
class _CheckReport:
    """One check's outcome for a service, and when it ended (ns)."""

    service_id: str
    outcome: CheckOutcome
    at: int


# What the folding loop takes in: a source that ended, what the sources saw, a check's
# outcome, or None when the Engine-outage grace ran out.
_Input = PartEnded | ContainerListing | EngineUnreachable | StaticSnapshot | _CheckReport | None


@dataclass(frozen=True, slots=True)
class HostObservation:
    """The records this host serves (health-stamped, `updated` 0) and the rejected ones, and
    why the static file as it is now is not used (None when it is, or there is none; its
    last good services are still among `services`), the state-change listeners its
    services asked for: (Go's name `Service(<name>-<id>)`, URL), sorted, and whether it is
    settled: every source has reported (Docker listed its containers, the static file was
    read) and every service served has had its first check, so that `services` says what
    runs, not only what was seen so far."""

    services: tuple[Service, ...]
    rejected: tuple[Rejected, ...]
    at: int
    static_error: str | None = None
    listeners: tuple[tuple[str, str], ...] = ()
    settled: bool = False


@dataclass(frozen=True, slots=True)
class LastCheck:
    """A service's check and its latest outcome, with when it ended (ns; None before)."""

    spec: CheckSpec
    outcome: CheckOutcome | None
    at: int | None


class HostDiscovery:
    """Runs discovery and checks for this host and emits `HostObservation`s on change."""

    def __init__(
        self,
        policy: DiscoveryPolicy,
        *,
        docker: DockerDiscovery | None = None,
        static: StaticDiscovery | None = None,
        check_interval: float = 3.0,
        check_timeout: float | None = None,
        grace: int = discovery.DOCKER_OUTAGE_GRACE,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._policy = policy
        self._docker = docker
        self._static = static
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._grace = grace
        self._clock = clock
        self._listing: tuple[ContainerFacts, ...] = ()
        self._listed = False  # Docker has listed its containers at least once
        self._static_read = False  # the static file has been read at least once
        self._unreachable_since: int | None = None
        self._static_observed: tuple[Observed, ...] = ()
        self._static_rejected: tuple[Rejected, ...] = ()
        self._static_error: str | None = None
        self._health: dict[str, Health] = {}
        self._last_checks: dict[str, tuple[CheckOutcome, int]] = {}
        self._observed: dict[str, Observed] = {}
        self._logged_rejections: set[tuple[str, str]] = set()
        self._last: HostObservation | None = None
        self.check_results: collections.Counter[str] = collections.Counter()
        """Check outcomes so far: healthy, unhealthy, unknown (for metrics)."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Queue[HostObservation]]:
        """Yield the queue of observations while `run` feeds it; stop it on exit."""
        out: asyncio.Queue[HostObservation] = asyncio.Queue()
        task = asyncio.create_task(self.run(out))
        try:
            yield out
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def static_error(self) -> str | None:
        """Return the static file's error as of the last observation emitted, or None."""
        return None if self._last is None else self._last.static_error

    def check_for(self, service_id: str) -> CheckSpec | None:
        """Return the check the service with this ID gets, or None if it is not served."""
        observed = self._observed.get(service_id)
        return None if observed is None else observed.check

    def last_checks(self) -> dict[str, LastCheck]:
        """Return each served service's check and its latest outcome (None before the first
        one), by service ID."""
        found: dict[str, LastCheck] = {}
        for service_id, observed in self._observed.items():
            outcome, at = self._last_checks.get(service_id, (None, None))
            found[service_id] = LastCheck(observed.check, outcome, at)
        return found

    async def run(self, out: asyncio.Queue[HostObservation]) -> None:
        """Return never; feed `out` until cancelled."""
        inputs: asyncio.Queue[Any] = asyncio.Queue()
        reports: asyncio.Queue[Report] = asyncio.Queue()
        runner = CheckRunner(
            reports,
            interval=self._check_interval,
            timeout=self._check_timeout,
            clock=self._clock,
        )
        sources = {"check reports": self._forward(reports, inputs)}
        if self._docker is not None:
            sources["Docker discovery"] = self._docker.run(inputs)
        if self._static is not None:
            sources["static discovery"] = self._static.run(inputs)
        try:
            # Each runs until cancelled; one that ends anyway is news for the loop below.
            async with supervised(sources, on_end=inputs.put_nowait):
                await self._observe(inputs, out, runner)
        finally:
            await runner.close()

    async def _observe(
        self,
        inputs: asyncio.Queue[_Input],
        out: asyncio.Queue[HostObservation],
        runner: CheckRunner,
    ) -> None:
        """Fold each input in and emit an observation whenever what is served may differ."""
        await self._emit(out, runner)
        while True:
            timeout = self._grace_left()
            try:
                # Not asyncio.wait_for, which on 3.11 can swallow a cancellation.
                async with asyncio.timeout(timeout):
                    item = await inputs.get()
            except TimeoutError:
                item = None  # the outage grace ran out
            changed = self._fold(item)
            # Whatever else is already queued is folded in too, then one emit: a burst
            # of check results or Docker events is one observation, not one each.
            while not inputs.empty():
                changed = self._fold(inputs.get_nowait()) or changed
            if changed:
                await self._emit(out, runner)

    @staticmethod
    async def _forward(reports: asyncio.Queue[Report], inputs: asyncio.Queue[_Input]) -> None:
        while True:
            await inputs.put(_CheckReport(*await reports.get()))

    def _grace_left(self) -> float | None:
        if self._unreachable_since is None:
            return None
        left = self._unreachable_since + self._grace - self._clock()
        return None if left < 0 else left / 1e9 + 0.001

    def _fold(self, item: _Input) -> bool:
        """Take one input in; return whether what this host serves may have changed (a check
        result that leaves the service's status as it was changes nothing).

        Raises SourceEnded when one of the sources stopped: what this host serves would no
        longer follow what runs, so nothing more is observed (the daemon stops).
        """
        match item:
            case PartEnded():
                raise SourceEnded(str(item)) from item.cause
            case ContainerListing():
                self._listing = item.containers
                self._listed = True
                self._unreachable_since = None
            case EngineUnreachable():
                self._unreachable_since = item.since
            case StaticSnapshot():
                self._static_observed = item.observed
                self._static_read = True
                self._static_rejected = item.rejected
                self._static_error = item.error
            case _CheckReport():
                return self._fold_check(item)
            case None:  # the outage grace ran out: the Engine's containers may go
                pass
            case _:
                assert_never(item)
        return True

    def _fold_check(self, report: _CheckReport) -> bool:
        outcome = report.outcome
        first = report.service_id not in self._last_checks
        self._last_checks[report.service_id] = (outcome, report.at)
        self.check_results[
            "unknown" if outcome.healthy is None else "healthy" if outcome.healthy else "unhealthy"
        ] += 1
        observed = self._observed.get(report.service_id)
        if observed is None or outcome.healthy is None:
            return first and observed is not None  # a first check may settle the host
        before = self._health.get(report.service_id, Health())
        after = discovery.record_result(
            before, healthy=outcome.healthy, rise=observed.check.rise, fall=observed.check.fall
        )
        self._health[report.service_id] = after
        return after.status is not before.status

    async def _emit(self, out: asyncio.Queue[HostObservation], runner: CheckRunner) -> None:
        now = self._clock()
        containers = discovery.containers_to_serve(
            self._listing, unreachable_since=self._unreachable_since, now=now, grace=self._grace
        )
        observed: dict[str, Observed] = {o.service.id: o for o in self._static_observed}
        rejected: list[Rejected] = list(self._static_rejected)
        for facts in containers:
            result = discovery.observe_container(facts, self._policy)
            if isinstance(result, Observed):
                observed[result.service.id] = result
            elif isinstance(result, Rejected):
                rejected.append(result)
                if (result.id, result.reason) not in self._logged_rejections:
                    self._logged_rejections.add((result.id, result.reason))
                    log.warning(
                        "not serving container %s %s: %s", result.id, result.name, result.reason
                    )
        self._observed = observed
        self._health = {k: v for k, v in self._health.items() if k in observed}
        self._last_checks = {k: v for k, v in self._last_checks.items() if k in observed}
        runner.update(
            {service_id: o.check for service_id, o in observed.items()},
            {discovery.short_id(f.id): f.health for f in containers},
        )
        services = tuple(discovery.with_health(observed.values(), self._health))
        listeners = tuple(
            sorted(
                (service_name(o.service.name, o.service.id), o.listener)
                for o in observed.values()
                if o.listener is not None
            )
        )
        settled = (
            (self._docker is None or self._listed)
            and (self._static is None or self._static_read)
            and all(service_id in self._last_checks for service_id in observed)
        )
        last = self._last
        if (
            last is None
            or services != last.services
            or tuple(rejected) != last.rejected
            or self._static_error != last.static_error
            or listeners != last.listeners
            or settled != last.settled
        ):
            self._last = HostObservation(
                services, tuple(rejected), now, self._static_error, listeners, settled
            )
            await out.put(self._last)
