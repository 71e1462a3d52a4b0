"""StaticDiscovery on a real temp file: initial read, edits, broken files, recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.adapters import static
from sidecar.adapters.static import DEFAULT_MAX_SIZE, StaticDiscovery, StaticSnapshot
from sidecar.state.discovery import DiscoveryPolicy

POLICY = DiscoveryPolicy(hostname="vm", advertise_ip="10.0.0.7")
POLL = 0.05
WAIT = 2.0  # generous bound for one change to be seen (expected within ~0.1 s)
QUIET = 0.4  # how long "nothing new" is watched for: eight polls


def target(name: str, port: int) -> dict[str, object]:
    return {
        "Service": {
            "Name": name,
            "Image": "img:1",
            "Ports": [{"Type": "tcp", "Port": port, "ServicePort": 9999}],
            "ProxyMode": "http",
        },
        "Check": {"Type": "HttpGet", "Args": f"http://:{port}/"},
    }


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and config tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def names(snapshot: StaticSnapshot) -> list[tuple[str, int]]:
    result = []
    for observed in snapshot.observed:
        ports = observed.service.ports or ()
        result.append((observed.service.name, ports[0].port if ports else 0))
    return result


Scenario = Callable[["asyncio.Queue[StaticSnapshot]"], Awaitable[None]]


def run_scenario(
    path: Path,
    scenario: Scenario,
    *,
    clock: Callable[[], int] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> None:
    """Run StaticDiscovery on `path` while `scenario` drives it; stop it afterwards."""

    async def main() -> None:
        queue: asyncio.Queue[StaticSnapshot] = asyncio.Queue()
        discovery = StaticDiscovery(
            path, POLICY, poll_interval=POLL, max_size=max_size, clock=clock or time.time_ns
        )
        task = asyncio.create_task(discovery.run(queue))
        try:
            await asyncio.wait_for(scenario(queue), timeout=30)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


async def next_snapshot(queue: asyncio.Queue[StaticSnapshot]) -> StaticSnapshot:
    return await asyncio.wait_for(queue.get(), timeout=WAIT)


async def assert_quiet(queue: asyncio.Queue[StaticSnapshot]) -> None:
    await asyncio.sleep(QUIET)
    assert queue.empty()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sidecar.static" and r.levelno >= logging.ERROR
    ]


def test_initial_snapshot_then_an_edit_is_seen(tmp_path: Path):
    path = tmp_path / "static.json"
    write(path, json.dumps([target("a", 10001)]))
    ticks = iter(range(1_000, 10**6, 1_000))

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        first = await next_snapshot(queue)
        assert names(first) == [("a", 10001)]
        assert first.observed[0].service.created == 1_000
        await assert_quiet(queue)  # an unchanged file is not re-announced

        loop = asyncio.get_running_loop()
        started = loop.time()
        write(path, json.dumps([target("a", 10001), target("b", 10002)]))
        second = await next_snapshot(queue)
        assert loop.time() - started < 0.5
        assert names(second) == [("a", 10001), ("b", 10002)]
        # "a" did not change: same ID and the Created of its first read.
        assert second.observed[0] == first.observed[0]
        assert second.observed[1].service.created > first.observed[0].service.created

    run_scenario(path, scenario, clock=lambda: next(ticks))


def test_same_size_edit_is_seen(tmp_path: Path):
    path = tmp_path / "static.json"
    path.write_text(json.dumps([target("a", 10001)]))

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        assert names(await next_snapshot(queue)) == [("a", 10001)]
        path.write_text(json.dumps([target("b", 10001)]))  # in place, same size, same inode
        assert names(await next_snapshot(queue)) == [("b", 10001)]

    run_scenario(path, scenario)


def test_broken_file_keeps_last_good_and_logs_once_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="sidecar.static")
    path = tmp_path / "static.json"
    good = json.dumps([target("a", 10001)], indent=2)
    write(path, good)

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        assert names(await next_snapshot(queue)) == [("a", 10001)]

        write(path, '[\n  {"Service": {"Name": "a"}\n   "Check": {}}\n]')
        broken = await next_snapshot(queue)  # the last good services, and why
        assert names(broken) == [("a", 10001)]
        assert broken.error is not None
        assert broken.error.startswith(f"{path} line 3 column 4: Expecting ',' delimiter")
        await assert_quiet(queue)
        logged = errors(caplog)
        assert logged == [broken.error]

        # Another broken version is another error; the same one is not repeated.
        write(path, "[")
        assert (await next_snapshot(queue)).error != broken.error
        await assert_quiet(queue)
        assert len(errors(caplog)) == 2

        write(path, json.dumps([target("a", 10001), target("c", 10003)]))
        fixed = await next_snapshot(queue)
        assert names(fixed) == [("a", 10001), ("c", 10003)]
        assert fixed.error is None
        assert len(errors(caplog)) == 2

    run_scenario(path, scenario)


def test_missing_file_gives_an_empty_snapshot_and_one_warning_then_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="sidecar.static")
    path = tmp_path / "static.json"

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        missing = await next_snapshot(queue)
        assert missing.observed == ()
        assert missing.error == f"{path} does not exist; no static services"
        await assert_quiet(queue)
        warnings = [
            r for r in caplog.records if r.name == "sidecar.static" and r.levelno >= logging.WARNING
        ]
        assert len(warnings) == 1
        assert "does not exist" in warnings[0].getMessage()

        write(path, json.dumps([target("a", 10001)]))
        appeared = await next_snapshot(queue)
        assert names(appeared) == [("a", 10001)]
        assert appeared.error is None

    run_scenario(path, scenario)


def test_deleted_file_keeps_the_last_good_services(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="sidecar.static")
    path = tmp_path / "static.json"
    write(path, json.dumps([target("a", 10001)]))

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        first = await next_snapshot(queue)
        assert names(first) == [("a", 10001)]
        path.unlink()
        gone = await next_snapshot(queue)
        assert gone.observed == first.observed
        assert gone.error == f"{path} disappeared; keeping the last good static services"
        await assert_quiet(queue)
        assert errors(caplog) == [gone.error]

        # The same bytes back: the error goes, the services are the same ones.
        write(path, json.dumps([target("a", 10001)]))
        back = await next_snapshot(queue)
        assert (back.observed, back.error) == (first.observed, None)

    run_scenario(path, scenario)


def test_other_tasks_keep_running_while_it_polls(tmp_path: Path):
    path = tmp_path / "static.json"
    write(path, "not json")
    ticks = 0

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        nonlocal ticks
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert queue.get_nowait().observed == ()  # broken at start: nothing known, empty
        assert queue.empty()

    run_scenario(path, scenario)
    assert ticks == 20


def test_a_file_over_the_size_limit_is_refused_unread_and_the_last_good_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    caplog.set_level(logging.INFO, logger="sidecar.static")
    path = tmp_path / "static.json"
    good = json.dumps([target("a", 10001)])
    write(path, good)
    limit = 2 * len(good)
    reads: list[Path] = []
    read_at_most = static._read_at_most

    def counted(file: Path, at_most: int) -> bytes:
        reads.append(file)
        return read_at_most(file, at_most)

    monkeypatch.setattr(static, "_read_at_most", counted)

    async def scenario(queue: asyncio.Queue[StaticSnapshot]) -> None:
        first = await next_snapshot(queue)
        assert names(first) == [("a", 10001)]
        assert len(reads) == 1

        big = tmp_path / "big.json"
        with big.open("wb") as file:
            file.truncate(50 * 1024 * 1024)  # 50 MiB, sparse: it costs no disk
        os.replace(big, path)
        refused = await next_snapshot(queue)
        assert refused.observed == first.observed
        assert refused.error == (
            f"{path} is {50 * 1024 * 1024} bytes, more than the limit of {limit} bytes "
            "(static_discovery.max_size); keeping the last good static services"
        )
        await assert_quiet(queue)
        assert len(reads) == 1  # its size was enough: not a byte of it was read
        assert errors(caplog) == [refused.error]

        # The good bytes back: read again, served as before, the error gone.
        write(path, good)
        back = await next_snapshot(queue)
        assert (back.observed, back.error) == (first.observed, None)

    run_scenario(path, scenario, max_size=limit)


def test_a_file_that_grows_after_its_size_was_taken_is_refused_at_the_limit(tmp_path: Path):
    path = tmp_path / "static.json"
    good = json.dumps([target("a", 10001)])
    write(path, good)

    async def main() -> None:
        queue: asyncio.Queue[StaticSnapshot] = asyncio.Queue()
        discovery = StaticDiscovery(path, POLICY, max_size=len(good))
        await discovery.poll(queue)
        first = queue.get_nowait()
        assert names(first) == [("a", 10001)]
        stat = path.stat()
        path.write_text(good + " " * 10**6)
        # As if the size had been taken just before the write: the read still stops.
        await discovery._read(queue, (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev))
        refused = queue.get_nowait()
        assert refused.observed == first.observed
        assert refused.error == (
            f"{path} has grown to more than the limit of {len(good)} bytes "
            "(static_discovery.max_size); keeping the last good static services"
        )

    asyncio.run(main())
