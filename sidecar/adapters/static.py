"""Static discovery: watch a Go `static.json` file and hand its services to the loop.

The file is read at start and re-read whenever its mtime, size, inode or device change
(polled, default every second). Every successful read pushes a `StaticSnapshot` with all
the file's services; a read or parse error is logged once per distinct error and pushes
nothing, so the last good services stay. Parsing is the core's (`state.static_config`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.state.discovery import DiscoveryPolicy, Observed, Rejected
from sidecar.state.static_config import StaticConfigError, keep_created, parse_static

log = logging.getLogger("sidecar.static")

# Two writes within the file system's timestamp granularity that keep the size would look
# unchanged; while the file's mtime is this recent, its bytes are compared on every poll.
_RACY_NS = 2_000_000_000

_Signature = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class StaticSnapshot:
    """Every service the static file describes, as of one successful read, and the targets
    it cannot serve (with the reason)."""

    observed: tuple[Observed, ...]
    rejected: tuple[Rejected, ...] = ()


def _stat(path: Path) -> _Signature | None:
    """Return the file's (mtime, size, inode, device), or None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class StaticDiscovery:
    """Polls one static discovery file and pushes a `StaticSnapshot` on each good change."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        policy: DiscoveryPolicy,
        *,
        poll_interval: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = Path(path)
        self.policy = policy
        self.poll_interval = poll_interval
        self.clock = clock
        self._signature: _Signature | None = None
        self._content: bytes | None = None
        self._last_error: str | None = None
        self._observed: tuple[Observed, ...] = ()
        self._logged_rejections: set[tuple[str, str]] = set()

    async def run(self, out: asyncio.Queue[StaticSnapshot]) -> None:
        """Return never: push the file's services at start and after every change.

        A file missing or broken at start gives an empty snapshot and one warning or error.
        """
        try:
            signature = await asyncio.to_thread(_stat, self.path)
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc}")
            await out.put(StaticSnapshot(()))
        else:
            if signature is None:
                self._report(f"{self.path} does not exist; no static services", logging.WARNING)
                await out.put(StaticSnapshot(()))
            elif not await self._read(out, signature):
                await out.put(StaticSnapshot(()))  # no last good services yet: there are none
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.poll(out)

    async def poll(self, out: asyncio.Queue[StaticSnapshot]) -> None:
        """Return after re-reading the file if it changed, pushing a snapshot if it parsed."""
        try:
            signature = await asyncio.to_thread(_stat, self.path)
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc}")
            return
        if signature is None:
            if self._signature is not None or self._content is not None:
                self._report(f"{self.path} disappeared; keeping the last good static services")
            return
        racy = time.time_ns() - signature[0] < _RACY_NS
        if signature != self._signature or racy:
            await self._read(out, signature)

    async def _read(self, out: asyncio.Queue[StaticSnapshot], signature: _Signature) -> bool:
        """Return whether the file was read, parsed and pushed (False if unchanged or bad)."""
        self._signature = signature
        try:
            content = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            self._content = None
            self._report(f"cannot read {self.path}: {exc}")
            return False
        if content == self._content:
            return False
        self._content = content
        try:
            parsed = parse_static(content, self.policy, now=self.clock(), source=str(self.path))
        except StaticConfigError as exc:
            self._report(f"{exc}; keeping the last good static services")
            return False
        except Exception:  # a bug in parsing must not end static discovery for good
            log.exception("parsing %s failed; keeping the last good static services", self.path)
            return False
        rejected = tuple(item for item in parsed if isinstance(item, Rejected))
        observed = tuple(item for item in parsed if isinstance(item, Observed))
        for refused in rejected:
            if (refused.id, refused.reason) not in self._logged_rejections:
                self._logged_rejections.add((refused.id, refused.reason))
                log.warning("%s: not serving %r: %s", self.path, refused.name, refused.reason)
        known = {item.service.id for item in self._observed}
        self._observed = keep_created(observed, self._observed)
        if self._last_error is not None:
            log.info("%s parses again: %d static services", self.path, len(observed))
        self._last_error = None
        for item in self._observed:
            if item.service.id not in known:
                log.info("Discovered service: %s, ID: %s", item.service.name, item.service.id)
        await out.put(StaticSnapshot(self._observed, rejected))
        return True

    def _report(self, message: str, level: int = logging.ERROR) -> None:
        """Log `message` unless it is the same as the last one reported."""
        if message != self._last_error:
            self._last_error = message
            log.log(level, "%s", message)
