"""Parts that run until they are stopped, as named tasks: start them together, hear of the
first that ends by itself (with its error), stop them all.

The daemon runs its jobs this way (discovery, state updates, ticks, listeners, the cluster
join, the HAProxy loop) and host discovery its sources (Docker, the static file, the check
reports). Each part is a coroutine that returns only when cancelled; one that ends anyway
(an error, or a bug that let it return) leaves the others serving what no longer follows
what runs, so it is news for whoever supervises them: `Parts.first_end()` returns it, or
`on_end` hears it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any


class PartEnded(RuntimeError):
    """A part ended by itself: its name, and its error (None when it returned)."""

    def __init__(self, name: str, cause: BaseException | None) -> None:
        super().__init__(f"{name} stopped: {cause!r}")
        self.name = name
        self.cause = cause


class Parts:
    """Named tasks, each running one part until cancelled (see `supervised`)."""

    def __init__(self, on_end: Callable[[PartEnded], None] | None) -> None:
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._on_end = on_end
        self._ended: asyncio.Future[PartEnded] = asyncio.get_running_loop().create_future()

    def start(self, name: str, part: Coroutine[Any, Any, Any]) -> None:
        """Run `part` as a task named `name`."""
        task = asyncio.create_task(part, name=name)
        task.add_done_callback(self._done)
        self._tasks.append(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        if self._stopping:  # cancelled, as parts are stopped
            return
        # Cancelled from within (it awaited something cancelled) is an end like any other.
        cause = asyncio.CancelledError() if task.cancelled() else task.exception()
        ended = PartEnded(task.get_name(), cause)
        if not self._ended.done():
            self._ended.set_result(ended)
        if self._on_end is not None:
            self._on_end(ended)

    async def first_end(self, stop: asyncio.Event) -> PartEnded | None:
        """Return the first part that ended by itself, or None once `stop` is set first."""
        stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({stopping, self._ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        return self._ended.result() if self._ended.done() else None

    async def stop(self) -> None:
        """Cancel every part and return once all have finished (their errors were news)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def supervised(
    parts: Mapping[str, Coroutine[Any, Any, Any]],
    *,
    on_end: Callable[[PartEnded], None] | None = None,
) -> AsyncIterator[Parts]:
    """Yield the parts, each started as a task named by its key; `on_end` hears at once of
    each one that ends by itself. On the way out every part is cancelled and awaited."""
    running = Parts(on_end)
    try:
        for name, part in parts.items():
            running.start(name, part)
        yield running
    finally:
        await running.stop()
