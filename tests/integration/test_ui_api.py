"""The UI's side of the HTTP API, served for real on a fresh 127.0.0.x: the page's files and
its server-sent event stream (`/api/ui/events`), over the in-memory catalog of
test_http_api.py. Every read of a stream is bounded in count and time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sidecar.adapters import http
from sidecar.state import codec, merge

from .test_http_api import (
    READ_TIMEOUT,
    Client,
    MemoryCatalog,
    eventually,
    initial_state,
    scenario_runner,
)


@pytest.fixture
def api(loopback: Any) -> Callable[..., None]:
    """Run a scenario against the API over a MemoryCatalog (test_http_api.py's harness)."""
    return scenario_runner(loopback)


class Events:
    """The events of one `/api/ui/events` stream, parsed as a browser's EventSource does."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.buffer = b""
        self.comments: list[bytes] = []
        self.retry: int | None = None

    async def next(self, *, within: float = READ_TIMEOUT) -> tuple[str, Any]:
        """Return the next event's name and decoded data; fail after `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for _ in range(500):
            block, blank, rest = self.buffer.partition(b"\n\n")
            if blank:
                self.buffer = rest
                name, data = "message", []
                for line in block.split(b"\n"):
                    field, _, value = line.partition(b": ")
                    if line.startswith(b":"):
                        self.comments.append(line)
                    elif field == b"event":
                        name = value.decode()
                    elif field == b"data":
                        data.append(value)
                    elif field == b"retry":
                        self.retry = int(value)
                if data:
                    return name, json.loads(b"\n".join(data))
                continue
            chunk = await asyncio.wait_for(
                self.resp.content.readany(), max(0.01, deadline - loop.time())
            )
            assert chunk, "the event stream ended"
            self.buffer += chunk
        pytest.fail("500 reads without an event")


def test_the_page_is_served_with_a_strict_policy(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        root = await client.get("/")
        assert (root.status, root.headers["Location"]) == (301, "/ui/")
        bare = await client.get("/ui")
        assert (bare.status, bare.headers["Location"]) == (301, "/ui/")
        page = await client.get("/ui/")
        assert page.status == 200
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert b"app.js" in page.body
        assert b"style.css" in page.body
        assert page.body == (await client.get("/ui/index.html")).body
        script = await client.get("/ui/app.js")
        assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert b"/api/ui/events" in script.body
        style = await client.get("/ui/style.css")
        assert style.headers["Content-Type"] == "text/css; charset=utf-8"
        for path in ("/ui/nope.js", "/ui/..%2Fhttp.py", "/ui/%2e%2e/__init__.py"):
            missing = await client.get(path)
            assert missing.status == 404, path
            assert json.loads(missing.body)["status"] == "error"

    api(scenario)


def test_events_bring_the_state_at_once_and_after_each_change(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        async with client.stream("/api/ui/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert resp.headers["Cache-Control"] == "no-cache"
            events = Events(resp)
            first = [await events.next(), await events.next()]
            assert events.retry == 1000  # the browser reconnects a second after a restart
            assert sorted(name for name, _ in first) == ["local", "state"]
            assert dict(first)["state"] == json.loads(codec.encode_state(catalog.state()))
            assert dict(first)["local"] == catalog.local
            drained = merge.drain(catalog.state(), "aaa111aaa111", now=catalog.now)
            assert drained is not None
            await catalog.publish(drained.state)
            name, state = await events.next()
            assert name == "state"
            assert state == json.loads(codec.encode_state(drained.state))
            assert state["Servers"]["alpha"]["Services"]["aaa111aaa111"]["Status"] == 4

    api(scenario)


def test_events_bring_local_news_only_when_it_changed(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        async with client.stream("/api/ui/events") as resp:
            events = Events(resp)
            await events.next()
            await events.next()
            # Looked at every second; unchanged, nothing is sent.
            await eventually(lambda: catalog.local_views >= 3, "two more looks", within=5)
            with pytest.raises(TimeoutError):
                await events.next(within=0.3)
            catalog.local = {**catalog.local, "haproxy": {"error": None, "servers": []}}
            name, local = await events.next(within=3)
            assert (name, local) == ("local", catalog.local)

    api(scenario)


def test_events_end_with_the_client_and_count_as_watchers(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, _: http.HttpServer) -> None:
        first = await client.stream("/api/ui/events")
        await Events(first).next()
        refused = await client.get("/api/ui/events")  # the limit is 1 here
        assert refused.status == 503
        assert b"too many watch streams" in refused.body
        first.close()
        await eventually(lambda: catalog.streams_open == 0, "the stream to end")
        again = await client.stream("/api/ui/events")
        assert again.status == 200
        again.close()

    api(scenario, max_watchers=1)


def test_events_end_when_the_server_stops(api: Callable[..., None]) -> None:
    async def scenario(client: Client, catalog: MemoryCatalog, server: http.HttpServer) -> None:
        async with client.stream("/api/ui/events") as resp:
            await Events(resp).next()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(server.stop(), 3.0)
            assert loop.time() - started < 2.0
            await asyncio.wait_for(resp.content.read(), READ_TIMEOUT)
        assert catalog.streams_open == 0

    api(scenario, catalog=MemoryCatalog(initial_state()))
