"""The task supervisor: the first part to end by itself is named, with its error; every part
is stopped on the way out; a stop asked for is not news."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.supervise import PartEnded, supervised


async def forever(cancelled: list[str], name: str) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def fails_soon() -> None:
    await asyncio.sleep(0.01)
    raise KeyError("Labels")


async def returns_soon() -> None:
    await asyncio.sleep(0.01)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 5))


def test_the_first_part_to_fail_is_named_and_the_others_are_stopped():
    async def scenario():
        cancelled: list[str] = []
        heard: list[PartEnded] = []
        async with supervised(
            {"a": forever(cancelled, "a"), "docker": fails_soon(), "b": forever(cancelled, "b")},
            on_end=heard.append,
        ) as parts:
            ended = await parts.first_end(asyncio.Event())
        return ended, heard, cancelled

    ended, heard, cancelled = run(scenario())
    assert ended is not None
    assert ended.name == "docker"
    assert isinstance(ended.cause, KeyError)
    assert str(ended) == "docker stopped: KeyError('Labels')"
    assert heard == [ended]
    assert sorted(cancelled) == ["a", "b"]


def test_a_part_that_returns_has_ended_too():
    async def scenario():
        async with supervised({"ticks": returns_soon()}) as parts:
            return await parts.first_end(asyncio.Event())

    ended = run(scenario())
    assert ended is not None
    assert (ended.name, ended.cause, str(ended)) == ("ticks", None, "ticks stopped: None")


def test_a_part_cancelled_from_within_has_ended():
    async def awaits_a_cancelled_future() -> None:
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, future.cancel)
        await future

    async def scenario():
        async with supervised({"join": awaits_a_cancelled_future()}) as parts:
            return await parts.first_end(asyncio.Event())

    ended = run(scenario())
    assert ended is not None
    assert isinstance(ended.cause, asyncio.CancelledError)


def test_a_stop_asked_for_returns_none_and_is_not_news():
    async def scenario():
        cancelled: list[str] = []
        heard: list[PartEnded] = []
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, stop.set)
        async with supervised(
            {"a": forever(cancelled, "a"), "b": forever(cancelled, "b")}, on_end=heard.append
        ) as parts:
            ended = await parts.first_end(stop)
        return ended, heard, cancelled

    ended, heard, cancelled = run(scenario())
    assert ended is None
    assert heard == []
    assert sorted(cancelled) == ["a", "b"]


def test_every_part_that_ends_is_heard_at_once():
    async def scenario():
        heard: list[str] = []
        async with supervised(
            {"x": fails_soon(), "y": returns_soon()}, on_end=lambda e: heard.append(e.name)
        ):
            for _ in range(100):
                if len(heard) == 2:
                    break
                await asyncio.sleep(0.01)
        return heard

    assert sorted(run(scenario())) == ["x", "y"]


def test_an_error_in_the_body_still_stops_every_part():
    async def scenario(cancelled: list[str]):
        async with supervised({"a": forever(cancelled, "a")}):
            await asyncio.sleep(0)
            raise RuntimeError("the supervisor's own error")

    cancelled: list[str] = []
    with pytest.raises(RuntimeError, match="own error"):
        run(scenario(cancelled))
    assert cancelled == ["a"]
