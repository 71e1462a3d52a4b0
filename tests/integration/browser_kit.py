"""Helpers for the UI tests in headless Chromium (Debian's, driven by Playwright).

`open_browser()` launches Chromium as ENVIRONMENT.md says; `Console` collects what the page
logs (errors, warnings, uncaught exceptions), so a test can assert the page stayed clean;
`ApiInThread` serves the HTTP API over an in-memory catalog from a thread of its own, since
Playwright's sync API blocks the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from sidecar.adapters import http
from sidecar.state.model import ClusterState
from tests.conftest import CHROMIUM

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def open_browser() -> Iterator[Browser]:
    """Yield a headless Chromium with a fresh profile; closed at the end."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Console:
    """What a page logged: console errors and warnings, and uncaught exceptions."""

    def __init__(self, page: Page, *, expected: tuple[str, ...] = ()) -> None:
        self.problems: list[str] = []
        self._expected = expected
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") and not any(
            part in message.text for part in self._expected
        ):
            self.problems.append(f"{message.type}: {message.text} ({message.location})")


class ApiInThread:
    """The HTTP API over `catalog`, served on host:port by an event loop in its own thread."""

    def __init__(self, catalog: Any, host: str, port: int, **options: Any) -> None:
        self.catalog, self.host, self.port, self.options = catalog, host, port, options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._server: http.HttpServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def call(self, coroutine: Any, timeout: float = 10.0) -> Any:
        """Return what `coroutine` returns, run on the server's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        async def serve() -> http.HttpServer:
            return await http.serve(
                http.make_app(self.catalog, **self.options), self.host, self.port
            )

        self._server = self.call(serve())

    def stop(self) -> None:
        if self._server is not None:
            self.call(self._server.stop())
            self._server = None

    def publish(self, state: ClusterState) -> None:
        self.call(self.catalog.publish(state))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


__all__ = ["ApiInThread", "Console", "Error", "open_browser"]
