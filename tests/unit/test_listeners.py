"""State-change listeners without a network: the queue policy, Go's `StateChangedEvent`
document, the retry schedule, the registry following discovery, and the daemon's wiring."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from sidecar.adapters.listeners import (
    RETRY_SLEEPS,
    DeliveryQueue,
    Listeners,
    Pending,
    UrlListener,
    service_name,
    static_name,
)
from sidecar.state import codec, times
from sidecar.state.model import ChangeEvent, ClusterState, Server, Service, Status
from tests.builders import T0

# The spec's exact service example (sidecar-behaviour.md §1.3).
SPEC_SERVICE = (
    '{"ID":"deadbeef123","Name":"awesome-svc","Image":"awesome-svc:1.0",'
    '"Created":"2023-01-02T03:04:05.6Z","Hostname":"indomitable",'
    '"Ports":[{"Type":"tcp","Port":10450,"ServicePort":8080,"IP":"127.0.0.1"}],'
    '"Updated":"2023-01-02T03:04:05.6Z","ProxyMode":"http","Status":0}'
)
T = times.parse_time("2023-01-02T03:04:05.6Z")


def spec_state() -> tuple[ClusterState, ChangeEvent]:
    service = codec.decode_service(SPEC_SERVICE)
    server = Server("indomitable", {service.id: service}, last_updated=T, last_changed=T)
    state = ClusterState("indomitable", "default", {"indomitable": server}, last_changed=T)
    return state, ChangeEvent(service, Status.UNKNOWN, T)


def pending(n: int) -> Pending:
    state, event = spec_state()
    return Pending(state, ChangeEvent(event.service, event.previous_status, T + n))


# ---------------------------------------------------------------- the document


def test_the_document_is_gos_state_changed_event_byte_for_byte():
    state, event = spec_state()
    expected = (
        '{"State":{"Servers":{"indomitable":{"Name":"indomitable","Services":{"deadbeef123":'
        + SPEC_SERVICE
        + '},"LastUpdated":"2023-01-02T03:04:05.6Z","LastChanged":"2023-01-02T03:04:05.6Z"}},'
        '"LastChanged":"2023-01-02T03:04:05.6Z","ClusterName":"default",'
        '"Hostname":"indomitable"},'
        '"ChangeEvent":{"Service":' + SPEC_SERVICE + ',"PreviousStatus":3,'
        '"Time":"2023-01-02T03:04:05.6Z"}}'
    ).encode()
    body = codec.encode_state_changed(state, event)
    assert body == expected
    # Its parts are exactly the state's and the record's own Go encodings.
    document = json.loads(body)
    assert list(document) == ["State", "ChangeEvent"]
    assert list(document["ChangeEvent"]) == ["Service", "PreviousStatus", "Time"]
    assert json.dumps(document["State"], separators=(",", ":")).encode() == codec.encode_state(
        state
    )
    assert Pending(state, event).body() == expected


def test_the_document_escapes_as_go_does():
    state, event = spec_state()
    odd = Service(**{**_fields(event.service), "name": "a<b>&c"})
    body = codec.encode_state_changed(state, ChangeEvent(odd, Status.ALIVE, T))
    assert b'"Name":"a\\u003cb\\u003e\\u0026c"' in body
    assert b"<" not in body


def _fields(service: Service) -> dict[str, object]:
    return {f: getattr(service, f) for f in service.__dataclass_fields__}


# ---------------------------------------------------------------- the queue


def test_the_queue_delivers_in_order():
    queue = DeliveryQueue(5)
    items = [pending(n) for n in range(3)]
    for item in items:
        assert queue.put(item) == 0

    async def drain():
        return [await queue.get() for _ in range(3)]

    assert asyncio.run(drain()) == items
    assert len(queue) == 0


def test_an_overflowing_queue_drops_the_oldest_and_keeps_the_newest():
    queue = DeliveryQueue(3)
    items = [pending(n) for n in range(5)]
    dropped = [queue.put(item) for item in items]
    assert dropped == [0, 0, 0, 1, 1]
    assert len(queue) == 3

    async def drain():
        return [await queue.get() for _ in range(3)]

    # The newest three, in order: the last of them carries the newest state.
    assert asyncio.run(drain()) == items[2:]


def test_a_reader_waits_for_the_next_item():
    queue = DeliveryQueue(2)
    item = pending(1)

    async def scenario():
        reader = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        assert not reader.done()
        queue.put(item)
        return await asyncio.wait_for(reader, 1)

    assert asyncio.run(scenario()) is item


def test_a_queue_needs_room_for_one_event():
    with pytest.raises(ValueError, match="at least 1 event, not 0"):
        DeliveryQueue(0)


# ---------------------------------------------------------------- retries


class FakePoster:
    """Answers with the statuses given in turn (an exception is raised), records each body."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.bodies: list[tuple[str, bytes]] = []

    async def __call__(self, url: str, body: bytes) -> int:
        self.bodies.append((url, body))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeSleep:
    def __init__(self):
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_a_retry_sends_the_whole_body_again_after_gos_pauses():
    post, sleep = FakePoster(500, 502, 200), FakeSleep()
    listener = UrlListener("UrlListener(u)", "http://u/", post, managed=False, sleep=sleep)
    body = pending(1).body()
    assert asyncio.run(listener.deliver(body)) is True
    assert post.bodies == [("http://u/", body)] * 3  # Go sends b"" on the 2nd and 3rd
    assert sleep.slept == [0.0, 0.0]
    assert (listener.stats.deliveries, listener.stats.retries) == (1, 2)
    assert listener.stats.dropped_failed == 0


def test_six_failed_attempts_give_up_with_one_warning_naming_the_url_and_the_last_error(caplog):
    post = FakePoster(500, 500, 500, 500, ConnectionRefusedError("refused"), 404)
    sleep = FakeSleep()
    listener = UrlListener("UrlListener(u)", "http://u/x", post, managed=False, sleep=sleep)
    with caplog.at_level(logging.WARNING, logger="sidecar.listeners"):
        assert asyncio.run(listener.deliver(b"{}")) is False
    assert len(post.bodies) == 6
    assert sleep.slept == [0.0, 0.0, 0.1, 0.2, 0.3, 0.4] == list(RETRY_SLEEPS)
    assert (listener.stats.deliveries, listener.stats.retries) == (0, 5)
    assert listener.stats.dropped_failed == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Failed posting state to 'http://u/x': Bad status code returned (404)"]


def test_a_timeout_is_named_in_the_warning(caplog):
    listener = UrlListener(
        "n", "http://u/", FakePoster(TimeoutError()), managed=False, sleep=FakeSleep()
    )
    with caplog.at_level(logging.WARNING, logger="sidecar.listeners"):
        assert asyncio.run(listener.deliver(b"{}")) is False
    assert caplog.records[-1].getMessage() == (
        "Failed posting state to 'http://u/': no answer within 3 s"
    )


def test_a_listener_posts_its_queue_in_order_and_counts_overflow():
    post = FakePoster(200)
    listener = UrlListener("n", "http://u/", post, managed=False, capacity=2, sleep=FakeSleep())
    items = [pending(n) for n in range(4)]
    for item in items:
        listener.offer(item)
    assert listener.stats.dropped_overflow == 2

    async def scenario():
        task = asyncio.create_task(listener.run())
        for _ in range(50):
            if len(post.bodies) == 2:
                break
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert [body for _, body in post.bodies] == [items[2].body(), items[3].body()]


# ---------------------------------------------------------------- the registry


def test_names_are_gos():
    assert static_name("http://a:1/x") == "UrlListener(http://a:1/x)"
    assert service_name("web", "deadbeef1234") == "Service(web-deadbeef1234)"


def test_discovered_listeners_come_and_go_and_configured_ones_stay(caplog):
    registry = Listeners(["http://127.0.0.1:1/a"], hostname="h", started=T0, post=FakePoster(200))
    static = static_name("http://127.0.0.1:1/a")
    one, two = service_name("web", "a1"), service_name("web", "b2")
    registry.track({one: "http://127.0.0.1:2/sidecar/update"})
    registry.track({one: "http://127.0.0.1:2/sidecar/update", two: "http://127.0.0.1:3/x"})
    assert set(registry.listeners) == {static, one, two}
    assert registry.listeners[static].managed is False
    assert registry.listeners[one].managed is True
    state, event = spec_state()
    registry.offer(state, [event, event])
    assert [len(registry.listeners[n].queue) for n in (static, one, two)] == [2, 2, 2]

    with caplog.at_level(logging.INFO, logger="sidecar.listeners"):
        registry.track({two: "http://127.0.0.1:4/moved"})
    assert set(registry.listeners) == {static, two}  # one gone with its queue
    assert registry.listeners[two].url == "http://127.0.0.1:4/moved"
    assert len(registry.listeners[two].queue) == 0  # replaced: a new listener
    assert f"Removing listener {one} because the service appears to be gone" in caplog.messages
    registry.track({})
    assert set(registry.listeners) == {static}
    registry.offer(state, [])  # a change of versions only: nothing to send
    assert len(registry.listeners[static].queue) == 2


def test_run_starts_every_listener_and_stops_them_when_cancelled():
    post = FakePoster(200)
    registry = Listeners(["http://127.0.0.1:1/a"], hostname="h", started=T0, post=post)
    state, event = spec_state()

    async def scenario():
        job = asyncio.create_task(registry.run())
        await asyncio.sleep(0)
        registry.track({service_name("web", "a1"): "http://127.0.0.1:2/sidecar/update"})
        registry.offer(state, [event])
        for _ in range(50):
            if len(post.bodies) == 2:
                break
            await asyncio.sleep(0)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("listener ")]

    assert asyncio.run(scenario()) == []
    assert sorted(url for url, _ in post.bodies) == [
        "http://127.0.0.1:1/a",
        "http://127.0.0.1:2/sidecar/update",
    ]
