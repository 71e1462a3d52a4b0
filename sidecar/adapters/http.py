"""The daemon's HTTP API on aiohttp: Go Sidecar's routes and bytes, plus plan, health, metrics.

No policy: every answer is read from a `Catalog` (implemented by the daemon), and every body
is written by the core: the Go-compatible documents by `sidecar.state.documents` (Go's
`json.Indent` and `%q`, services.json, the watch document, Go's errors; our own documents
indented the same way) and `/api/state.json` by `codec.encode_state`; so `/api/services.json`,
`/api/services/<name>.json`, `/api/state.json` and `/api/watch` are byte-identical to Go's
for the same state (except that Go's one-service list and equal-`Updated` ties come out in
random order, ours sorted). This module routes, bounds and streams them.

Routes (sidecar-behaviour.md §6.1-6.4):

* `GET /api/services.json` (and `/services.json`): every record by name, indented (§1.7).
* `GET /api/services/<name>.json`: the records of one name, same wrapper, no members.
* `GET /api/state.json` (and `/state.json`): the whole state, compact (§1.6).
* `GET /api/watch` (and `/watch`): a stream of documents, the current one at once, then
  one per change. `by_service=false` gives whole states; `format=ndjson` ends each
  document with a newline (Go concatenates them with no separator).
* `POST /api/services/<id>/drain`: from loopback or with `Authorization: Bearer <token>`.
* `OPTIONS /api/<one segment>`: empty 200 with the CORS headers.
* `GET /`: 301 to `/ui/`.
* New: `GET /api/plan`, `GET /api/rejections`, `GET /healthz`, `GET /metrics`.
* New, the web UI: `GET /ui/` (and its `app.js`, `style.css`: package data `sidecar/ui/`,
  under a Content-Security-Policy that allows nothing but them and this API) and
  `GET /api/ui/events`, the page's server-sent events (`_ui_events`).

Errors are Go's `{"message":"...","status":"error"}` (compact, as Go's `json.Marshal`),
also for unknown paths (404) and wrong methods (405). There is no `/debug/pprof`
(§12 item 4). Requests are logged at DEBUG on `sidecar.http`; there is no access log.

Bounded against slow and numerous clients (constants below): a request head is due within
HEAD_TIMEOUT of a connection's opening or of its previous handler's end, an unread body is
dropped within BODY_TIMEOUT, at most MAX_CONNECTIONS connections and MAX_WATCHERS watch
streams are open, and `HttpServer.stop()` takes at most about STOP_GRACE.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.resources
import ipaddress
import json
import logging
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from aiohttp import web

from sidecar.state import codec, documents
from sidecar.state.model import ClusterState, Service

log = logging.getLogger("sidecar.http")

JSON: Final = "application/json"
NDJSON: Final = "application/x-ndjson"
METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
CORS: Final[Mapping[str, str]] = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET",
}
INVALID_EXTENSION: Final = "Not Found - Invalid content type extension"
FORBIDDEN_DRAIN: Final = "Forbidden - drain is accepted from loopback or with the API token"
PLAN_DISABLED: Final = "HAProxy management is disabled"
METRICS_DISABLED: Final = "Not Found - metrics are disabled"
TOO_MANY_WATCHERS: Final = (
    "Service Unavailable - too many watch streams open (the limit is {limit})"
)

# How often a watch stream checks that its client is still there, when the server does not
# cancel handlers on disconnect (`serve` does; other runners may not).
LIVENESS_POLL: Final = 1.0

# The server's bounds against slow and numerous clients (parameters of `serve` and `make_app`;
# not user configuration).
#
# A connection must deliver a complete request head within HEAD_TIMEOUT seconds of opening, or
# of the end of its previous request's handler (an idle keep-alive connection included), else
# it is closed: a client sending its head a byte at a time (slowloris) holds a connection that
# long at most. The deadline is suspended while a handler runs, so a watch stream is not cut.
HEAD_TIMEOUT: Final = 10.0
# No handler reads a request body (drain takes none). After the answer, aiohttp discards an
# unread body for at most BODY_TIMEOUT seconds (and HEAD_TIMEOUT from the handler's end, which
# comes first), then closes the connection, so a half-sent body does not hold it either.
BODY_TIMEOUT: Final = 10.0
# Connections open at once; one more is closed as soon as it is accepted (see `_Connection`).
MAX_CONNECTIONS: Final = 256
# `/api/watch` streams open at once; one more is answered 503 (each holds a task, a connection
# and its buffers: 1,000 watchers cost 18 MB that the allocator kept).
MAX_WATCHERS: Final = 64
# How long `HttpServer.stop()` gives requests in flight to finish before it closes their
# connections (the daemon must exit within a second of SIGTERM, whatever a client does).
STOP_GRACE: Final = 0.3
# The UI's event stream (`/api/ui/events`): the browser reconnects this long after the stream
# ends (a daemon restart); `local` is looked at this often, and this soon after a change; a
# comment line keeps a quiet stream's connection known alive.
RECONNECT_AFTER: Final = 1.0
LOCAL_INTERVAL: Final = 1.0
LOCAL_AFTER_CHANGE: Final = 0.2
PING_INTERVAL: Final = 15.0
UI_FILES: Final[Mapping[str, str]] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing but its own files and talks only to this daemon.
UI_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Refused connections are logged at most this often (a flood must not flood the log too).
REFUSAL_LOG_INTERVAL: Final = 60.0
# A state with more records than this is encoded in a worker thread (states are immutable
# snapshots), so encoding a large document (services.json of 10,000 records: ~0.3 s) does
# not stall the loop that runs gossip and checks.
OFFLOAD_RECORDS: Final = 1000


class Catalog(Protocol):
    """What the API serves; the daemon implements it."""

    def state(self) -> ClusterState:
        """Return the current cluster state."""
        ...

    def members(self) -> Mapping[str, int]:
        """Return cluster member name -> last-updated ns (the keys make `ClusterMembers`)."""
        ...

    def changes(self) -> AsyncIterator[ClusterState]:
        """Yield the current state at once, then the state after each change, until closed."""
        ...

    def member_list(self) -> Sequence[Mapping[str, Any]]:
        """Return every member this node knows, itself included, with its state (`alive`,
        `suspect`, `dead`, `left`), address, incarnation and last change (JSON-ready)."""
        ...

    async def drain(self, service_id: str) -> Service | None:
        """Return the own service now DRAINING, or None if there is no such live own service."""
        ...

    def plan(self) -> Mapping[str, Any] | None:
        """Return the current plan document (JSON-ready), or None when HAProxy is disabled."""
        ...

    def rejections(self) -> Sequence[Mapping[str, Any]]:
        """Return the observations excluded, with their reasons (JSON-ready)."""
        ...

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """Return whether the daemon is healthy, and details (JSON-ready)."""
        ...

    async def local_view(self) -> Mapping[str, Any]:
        """Return what only this host knows, for the UI's `local` event (JSON-ready)."""
        ...


# ---------------------------------------------------------------------------- trust


def _is_loopback(peer_ip: str) -> bool:
    try:
        address = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _has_token(authorization: str | None, token: str) -> bool:
    if not token or not authorization:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


def is_trusted(
    peer_ip: str | None,
    authorization: str | None,
    token: str,
    *,
    trust_loopback: bool = True,
) -> bool:
    """Return whether a mutating request (drain) is accepted.

    Accepted from a loopback peer (127.0.0.0/8, ::1, or IPv4-mapped loopback), or with
    `Authorization: Bearer <token>` matching the configured token, which must be non-empty
    (compared in constant time).
    """
    if trust_loopback and peer_ip and _is_loopback(peer_ip):
        return True
    return _has_token(authorization, token)


# ---------------------------------------------------------------------------- the app


@dataclass
class _Api:
    catalog: Catalog
    api_token: str
    metrics: Callable[[], bytes] | None
    trust_loopback: bool
    max_watchers: int
    watchers: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


_API: Final = web.AppKey("sidecar_api", _Api)
_OPTIONS_PATH: Final = re.compile(r"/api/[^/]+")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_T = TypeVar("_T")


def _json(body: bytes, *, status: int = 200, cors: bool = False) -> web.Response:
    headers = dict(CORS) if cors else {}
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def _error(status: int, message: str, *, cors: bool = False) -> web.Response:
    return _json(documents.error_json(message), status=status, cors=cors)


def _json_extension(request: web.Request) -> bool:
    return request.match_info["ext"] == "json"


@web.middleware
async def _suspend_head_deadline(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Run the handler with its connection's head deadline suspended (see `_Connection`)."""
    connection = request.protocol
    if not isinstance(connection, _Connection):  # served by another runner than `serve`'s
        return await handler(request)
    connection.handler_started()
    try:
        return await handler(request)
    finally:
        connection.handler_ended()


@web.middleware
async def _log_and_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer errors in Go's JSON format and log each request at DEBUG."""
    started = time.monotonic()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status, exc.reason)
        response = _error(exc.status, message)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        response = _error(500, "Internal Server Error")
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s from %s: %d in %.1f ms",
            request.method,
            request.path_qs,
            request.remote,
            response.status,
            (time.monotonic() - started) * 1000,
        )
    return response


@web.middleware
async def _preflight(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer `OPTIONS /api/<one segment>` with the CORS headers, as Go does."""
    if request.method == "OPTIONS" and _OPTIONS_PATH.fullmatch(request.path):
        return web.Response(status=200, headers=CORS)
    return await handler(request)


async def _root(request: web.Request) -> web.StreamResponse:
    return web.Response(status=301, headers={"Location": "/ui/"})


async def _encode(state: ClusterState, encode: Callable[..., _T], *args: Any) -> _T:
    """Return `encode(state, *args)`, computed in a worker thread when the state is large."""
    if sum(len(server.entries) for server in state.servers.values()) > OFFLOAD_RECORDS:
        return await asyncio.to_thread(encode, state, *args)
    return encode(state, *args)


async def _services(request: web.Request) -> web.StreamResponse:
    if not _json_extension(request):
        return _error(404, INVALID_EXTENSION, cors=True)
    catalog = request.app[_API].catalog
    members = dict(catalog.members())  # a copy: the thread must not see it change
    return _json(await _encode(catalog.state(), documents.services_json, members), cors=True)


async def _one_service(request: web.Request) -> web.StreamResponse:
    name, dot, extension = request.match_info["file"].rpartition(".")
    if not dot or extension != "json":
        return _error(404, INVALID_EXTENSION, cors=True)
    body = await _encode(request.app[_API].catalog.state(), documents.one_service_json, name)
    if body is None:
        return _error(404, f"no instances of {name} found", cors=True)
    return _json(body, cors=True)


async def _state(request: web.Request) -> web.StreamResponse:
    if not _json_extension(request):
        return _error(404, INVALID_EXTENSION)
    body = await _encode(request.app[_API].catalog.state(), codec.encode_state)
    return _json(body, cors=True)


async def _drain(request: web.Request) -> web.StreamResponse:
    api = request.app[_API]
    if not is_trusted(
        request.remote,
        request.headers.get("Authorization"),
        api.api_token,
        trust_loopback=api.trust_loopback,
    ):
        return _error(403, FORBIDDEN_DRAIN)
    service_id = request.match_info["id"]
    # Shielded: a client that goes away must not leave a drain half done.
    drained = await asyncio.shield(api.catalog.drain(service_id))
    if drained is None:
        return _error(404, f"Not Found - Service ID {documents.go_quote(service_id)} not found")
    log.info("drain of %s (%s) requested by %s", drained.id, drained.name, request.remote)
    return _json(documents.drained_json(drained), status=202)


async def _next(changes: AsyncIterator[ClusterState]) -> ClusterState | None:
    """Return the next state, or None when the iterator is exhausted."""
    try:
        return await changes.__anext__()
    except StopAsyncIteration:
        return None


async def _settle(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel the tasks and wait for them to finish, retrieving any outcome."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _watch(request: web.Request) -> web.StreamResponse:
    """Stream the current document, then one per change, until the client or server goes.

    Beyond `max_watchers` streams open at once, answer 503 (Go has no such limit).
    """
    api = request.app[_API]
    framing = request.query.get("format", "")
    if framing not in ("", "json", "ndjson"):
        return _error(400, f"Bad Request - format {framing!r} is not json or ndjson")
    if api.watchers >= api.max_watchers:
        return _error(503, TOO_MANY_WATCHERS.format(limit=api.max_watchers))
    api.watchers += 1
    try:
        return await _stream_changes(request, api, framing)
    finally:
        api.watchers -= 1


async def _stream_changes(request: web.Request, api: _Api, framing: str) -> web.StreamResponse:
    """Return the watch stream's response once it has ended (client gone, server stopping)."""
    encode = (
        documents.by_service_json
        if request.query.get("by_service") != "false"
        else codec.encode_state
    )
    ending = b"\n" if framing == "ndjson" else b""
    response = web.StreamResponse(
        status=200, headers={"Content-Type": NDJSON if framing == "ndjson" else JSON}
    )
    await response.prepare(request)

    async def feed() -> None:
        async with contextlib.aclosing(_following(request, api, lambda: LIVENESS_POLL)) as states:
            async for state in states:
                if state is not None:
                    await response.write(await _encode(state, encode) + ending)

    return await _streamed(request, response, "watch stream", feed)


async def _following(
    request: web.Request, api: _Api, wait: Callable[[], float]
) -> AsyncGenerator[ClusterState | None, None]:
    """Yield the state now and after each change, and None whenever `wait()` seconds (at
    most LIVENESS_POLL, when the client is looked at again) pass without one; end when the
    client goes, the server stops or the changes end."""
    changes = api.catalog.changes()
    stopping = asyncio.ensure_future(api.stopping.wait())
    pending: asyncio.Task[ClusterState | None] | None = None
    try:
        while not _client_gone(request):
            if pending is None:
                pending = asyncio.ensure_future(_next(changes))
            done, _ = await asyncio.wait(
                {pending, stopping},
                timeout=max(0.0, min(wait(), LIVENESS_POLL)),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stopping in done:
                return
            if pending not in done:
                yield None
                continue
            state = pending.result()
            pending = None
            if state is None:
                return
            yield state
    finally:
        await _settle(pending, stopping)
        aclose = getattr(changes, "aclose", None)
        if aclose is not None:
            await aclose()


async def _streamed(
    request: web.Request,
    response: web.StreamResponse,
    what: str,
    feed: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    """Return `response` once `feed()` has written its stream, ended unless the client went
    (an error in `feed` is logged and ends the stream too)."""
    try:
        await feed()
    except ConnectionError:
        return response
    except Exception:
        log.exception("%s to %s failed; ending it", what, request.remote)
    if not _client_gone(request):
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


async def _ui_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("file") or "index.html"
    found = _ui_files().get(name)
    if found is None:
        return _error(404, f"Not Found - no UI file {documents.go_quote(name)}")
    content_type, body = found
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            "Cache-Control": "no-cache",  # a new sidecar's page is loaded after its upgrade
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": UI_POLICY,
        },
    )


async def _ui_redirect(request: web.Request) -> web.StreamResponse:
    return web.Response(status=301, headers={"Location": "/ui/"})


async def _ui_events(request: web.Request) -> web.StreamResponse:
    """Stream the page's server-sent events until the client or the server goes: `state`
    (the whole state, as /api/state.json) at once and after each change, and `local` (the
    catalog's `local_view`) at once and whenever it differs, looked at every
    LOCAL_INTERVAL and soon after each change. Counted among the watch streams."""
    api = request.app[_API]
    if api.watchers >= api.max_watchers:
        return _error(503, TOO_MANY_WATCHERS.format(limit=api.max_watchers))
    api.watchers += 1
    try:
        return await _stream_events(request, api)
    finally:
        api.watchers -= 1


async def _stream_events(request: web.Request, api: _Api) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold events back
        },
    )
    await response.prepare(request)
    await response.write(b"retry: %d\n\n" % int(RECONNECT_AFTER * 1000))
    loop = asyncio.get_running_loop()
    local_due = written = loop.time()

    def wait() -> float:
        return min(local_due, written + PING_INTERVAL) - loop.time()

    async def feed() -> None:
        nonlocal local_due, written
        local_sent = b""
        async with contextlib.aclosing(_following(request, api, wait)) as states:
            async for state in states:
                if state is not None:
                    body = await _encode(state, codec.encode_state)
                    await response.write(_event("state", body))
                    written = loop.time()
                    # What HAProxy does follows a change within the debounce and an apply.
                    local_due = min(local_due, written + LOCAL_AFTER_CHANGE)
                if loop.time() >= local_due:
                    local = json.dumps(
                        await api.catalog.local_view(), separators=(",", ":"), allow_nan=False
                    ).encode()
                    if local != local_sent:
                        await response.write(_event("local", local))
                        local_sent, written = local, loop.time()
                    local_due = loop.time() + LOCAL_INTERVAL
                if loop.time() >= written + PING_INTERVAL:
                    await response.write(b": ping\n\n")
                    written = loop.time()

    return await _streamed(request, response, "UI event stream", feed)


def _event(kind: str, data: bytes) -> bytes:
    """Return one server-sent event carrying `data` (compact JSON: one line)."""
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), data)


@functools.cache
def _ui_files() -> dict[str, tuple[str, bytes]]:
    """Return the page's files (package data `sidecar/ui/`) by name, with their types."""
    folder = importlib.resources.files("sidecar") / "ui"
    return {
        name: (content_type, (folder / name).read_bytes())
        for name, content_type in UI_FILES.items()
    }


async def _plan(request: web.Request) -> web.StreamResponse:
    document = request.app[_API].catalog.plan()
    if document is None:
        return _error(404, PLAN_DISABLED)
    return _json(documents.document_json(document))


async def _rejections(request: web.Request) -> web.StreamResponse:
    rejections = list(request.app[_API].catalog.rejections())
    return _json(documents.document_json({"Rejections": rejections}))


async def _members(request: web.Request) -> web.StreamResponse:
    members = list(request.app[_API].catalog.member_list())
    return _json(documents.document_json({"Members": members}))


async def _healthz(request: web.Request) -> web.StreamResponse:
    healthy, details = request.app[_API].catalog.health()
    document: dict[str, Any] = {"status": "ok" if healthy else "unhealthy"}
    document.update((k, v) for k, v in details.items() if k != "status")
    return _json(documents.document_json(document), status=200 if healthy else 503)


async def _metrics(request: web.Request) -> web.StreamResponse:
    metrics = request.app[_API].metrics
    if metrics is None:
        return _error(404, METRICS_DISABLED)
    return web.Response(body=metrics(), headers={"Content-Type": METRICS_TYPE})


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "sidecar"  # not aiohttp's default, which names versions


async def _on_shutdown(app: web.Application) -> None:
    app[_API].stopping.set()  # ends every watch stream, so shutdown does not wait on them


def make_app(
    catalog: Catalog,
    *,
    api_token: str = "",
    metrics: Callable[[], bytes] | None = None,
    trust_loopback: bool = True,
    max_watchers: int = MAX_WATCHERS,
) -> web.Application:
    """Return the HTTP API application serving `catalog`.

    `api_token` (when non-empty) lets a non-loopback client drain with
    `Authorization: Bearer <token>`. `metrics` returns the Prometheus exposition served on
    `/metrics` (404 when None). `trust_loopback=False` refuses loopback peers their
    implicit drain right (for tests of the refusal). `/api/watch` answers 503 while
    `max_watchers` streams are open.
    """
    if max_watchers < 1:
        raise ValueError(f"max_watchers must be at least 1, not {max_watchers}")
    app = web.Application(middlewares=[_suspend_head_deadline, _log_and_errors, _preflight])
    app[_API] = _Api(catalog, api_token, metrics, trust_loopback, max_watchers)
    app.on_response_prepare.append(_on_prepare)
    app.on_shutdown.append(_on_shutdown)
    routes = app.router
    routes.add_get("/", _root)
    for prefix in ("/api", ""):  # "": Go's deprecated aliases
        routes.add_get(prefix + "/services.{ext}", _services)
        routes.add_get(prefix + "/state.{ext}", _state)
        routes.add_get(prefix + "/watch", _watch, allow_head=False)
    routes.add_get("/api/services/{file}", _one_service)
    routes.add_post("/api/services/{id}/drain", _drain)
    routes.add_get("/api/plan", _plan)
    routes.add_get("/api/rejections", _rejections)
    routes.add_get("/api/members", _members)
    routes.add_get("/ui", _ui_redirect)
    routes.add_get("/ui/", _ui_file)
    routes.add_get("/ui/{file}", _ui_file)
    routes.add_get("/api/ui/events", _ui_events, allow_head=False)
    routes.add_get("/healthz", _healthz)
    routes.add_get("/metrics", _metrics)
    return app


@dataclass
class _ConnectionBounds:
    """What the connections of one server share: their limits, and how many are open."""

    max_connections: int
    head_timeout: float
    open: int = 0
    stopping: bool = False
    refused: int = 0  # since the last log line about it
    refusal_logged: float = float("-inf")  # loop time of that line

    def refuse(self, now: float) -> None:
        """Count a refused connection; log the count at most every REFUSAL_LOG_INTERVAL."""
        self.refused += 1
        if now - self.refusal_logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "HTTP API at its limit of %d open connections: %d new connection(s) closed "
                "at once (this is logged at most every %g s)",
                self.max_connections,
                self.refused,
                REFUSAL_LOG_INTERVAL,
            )
            self.refused = 0
            self.refusal_logged = now


class _Connection(web.RequestHandler):
    """aiohttp's protocol for one connection, within the server's bounds.

    * At most `max_connections` are open: one more is closed as soon as it is accepted. Not
      a 503: answering needs the request head first, which is what a slowloris client
      withholds, and an answer written before it would be lost to the reset its unread
      request causes; an immediate close costs nothing, and a client sees it at once.
    * A head deadline: the connection is closed when no handler has run on it for
      `head_timeout` seconds, counted from its opening and from the end of each handler
      (so it also covers sending the answer and dropping an unread body; what was already
      written is still delivered). `_suspend_head_deadline` (a middleware) tells it when a
      handler starts and ends. Ours, not only aiohttp's keep-alive timer: before recent
      releases aiohttp armed that one only after a first request, and pyproject accepts 3.9.
    """

    __slots__ = ("_admitted", "_bounds", "_handlers_running", "_head_timer")

    def __init__(self, bounds: _ConnectionBounds, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._bounds = bounds
        self._admitted = False
        self._handlers_running = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        bounds = self._bounds
        if bounds.stopping or bounds.open >= bounds.max_connections:
            if not bounds.stopping:
                bounds.refuse(asyncio.get_running_loop().time())
            transport.close()
            return
        self._admitted = True
        bounds.open += 1
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return  # refused: aiohttp never saw it
        self._admitted = False
        self._bounds.open -= 1
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def handler_started(self) -> None:
        """Suspend the head deadline while a handler runs."""
        self._handlers_running += 1
        self._disarm_head_deadline()

    def handler_ended(self) -> None:
        """Re-arm the head deadline: the next request's head is due within `head_timeout`."""
        self._handlers_running -= 1
        if self._handlers_running == 0 and self._admitted:
            self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._bounds.head_timeout, self._head_overdue)

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._handlers_running == 0:
            log.debug(
                "closing a connection from %s: no request within %g s",
                self.peername,
                self._bounds.head_timeout,
            )
            self.force_close()


class HttpServer:
    """A running API: where it listens, and `stop()`."""

    def __init__(
        self,
        runner: web.AppRunner,
        listener: asyncio.Server,
        bounds: _ConnectionBounds,
        host: str,
        port: int,
    ) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self._listener = listener
        self._bounds = bounds
        self._stopped = False

    @property
    def url(self) -> str:
        """Return the base URL, e.g. `http://127.0.0.1:7777`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Return how many client connections are open (refused ones not counted)."""
        return self._bounds.open

    async def stop(self) -> None:
        """Stop listening, end watch streams, give requests in flight `stop_grace` seconds,
        then close every connection. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._bounds.stopping = True
        self._listener.close()
        await self.runner.cleanup()


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    head_timeout: float = HEAD_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    stop_grace: float = STOP_GRACE,
) -> HttpServer:
    """Return the server listening on `host:port` (port 0: the kernel's pick) for `app`.

    Handlers are cancelled when their client disconnects (a watch stream ends at once).
    The bounds (`HEAD_TIMEOUT`, `BODY_TIMEOUT`, `MAX_CONNECTIONS`, `STOP_GRACE` above) can be
    changed here. Raises OSError naming the address when it cannot listen, ValueError for a
    bound that is not positive.
    """
    for name, value in (
        ("head_timeout", head_timeout),
        ("body_timeout", body_timeout),
        ("max_connections", max_connections),
        ("stop_grace", stop_grace),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    # aiohttp's stop waits twice, each time up to its shutdown_timeout: for the handler in
    # progress to finish, then for the connection to finish its answer (or to drop a
    # half-sent body); then it cancels and closes. Half each keeps the whole within the grace.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=stop_grace / 2
    )
    await runner.setup()
    manager = runner.server
    assert manager is not None  # set by setup()
    bounds = _ConnectionBounds(max_connections, head_timeout)
    loop = asyncio.get_running_loop()

    def connection() -> _Connection:
        # aiohttp's own keep-alive timeout agrees with the head deadline; lingering_time is
        # how long it reads and drops an unread body after the answer.
        return _Connection(
            bounds,
            manager,
            loop=loop,
            access_log=None,
            keepalive_timeout=head_timeout,
            lingering_time=body_timeout,
        )

    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        listener = await loop.create_server(connection, host, port, backlog=128)
    except OSError as exc:
        await runner.cleanup()
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"HTTP API cannot listen on {shown}: {reason}") from exc
    bound = port
    for sock in listener.sockets:
        bound = int(sock.getsockname()[1])
        break
    log.info("HTTP API listening on %s", shown if port else f"{host}:{bound}")
    return HttpServer(runner, listener, bounds, host, bound)
