"""Binding the HAProxy bind IP on an interface (default `lo`), with iproute2's `ip` command.

An adapter, no policy: `IpBinder` lists the addresses on one interface and adds or removes
single-host addresses (/32 for IPv4, /128 for IPv6) on it. It remembers which addresses it
added itself, so that `release_added` removes exactly those and never one that someone else
bound. A failure raises `IpBindError`, whose message names the address, the interface and the
cause; a missing NET_ADMIN capability is said plainly.

Every call runs `ip` (found on PATH, or in /usr/sbin or /sbin) once or twice and waits for it:
`ip -j addr show` (JSON) to list, `ip addr add|del` to change, `ip -n NAME ...` to work in a
named network namespace. Each run is short (a few milliseconds), bounded by a timeout, with
`LC_ALL=C` so that its error messages can be read, and stdin from /dev/null; its stderr is
translated into the cause in the message. Nothing is held between calls, so a binder keeps no
file descriptor open and may be used from any thread, or from a coroutine on the event loop's
own thread (it blocks that loop for the few milliseconds a call takes).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from typing import Final, NamedTuple

from sidecar.reconcile.errors import AddressFailed

log = logging.getLogger("sidecar.ipbind")

NETNS_RUN_DIR: Final = "/var/run/netns"  # where `ip netns` keeps its named namespaces
IFNAMSIZ: Final = 16  # the kernel's limit on an interface name, with its NUL
CAPABILITY_HINT: Final = (
    "the daemon needs the NET_ADMIN capability; run the container with --cap-add NET_ADMIN,"
    " or bind the address yourself"
)
_CAPABILITY_ERRNOS: Final = frozenset({errno.EPERM, errno.EACCES})
_IP_TIMEOUT: Final = 5.0  # seconds one run of `ip` may take
_IP_FALLBACK_DIRS: Final = ("/usr/sbin", "/sbin")  # where Debian's iproute2 puts `ip`

# What `ip` writes to stderr, with LC_ALL=C (iproute2 4.x to 6.x):
# a netlink error without the kernel's own message: "RTNETLINK answers: File exists"
_RTNETLINK: Final = re.compile(r"RTNETLINK answers: (?P<reason>.+)")
# the kernel's own message (extended ack): "Error: ipv4: Address already assigned."
_EXTACK: Final = re.compile(r"Error: (?P<reason>.+?)\.?")
# no such interface: `Cannot find device "x"` (add, del), `Device "x" does not exist.` (show)
_NO_DEVICE: Final = re.compile(r'Cannot find device ".*"|Device ".*" does not exist\.?')
# `Cannot open network namespace "x": No such file or directory`
_NETNS: Final = re.compile(r'Cannot open network namespace ".*": (?P<reason>.+)')
# the C library's texts (those `ip` prints, in the C locale) for the errors we act on
_ERRNOS: Final = {
    os.strerror(code): code
    for code in (errno.EPERM, errno.EACCES, errno.EEXIST, errno.EADDRNOTAVAIL, errno.ENODEV)
}
# the kernel's messages for the same two cases as "File exists"/"Cannot assign requested address"
_EXTACK_ERRNOS: Final = (
    (re.compile(r"address already assigned", re.IGNORECASE), errno.EEXIST),
    (re.compile(r"address not found", re.IGNORECASE), errno.EADDRNOTAVAIL),
)


class IpBindError(AddressFailed):
    """A bind, release or listing that failed; the message names the address, the interface
    and the cause.

    When the cause is a missing capability (EPERM/EACCES from netlink) the message says so
    plainly, e.g. "cannot add 192.168.168.168/32 to lo: operation not permitted (the daemon
    needs the NET_ADMIN capability; run the container with --cap-add NET_ADMIN, or bind the
    address yourself)".
    """


class IpBinder:
    """Adds and removes single-host addresses on one interface, remembering its own.

    `netns` names a network namespace (as in `ip netns`) to work in instead of the current
    one; it must exist (it is never created). Malformed interface names raise `ValueError`;
    an interface that does not exist is reported by each call, as an `IpBindError`.
    """

    def __init__(self, interface: str = "lo", *, netns: str | None = None) -> None:
        if not interface or len(interface) >= IFNAMSIZ or any(c in interface for c in "/\0 "):
            raise ValueError(f"not an interface name: {interface!r}")
        if netns is not None and (not netns or "/" in netns or "\0" in netns):
            raise ValueError(f"not a network namespace name: {netns!r}")
        self.interface: Final = interface
        self.netns: Final = netns
        self._where = interface if netns is None else f"{interface} in network namespace {netns}"
        self._added: dict[str, None] = {}  # an ordered set: the addresses this binder added
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IpBinder({self.interface!r}, netns={self.netns!r}, added={self.added!r})"

    @property
    def added(self) -> tuple[str, ...]:
        """The addresses this binder added and has not removed since, oldest first."""
        with self._lock:
            return tuple(self._added)

    def bound(self) -> frozenset[str]:
        """Every address (v4 and v6, no prefix length) on the interface now."""
        return frozenset(host for host, _ in self._list(f"list the addresses on {self._where}"))

    def bind(self, ip: str) -> bool:
        """True if this call added `ip` as /32 (/128) on the interface, False if the address
        was already on it (with any prefix length). Raises `IpBindError` on failure.
        """
        host, prefixlen = _parse(ip, f"add {ip!r} to {self._where}")
        action = f"add {host}/{prefixlen} to {self._where}"
        if any(bound == host for bound, _ in self._list(action)):
            added = False
        else:
            command = ["addr", "add", f"{host}/{prefixlen}", "dev", self.interface]
            if prefixlen == 128:
                command.append("nodad")  # DAD would leave it "tentative" (unbindable) a while
            added = self._change(
                action, command, errno.EEXIST, lambda now: any(b == host for b, _ in now)
            )
        if added:
            with self._lock:
                self._added[host] = None
            log.info("added %s/%d to %s", host, prefixlen, self._where)
        else:
            log.debug("%s is already on %s", host, self._where)
        return added

    def release(self, ip: str) -> bool:
        """True if this call removed `ip`/32 (/128) from the interface, False if it was not
        there. Raises `IpBindError` on failure.
        """
        host, prefixlen = _parse(ip, f"remove {ip!r} from {self._where}")
        action = f"remove {host}/{prefixlen} from {self._where}"
        command = ["addr", "del", f"{host}/{prefixlen}", "dev", self.interface]
        removed = self._change(
            action, command, errno.EADDRNOTAVAIL, lambda now: (host, prefixlen) not in now
        )
        with self._lock:
            self._added.pop(host, None)  # gone either way: nothing of ours left to remove
        if removed:
            log.info("removed %s/%d from %s", host, prefixlen, self._where)
        else:
            log.debug("%s/%d is not on %s", host, prefixlen, self._where)
        return removed

    def release_added(self) -> tuple[str, ...]:
        """The addresses this call removed: those this binder added (and only those).

        An address already gone is forgotten; one that cannot be removed is logged and kept
        in `added` (a later call retries it), and does not stop the others.
        """
        removed: list[str] = []
        for host in self.added:
            try:
                if self.release(host):
                    removed.append(host)
                else:
                    log.info("%s was already gone from %s", host, self._where)
            except IpBindError as exc:
                log.error("%s", exc)
        return tuple(removed)

    def close(self) -> None:
        """Nothing: nothing is held between calls. Bound addresses stay bound."""

    # ------------------------------------------------------------------ ip

    def _list(self, action: str) -> list[tuple[str, int]]:
        """(address, prefix length) for each address on the interface, as `ip` lists them."""
        out = self._ip(action, ["-j", "addr", "show", "dev", self.interface]).stdout_or_raise()
        return [(host, prefixlen) for _, host, prefixlen in _addr_json(out, action)]

    def _change(
        self,
        action: str,
        command: list[str],
        no_change: int,
        unchanged: Callable[[list[tuple[str, int]]], bool],
    ) -> bool:
        """True if `ip COMMAND` did it; False if it failed with the errno `no_change` (there
        was nothing to do), or failed saying something we do not know when a fresh listing
        satisfies `unchanged` (there was nothing to do either); `IpBindError` otherwise.
        """
        ran = self._ip(action, command)
        if ran.error is None:
            return True
        if ran.code == no_change:
            return False
        if ran.code is None:
            try:
                now = self._list(action)
            except IpBindError:
                now = None  # the first error says more
            if now is not None and unchanged(now):
                return False
        raise IpBindError(ran.error)

    def _ip(self, action: str, command: list[str]) -> _Ran:
        if self.netns is not None:
            if not os.path.exists(os.path.join(NETNS_RUN_DIR, self.netns)):
                raise IpBindError(f"cannot {action}: the network namespace does not exist")
            command = ["-n", self.netns, *command]
        return _run_ip(action, command)


class _Ran(NamedTuple):
    """One run of `ip`: its stdout; if it failed, the message for `IpBindError` and the errno
    that `ip` named, if we know it."""

    stdout: str
    error: str | None = None
    code: int | None = None

    def stdout_or_raise(self) -> str:
        if self.error is not None:
            raise IpBindError(self.error)
        return self.stdout


def _ip_path() -> str | None:
    """The absolute path of `ip`: on PATH, else in /usr/sbin or /sbin; None if nowhere."""
    dirs = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if os.path.isabs(d)]
    return shutil.which("ip", path=os.pathsep.join([*dirs, *_IP_FALLBACK_DIRS]))


def _run_ip(action: str, command: list[str]) -> _Ran:
    """What `ip COMMAND...` did, its failure described as a failure to do `action`;
    `IpBindError` if it is not installed, cannot be run or does not finish in time.
    """
    ip = _ip_path()
    if ip is None:
        raise IpBindError(f"cannot {action}: the `ip` command (iproute2) is not installed")
    try:
        done = subprocess.run(
            [ip, *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "LC_ALL": "C"},
            timeout=_IP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise IpBindError(
            f"cannot {action}: `{ip}` timed out (no answer within {_IP_TIMEOUT:g} s)"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise IpBindError(f"cannot {action}: cannot run {ip}: {reason}") from exc
    if done.returncode != 0:
        reason, code = _cause(done.stderr, done.returncode)
        return _Ran(done.stdout, f"cannot {action}: {reason}", code)
    return _Ran(done.stdout)


def _cause(stderr: str, returncode: int) -> tuple[str, int | None]:
    """The reason in `ip`'s stderr, lower case (with the capability hint when it is
    EPERM/EACCES from netlink), and its errno if we know it.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if match := _RTNETLINK.fullmatch(line):
            text = match["reason"].rstrip(".")
            code = _ERRNOS.get(text)
            if code == errno.ENODEV:
                return "no such interface", code
            if code in _CAPABILITY_ERRNOS:
                return f"{text.lower()} ({CAPABILITY_HINT})", code
            return text.lower(), code
        if _NO_DEVICE.fullmatch(line):
            return "no such interface", errno.ENODEV
        if match := _NETNS.fullmatch(line):
            text = match["reason"].rstrip(".")
            if text == os.strerror(errno.ENOENT):
                return "the network namespace does not exist", errno.ENOENT
            return f"cannot open the network namespace: {text.lower()}", _ERRNOS.get(text)
        if match := _EXTACK.fullmatch(line):
            text = match["reason"]
            code = next((c for pattern, c in _EXTACK_ERRNOS if pattern.search(text)), None)
            return text.lower(), code
    if not lines:
        return f"`ip` failed (exit status {returncode}) without saying why", None
    return lines[-1][:1].lower() + lines[-1][1:], None


def _addr_json(text: str, action: str) -> list[tuple[int, str, int]]:
    """(interface index, address, prefix length) for each address in the output of
    `ip -j addr show`, in its order; `IpBindError` naming `action` if it is not what we know.

    The address is the local one (on a point-to-point link `address` is the peer's), in
    canonical form.
    """

    def unexpected(what: str) -> IpBindError:
        return IpBindError(f"cannot {action}: unexpected output from `ip -j addr`: {what}")

    try:
        links = json.loads(text)
    except ValueError:
        raise unexpected(f"not JSON: {text[:80]!r}") from None
    if not isinstance(links, list):
        raise unexpected("not a list of interfaces")
    found: list[tuple[int, str, int]] = []
    for link in links:
        if not isinstance(link, dict):
            raise unexpected(f"an interface that is not an object: {link!r:.80}")
        infos = link.get("addr_info", [])  # some versions print {} for an interface filtered out
        if not isinstance(infos, list):
            raise unexpected(f"addr_info is not a list: {infos!r:.80}")
        if not infos:
            continue
        index = link.get("ifindex")
        if not isinstance(index, int) or isinstance(index, bool):
            raise unexpected(f"no interface index: {link!r:.80}")
        for info in infos:
            if not isinstance(info, dict):
                raise unexpected(f"an address that is not an object: {info!r:.80}")
            if info.get("family", "inet") not in ("inet", "inet6"):
                continue
            value = info.get("local", info.get("address"))
            prefixlen = info.get("prefixlen")
            try:
                address = ipaddress.ip_address(value) if isinstance(value, str) else None
            except ValueError:
                address = None
            if (
                address is None
                or not isinstance(prefixlen, int)
                or isinstance(prefixlen, bool)
                or not 0 <= prefixlen <= address.max_prefixlen
            ):
                raise unexpected(f"not an address and prefix length: {info!r:.80}")
            found.append((index, str(address), prefixlen))
    return found


def _parse(ip: str, action: str) -> tuple[str, int]:
    """`ip` in canonical form and its host prefix length (32 or 128); IpBindError if bad."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise IpBindError(f"cannot {action}: not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise IpBindError(f"cannot {action}: a scoped address (the interface is the scope)")
    return str(addr), addr.max_prefixlen


def host_ipv4_addresses() -> tuple[str, ...]:
    """Return every IPv4 address on this host's interfaces, by interface index then as the
    kernel lists them (the order Go's `net.InterfaceAddrs` gives). On a point-to-point link
    it is the local address (as `ip` shows it), not the peer's."""
    action = "list this host's addresses"
    found = _addr_json(_run_ip(action, ["-j", "-4", "addr", "show"]).stdout_or_raise(), action)
    ordered = sorted(found, key=lambda item: item[0])  # stable: the kernel's order within one
    return tuple(host for _, host, _ in ordered if ipaddress.ip_address(host).version == 4)
