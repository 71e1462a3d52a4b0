"""Binding the HAProxy bind IP on an interface (default `lo`), with pyroute2.

An adapter, no policy: `IpBinder` lists the addresses on one interface and adds or removes
single-host addresses (/32 for IPv4, /128 for IPv6) on it. It remembers which addresses it
added itself, so that `release_added` removes exactly those and never one that someone else
bound. A failure raises `IpBindError`, whose message names the address, the interface and the
cause; a missing NET_ADMIN capability is said plainly.

Every call opens its own netlink socket (with a private event loop for pyroute2's synchronous
API) and closes both before returning: a binder holds no file descriptor between calls and may
be used from any thread. pyroute2's synchronous API cannot run on a thread whose asyncio loop
is running, so a call made from a coroutine does its netlink work in a short-lived worker
thread (it takes milliseconds).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from pyroute2 import IPRoute, NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from sidecar.reconcile.errors import AddressFailed

log = logging.getLogger("sidecar.ipbind")

T = TypeVar("T")

NETNS_RUN_DIR: Final = "/var/run/netns"  # where `ip netns` keeps its named namespaces
IFNAMSIZ: Final = 16  # the kernel's limit on an interface name, with its NUL
CAPABILITY_HINT: Final = (
    "the daemon needs the NET_ADMIN capability; run the container with --cap-add NET_ADMIN,"
    " or bind the address yourself"
)
_CAPABILITY_ERRNOS: Final = frozenset({errno.EPERM, errno.EACCES})


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
        return self._netlink(f"list the addresses on {self._where}", _addresses)

    def bind(self, ip: str) -> bool:
        """True if this call added `ip` as /32 (/128) on the interface, False if the address
        was already on it (with any prefix length). Raises `IpBindError` on failure.
        """
        host, prefixlen = _parse(ip, f"add {ip!r} to {self._where}")
        # DAD would leave a new IPv6 address "tentative" (unbindable) for a while.
        flags = {"flags": IFA_F_NODAD} if prefixlen == 128 else {}

        def add(ipr: Any, index: int) -> bool:
            if host in _addresses(ipr, index):
                return False
            try:
                ipr.addr("add", index=index, address=host, prefixlen=prefixlen, **flags)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:  # bound by someone else since we looked
                    return False
                raise
            return True

        added = self._netlink(f"add {host}/{prefixlen} to {self._where}", add)
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

        def remove(ipr: Any, index: int) -> bool:
            try:
                ipr.addr("del", index=index, address=host, prefixlen=prefixlen)
            except NetlinkError as exc:
                if exc.code == errno.EADDRNOTAVAIL:
                    return False
                raise
            return True

        removed = self._netlink(f"remove {host}/{prefixlen} from {self._where}", remove)
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
        """Nothing: no socket is held between calls. Bound addresses stay bound."""

    # ------------------------------------------------------------------ netlink

    def _netlink(self, action: str, op: Callable[[Any, int], T]) -> T:
        """What `op(iproute, interface index)` returns; `IpBindError` naming `action` if not."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._netlink_here(action, op)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-ipbind") as pool:
            return pool.submit(self._netlink_here, action, op).result()

    def _netlink_here(self, action: str, op: Callable[[Any, int], T]) -> T:
        """`_netlink` on this thread, which must not be running an asyncio loop."""
        if self.netns is not None and not os.path.exists(os.path.join(NETNS_RUN_DIR, self.netns)):
            raise IpBindError(f"cannot {action}: the network namespace does not exist")
        # Our own loop: pyroute2 leaks the one it would make when opening the socket fails.
        loop = asyncio.new_event_loop()
        try:
            try:
                ipr = IPRoute(netns=self.netns, flags=0, use_event_loop=loop)  # flags=0: no create
            except (NetlinkError, OSError) as exc:
                raise IpBindError(
                    f"cannot {action}: cannot open a netlink socket: {_cause(exc)}"
                ) from exc
            try:
                indices = ipr.link_lookup(ifname=self.interface)
                if not indices:
                    raise IpBindError(f"cannot {action}: no such interface")
                return op(ipr, indices[0])
            except (NetlinkError, OSError) as exc:
                raise IpBindError(f"cannot {action}: {_cause(exc)}") from exc
            finally:
                ipr.close()
        finally:
            # Run the loop once more so that the aborted transport really closes its socket.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _parse(ip: str, action: str) -> tuple[str, int]:
    """`ip` in canonical form and its host prefix length (32 or 128); IpBindError if bad."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise IpBindError(f"cannot {action}: not an IP address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise IpBindError(f"cannot {action}: a scoped address (the interface is the scope)")
    return str(addr), addr.max_prefixlen


def _addresses(ipr: Any, index: int) -> frozenset[str]:
    """Every address on the interface `index`, canonical, without prefix length."""
    found: set[str] = set()
    for msg in ipr.get_addr(index=index):
        if msg.get("index") != index:  # in case the filter is not applied by the kernel
            continue
        # On a point-to-point link IFA_ADDRESS is the peer and IFA_LOCAL ours (as `ip` reads).
        value = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if value:
            found.add(str(ipaddress.ip_address(value)))
    return frozenset(found)


def _cause(exc: NetlinkError | OSError) -> str:
    """The reason in `exc`, lower case, with the capability hint when it is EPERM/EACCES."""
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    reason = os.strerror(code).lower() if isinstance(code, int) and code > 0 else str(exc)
    if isinstance(exc, NetlinkError) and code in _CAPABILITY_ERRNOS:
        return f"{reason} ({CAPABILITY_HINT})"
    return reason


def host_ipv4_addresses() -> tuple[str, ...]:
    """Return every IPv4 address on this host's interfaces, by interface index then as the
    kernel lists them (the order Go's `net.InterfaceAddrs` gives)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _host_ipv4_addresses_here()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-ipbind") as pool:
        return pool.submit(_host_ipv4_addresses_here).result()


def _host_ipv4_addresses_here() -> tuple[str, ...]:
    loop = asyncio.new_event_loop()  # see _netlink_here
    try:
        try:
            ipr = IPRoute(use_event_loop=loop)
        except (NetlinkError, OSError) as exc:
            raise IpBindError(f"cannot list this host's addresses: {_cause(exc)}") from exc
        try:
            found = [
                (msg.get("index", 0), str(ipaddress.ip_address(value)))
                for msg in ipr.get_addr(family=socket.AF_INET)
                if (value := msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            ]
        except (NetlinkError, OSError) as exc:
            raise IpBindError(f"cannot list this host's addresses: {_cause(exc)}") from exc
        finally:
            ipr.close()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return tuple(ip for _, ip in sorted(found, key=lambda item: item[0]))
