"""The Docker adapter: what the local Engine runs, as `ContainerFacts`, pushed to the loop.

It translates and never decides: labels are handed on uninterpreted (the core's
`observe_container` reads them), and an outage is reported as `EngineUnreachable`, not acted
on (the grace before tombstoning is the core's policy).

`DockerDiscovery.run` lists the running containers at start, then follows the Engine's event
stream (start, die, stop, destroy, health_status, rename) and emits a fresh `ContainerListing` after
each relevant event, plus a full resync every `resync_interval` to repair a missed event.
The Docker SDK blocks, so every call runs in a thread (DESIGN decision 10): list and inspect
through `asyncio.to_thread`, the event stream in a daemon thread that hands each event to the
loop with `call_soon_threadsafe`. The cached set of containers lives on the loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import docker
import docker.utils
import requests
from docker.errors import DockerException, NotFound

from sidecar.state.discovery import (
    ContainerFacts,
    ContainerListing,
    DockerObservation,
    EngineUnreachable,
    PublishedPort,
)
from sidecar.state.times import NANOS_PER_SECOND, parse_time

log = logging.getLogger("sidecar.docker")

# Actions after which the set of running containers, or a fact about one, may have changed.
# `health_status` arrives as "health_status: healthy" (and similar); matched by prefix.
REMOVING_ACTIONS: Final = frozenset({"die", "stop", "destroy"})
INSPECTING_ACTIONS: Final = frozenset({"start", "rename"})
HEALTH_ACTION: Final = "health_status"

DEFAULT_SOCKET: Final = "unix:///var/run/docker.sock"
API_TIMEOUT: Final = 10.0  # seconds, for one list or inspect call
MIN_API_VERSION: Final = "1.24"  # what the Engine's version is asked with (Docker 1.12, 2016)

# What a lost or refused connection to the Engine raises from inside the SDK.
ENGINE_ERRORS: Final = (DockerException, requests.exceptions.RequestException, OSError)


# ---------------------------------------------------------------------- pure translation


def facts_from_container(attrs: Mapping[str, Any]) -> ContainerFacts:
    """Return the facts of one container from the Engine's JSON for it.

    Accepts an inspect result (`Name`, `Config`, `NetworkSettings.Ports`, `State.Health`,
    RFC 3339 `Created`) or an entry of the container list (`Names`, `Image`, `Labels`, `Ports`,
    `Created` in seconds; it carries no health). Pure.
    """
    config = attrs.get("Config") or {}
    if "Name" in attrs:
        name = attrs["Name"]
    else:
        names = attrs.get("Names") or [""]
        name = names[0]
    image = config.get("Image") or attrs.get("Image") or ""
    labels = config.get("Labels") if "Config" in attrs else attrs.get("Labels")
    state = attrs.get("State")
    health = None
    if isinstance(state, Mapping) and isinstance(state.get("Health"), Mapping):
        health = state["Health"].get("Status") or None
    return ContainerFacts(
        id=attrs["Id"],
        name=name,
        image=image,
        created=_created_nanos(attrs.get("Created")),
        labels=dict(labels or {}),
        ports=_published_ports(attrs),
        health=health,
    )


def _created_nanos(created: Any) -> int:
    """Return a container's creation time as ns: inspect gives RFC 3339, the list seconds."""
    if isinstance(created, str):
        return parse_time(created)
    if isinstance(created, int):
        return created * NANOS_PER_SECOND
    return 0


def _published_ports(attrs: Mapping[str, Any]) -> tuple[PublishedPort, ...]:
    """Return every published binding, in the Engine's order; unpublished ports are skipped."""
    settings = attrs.get("NetworkSettings") or {}
    bindings_by_port = settings.get("Ports")
    if isinstance(bindings_by_port, Mapping):
        found: list[PublishedPort] = []
        for key, bindings in bindings_by_port.items():
            private, _, kind = key.partition("/")
            for binding in bindings or ():
                host_port = binding.get("HostPort") or ""
                if not host_port:
                    continue
                found.append(
                    PublishedPort(
                        private_port=int(private),
                        type=kind or "tcp",
                        public_port=int(host_port),
                        host_ip=binding.get("HostIp") or "",
                    )
                )
        return tuple(found)
    # The list's shape: [{"IP", "PrivatePort", "PublicPort", "Type"}]; no PublicPort = unpublished.
    return tuple(
        PublishedPort(
            private_port=int(entry["PrivatePort"]),
            type=entry.get("Type") or "tcp",
            public_port=int(entry["PublicPort"]),
            host_ip=entry.get("IP") or "",
        )
        for entry in attrs.get("Ports") or ()
        if entry.get("PublicPort")
    )


def relevant_action(action: str) -> bool:
    """Return whether an event's action may change what runs or what is known about it."""
    return (
        action in REMOVING_ACTIONS
        or action in INSPECTING_ACTIONS
        or action.startswith(HEALTH_ACTION)
    )


# ---------------------------------------------------------------------- the discovery loop


class _StreamEnded(Exception):
    """The event stream ended: the Engine closed it (restart) or the connection broke."""


_END: Final = object()  # what the reader thread queues when its stream ends


class DockerDiscovery:
    """Follows the local Docker Engine and pushes `ContainerListing`s and `EngineUnreachable`s."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        resync_interval: float = 30.0,
        clock: Callable[[], int] = time.time_ns,
        backoff_initial: float = 0.1,
        backoff_cap: float = 5.0,
    ) -> None:
        self._base_url = base_url
        self._resync_interval = resync_interval
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._client: docker.DockerClient | None = None
        self._stream: Any = None
        self._containers: dict[str, ContainerFacts] = {}

    async def run(self, out: asyncio.Queue[DockerObservation]) -> None:
        """Return never; follow the Engine, reconnecting after every outage, until cancelled."""
        backoff = self._backoff_initial
        outage_since: int | None = None
        lost_at: int | None = None
        try:
            while True:
                try:
                    await self._connect()
                    events = self._open_events()
                    await self._resync(out)
                except ENGINE_ERRORS as exc:
                    self._disconnect()
                    if outage_since is None:
                        outage_since = lost_at if lost_at is not None else self._clock()
                        log.warning("Docker Engine unreachable, reconnecting: %s", exc)
                        await out.put(EngineUnreachable(since=outage_since))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_cap)
                    continue
                if outage_since is not None:
                    log.info(
                        "Docker Engine reachable again after %.1f s",
                        (self._clock() - outage_since) / NANOS_PER_SECOND,
                    )
                outage_since = lost_at = None
                backoff = self._backoff_initial
                try:
                    await self._follow(events, out)
                except (_StreamEnded, *ENGINE_ERRORS) as exc:
                    lost_at = self._clock()
                    log.debug("Docker event stream lost: %r", exc)
                    self._disconnect()
                    # An Engine that accepts connections but drops the stream at once must
                    # not make this a busy loop.
                    await asyncio.sleep(self._backoff_initial)
        finally:
            self._disconnect()

    # -- connection

    async def _connect(self) -> None:
        """Return once a fresh client has reached the Engine (creating it asks its version)."""
        self._disconnect()
        self._client = await asyncio.to_thread(self._make_client)

    def _make_client(self) -> docker.DockerClient:
        """Return a client that has reached the Engine (blocking)."""
        if self._base_url is None:
            url = docker.utils.kwargs_from_env().get("base_url") or DEFAULT_SOCKET
        else:
            url = self._base_url
        if url.startswith("unix://"):
            # The SDK leaves the socket of a refused connection to the garbage collector (a
            # ResourceWarning per retry during an outage); a probe of our own closes it.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(API_TIMEOUT)
                probe.connect(url.removeprefix("unix://"))
        if self._base_url is None:
            return _client_from_environment()
        return docker.DockerClient(base_url=self._base_url, timeout=API_TIMEOUT)

    def _disconnect(self) -> None:
        """Close the event stream (which unblocks its reader thread) and the client."""
        stream, self._stream = self._stream, None
        client, self._client = self._client, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _open_events(self) -> asyncio.Queue[Any]:
        """Return the queue the event reader thread fills; the stream is open when this returns.

        The stream is opened before the full listing so that no event falls between the two.
        Opening it is one short request (the Engine answers with headers at once).
        """
        assert self._client is not None
        stream = self._client.api.events(decode=True, filters={"type": "container"})
        self._stream = stream
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(
            target=_read_events, args=(stream, loop, events), name="docker-events", daemon=True
        ).start()
        return events

    # -- listing and events

    async def _resync(self, out: asyncio.Queue[DockerObservation]) -> None:
        """List every running container, replace the cache, emit a ContainerListing."""
        assert self._client is not None
        self._containers = await asyncio.to_thread(_list_running, self._client)
        await self._emit(out)

    async def _follow(
        self, events: asyncio.Queue[Any], out: asyncio.Queue[DockerObservation]
    ) -> None:
        """Return never: apply events as they come, resync every `resync_interval`.

        Raises `_StreamEnded` or an Engine error when the connection is lost.
        """
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self._resync_interval
        while True:
            wait = next_resync - loop.time()
            try:
                # Not asyncio.wait_for: on 3.11 it swallows a cancellation that lands as an
                # event arrives, and this task would then never stop.
                async with asyncio.timeout(max(wait, 0)):
                    event = await events.get()
            except TimeoutError:
                await self._resync(out)
                next_resync = loop.time() + self._resync_interval
                continue
            changed = await self._apply(event)
            # A burst is applied as one: everything already queued, then one ContainerListing.
            while not events.empty():
                changed = await self._apply(events.get_nowait()) or changed
            if changed:
                await self._emit(out)

    async def _apply(self, event: Any) -> bool:
        """Return whether an event was relevant, after updating the cache for it."""
        if event is _END:
            raise _StreamEnded
        if isinstance(event, BaseException):
            raise event
        action = event.get("Action") or event.get("status") or ""
        container_id = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
        if not container_id or not relevant_action(action):
            return False
        if action in REMOVING_ACTIONS:
            self._containers.pop(container_id, None)
            return True
        assert self._client is not None
        facts = await asyncio.to_thread(_inspect_running, self._client, container_id)
        if facts is None:
            self._containers.pop(container_id, None)
        else:
            self._containers[container_id] = facts
        return True

    async def _emit(self, out: asyncio.Queue[DockerObservation]) -> None:
        """Return once a ContainerListing of the cache, sorted by ID, is queued."""
        containers = tuple(sorted(self._containers.values(), key=lambda facts: facts.id))
        await out.put(ContainerListing(containers=containers, at=self._clock()))


# ---------------------------------------------------------------------- in threads


def _client_from_environment() -> docker.DockerClient:
    """Return a client of the Engine the Docker environment names (`DOCKER_HOST`,
    `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), as Go's client is made (blocking: it asks the
    Engine's API version).

    `requests` would let `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` replace the CA of
    `DOCKER_CERT_PATH` (docker-py#2433), so the TLS Engine would not be reached: the client
    reads no environment of its own, and the version is asked by a client that does not
    either (`docker.from_env` asks it while it is made)."""
    kwargs = docker.utils.kwargs_from_env()
    probe = docker.APIClient(**kwargs, version=MIN_API_VERSION, timeout=API_TIMEOUT)
    probe.trust_env = False
    try:
        version = probe.version(api_version=False)["ApiVersion"]
    finally:
        probe.close()
    client = docker.DockerClient(**kwargs, version=version, timeout=API_TIMEOUT)
    client.api.trust_env = False
    return client


def _list_running(client: docker.DockerClient) -> dict[str, ContainerFacts]:
    """Return the facts of every running container, by full ID (blocking)."""
    found: dict[str, ContainerFacts] = {}
    for entry in client.api.containers(all=False):
        facts = _inspect_running(client, entry["Id"])
        if facts is not None:
            found[facts.id] = facts
    return found


def _inspect_running(client: docker.DockerClient, container_id: str) -> ContainerFacts | None:
    """Return a container's facts, or None when it is gone or not running (blocking)."""
    try:
        attrs = client.api.inspect_container(container_id)
    except NotFound:
        return None
    if not (attrs.get("State") or {}).get("Running"):
        return None
    try:
        return facts_from_container(attrs)
    except (KeyError, TypeError, ValueError):
        # The Engine's JSON is not what this adapter knows; one container, not the daemon.
        log.exception("cannot read Docker's description of container %s", container_id)
        return None


def _read_events(stream: Iterator[Any], loop: asyncio.AbstractEventLoop, events: Any) -> None:
    """Hand every event of `stream` to the loop, then `_END` (or the error) when it stops."""
    end: object = _END
    try:
        for event in stream:
            loop.call_soon_threadsafe(events.put_nowait, event)
    except Exception as exc:  # a broken stream is an outage, reported on the loop
        end = exc
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
        loop.call_soon_threadsafe(events.put_nowait, end)
