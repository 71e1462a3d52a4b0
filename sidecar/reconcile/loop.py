"""The reconcile loop: keep this host's HAProxy and bind address following the routing table.

`Reconciler.update(table)` hands it the newest routing table; `run()` applies it: changes
that arrive within `min_wait` of each other coalesce into one apply, an apply never waits
more than `max_wait` after the first change it carries, and the last table is always the
one applied. Every `resync` seconds (and when HAProxy exits) it plans again without a
change, which restarts a dead HAProxy and finishes deletions that had to wait.

One apply: `desired(table)` → read actual (HAProxy adapter + address adapter) → `plan` →
carry out the actions in order. What goes wrong decides what follows (the policy lives
here, not in the adapters):

* the new config is rejected (or the template fails): nothing else is done, the running
  HAProxy and the file stay as they were, and the next change tries again (a resync of the
  same view and settings does not try again, nor log it again: it would be refused again);
  should HAProxy not be running meanwhile, it is started from the last good config (the one
  last applied, else the file on disk), and the refusal is still what is reported;
* a runtime API command is refused: fall back to write + validate + reload;
* a server to delete is still busy: it stays in maintenance and is retried soon;
* HAProxy does not start or reload, or the address cannot be bound: retried with backoff.

With `apply=False` (observe-only) the plan is computed and kept, never carried out.

For a large view the pure part (routing table, render, plan: ~0.3 s at 10,000 services) runs
in a worker thread, so the event loop, its checks and API answers, is not stalled by it (the
rare re-plan of a runtime fallback, which parses no config on disk, stays on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, assert_never

from sidecar.reconcile.desired import Desired, HaproxySettings, TemplateError, desired
from sidecar.reconcile.errors import (
    AddressFailed,
    ApplyError,
    ConfigRejected,
    RuntimeRefused,
    ServerBusy,
)
from sidecar.reconcile.plans import (
    Action,
    Actual,
    AddServer,
    Bind,
    DelServer,
    EnableServer,
    Reload,
    SetServerAddr,
    Start,
    Write,
    plan,
)
from sidecar.reconcile.report import plan_report
from sidecar.state import views
from sidecar.state.model import ClusterState
from sidecar.state.views import Exclusion, RoutingTable

log = logging.getLogger("sidecar.reconcile")

BUSY_RETRY = 0.5
MAX_BACKOFF = 10.0


class HaproxyPort(Protocol):
    """What the loop needs of the HAProxy adapter (`sidecar.adapters.haproxy.Haproxy`)."""

    async def read_actual(self) -> Actual: ...
    async def write(self, config: str, *, reload_follows: bool = False) -> None: ...
    async def start(self) -> None: ...
    async def reload(self) -> None: ...
    async def add_server(
        self, backend: str, server: str, address: str, port: int, options: tuple[str, ...]
    ) -> None: ...
    async def enable_server(self, backend: str, server: str) -> None: ...
    async def del_server(self, backend: str, server: str) -> None: ...
    async def set_server_addr(self, backend: str, server: str, address: str, port: int) -> None: ...


class AddressPort(Protocol):
    """What the loop needs of the address adapter (`sidecar.adapters.ipbind.IpBinder`)."""

    def bound(self) -> frozenset[str]: ...
    def bind(self, ip: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """One apply: the plan, what was carried out, and the error that stopped it, if any."""

    actions: tuple[Action, ...]
    done: tuple[Action, ...] = ()
    error: str | None = None
    deferred: str | None = None  # a deletion waits for requests in flight; retried soon
    fallback: bool = False  # a runtime command failed and the change was made by reload
    applied: bool = True  # False in observe-only mode
    at: float = 0.0  # time.time() when it finished


@dataclass
class Stats:
    """Counts since start, for metrics and tests."""

    applies: int = 0
    failures: int = 0
    fallbacks: int = 0
    reloads: int = 0
    starts: int = 0
    runtime_ops: int = 0
    binds: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


_RUNTIME_ACTIONS = (AddServer, DelServer, EnableServer, SetServerAddr)

# Records (or routed services) beyond which the pure part of a reconcile runs in a thread
# (the view, the settings and the plan are immutable; one reconcile runs at a time).
OFFLOAD_SERVICES = 1000


def _size(view: RoutingTable | ClusterState) -> int:
    """Return the number of records in a state, or of services in a routing table."""
    if isinstance(view, ClusterState):
        return sum(len(server.entries) for server in view.servers.values())
    return len(view.services)


class Reconciler:
    """Applies the newest routing table to this host (see the module docstring)."""

    def __init__(
        self,
        haproxy: HaproxyPort,
        addresses: AddressPort | None,
        settings: HaproxySettings,
        *,
        apply: bool = True,
        min_wait: float = 0.02,
        max_wait: float = 1.0,
        resync: float = 10.0,
        config_file: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= min_wait <= max_wait:
            raise ValueError(f"need 0 <= min_wait <= max_wait, got {min_wait} and {max_wait}")
        self.haproxy = haproxy
        self.addresses = addresses
        self.settings = settings
        self.apply = apply
        self.min_wait, self.max_wait, self.resync = min_wait, max_wait, resync
        self.config_file = config_file  # named in plan reports
        self.stats = Stats()
        self.last: Outcome | None = None
        self.last_desired: Desired | None = None
        self._clock = clock
        self._table: RoutingTable | ClusterState | None = None
        # What the last plan was made from; its document is made when asked for (the diff
        # of two configs of 10,000 services is megabytes and seconds of difflib).
        self._planned: tuple[Desired, Actual, tuple[Action, ...], Sequence[Exclusion]] | None = None
        self._report: dict[str, Any] | None = None
        # The view and settings last rendered, with what they gave (or the TemplateError).
        self._rendered: (
            tuple[
                RoutingTable | ClusterState,
                HaproxySettings,
                Desired | TemplateError,
                Sequence[Exclusion],
            ]
            | None
        ) = None
        self._good: Desired | None = None  # the last config applied: what a restart uses
        self._refused: tuple[str, str] | None = None  # the last config refused, and why
        self._written: str | None = None  # the config this loop last wrote
        self._unloaded: str | None = None  # a config written whose reload failed
        self._changed = asyncio.Event()
        self._retry_at: float | None = None
        self._backoff = 0.5
        self._logged_error: str | None = None  # said once while retries meet it again
        self._applied = asyncio.Condition()
        self._generation = 0  # tables handed in
        self._done_generation = 0  # tables applied (or attempted)

    @property
    def last_excluded(self) -> Sequence[Exclusion]:
        """Return the instances the last reconcile's routing table left out (none before)."""
        return () if self._planned is None else self._planned[3]

    @property
    def last_report(self) -> dict[str, Any] | None:
        """Return the plan document (`sidecar plan --json`) of the last reconcile, or None
        before the first; made on the first request after each reconcile."""
        if self._report is None and self._planned is not None:
            want, actual, actions, excluded = self._planned
            self._report = plan_report(
                want, actual, actions, excluded, config_file=self.config_file
            )
        return self._report

    def update(self, view: RoutingTable | ClusterState) -> None:
        """Hand in the newest routing table, or the cluster state to derive it from (then the
        table is only computed for the state that gets applied, after the debounce)."""
        self._table = view
        self._generation += 1
        self._changed.set()

    def poke(self, *_: object) -> None:
        """Plan again soon without a new table (e.g. HAProxy exited)."""
        self._changed.set()

    async def settled(self) -> Outcome | None:
        """Return the outcome once every table handed in so far has been tried."""
        async with self._applied:
            target = self._generation
            await self._applied.wait_for(lambda: self._done_generation >= target)
        return self.last

    async def run(self) -> None:
        """Apply changes until cancelled."""
        while True:
            await self._wait_for_change()
            await self.reconcile()

    async def _wait_for_change(self) -> None:
        timeout = self.resync
        if self._retry_at is not None:
            timeout = min(timeout, max(0.0, self._retry_at - self._clock()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        if not self._changed.is_set():
            return  # resync or retry time
        first = self._clock()
        while True:
            self._changed.clear()
            left = first + self.max_wait - self._clock()
            if left <= 0:
                return
            try:
                async with asyncio.timeout(min(self.min_wait, left)):
                    await self._changed.wait()
            except TimeoutError:
                return

    async def reconcile(self) -> Outcome | None:
        """Plan and (unless observe-only) apply the newest table once; return the outcome."""
        self._changed.clear()
        if self._table is None:
            return None
        generation = self._generation
        try:
            outcome = await self._reconcile(self._table)
        except Exception as exc:  # a bug must not end the loop: report it, back off, go on
            log.exception("reconcile failed")
            outcome = self._finish(Outcome((), error=f"internal error: {exc!r}"))
        finally:
            async with self._applied:
                self._done_generation = max(self._done_generation, generation)
                self._applied.notify_all()
        return outcome

    async def _actual(self) -> Actual:
        actual = await self.haproxy.read_actual()
        if self.addresses is None:
            return actual
        bound = await asyncio.to_thread(self.addresses.bound)
        return replace(actual, bound_ips=bound)

    def _render(self, view: RoutingTable | ClusterState) -> tuple[Desired, Sequence[Exclusion]]:
        """Return the desired config for `view` and the instances it leaves out, rendered
        again only when the view or the settings changed (a resync or a retry reuses it).

        Raises TemplateError. May run in a worker thread: it reads `settings` once (a
        SIGHUP may replace them meanwhile) and only it writes what it rendered."""
        settings = self.settings
        if self._rendered is not None:
            seen, used, result, excluded = self._rendered
            if seen is view and used is settings:
                if isinstance(result, TemplateError):
                    raise result
                return result, excluded
        table = views.routing_table(view) if isinstance(view, ClusterState) else view
        try:
            rendered = desired(table, settings, now=time.time_ns())
        except TemplateError as exc:
            self._rendered = (view, settings, exc, table.excluded)
            raise
        # Kept without the rendered structure (three objects per server): a plan needs only
        # the text and the bind IPs.
        want = Desired(rendered.config, bind_ips=rendered.bind_ips)
        self._rendered = (view, settings, want, table.excluded)
        return want, table.excluded

    async def _reconcile(self, view: RoutingTable | ClusterState) -> Outcome:
        offload = _size(view) > OFFLOAD_SERVICES
        try:
            if offload:
                want, excluded = await asyncio.to_thread(self._render, view)
            else:
                want, excluded = self._render(view)
        except TemplateError as exc:
            return await self._refusal(str(exc))
        self.last_desired = want
        try:
            actual = await self._actual()
        except (ApplyError, OSError, ValueError) as exc:
            # The address listing failed, the config file cannot be read: a failure like an
            # apply's, retried after a backoff; the loop goes on.
            return self._finish(Outcome((), error=f"cannot read what runs: {exc}"))
        if actual.running and actual.config is not None and actual.config == self._unloaded:
            actual = replace(actual, loaded=False)  # the file is new to HAProxy: reload it
        actions = await asyncio.to_thread(plan, want, actual) if offload else plan(want, actual)
        # A report shows the config on disk and whether HAProxy runs, not its servers.
        shown = Actual(config=actual.config, running=actual.running, bound_ips=actual.bound_ips)
        self._planned, self._report = (want, shown, actions, excluded), None
        if not self.apply:
            return self._finish(Outcome(actions, applied=False))
        if not actions:
            self._good = want
            return self._finish(Outcome(()))
        if self._refused is not None and self._refused[0] == want.config:
            # HAProxy refused this very config already: unchanged, it would be refused again.
            return await self._refusal(self._refused[1], actual=actual, actions=actions)
        done: list[Action] = []
        try:
            await self._carry_out(actions, done)
        except ServerBusy as exc:
            return self._finish(Outcome(actions, tuple(done), deferred=str(exc)))
        except RuntimeRefused as exc:
            log.warning("runtime API refused a change, reloading instead: %s", exc)
            return await self._fall_back(want, actions, done, str(exc))
        except ConfigRejected as exc:
            self._refused = (want.config, str(exc))
            return await self._refusal(str(exc), actual=actual, actions=actions, done=done)
        except ApplyError as exc:
            return self._finish(Outcome(actions, tuple(done), error=str(exc)))
        self._good, self._refused = want, None
        return self._finish(Outcome(actions, tuple(done)))

    async def _refusal(
        self,
        error: str,
        *,
        actual: Actual | None = None,
        actions: tuple[Action, ...] = (),
        done: Sequence[Action] = (),
    ) -> Outcome:
        """Return the outcome of a template or config that was refused: reported, not
        retried before the next change; HAProxy, should it not run, is started from the
        last good config. Told again (logged and counted) only when it is news."""
        news = bool(done) or self.last is None or self.last.error != error
        try:
            actual = actual or await self._actual()
        except (ApplyError, OSError, ValueError) as exc:
            return self._finish(Outcome(actions, tuple(done), error=f"{error}; {exc}"))
        outcome = Outcome(actions, tuple(done), error=error)
        if actual.running:
            return self._finish(outcome, retry="next-change", news=news)
        good = self._good or (Desired(actual.config) if actual.config is not None else None)
        if good is None:
            return self._finish(outcome, retry="on-error")  # nothing good to start from
        steps = plan(good, replace(actual, config=None))  # written again: validated, intact
        carried = list(done)
        try:
            await self._carry_out(steps, carried)
        except ApplyError as exc:
            failed = f"{error}; and HAProxy did not start from the last good config: {exc}"
            return self._finish(replace(outcome, done=tuple(carried), error=failed))
        log.warning("HAProxy is not running: started from the last good config")
        return self._finish(
            replace(outcome, actions=actions + steps, done=tuple(carried)), retry="next-change"
        )

    async def _fall_back(
        self, want: Desired, actions: tuple[Action, ...], done: list[Action], why: str
    ) -> Outcome:
        self.stats.fallbacks += 1
        actual = replace(await self._actual(), config=None)  # forces write + reload
        again = plan(want, actual)
        try:
            await self._carry_out(again, done)
        except ApplyError as exc:
            retry = "next-change" if isinstance(exc, ConfigRejected) else "on-error"
            return self._finish(
                Outcome(actions + again, tuple(done), error=f"{why}; then: {exc}", fallback=True),
                retry=retry,
            )
        self._good, self._refused = want, None
        return self._finish(Outcome(actions + again, tuple(done), fallback=True))

    async def _carry_out(self, actions: tuple[Action, ...], done: list[Action]) -> None:
        busy: ServerBusy | None = None
        for index, action in enumerate(actions):
            after = actions[index + 1] if index + 1 < len(actions) else None
            try:
                await self._one(action, reload_follows=isinstance(after, Reload))
            except ServerBusy as exc:
                busy = busy or exc
                continue
            done.append(action)
            self.stats.by_kind[action.kind] = self.stats.by_kind.get(action.kind, 0) + 1
            if isinstance(action, _RUNTIME_ACTIONS):
                self.stats.runtime_ops += 1
            log.info("%s", action.describe())
        if busy is not None:
            raise busy

    async def _one(self, action: Action, *, reload_follows: bool = False) -> None:
        h = self.haproxy
        match action:
            case Bind():
                if self.addresses is None:
                    raise AddressFailed(
                        f"{action.address} is not bound and no interface is managed"
                    )
                await asyncio.to_thread(self.addresses.bind, action.address)
                self.stats.binds += 1
            case Write():
                # A reload next checks the config as it loads it (managed mode): the adapter
                # may leave the check to it, and the reload raises ConfigRejected.
                await h.write(action.config, reload_follows=reload_follows)
                self._written = action.config
            case Start():
                await h.start()
                self._unloaded = None
                self.stats.starts += 1
            case Reload():
                try:
                    await h.reload()
                except ConfigRejected:
                    raise  # the file is back as it was: nothing new to load
                except ApplyError:
                    # The old workers serve on; the file they did not load must be reloaded
                    # even if nothing changes any more (`Actual.loaded`).
                    self._unloaded = self._written
                    raise
                self._unloaded = None
                self.stats.reloads += 1
            case AddServer():
                await h.add_server(
                    action.backend, action.server, action.address, action.port, action.options
                )
            case EnableServer():
                await h.enable_server(action.backend, action.server)
            case DelServer():
                await h.del_server(action.backend, action.server)
            case SetServerAddr():
                await h.set_server_addr(action.backend, action.server, action.address, action.port)
            case _:
                assert_never(action)

    def _finish(self, outcome: Outcome, *, retry: str = "on-error", news: bool = True) -> Outcome:
        """Record an outcome and when to try again: soon for a deferred deletion; after a
        backoff for a failure (`on-error`); at the next change for a rejected config or
        template (`next-change`: they do not fix themselves). A failure that is no `news`
        (the same refusal met again by a resync) is neither logged nor counted again; one a
        retry meets again is counted, and logged as an error only the first time."""
        outcome = replace(outcome, at=time.time())
        self.last = outcome
        if outcome.applied and outcome.actions and news:
            self.stats.applies += 1
        if outcome.error is not None and not news:
            log.debug("HAProxy still not updated: %s", outcome.error)
            self._retry_at = None
        elif outcome.error is not None:
            self.stats.failures += 1
            if outcome.error == self._logged_error:
                log.debug("HAProxy still not updated (retrying): %s", outcome.error)
            else:
                log.error("HAProxy not updated: %s", outcome.error)
                self._logged_error = outcome.error
            if retry == "on-error":
                self._retry_at = self._clock() + self._backoff
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
            else:
                self._retry_at = None
        elif outcome.deferred is not None:
            log.info("%s", outcome.deferred)
            self._retry_at = self._clock() + BUSY_RETRY
        else:
            self._retry_at, self._backoff = None, 0.5
            self._logged_error = None
        return outcome
