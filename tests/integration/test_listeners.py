"""State-change listeners on a real daemon (`sidecar run` as a process) and real receivers.

Each receiver is an aiohttp server of the test on a fresh 127.0.0.x, run in a thread of its
own, that records every request; the daemon gets its URL as `LISTENERS_URLS`. The Docker test
uses a container of the test image labelled `SidecarListener`, whose busybox `nc` answers
`HTTP/1.0 200 OK` and appends each request to a file the test reads with `docker exec`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from sidecar.state import codec, times
from sidecar.state.model import ChangeEvent, Status

from .conftest import REPO, daemon_environment, http_request, wait_for

# In the container: one HTTP request on stdin (from `nc -ll -e`), recorded as one line
# "<method> <path> <body>" (the body is compact JSON: no line breaks), answered 200.
RECORDING_HANDLER = r"""#!/bin/sh
read -r method path rest
length=0
while read -r line; do
	line=$(printf '%s' "$line" | tr -d '\r')
	[ -z "$line" ] && break
	case "$line" in
	[Cc]ontent-[Ll]ength:*) length=$(printf '%s' "${line#*:}" | tr -d ' ') ;;
	esac
done
body=$(head -c "$length")
printf '%s %s %s\n' "$method" "$path" "$body" >> /tmp/requests
printf 'HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
"""
RECORDING_SERVER = [
    "sh",
    "-c",
    'printf "%s\\n" "$HANDLER" > /h.sh && chmod +x /h.sh && exec nc -ll -p 80 -e /h.sh',
]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """An HTTP server on `host:port` in a thread of its own that records every request.

    `answers` are the statuses of the first requests, in turn (200 after them); with
    `hang`, no request is ever answered (each waits until the receiver stops)."""

    def __init__(self, host: str, port: int, *, answers=(), hang: bool = False) -> None:
        self.host, self.port = host, port
        self.answers = list(answers)
        self.hang = hang
        self.received: list[Received] = []
        self.arrived = 0  # requests whose head arrived (a hung one is not in `received`)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/events"

    def start(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    async def _start(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def _stop(self) -> None:
        assert self._release is not None
        assert self._runner is not None
        self._release.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._release is not None
        with self._lock:
            self.arrived += 1
        if self.hang:
            await self._release.wait()
            return web.Response(status=503)
        body = await request.read()
        with self._lock:
            self.received.append(
                Received(request.path, dict(request.headers), body, time.monotonic())
            )
            status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status)


@pytest.fixture
def receiver(loopback):
    """Factory: a started `Receiver` on a fresh 127.0.0.x; all stopped at teardown."""
    made: list[Receiver] = []

    def make(host: str | None = None, **kwargs) -> Receiver:
        host = host or loopback.address()
        made.append(Receiver(host, loopback.port(host), **kwargs).start())
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.stop()


def static_env(tmp_path, loopback, *urls: str, **settings: str) -> dict[str, str]:
    return daemon_environment(
        tmp_path,
        loopback,
        SIDECAR_DISCOVERY="static",
        STATIC_CONFIG_FILE=str(tmp_path / "static.json"),
        LISTENERS_URLS=",".join(urls),
        **settings,
    )


def start(spawn, env):
    return spawn.start([sys.executable, "-m", "sidecar", "run"], name="sidecar", env=env, cwd=REPO)


def api(env, path):
    return http_request(f"http://{env['SIDECAR_HTTP_ADDRESS']}{path}")


def write_static(path: Path, targets: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets))
    tmp.replace(path)


def target(name: str, port: int, service_port: int) -> dict[str, object]:
    return {
        "Service": {
            "Name": name,
            "Image": "img:1",
            "Ports": [{"Type": "tcp", "Port": port, "ServicePort": service_port}],
        },
        "Check": {"Type": "AlwaysSuccessful"},
    }


def own_ids(env, name):
    reply = api(env, "/api/services.json")
    records = json.loads(reply.body)["Services"].get(name, [])
    return [r["ID"] for r in records if r["Status"] == 0]


def metrics(env):
    text = api(env, "/metrics").body.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def listener_figure(env, family, listener, **labels):
    for sample in metrics(env)[family].samples:
        if sample.labels.get("listener") == listener and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return sample.value
    return None


def events_of(documents, service_id):
    return [d for d in documents if d["ChangeEvent"]["Service"]["ID"] == service_id]


def assert_gos_document(body: bytes) -> dict:
    """Return the parsed document after checking it is Go's StateChangedEvent byte for byte:
    what Go would write for the state and the change it carries."""
    document = json.loads(body)
    assert list(document) == ["State", "ChangeEvent"]
    change = document["ChangeEvent"]
    assert list(change) == ["Service", "PreviousStatus", "Time"]
    state = codec.decode_state(json.dumps(document["State"]))
    event = ChangeEvent(
        codec.decode_service(json.dumps(change["Service"])),
        Status(change["PreviousStatus"]),
        times.parse_time(change["Time"]),
    )
    assert body == codec.encode_state_changed(state, event)
    return document


# ---------------------------------------------------------------- URL listeners


def test_a_url_listener_gets_one_document_per_change_in_order_in_gos_shape(
    spawn, tmp_path, loopback, receiver
):
    sink = receiver()
    env = static_env(tmp_path, loopback, sink.url, HAPROXY_DISABLE="true")
    path = Path(env["STATIC_CONFIG_FILE"])
    name = f"lst-{uuid.uuid4().hex[:6]}"
    write_static(path, [target(name, loopback.port(), loopback.port())])
    start(spawn, env)
    (sid,) = wait_for(lambda: own_ids(env, name), what=f"{name} ALIVE", timeout=30)

    def statuses():
        documents = [json.loads(r.body) for r in sink.requests()]
        return [d["ChangeEvent"]["Service"]["Status"] for d in events_of(documents, sid)]

    wait_for(lambda: Status.ALIVE in statuses(), what="the ALIVE event POSTed", timeout=30)
    write_static(path, [])  # the service goes
    wait_for(lambda: Status.TOMBSTONE in statuses(), what="the tombstone POSTed", timeout=30)

    requests = sink.requests()
    documents = [assert_gos_document(r.body) for r in requests]
    for request in requests:
        assert request.path == "/events"
        assert request.headers["Content-Type"] == "application/json"
        cookie = request.headers["Cookie"]
        assert cookie.startswith(f"sidecar-session-host={env['SIDECAR_HOSTNAME']}-"), cookie
    # In order: each change after the one before, each document's state the state after it.
    change_times = [times.parse_time(d["ChangeEvent"]["Time"]) for d in documents]
    assert change_times == sorted(change_times)
    mine = events_of(documents, sid)
    assert mine[0]["ChangeEvent"]["PreviousStatus"] == Status.UNKNOWN
    for before, after in itertools.pairwise(mine):
        assert after["ChangeEvent"]["PreviousStatus"] == before["ChangeEvent"]["Service"]["Status"]
    assert [d["ChangeEvent"]["Service"]["Status"] for d in mine][-2:] == [0, 1]
    for document in mine:
        change = document["ChangeEvent"]
        state = document["State"]
        assert change["Time"] == change["Service"]["Updated"]
        assert state["Servers"][env["SIDECAR_HOSTNAME"]]["Services"][sid] == change["Service"]
    listener = f"UrlListener({sink.url})"
    wait_for(
        lambda: listener_figure(env, "sidecar_listener_deliveries", listener) == len(requests),
        what="every POST counted as delivered",
    )
    assert listener_figure(env, "sidecar_listener_retries", listener) == 0


def test_a_receiver_failing_twice_gets_the_whole_body_on_the_third_try(
    spawn, tmp_path, loopback, receiver
):
    sink = receiver(answers=[500, 500])
    env = static_env(tmp_path, loopback, sink.url, HAPROXY_DISABLE="true")
    name = f"lst-{uuid.uuid4().hex[:6]}"
    write_static(Path(env["STATIC_CONFIG_FILE"]), [target(name, loopback.port(), 9000)])
    start(spawn, env)
    first_three = wait_for(
        lambda: sink.requests()[:3] if len(sink.requests()) >= 3 else None,
        what="three POSTs",
        timeout=30,
    )
    assert first_three[0].body, "the first attempt carried no body"
    assert [r.body for r in first_three] == [first_three[0].body] * 3
    assert_gos_document(first_three[2].body)
    listener = f"UrlListener({sink.url})"
    assert listener_figure(env, "sidecar_listener_retries", listener) == 2
    assert listener_figure(env, "sidecar_listener_deliveries", listener) >= 1
    assert listener_figure(env, "sidecar_listener_drops", listener, reason="failed") == 0


@pytest.mark.haproxy
def test_a_hung_receiver_delays_neither_haproxy_nor_the_api(spawn, tmp_path, loopback, receiver):
    hung = receiver(hang=True)
    env = static_env(tmp_path, loopback, hung.url, HAPROXY_STOP_ON_EXIT="true")
    path = Path(env["STATIC_CONFIG_FILE"])
    config = Path(env["HAPROXY_CONFIG_FILE"])
    listener = f"UrlListener({hung.url})"
    proc = start(spawn, env)
    wait_for(lambda: api(env, "/healthz").status == 200, what="/healthz", timeout=30)
    targets: list[dict[str, object]] = []
    bound = 10.0  # seconds for a new static service to be ALIVE in the API and in HAProxy
    for round_ in range(4):
        name = f"lst-{round_}-{uuid.uuid4().hex[:6]}"
        port = loopback.port()
        targets.append(target(name, port, 9100 + round_))
        write_static(path, targets)
        began = time.monotonic()
        wait_for(lambda name=name: own_ids(env, name), what=f"{name} ALIVE", timeout=bound)
        wait_for(
            lambda port=port: config.exists() and f" 127.0.0.1:{port} " in config.read_text(),
            what=f"{name} in HAProxy's config",
            timeout=bound,
        )
        took = time.monotonic() - began
        assert took < bound, took
        asked = time.monotonic()
        assert api(env, "/api/state.json").status == 200
        assert time.monotonic() - asked < 1.0
    # Meanwhile the receiver holds the first POST and the others wait in the queue.
    assert hung.arrived >= 1
    queued = listener_figure(env, "sidecar_listener_queue_length", listener)
    assert queued is not None
    assert queued >= 3, queued
    assert listener_figure(env, "sidecar_listener_deliveries", listener) == 0
    # Stopping does not wait for the receiver: within the daemon's stop bound.
    began = time.monotonic()
    assert spawn.stop(proc) == 0
    assert time.monotonic() - began < 3.0


def test_a_static_target_with_listen_port_gets_posts_until_it_goes(
    spawn, tmp_path, loopback, receiver
):
    # Go's URL for it is http://<hostname>:<ListenPort>/sidecar/update: the daemon is named
    # localhost here, so that is a receiver on 127.0.0.1.
    sink = receiver(host="127.0.0.1")
    env = static_env(tmp_path, loopback, HAPROXY_DISABLE="true", SIDECAR_HOSTNAME="localhost")
    path = Path(env["STATIC_CONFIG_FILE"])
    name = f"lst-{uuid.uuid4().hex[:6]}"
    write_static(path, [{**target(name, loopback.port(), 9200), "ListenPort": sink.port}])
    start(spawn, env)
    (sid,) = wait_for(lambda: own_ids(env, name), what=f"{name} ALIVE", timeout=30)
    documents = wait_for(
        lambda: [json.loads(r.body) for r in sink.requests()] or None,
        what="a POST to the target's ListenPort",
        timeout=30,
    )
    assert {r.path for r in sink.requests()} == {"/sidecar/update"}
    assert events_of(documents, sid)[0]["ChangeEvent"]["PreviousStatus"] == Status.UNKNOWN
    listener = f"Service({name}-{sid})"
    write_static(path, [])
    removed = f"Removing listener {listener} because the service appears to be gone"
    wait_for(lambda: removed in spawn.log("sidecar"), what="the listener removed", timeout=30)
    assert listener_figure(env, "sidecar_listener_queue_length", listener) is None


# ---------------------------------------------------------------- a container listener


@pytest.mark.docker
def test_a_container_labelled_sidecar_listener_gets_posts_until_it_stops(
    spawn, tmp_path, loopback, run_container
):
    env = daemon_environment(tmp_path, loopback, SIDECAR_DISCOVERY="docker", HAPROXY_DISABLE="true")
    start(spawn, env)
    wait_for(lambda: api(env, "/healthz").status == 200, what="/healthz", timeout=30)
    name, service_port = f"lst-{uuid.uuid4().hex[:6]}", 9500
    container = run_container(
        command=RECORDING_SERVER,
        environment={"HANDLER": RECORDING_HANDLER},
        labels={
            "ServiceName": name,
            "ServicePort_80": str(service_port),
            "SidecarListener": str(service_port),
            "HealthCheck": "AlwaysSuccessful",
        },
        publish_all_ports=True,
    )
    sid = container.id[:12]
    host_port = container.ports["80/tcp"][0]["HostPort"]
    listener = f"Service({name}-{sid})"

    def recorded():
        code, out = container.exec_run(["cat", "/tmp/requests"])
        return out.decode().splitlines() if code == 0 else []

    def own_alive():
        lines = [line.split(" ", 2) for line in recorded()]
        documents = [json.loads(body) for method, path, body in lines]
        return (
            lines
            if Status.ALIVE
            in [d["ChangeEvent"]["Service"]["Status"] for d in events_of(documents, sid)]
            else None
        )

    lines = wait_for(own_alive, what="the container's own ALIVE POSTed to it", timeout=30)
    for method, path, body in lines:
        assert (method, path) == ("POST", "/sidecar/update")
        assert_gos_document(body.encode())
    # The receiver records a POST before the daemon has its answer and counts the delivery.
    wait_for(
        lambda: listener_figure(env, "sidecar_listener_deliveries", listener) >= len(lines),
        what=f"{len(lines)} deliveries counted",
        timeout=10,
    )

    container.stop(timeout=1)
    removed = f"Removing listener {listener} because the service appears to be gone"
    wait_for(lambda: removed in spawn.log("sidecar"), what="the listener removed", timeout=30)
    assert listener_figure(env, "sidecar_listener_queue_length", listener) is None
    # A later change is not POSTed to it: no failed delivery to its address, ever.
    other = run_container(
        labels={
            "ServiceName": f"{name}-b",
            "ServicePort_80": "9501",
            "HealthCheck": "AlwaysSuccessful",
        },
        publish_all_ports=True,
    )
    wait_for(lambda: own_ids(env, f"{name}-b"), what="another service ALIVE", timeout=30)
    assert f":{host_port}/sidecar/update" not in spawn.log("sidecar").split(removed, 1)[1]
    assert other.id
