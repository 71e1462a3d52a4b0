"""The HTTP API served for real on a fresh 127.0.0.x, driven by real HTTP requests.

The catalog is an in-memory one over real `ClusterState` values built and changed with the
core's own functions (`stamp`, `merge_records`, `drain`). Every test runs its scenario in
`asyncio.run`, bounded by a timeout; every read of a stream is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from sidecar.adapters import http
from sidecar.state import codec, documents, merge, times
from sidecar.state.model import ClusterState, Service, Status
from tests.builders import T0, S, service

ME = "alpha"
PEER = "beta"
SCENARIO_TIMEOUT = 20.0
READ_TIMEOUT = 5.0
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET"}


def observed(sid: str, name: str, *, host: str = ME, port: int = 32000) -> Service:
    return service(
        host, sid, name=name, ports=((port, 8080),), ip="127.0.0.1", created=T0 - 100 * S
    )


OWN_WEB = observed("aaa111aaa111", "web", port=32001)
OWN_DOTTED = observed("ddd444ddd444", "my.svc", port=32004)
PEER_WEB = observed("bbb222bbb222", "web", host=PEER, port=32002)
PEER_GONE = observed("ccc333ccc333", "a<b", host=PEER, port=32003).with_status(
    Status.TOMBSTONE, updated=T0 + 3 * S
)


def initial_state() -> ClusterState:
    """Two own services stamped at T0, a peer's web instance and a peer's tombstone."""
    state = merge.stamp(
        ClusterState(hostname=ME, cluster_name="test"), [OWN_WEB, OWN_DOTTED], now=T0
    ).state
    peer_web = PEER_WEB.with_updated(T0 - 2 * S)  # older than ours: listed first
    return merge.merge_records(state, [peer_web, PEER_GONE], now=T0).state


class MemoryCatalog:
    """A `Catalog` over an in-memory state that tests change with `publish`."""

    def __init__(
        self,
        state: ClusterState,
        *,
        members: Mapping[str, int] | None = None,
        plan: Mapping[str, Any] | None = None,
        rejections: Sequence[Mapping[str, Any]] = (),
        health: tuple[bool, Mapping[str, Any]] = (True, {}),
    ) -> None:
        self._state = state
        self._members = {ME: 0, "gamma": 0} if members is None else members
        self._plan = plan
        self._rejections = rejections
        self._health = health
        self._version = 0
        self._changed = asyncio.Condition()
        self.now = T0 + 10 * S
        self.local: dict[str, Any] = {"hostname": ME, "haproxy": None}
        self.local_views = 0
        self.streams_open = 0
        self.streams_started = 0

    def state(self) -> ClusterState:
        return self._state

    def members(self) -> Mapping[str, int]:
        return self._members

    def member_list(self) -> Sequence[Mapping[str, Any]]:
        return [{"Name": name, "State": "alive"} for name in sorted(self._members)]

    async def publish(self, state: ClusterState) -> None:
        async with self._changed:
            self._state = state
            self._version += 1
            self._changed.notify_all()

    async def changes(self) -> AsyncIterator[ClusterState]:
        self.streams_open += 1
        self.streams_started += 1
        try:
            seen = self._version
            yield self._state
            while True:
                async with self._changed:
                    await self._changed.wait_for(partial(self._newer_than, seen))
                    seen, state = self._version, self._state
                yield state
        finally:
            self.streams_open -= 1

    def _newer_than(self, version: int) -> bool:
        return self._version != version

    async def drain(self, service_id: str) -> Service | None:
        result = merge.drain(self._state, service_id, now=self.now)
        if result is None:
            return None
        await self.publish(result.state)
        return result.state.get(self._state.hostname, service_id)

    def plan(self) -> Mapping[str, Any] | None:
        return self._plan

    def rejections(self) -> Sequence[Mapping[str, Any]]:
        return self._rejections

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        return self._health

    async def local_view(self) -> Mapping[str, Any]:
        self.local_views += 1
        return self.local


# ---------------------------------------------------------------- harness


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Client:
    """Requests to the API under test; refuses any URL that is not loopback."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        host = urlsplit(base).hostname or ""
        assert ipaddress.ip_address(host).is_loopback, base
        self.session = session
        self.base = base

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        kwargs.setdefault("allow_redirects", False)
        async with self.session.request(method, self.base + path, **kwargs) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    def stream(self, path: str) -> Any:
        return self.session.get(self.base + path)


Scenario = Callable[[Client, MemoryCatalog, http.HttpServer], Awaitable[None]]


@pytest.fixture
def api(loopback: Any) -> Callable[..., None]:
    """Run a scenario against the app served on a fresh 127.0.0.x: api(scenario, **options).

    Options: `catalog` (default: a MemoryCatalog over `initial_state()`), and make_app's
    keywords (`api_token`, `metrics`, `trust_loopback`).
    """
    return scenario_runner(loopback)


def scenario_runner(loopback: Any) -> Callable[..., None]:
    """Return the `api` fixture's runner, for test modules of their own."""

    def run(scenario: Scenario, *, catalog: MemoryCatalog | None = None, **options: Any) -> None:
        host = loopback.address()
        port = loopback.port(host)

        async def main() -> None:
            cat = catalog or MemoryCatalog(initial_state())
            server = await http.serve(http.make_app(cat, **options), host, port)
            assert (server.host, server.port) == (host, port)
            try:
                timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT * 2)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    await scenario(Client(session, server.url), cat, server)
            finally:
                await server.stop()

        asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT))

    return run


async def read_documents(
    resp: aiohttp.ClientResponse, count: int, buffer: bytearray, *, ndjson: bool = False
) -> list[bytes]:
    """Return the next `count` documents of a watch stream, each as its exact bytes.

    Concatenated documents are split with `json.JSONDecoder.raw_decode`; ndjson by lines.
    `buffer` carries what was read past the last document. Bounded: at most 200 reads,
    each within READ_TIMEOUT.
    """
    decoder = json.JSONDecoder()
    documents: list[bytes] = []
    for _ in range(200):
        while len(documents) < count and buffer:
            if ndjson:
                line, newline, _rest = bytes(buffer).partition(b"\n")
                if not newline:
                    break
                json.loads(line)
                documents.append(line + b"\n")
                del buffer[: len(line) + 1]
            else:
                text = buffer.decode()
                try:
                    _value, end = decoder.raw_decode(text)
                except json.JSONDecodeError:
                    break
                documents.append(text[:end].encode())
                del buffer[: len(text[:end].encode())]
        if len(documents) == count:
            return documents
        chunk = await asyncio.wait_for(resp.content.readany(), READ_TIMEOUT)
        assert chunk, f"stream ended after {len(documents)} of {count} documents"
        buffer += chunk
    pytest.fail(f"read 200 chunks without {count} documents")


async def eventually(probe: Callable[[], bool], what: str, *, within: float = 5.0) -> None:
    """Wait until probe() is true, polling every 50 ms, bounded in count and time."""
    for _ in range(int(within / 0.05) + 1):
        if probe():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"gave up after {within}s waiting for {what}")


def assert_cors(reply: Reply) -> None:
    for key, value in CORS.items():
        assert reply.headers.get(key) == value, (key, dict(reply.headers))


def assert_error(reply: Reply, status: int, message: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["Content-Type"] == "application/json"
    expected = b'{"message":' + codec.quote(message).encode() + b',"status":"error"}'
    assert reply.body == expected


# ---------------------------------------------------------------- services, state


def test_services_json_is_every_record_by_name_with_members(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        state = catalog.state()
        for path in ("/api/services.json", "/services.json"):
            reply = await client.get(path)
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/json"
            assert_cors(reply)
            assert reply.headers["Server"] == "sidecar"
            assert reply.body == documents.services_json(state, catalog.members())
            assert reply.body.startswith(b'{\n  "Services": {\n    "a\\u003cb": [\n      {\n')
            assert not reply.body.endswith(b"\n")
            document = json.loads(reply.body)
            assert list(document) == ["Services", "ClusterMembers", "ClusterName"]
            assert list(document["Services"]) == ["a<b", "my.svc", "web"]
            web_records = document["Services"]["web"]
            assert [(r["Hostname"], r["ID"]) for r in web_records] == [
                (PEER, PEER_WEB.id),
                (ME, OWN_WEB.id),
            ]
            assert document["Services"]["a<b"][0]["Status"] == Status.TOMBSTONE
            assert document["ClusterMembers"] == {
                ME: {
                    "Name": ME,
                    "LastUpdated": times.format_time(state.servers[ME].last_updated),
                    "ServiceCount": 2,
                },
                "gamma": {
                    "Name": "gamma",
                    "LastUpdated": "1970-01-01T00:00:00Z",
                    "ServiceCount": 0,
                },
            }
            assert document["ClusterName"] == "test"

    api(scenario)


def test_services_with_another_extension_is_a_json_404_with_cors(
    api: Callable[..., None],
) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        for path in ("/api/services.xml", "/services.txt"):
            reply = await client.get(path)
            assert_error(reply, 404, "Not Found - Invalid content type extension")
            assert_cors(reply)

    api(scenario)


def test_one_service_is_that_name_only_split_at_the_last_dot(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        reply = await client.get("/api/services/web.json")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "application/json"
        assert_cors(reply)
        assert reply.body == documents.one_service_json(catalog.state(), "web")
        document = json.loads(reply.body)
        assert list(document) == ["Services", "ClusterName"]
        assert list(document["Services"]) == ["web"]
        assert [r["ID"] for r in document["Services"]["web"]] == [PEER_WEB.id, OWN_WEB.id]

        dotted = json.loads((await client.get("/api/services/my.svc.json")).body)
        assert [r["ID"] for r in dotted["Services"]["my.svc"]] == [OWN_DOTTED.id]

        tombstoned = json.loads((await client.get("/api/services/a%3Cb.json")).body)
        assert [r["Status"] for r in tombstoned["Services"]["a<b"]] == [Status.TOMBSTONE]

        missing = await client.get("/api/services/nope.json")
        assert_error(missing, 404, "no instances of nope found")
        assert_cors(missing)
        for path in ("/api/services/web.xml", "/api/services/web.json.txt", "/api/services/web"):
            bad = await client.get(path)
            assert_error(bad, 404, "Not Found - Invalid content type extension")
            assert_cors(bad)

    api(scenario)


def test_state_json_is_the_compact_go_state(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        for path in ("/api/state.json", "/state.json"):
            reply = await client.get(path)
            assert reply.status == 200
            assert reply.headers["Content-Type"] == "application/json"
            assert_cors(reply)
            assert reply.body == codec.encode_state(catalog.state())
            assert codec.decode_state(reply.body).servers.keys() == {ME, PEER}
        assert_error(await client.get("/api/state.xml"), 404, http.INVALID_EXTENSION)

    api(scenario)


def test_a_large_state_is_encoded_off_the_loop_with_the_same_bytes(
    api: Callable[..., None],
) -> None:
    records = [
        observed(f"{i:012x}", f"svc{i % 7}", host=f"host{i % 5}", port=20000 + i)
        for i in range(http.OFFLOAD_RECORDS + 200)
    ]
    big = merge.merge_records(initial_state(), records, now=T0).state

    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        services = await client.get("/api/services.json")
        assert services.body == documents.services_json(big, catalog.members())
        one = await client.get("/api/services/svc3.json")
        assert one.body == documents.one_service_json(big, "svc3")
        assert len(json.loads(one.body)["Services"]["svc3"]) == sum(
            1 for r in records if r.name == "svc3"
        )
        state = await client.get("/api/state.json")
        assert state.body == codec.encode_state(big)
        async with client.stream("/api/watch") as resp:
            (document,) = await read_documents(resp, 1, bytearray())
            assert document == documents.by_service_json(big)

    api(scenario, catalog=MemoryCatalog(big))


# ---------------------------------------------------------------- watch


def _changed_states(state: ClusterState) -> list[ClusterState]:
    """Two successive changes: a new own service, then the dotted one stops (tombstone)."""
    extra = observed("eee555eee555", "api", port=32005)
    first = merge.stamp(state, [OWN_WEB, OWN_DOTTED, extra], now=T0 + S).state
    second = merge.stamp(first, [OWN_WEB, extra], now=T0 + 2 * S).state
    return [first, second]


async def _watch_three(
    client: Client, catalog: MemoryCatalog, query: str, encode: Callable[[ClusterState], bytes]
) -> None:
    ndjson = "format=ndjson" in query
    states = [catalog.state(), *_changed_states(catalog.state())]
    async with client.stream("/api/watch" + query) as resp:
        assert resp.status == 200
        expected_type = "application/x-ndjson" if ndjson else "application/json"
        assert resp.headers["Content-Type"] == expected_type
        assert "Access-Control-Allow-Origin" not in resp.headers
        buffer = bytearray()
        received = await read_documents(resp, 1, buffer, ndjson=ndjson)
        for state in states[1:]:
            await catalog.publish(state)
            received += await read_documents(resp, 1, buffer, ndjson=ndjson)
        ending = b"\n" if ndjson else b""
        assert received == [encode(s) + ending for s in states]
        assert not buffer  # nothing between or after the documents
    await eventually(lambda: catalog.streams_open == 0, "the watch to close its changes")


def test_watch_streams_by_service_documents_concatenated(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        await _watch_three(client, catalog, "", documents.by_service_json)
        # any value but "false" is by service, as in Go
        await _watch_three(client, catalog, "?by_service=true", documents.by_service_json)

    api(scenario)


def test_watch_ndjson_ends_each_document_with_a_newline(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        await _watch_three(client, catalog, "?format=ndjson", documents.by_service_json)

    api(scenario)


def test_watch_by_service_false_streams_whole_states(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        await _watch_three(client, catalog, "?by_service=false", codec.encode_state)
        await _watch_three(client, catalog, "?by_service=false&format=ndjson", codec.encode_state)

    api(scenario)


def test_watch_deprecated_path_and_a_bad_format(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        async with client.stream("/watch") as resp:
            (document,) = await read_documents(resp, 1, bytearray())
            assert document == documents.by_service_json(catalog.state())
        bad = await client.get("/api/watch?format=xml")
        assert_error(bad, 400, "Bad Request - format 'xml' is not json or ndjson")

    api(scenario)


def test_watch_ends_when_the_client_disconnects(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        for _attempt in range(3):
            resp = await client.stream("/api/watch")
            await read_documents(resp, 1, bytearray())
            assert catalog.streams_open == 1
            resp.close()  # drops the connection
            await eventually(lambda: catalog.streams_open == 0, "the stream to end")
        assert catalog.streams_started == 3
        # the server is still fine, and a change with no watcher goes nowhere
        await catalog.publish(_changed_states(catalog.state())[0])
        assert (await client.get("/api/state.json")).body == codec.encode_state(catalog.state())

    api(scenario)


def test_watch_ends_when_the_server_stops(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, server: http.HttpServer) -> None:
        async with client.stream("/api/watch?format=ndjson") as resp:
            await read_documents(resp, 1, bytearray(), ndjson=True)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(server.stop(), 3.0)
            assert loop.time() - started < 2.0  # not the shutdown timeout
            rest = await asyncio.wait_for(resp.content.read(), READ_TIMEOUT)
            assert rest == b""  # the chunked stream was ended cleanly
        assert catalog.streams_open == 0

    api(scenario)


def test_watch_notices_a_gone_client_without_handler_cancellation(loopback: Any) -> None:
    """Under a runner that does not cancel handlers, the stream still ends (by polling)."""
    host = loopback.address()
    port = loopback.port(host)

    async def main() -> None:
        catalog = MemoryCatalog(initial_state())
        runner = web.AppRunner(http.make_app(catalog), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            async with aiohttp.ClientSession() as session:
                client = Client(session, f"http://{host}:{port}")
                resp = await client.stream("/api/watch")
                await read_documents(resp, 1, bytearray())
                resp.close()
                await eventually(
                    lambda: catalog.streams_open == 0,
                    "the stream to notice its client left",
                    within=http.LIVENESS_POLL + 3.0,
                )
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT))


# ---------------------------------------------------------------- drain


def test_drain_from_loopback_sets_an_own_service_draining(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        async with client.stream("/api/watch?format=ndjson") as watch:
            buffer = bytearray()
            await read_documents(watch, 1, buffer, ndjson=True)

            reply = await client.request("POST", f"/api/services/{OWN_WEB.id}/drain")
            assert reply.status == 202
            assert reply.headers["Content-Type"] == "application/json"
            assert reply.body == (
                b'{\n  "Message": '
                b'"Service \\"web\\" instance \\"aaa111aaa111\\" set to DRAINING"\n}'
            )
            drained = catalog.state().get(ME, OWN_WEB.id)
            assert drained is not None
            assert drained.status is Status.DRAINING

            (document,) = await read_documents(watch, 1, buffer, ndjson=True)
            statuses = {(r["Hostname"], r["ID"]): r["Status"] for r in json.loads(document)["web"]}
            assert statuses == {(ME, OWN_WEB.id): Status.DRAINING, (PEER, PEER_WEB.id): 0}

        again = await client.request("POST", f"/api/services/{OWN_WEB.id}/drain")
        assert again.status == 202  # already draining: same answer, no new version
        assert catalog.state().get(ME, OWN_WEB.id) == drained

    api(scenario)


def test_drain_of_an_unknown_peer_or_tombstoned_id_is_404(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        before = catalog.state()
        for sid in ("nope", PEER_WEB.id, PEER_GONE.id):
            reply = await client.request("POST", f"/api/services/{sid}/drain")
            assert_error(reply, 404, f'Not Found - Service ID "{sid}" not found')
        assert catalog.state() is before

        stopped = merge.stamp(before, [OWN_WEB], now=T0 + S).state  # my.svc tombstoned
        await catalog.publish(stopped)
        reply = await client.request("POST", f"/api/services/{OWN_DOTTED.id}/drain")
        assert_error(reply, 404, f'Not Found - Service ID "{OWN_DOTTED.id}" not found')

    api(scenario)


def test_drain_is_refused_without_loopback_trust_or_the_token(api: Callable[..., None]) -> None:
    path = f"/api/services/{OWN_WEB.id}/drain"

    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "s3cret"},
        ):
            reply = await client.request("POST", path, headers=headers)
            assert_error(reply, 403, http.FORBIDDEN_DRAIN)
        current = catalog.state().get(ME, OWN_WEB.id)
        assert current is not None
        assert current.status is Status.ALIVE

        reply = await client.request("POST", path, headers={"Authorization": "Bearer s3cret"})
        assert reply.status == 202
        current = catalog.state().get(ME, OWN_WEB.id)
        assert current is not None
        assert current.status is Status.DRAINING

    api(scenario, api_token="s3cret", trust_loopback=False)


def test_drain_without_a_configured_token_refuses_every_bearer(api: Callable[..., None]) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
            reply = await client.request(
                "POST", f"/api/services/{OWN_WEB.id}/drain", headers=headers
            )
            assert_error(reply, 403, http.FORBIDDEN_DRAIN)

    api(scenario, trust_loopback=False)


# ---------------------------------------------------------------- the rest


def test_options_root_and_unknown_paths(api: Callable[..., None]) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        for path in ("/api/services.json", "/api/anything", "/api/watch"):
            reply = await client.request("OPTIONS", path)
            assert (reply.status, reply.body) == (200, b"")
            assert_cors(reply)
        # Go's OPTIONS route is one segment only; deeper known paths answer 405
        deeper = await client.request("OPTIONS", "/api/services/web.json")
        assert_error(deeper, 405, "Method Not Allowed")

        root = await client.get("/")
        assert root.status == 301
        assert root.headers["Location"] == "/ui/"
        for path in ("/nope", "/api/nope", "/api/services/a/b", "/debug/pprof/"):
            assert_error(await client.get(path), 404, "Not Found")

        wrong = await client.request("POST", "/api/services.json")
        assert_error(wrong, 405, "Method Not Allowed")
        assert "GET" in wrong.headers["Allow"]
        assert_error(
            await client.get(f"/api/services/{OWN_WEB.id}/drain"), 405, "Method Not Allowed"
        )
        assert_error(await client.request("DELETE", "/api/state.json"), 405, "Method Not Allowed")

    api(scenario)


PLAN = {"pending": True, "actions": [{"action": "add server", "reason": "new <instance>"}]}
REJECTIONS = [{"container": "c1", "reason": "ServicePort_x: not a port"}]


def test_plan_rejections_and_health(api: Callable[..., None]) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        plan = await client.get("/api/plan")
        assert plan.status == 200
        assert plan.headers["Content-Type"] == "application/json"
        assert plan.body == documents.document_json(PLAN)
        assert plan.body.startswith(b'{\n  "pending": true,\n  "actions": [\n    {\n')
        assert json.loads(plan.body) == PLAN

        rejections = await client.get("/api/rejections")
        assert rejections.status == 200
        assert rejections.headers["Content-Type"] == "application/json"
        assert rejections.body == documents.document_json({"Rejections": REJECTIONS})

        health = await client.get("/healthz")
        assert health.status == 200
        assert json.loads(health.body) == {"status": "ok", "peers": 2}
        assert list(json.loads(health.body)) == ["status", "peers"]

    catalog = MemoryCatalog(
        initial_state(), plan=PLAN, rejections=REJECTIONS, health=(True, {"peers": 2})
    )
    api(scenario, catalog=catalog)


def test_plan_disabled_empty_rejections_and_unhealthy(api: Callable[..., None]) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        assert_error(await client.get("/api/plan"), 404, http.PLAN_DISABLED)
        rejections = await client.get("/api/rejections")
        assert rejections.body == b'{\n  "Rejections": []\n}'
        health = await client.get("/healthz")
        assert health.status == 503
        assert health.headers["Content-Type"] == "application/json"
        assert json.loads(health.body) == {"status": "unhealthy", "haproxy": "not running"}

    catalog = MemoryCatalog(
        initial_state(), health=(False, {"status": "ignored", "haproxy": "not running"})
    )
    api(scenario, catalog=catalog)


def test_metrics_are_served_as_prometheus_text(api: Callable[..., None]) -> None:
    exposition = b"# TYPE sidecar_up gauge\nsidecar_up 1.0\n"
    calls: list[int] = []

    def metrics() -> bytes:
        calls.append(1)
        return exposition

    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        reply = await client.get("/metrics")
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert reply.body == exposition
        assert len(calls) == 1

    api(scenario, metrics=metrics)


def test_metrics_disabled_is_404(api: Callable[..., None]) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        assert_error(await client.get("/metrics"), 404, http.METRICS_DISABLED)

    api(scenario)


def test_a_failing_catalog_is_a_json_500(api: Callable[..., None]) -> None:
    class Broken(MemoryCatalog):
        def rejections(self) -> Sequence[Mapping[str, Any]]:
            raise RuntimeError("boom")

    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        assert_error(await client.get("/api/rejections"), 500, "Internal Server Error")
        assert (await client.get("/api/state.json")).status == 200

    api(scenario, catalog=Broken(initial_state()))


def test_requests_are_logged_at_debug_and_there_is_no_access_log(
    api: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(client: Client, _c: MemoryCatalog, _s: http.HttpServer) -> None:
        assert (await client.get("/api/state.json?x=1")).status == 200
        assert (await client.get("/nope")).status == 404

    with caplog.at_level(logging.DEBUG):
        api(scenario)
    ours = [r for r in caplog.records if r.name == "sidecar.http" and r.levelno == logging.DEBUG]
    messages = [r.getMessage() for r in ours]
    assert any(m.startswith("GET /api/state.json?x=1 from 127.0.0.") for m in messages), messages
    assert any(m.startswith("GET /nope from") and ": 404 in" in m for m in messages), messages
    assert not [r for r in caplog.records if r.name.startswith("aiohttp.access")]
    louder = [
        r.getMessage()
        for r in caplog.records
        if r.name == "sidecar.http" and r.levelno > logging.DEBUG
    ]
    assert all("listening on" in m for m in louder), louder


def test_a_listen_failure_names_the_address(loopback: Any) -> None:
    host = loopback.address()

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind((host, 0))
            taken.listen()
            port = taken.getsockname()[1]
            app = http.make_app(MemoryCatalog(initial_state()))
            with pytest.raises(OSError, match=rf"cannot listen on {host}:{port}"):
                await http.serve(app, host, port)

    asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT))


def test_serve_on_port_zero_reports_the_bound_port(loopback: Any) -> None:
    host = loopback.address()

    async def main() -> None:
        server = await http.serve(http.make_app(MemoryCatalog(initial_state())), host, 0)
        try:
            assert server.port > 0
            assert server.url == f"http://{host}:{server.port}"
            async with aiohttp.ClientSession() as session:
                reply = await Client(session, server.url).get("/api/state.json")
                assert reply.status == 200
        finally:
            await server.stop()

    asyncio.run(asyncio.wait_for(main(), SCENARIO_TIMEOUT))
