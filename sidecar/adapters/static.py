"""Static discovery: watch a Go `static.json` file and hand its services to the loop.

The file is read at start and re-read whenever its mtime, size, inode or device change
(polled, default every second). Every successful read pushes a `StaticSnapshot` with all
the file's services. A file that cannot be used (missing, unreadable, larger than
`max_size`, not valid JSON) pushes a snapshot with the last good services and the error,
once per distinct error (it is logged once too); the next good read clears it. A file over
`max_size` is never read whole: its size is checked first, and at most `max_size + 1` bytes
are read. Parsing is the core's (`state.static_config`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.state.discovery import DiscoveryPolicy, Observed, Rejected, quoted
from sidecar.state.static_config import StaticConfigError, keep_created, parse_static

log = logging.getLogger("sidecar.static")

DEFAULT_MAX_SIZE = 4 * 1024 * 1024  # bytes: some 20,000 targets of ~200 bytes

# Two writes within the file system's timestamp granularity that keep the size would look
# unchanged; while the file's mtime is this recent, its bytes are compared on every poll.
_RACY_NS = 2_000_000_000

_Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class StaticSnapshot:
    """Every service the static file describes, as of the last successful read, the targets
    it cannot serve (with the reason), and why the file is not used now, if it is not."""

    observed: tuple[Observed, ...]
    rejected: tuple[Rejected, ...] = ()
    error: str | None = None
    """Why the file as it is now is not used (the services above are then the last good
    ones), naming the file; None when the last read was good."""


def _stat(path: Path) -> _Signature | None:
    """Return the file's (mtime, size, inode, device), or None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class FileTooLarge(Exception):
    """The static file is larger than the limit; the message names the file and the limit."""


def _read_at_most(path: Path, limit: int) -> bytes:
    """Return the file's bytes; raise FileTooLarge after reading `limit + 1` of them."""
    with path.open("rb") as file:
        content = file.read(limit + 1)
    if len(content) > limit:
        raise FileTooLarge(f"{path} has grown to more than the limit of {limit} bytes")
    return content


class StaticDiscovery:
    """Polls one static discovery file and pushes a `StaticSnapshot` on each change: of its
    services, or of its error."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: DiscoveryPolicy,
        *,
        poll_interval: float = 1.0,
        max_size: int = DEFAULT_MAX_SIZE,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = Path(path)
        self.policy = policy
        self.poll_interval = poll_interval
        self.max_size = max_size
        self.clock = clock
        self._signature: _Signature | None = None
        self._content: bytes | None = None
        self._error: str | None = None
        self._observed: tuple[Observed, ...] = ()
        self._rejected: tuple[Rejected, ...] = ()
        self._logged_rejections: set[tuple[str, str]] = set()

    async def run(self, out: asyncio.Queue[StaticSnapshot]) -> None:
        """Return never: push the file's services at start and after every change.

        A file missing or broken at start gives an empty snapshot with the error.
        """
        try:
            signature = await asyncio.to_thread(_stat, self.path)
        except OSError as exc:
            await self._fail(out, f"cannot read {self.path}: {exc}")
        else:
            if signature is None:
                await self._fail(
                    out, f"{self.path} does not exist; no static services", logging.WARNING
                )
            else:
                await self._read(out, signature)
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.poll(out)

    async def poll(self, out: asyncio.Queue[StaticSnapshot]) -> None:
        """Return after re-reading the file if it changed, pushing a snapshot if its services
        or its error changed."""
        try:
            signature = await asyncio.to_thread(_stat, self.path)
        except OSError as exc:
            self._forget()
            await self._fail(out, f"cannot read {self.path}: {exc}")
            return
        if signature is None:
            if self._signature is not None or self._content is not None:
                self._forget()
                await self._fail(
                    out, f"{self.path} disappeared; keeping the last good static services"
                )
            return
        racy = time.time_ns() - signature[0] < _RACY_NS
        if signature != self._signature or racy:
            await self._read(out, signature)

    async def _read(self, out: asyncio.Queue[StaticSnapshot], signature: _Signature) -> bool:
        """Return whether the file was read, parsed and pushed (False if unchanged or bad)."""
        self._signature = signature
        keeping = "keeping the last good static services"
        size = signature[1]
        if size > self.max_size:
            self._forget()
            await self._fail(
                out,
                f"{self.path} is {size} bytes, more than the limit of {self.max_size} bytes "
                f"(static_discovery.max_size); {keeping}",
            )
            return False
        try:
            content = await asyncio.to_thread(_read_at_most, self.path, self.max_size)
        except FileTooLarge as exc:
            self._forget()
            await self._fail(out, f"{exc} (static_discovery.max_size); {keeping}")
            return False
        except OSError as exc:
            self._forget()
            await self._fail(out, f"cannot read {self.path}: {exc}")
            return False
        if content == self._content:  # unchanged, or the same broken bytes again
            return False
        self._content = content
        try:
            parsed = parse_static(content, self.policy, now=self.clock(), source=str(self.path))
        except StaticConfigError as exc:
            await self._fail(out, f"{exc}; {keeping}")
            return False
        except Exception as exc:  # a bug in parsing must not end static discovery for good
            log.exception("parsing %s failed; %s", self.path, keeping)
            await self._fail(out, f"parsing {self.path} failed: {exc!r}; {keeping}", None)
            return False
        rejected = tuple(item for item in parsed if isinstance(item, Rejected))
        observed = tuple(item for item in parsed if isinstance(item, Observed))
        for refused in rejected:
            if (refused.id, refused.reason) not in self._logged_rejections:
                self._logged_rejections.add((refused.id, refused.reason))
                log.warning(
                    "%s: not serving %s: %s", self.path, quoted(refused.name), refused.reason
                )
        known = {item.service.id for item in self._observed}
        self._observed = keep_created(observed, self._observed)
        self._rejected = rejected
        if self._error is not None:
            log.info("%s is good again: %d static services", self.path, len(observed))
        self._error = None
        for item in self._observed:
            if item.service.id not in known:
                log.info("Discovered service: %s, ID: %s", item.service.name, item.service.id)
        await out.put(StaticSnapshot(self._observed, rejected))
        return True

    def _forget(self) -> None:
        """Forget what was read last, so that the next poll that finds the file reads it again
        (after an error that was not about its bytes: missing, unreadable, too large)."""
        self._signature = None
        self._content = None

    async def _fail(
        self, out: asyncio.Queue[StaticSnapshot], message: str, level: int | None = logging.ERROR
    ) -> None:
        """Make `message` the file's error: log it (at `level`, None: already logged) and push
        the last good services with it, unless it is the error already reported."""
        if message == self._error:
            return
        self._error = message
        if level is not None:
            log.log(level, "%s", message)
        await out.put(StaticSnapshot(self._observed, self._rejected, message))
