"""State-change listeners: every change of the cluster state POSTed to URLs (Go's UrlListener,
sidecar-behaviour.md §7).

Three sources, as Go: the configured URLs (`[listeners] urls`, named `UrlListener(<url>)`,
never removed), and the listeners discovery finds — containers labelled
`SidecarListener=<service port>` and static targets with `ListenPort`, named
`Service(<name>-<id>)` — which come and go with discovery's observations (`track`): one that
is no longer discovered is stopped and its queue dropped.

Every change event is one POST of Go's `StateChangedEvent` JSON (`codec.encode_state_changed`)
with `Content-Type: application/json`, the `sidecar-session-host` cookie, a 3 s timeout; a
2xx is a delivery. Otherwise Go's schedule: 6 attempts, sleeping 0, 0, 100, 200, 300 and
400 ms after each failed one, then one warning naming the URL and the last error. Unlike Go,
a retry sends the whole body again (Go's send an empty one).

The owner's sink (`offer`) only enqueues, so a slow or dead receiver never holds up the
daemon: each listener has its own bounded queue (20 events, as Go's channel) and one task
that posts them in order. When the queue is full the oldest queued event is dropped, so the
queue always holds the newest events, the last of them with the newest state (Go drops the
newest instead). Each event carries the state as of its change (Go reads the state when it
posts), encoded once for all listeners when the first one posts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from sidecar.state import codec, times
from sidecar.state.model import ChangeEvent, ClusterState

log = logging.getLogger("sidecar.listeners")

QUEUE_SIZE: Final = 20
"""Events a listener holds while it posts (Go's LISTENER_EVENT_BUFFER_SIZE)."""
POST_TIMEOUT: Final = 3.0
"""Seconds one POST may take, connection included (Go's ClientTimeout)."""
RETRY_SLEEPS: Final = (0.0, 0.0, 0.1, 0.2, 0.3, 0.4)
"""One entry per attempt: the sleep after it fails (Go's: 6 attempts, 100 ms × (i - 1))."""
SESSION_COOKIE: Final = "sidecar-session-host"

Post = Callable[[str, bytes], Awaitable[int]]
"""POSTs a body to a URL and returns the HTTP status; raises when there is no answer."""


def static_name(url: str) -> str:
    """Return Go's name of a configured listener: `UrlListener(<url>)`."""
    return f"UrlListener({url})"


def service_name(name: str, service_id: str) -> str:
    """Return Go's name of a discovered listener: `Service(<name>-<id>)`."""
    return f"Service({name}-{service_id})"


class Pending:
    """One change to deliver: the event and the state right after it. The body is encoded
    on first use and shared by every listener that posts it."""

    __slots__ = ("_body", "event", "state")

    def __init__(self, state: ClusterState, event: ChangeEvent) -> None:
        self.state = state
        self.event = event
        self._body: bytes | None = None

    def body(self) -> bytes:
        """Return the `StateChangedEvent` document (Go's JSON bytes)."""
        if self._body is None:
            self._body = codec.encode_state_changed(self.state, self.event)
        return self._body


class DeliveryQueue:
    """A bounded FIFO of pending changes that drops the oldest when full: it always holds
    the newest `capacity` changes, in order. `put` never blocks."""

    def __init__(self, capacity: int = QUEUE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"a listener queue holds at least 1 event, not {capacity}")
        self.capacity = capacity
        self._items: deque[Pending] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Pending) -> int:
        """Append `item`; return how many of the oldest were dropped to make room (0 or 1)."""
        self._items.append(item)
        dropped = 0
        while len(self._items) > self.capacity:
            self._items.popleft()
            dropped += 1
        self._ready.set()
        return dropped

    async def get(self) -> Pending:
        """Return the oldest queued change, waiting for one if there is none."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


@dataclass(slots=True)
class ListenerStats:
    """What one listener did (for metrics)."""

    deliveries: int = 0
    """Events a receiver accepted (2xx)."""
    retries: int = 0
    """Attempts after an event's first one."""
    dropped_overflow: int = 0
    """Events dropped unsent because the queue was full (the oldest go)."""
    dropped_failed: int = 0
    """Events given up after every attempt failed."""


class UrlListener:
    """One URL that gets every change: its queue and the task that posts it (`run`)."""

    def __init__(
        self,
        name: str,
        url: str,
        post: Post,
        *,
        managed: bool,
        capacity: int = QUEUE_SIZE,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.url = url
        self.managed = managed
        self.stats = ListenerStats()
        self.queue = DeliveryQueue(capacity)
        self._post = post
        self._sleep = sleep

    def offer(self, pending: Pending) -> None:
        """Queue a change (never blocks; the oldest queued one goes when the queue is full)."""
        self.stats.dropped_overflow += self.queue.put(pending)

    async def run(self) -> None:
        """Return never: post each queued change in turn, until cancelled."""
        while True:
            pending = await self.queue.get()
            await self.deliver(pending.body())

    async def deliver(self, body: bytes) -> bool:
        """POST `body` on Go's schedule; return whether a receiver accepted it."""
        error = ""
        for attempt, pause in enumerate(RETRY_SLEEPS):
            if attempt:
                self.stats.retries += 1
            try:
                status = await self._post(self.url, body)
            except Exception as exc:  # whatever went wrong, a listener keeps going
                error = _describe(exc)
            else:
                if 200 <= status <= 299:
                    self.stats.deliveries += 1
                    return True
                error = f"Bad status code returned ({status})"
            await self._sleep(pause)
        self.stats.dropped_failed += 1
        log.warning("Failed posting state to '%s': %s", self.url, error)
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {POST_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


class Listeners:
    """Every listener of this host, by name, and their tasks while `run` runs.

    `offer` is the state owner's sink; `track` takes the listeners discovery found (name ->
    URL); `run` is the daemon's job: it posts until cancelled, then stops every listener at
    once (nothing waits for a slow receiver)."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        hostname: str,
        started: int,
        post: Post | None = None,
        capacity: int = QUEUE_SIZE,
    ) -> None:
        self._cookie = f"{SESSION_COOKIE}={_cookie_value(hostname, started)}"
        self._post: Post = post or self._http_post
        self._capacity = capacity
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.listeners: dict[str, UrlListener] = {}
        for url in urls:
            self._add(static_name(url), url, managed=False)

    def offer(self, state: ClusterState, events: Sequence[ChangeEvent]) -> None:
        """Queue each event of a change, with the state after it, for every listener."""
        for event in events:
            pending = Pending(state, event)
            for listener in self.listeners.values():
                listener.offer(pending)

    def track(self, discovered: Mapping[str, str]) -> None:
        """Follow discovery: start each discovered listener (name -> URL) not running yet (one
        whose URL changed is replaced), and stop every discovered one no longer there."""
        for name in [n for n, each in self.listeners.items() if each.managed]:
            if name not in discovered:
                log.info("Removing listener %s because the service appears to be gone", name)
                self._remove(name)
        for name, url in discovered.items():
            current = self.listeners.get(name)
            if current is not None and current.url == url:
                continue
            if current is not None and not current.managed:
                continue  # a configured listener is never replaced by discovery
            if current is not None:
                self._remove(name)
            self._add(name, url, managed=True)

    async def run(self) -> None:
        """Return never: post to every listener until cancelled, then stop them all."""
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT),
        )
        self._running = True
        try:
            for name in self.listeners:
                self._start(name)
            await asyncio.Event().wait()
        finally:
            self._running = False
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._session.close()

    def _add(self, name: str, url: str, *, managed: bool) -> None:
        self.listeners[name] = UrlListener(
            name, url, self._post, managed=managed, capacity=self._capacity
        )
        log.info("listener %s: posting state changes to %s", name, url)
        if self._running:
            self._start(name)

    def _start(self, name: str) -> None:
        listener = self.listeners[name]
        self._tasks[name] = asyncio.create_task(listener.run(), name=f"listener {name}")

    def _remove(self, name: str) -> None:
        self.listeners.pop(name, None)  # its queue goes with it
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _http_post(self, url: str, body: bytes) -> int:
        assert self._session is not None, "posting before run()"
        async with self._session.post(
            url,
            data=body,
            headers={"Content-Type": "application/json", "Cookie": self._cookie},
            allow_redirects=False,
        ) as response:
            await response.read()
            return response.status


def _cookie_value(hostname: str, started: int) -> str:
    """Return `<hostname>-<UTC start time>` with only characters a cookie value may hold."""
    text = f"{hostname}-{times.format_time(started)}"
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in '",;\\' else "_" for c in text)
