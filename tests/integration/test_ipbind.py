"""The IP-binding adapter against real network namespaces: what it binds, `ip` sees.

Every binder here works in a namespace of its own (`netns=ns.name`, or a subprocess run by
`ip netns exec`); the host's own addresses are only ever read.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.adapters.ipbind import IpBinder, IpBindError

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
OURS = "192.168.168.168"
THEIRS = "192.168.168.169"
OURS6 = "fd00::168"
CAP_NET_ADMIN = 12  # bit in /proc/PID/status CapEff
NET_ADMIN_MESSAGE = (
    "operation not permitted (the daemon needs the NET_ADMIN capability; run the container"
    " with --cap-add NET_ADMIN, or bind the address yourself)"
)


def addr_lines(ns, *args: str) -> list[str]:
    """`ip -o [ARGS] addr show dev lo` in the namespace, one line per address."""
    return ns.ip("-o", *args, "addr", "show", "dev", "lo").stdout.splitlines()


def has_address(ns, cidr: str, *, dev: str = "lo") -> bool:
    """Whether `ip` lists exactly `cidr` (address/prefix) on `dev` in the namespace."""
    out = ns.ip("-o", "addr", "show", "dev", dev).stdout
    return any(cidr in line.split() for line in out.splitlines())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---------------------------------------------------------------- bind, bound, release


def test_bind_adds_a_host_address_once_and_bound_reports_it(netns):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    assert not has_address(ns, f"{OURS}/32")
    assert OURS not in binder.bound()

    assert binder.bind(OURS) is True
    assert has_address(ns, f"{OURS}/32"), addr_lines(ns)
    assert binder.added == (OURS,)
    assert binder.bind(OURS) is False  # already there: not added twice
    assert binder.added == (OURS,)
    assert len([line for line in addr_lines(ns) if f" {OURS}/" in line]) == 1

    bound = binder.bound()
    assert isinstance(bound, frozenset)
    assert {OURS, "127.0.0.1", "::1"} <= bound
    assert all("/" not in address for address in bound)
    binder.close()
    binder.close()  # idempotent, and the address stays
    assert has_address(ns, f"{OURS}/32")


def test_release_removes_the_address_and_reports_whether_it_was_there(netns):
    ns = netns()
    binder = IpBinder(netns=ns.name)  # lo by default
    assert binder.interface == "lo"
    assert binder.release(OURS) is False  # never there
    assert binder.bind(OURS) is True
    assert binder.release(OURS) is True
    assert not has_address(ns, f"{OURS}/32"), addr_lines(ns)
    assert OURS not in binder.bound()
    assert binder.added == ()
    assert binder.release(OURS) is False
    assert has_address(ns, "127.0.0.1/8")  # the rest of lo untouched


def test_an_address_bound_by_someone_else_is_left_alone_by_release_added(netns, caplog):
    ns = netns()
    ns.ip("addr", "add", f"{THEIRS}/32", "dev", "lo")
    binder = IpBinder("lo", netns=ns.name)

    assert binder.bind(THEIRS) is False  # it was there already: not ours
    with caplog.at_level(logging.INFO, logger="sidecar.ipbind"):
        assert binder.bind(OURS) is True
    assert f"added {OURS}/32 to lo in network namespace {ns.name}" in caplog.messages
    assert binder.added == (OURS,)
    assert {OURS, THEIRS} <= binder.bound()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sidecar.ipbind"):
        assert binder.release_added() == (OURS,)
    assert f"removed {OURS}/32 from lo in network namespace {ns.name}" in caplog.messages
    assert not has_address(ns, f"{OURS}/32")
    assert has_address(ns, f"{THEIRS}/32"), addr_lines(ns)
    assert binder.added == ()
    assert binder.release_added() == ()
    assert has_address(ns, f"{THEIRS}/32")


def test_release_added_forgets_an_address_someone_else_removed(netns):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    assert binder.bind(OURS) is True
    assert binder.bind(THEIRS) is True
    ns.ip("addr", "del", f"{OURS}/32", "dev", "lo")
    assert binder.release_added() == (THEIRS,)
    assert binder.added == ()
    assert not has_address(ns, f"{THEIRS}/32")


def test_release_added_goes_on_after_a_failure_and_keeps_the_failed_address(
    netns, monkeypatch, caplog
):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    assert binder.bind(OURS) is True
    assert binder.bind(THEIRS) is True
    real_release = IpBinder.release

    def failing_release(self: IpBinder, ip: str) -> bool:
        if ip == OURS:
            raise IpBindError(f"cannot remove {ip}/32 from lo: simulated failure")
        return real_release(self, ip)

    monkeypatch.setattr(IpBinder, "release", failing_release)
    with caplog.at_level(logging.ERROR, logger="sidecar.ipbind"):
        assert binder.release_added() == (THEIRS,)
    assert f"cannot remove {OURS}/32 from lo: simulated failure" in caplog.messages
    assert binder.added == (OURS,)  # kept, for a retry
    assert not has_address(ns, f"{THEIRS}/32")
    assert has_address(ns, f"{OURS}/32")

    monkeypatch.setattr(IpBinder, "release", real_release)
    assert binder.release_added() == (OURS,)
    assert not has_address(ns, f"{OURS}/32")


def test_ipv6_binds_as_a_host_address_without_dad(netns):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    assert binder.bind(OURS6) is True
    lines = [line for line in addr_lines(ns, "-6") if f"{OURS6}/128" in line.split()]
    assert len(lines) == 1, addr_lines(ns, "-6")
    assert "nodad" in lines[0].split()
    assert OURS6 in binder.bound()
    assert binder.bind("FD00:0:0::168") is False  # the same address, written differently
    assert binder.added == (OURS6,)
    assert binder.release_added() == (OURS6,)
    assert not any(f"{OURS6}/128" in line for line in addr_lines(ns, "-6"))
    assert binder.release(OURS6) is False


def test_ipv6_on_a_real_link_is_usable_at_once(netns):
    """Without nodad the kernel would keep the address "tentative" (unbindable) during DAD."""
    ns = netns()
    made = ns.ip("link", "add", "sc-va", "type", "veth", "peer", "name", "sc-vb", check=False)
    if made.returncode != 0:
        pytest.skip(f"no veth here: {made.stderr.strip()}")
    ns.ip("link", "set", "sc-va", "up")
    ns.ip("link", "set", "sc-vb", "up")
    binder = IpBinder("sc-va", netns=ns.name)
    assert binder.bind(OURS6) is True
    assert binder.bind(OURS) is True
    out = ns.ip("-o", "addr", "show", "dev", "sc-va").stdout.splitlines()
    line = next(line for line in out if f"{OURS6}/128" in line.split())
    assert "tentative" not in line.split(), line
    assert has_address(ns, f"{OURS}/32", dev="sc-va")
    assert not has_address(ns, f"{OURS}/32")  # not on lo
    assert {OURS, OURS6} <= binder.bound()
    assert "127.0.0.1" not in binder.bound()  # lo's addresses are lo's
    assert sorted(binder.release_added()) == sorted([OURS, OURS6])
    assert not has_address(ns, f"{OURS}/32", dev="sc-va")


# ---------------------------------------------------------------- errors


def test_an_unknown_interface_is_an_error_naming_it(netns):
    ns = netns()
    binder = IpBinder("sc-nope0", netns=ns.name)
    with pytest.raises(IpBindError) as bind_error:
        binder.bind(OURS)
    message = str(bind_error.value)
    assert "sc-nope0" in message
    assert OURS in message
    assert message.endswith("no such interface"), message
    with pytest.raises(IpBindError, match="sc-nope0"):
        binder.release(OURS)
    with pytest.raises(IpBindError, match="sc-nope0"):
        binder.bound()
    assert binder.added == ()
    assert binder.release_added() == ()


def test_bad_addresses_and_names_are_refused(netns):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    for bad in ("192.168.168.300", "192.168.168.168/32", "", "lo", "fe80::1%lo"):
        with pytest.raises(IpBindError, match="cannot add") as error:
            binder.bind(bad)
        assert repr(bad) in str(error.value)
    assert binder.added == ()
    for name in ("", "a" * 16, "a/b", "a b"):
        with pytest.raises(ValueError, match="interface name"):
            IpBinder(name, netns=ns.name)


def test_a_missing_namespace_is_an_error_and_is_not_created(netns):
    ns = netns()
    missing = f"{ns.name}-gone"
    binder = IpBinder("lo", netns=missing)
    with pytest.raises(IpBindError, match="network namespace") as error:
        binder.bind(OURS)
    assert missing in str(error.value)
    assert not Path("/var/run/netns", missing).exists()


def test_without_net_admin_the_error_says_which_capability_is_missing(netns):
    ns = netns()
    ns.ip("addr", "add", f"{THEIRS}/32", "dev", "lo")
    snippet = f"""\
import sys
from sidecar.adapters.ipbind import IpBinder, IpBindError
caps = [l for l in open("/proc/self/status") if l.startswith("CapEff:")][0].split()[1]
print("net_admin" if int(caps, 16) >> {CAP_NET_ADMIN} & 1 else "no net_admin")
binder = IpBinder("lo")
print("bound", sorted(binder.bound()))
for call, ip in ((binder.bind, {OURS!r}), (binder.release, {THEIRS!r})):
    try:
        call(ip)
    except IpBindError as exc:
        print(exc)
    else:
        print("no error")
print("added", binder.added)
"""
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(snippet)}"
    if shutil.which("capsh"):
        drop = ["capsh", "--drop=cap_net_admin", "--", "-c", command]
    elif shutil.which("setpriv"):
        drop = [
            "setpriv",
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            "sh",
            "-c",
            command,
        ]
    else:
        pytest.fail("needs capsh (libcap2-bin) or setpriv (util-linux) to drop CAP_NET_ADMIN")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["ip", "netns", "exec", ns.name, *drop],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "no net_admin", done.stdout
    assert THEIRS in lines[1]  # reading needs no capability
    assert lines[2] == f"cannot add {OURS}/32 to lo: {NET_ADMIN_MESSAGE}", done.stdout
    assert lines[3] == f"cannot remove {THEIRS}/32 from lo: {NET_ADMIN_MESSAGE}", done.stdout
    assert lines[4] == "added ()", done.stdout
    assert not has_address(ns, f"{OURS}/32")
    assert has_address(ns, f"{THEIRS}/32")


# ---------------------------------------------------------------- resources, threads


def test_binders_leak_no_file_descriptors(netns):
    ns = netns()
    IpBinder("lo", netns=ns.name).bound()  # warm up: imports, libc, caches
    gc.collect()
    gc.disable()  # every descriptor must be closed explicitly, not by a finalizer
    try:
        before = open_fds()
        for n in range(30):
            binder = IpBinder("lo", netns=ns.name)
            assert binder.bind(OURS) is (n == 0)
            assert OURS in binder.bound()
            with pytest.raises(IpBindError):
                IpBinder("sc-nope0", netns=ns.name).bind(OURS)
            with pytest.raises(IpBindError):
                IpBinder("lo", netns=f"{ns.name}-gone").bound()
            binder.close()
            del binder
        assert open_fds() == before
    finally:
        gc.enable()
    assert IpBinder("lo", netns=ns.name).release(OURS) is True


def test_it_can_be_called_from_a_coroutine_and_from_threads(netns):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)

    async def main() -> tuple[bool, bool, frozenset[str]]:
        direct = binder.bind(OURS)  # on the loop's own thread
        threaded = await asyncio.to_thread(binder.bind, OURS6)
        return direct, threaded, await asyncio.to_thread(binder.bound)

    direct, threaded, bound = asyncio.run(main())
    assert (direct, threaded) == (True, True)
    assert {OURS, OURS6} <= bound
    assert has_address(ns, f"{OURS}/32")
    assert binder.added == (OURS, OURS6)
    assert sorted(binder.release_added()) == sorted([OURS, OURS6])
