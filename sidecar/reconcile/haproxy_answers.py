"""HAProxy's runtime answers, read: the master's `show proc`, a worker's `show servers
state` and `show stat`.

Pure (text in, values out). The HAProxy adapter (`sidecar.adapters.haproxy`) asks and hands
the answers here; they live below the adapters so they are tested without a socket and the
adapters stay unaware of each other.
"""

from __future__ import annotations

import io
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

from sidecar.reconcile.haproxy_text import servers_in


@dataclass(frozen=True, slots=True)
class Process:
    """One line of the master's `show proc`."""

    pid: int
    kind: str
    reloads: int


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """The master's `show proc`: itself, its reload counters, its workers."""

    master: int
    reloads: int
    failed: int
    workers: tuple[Process, ...]
    old_workers: tuple[Process, ...] = ()


_MASTER_LINE: Final = re.compile(r"(\d+)\s+master\s+(\d+)(?:\s+\[failed:\s*(\d+)\])?")
_PROCESS_LINE: Final = re.compile(r"(\d+)\s+(\S+)\s+(\d+)")


def parse_show_proc(text: str) -> ProcInfo:
    """Return the master's `show proc` answer, parsed. Raises ValueError on anything else."""
    master: re.Match[str] | None = None
    section = "master"
    workers: dict[str, list[Process]] = {"workers": [], "old workers": []}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#<"):  # the column titles, above the master's line
            continue
        if stripped.startswith("#"):
            section = stripped.lstrip("# ").strip()
            continue
        if section == "master" and master is None:
            master = _MASTER_LINE.match(stripped)
            continue
        process = _PROCESS_LINE.match(stripped)
        if process is not None and section in workers:
            pid, kind, reloads = process.groups()
            workers[section].append(Process(int(pid), kind, int(reloads)))
    if master is None:
        raise ValueError(f"not a `show proc` answer: {text[:200]!r}")
    return ProcInfo(
        master=int(master.group(1)),
        reloads=int(master.group(2)),
        failed=int(master.group(3) or 0),
        workers=tuple(workers["workers"]),
        old_workers=tuple(workers["old workers"]),
    )


class ServerStat(NamedTuple):
    """One server as HAProxy's `show stat` reports it: its state word (UP, DOWN, MAINT,
    DRAIN, NOLB, or `no check` for a server HAProxy does not check itself) and its sessions
    now."""

    backend: str
    server: str
    status: str
    sessions: int


def parse_server_stats(text: str) -> tuple[ServerStat, ...]:
    """Return the servers of a `show stat` answer (CSV with a `# pxname,...` header; the
    frontend and backend summary lines are skipped). Raises ValueError without a header."""
    rows = iter(io.StringIO(text))
    header = next(rows, "")
    if not header.startswith("# "):
        raise ValueError(f"not a `show stat` answer: {text[:200]!r}")
    columns = header[2:].rstrip("\n").split(",")
    try:
        backend, server = columns.index("pxname"), columns.index("svname")
        status, sessions = columns.index("status"), columns.index("scur")
    except ValueError:
        raise ValueError(f"`show stat` without the expected columns: {header[:200]!r}") from None
    stats: list[ServerStat] = []
    for line in rows:
        fields = line.rstrip("\n").split(",")
        if len(fields) < len(columns) - 1 or fields[server] in ("FRONTEND", "BACKEND"):
            continue
        count = fields[sessions]
        stats.append(
            ServerStat(fields[backend], fields[server], fields[status], int(count) if count else 0)
        )
    return tuple(stats)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def parse_servers_state(
    text: str, *, config: str | None = None
) -> tuple[dict[str, dict[str, tuple[str, int]]], frozenset[tuple[str, str]]]:
    """Return the servers of `show servers state` (backend -> server -> (address, port)) and
    those in maintenance.

    IPv6 addresses are bracketed as the config writes them. Where the config on disk names a
    server by host name (`use_hostnames`) and HAProxy shows the address it resolved, the
    name is reported, so a resolved name does not look like a moved server.
    """
    named = servers_in(config) if config else {}
    servers: dict[str, dict[str, tuple[str, int]]] = {}
    disabled: set[tuple[str, str]] = set()
    header: list[str] = []
    for line in io.StringIO(text):  # a line at a time: 1,000 servers are 1,000 lines
        if line.startswith("# "):
            header = line[2:].split()
            continue
        fields = line.split()
        if not header or len(fields) != len(header):
            continue
        row = dict(zip(header, fields, strict=True))
        backend, name, port = row["be_name"], row["srv_name"], int(row["srv_port"])
        address = row["srv_addr"]
        address = f"[{address}]" if ":" in address else address
        written = named.get(backend, {}).get(name)
        if written is not None and not _is_ip(written[0]) and written[1] == port:
            address = written[0]
        servers.setdefault(backend, {})[name] = (address, port)
        if int(row["srv_admin_state"]) & 0x05:  # forced or config maintenance
            disabled.add((backend, name))
    return servers, frozenset(disabled)
