"""The IP-binding adapter against real network namespaces: what it binds, `ip` sees.

Every binder here works in a namespace of its own (`netns=ns.name`, or a subprocess run by
`ip netns exec`); the host's own addresses are only ever read.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.adapters import ipbind
from sidecar.adapters.ipbind import IpBinder, IpBindError
from tests.conftest import missing

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
        missing("netns", f"no veth here: {made.stderr.strip()}")
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


# ---------------------------------------------------------------- the `ip` command


@contextlib.contextmanager
def only_this_ip(monkeypatch, directory: Path, script: str | None) -> Iterator[None]:
    """Within: `ip` is `script` (a /bin/sh script) in `directory`, or nowhere if None."""
    directory.mkdir(exist_ok=True)
    if script is not None:
        fake = directory / "ip"
        fake.write_text(f"#!/bin/sh\n{script}\n")
        fake.chmod(0o755)
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(directory))
        patch.setattr(ipbind, "_IP_FALLBACK_DIRS", ())
        yield


def tool(name: str) -> str:
    """The absolute path of a command, for the fake `ip` scripts (they run with PATH=a folder
    of their own)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"no {name} command"
    return shlex.quote(os.path.abspath(found))


def test_without_the_ip_command_every_call_says_so(netns, monkeypatch, tmp_path):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    with only_this_ip(monkeypatch, tmp_path / "empty", None):
        for call in (binder.bound, lambda: binder.bind(OURS), lambda: binder.release(OURS)):
            with pytest.raises(
                IpBindError, match=r"the `ip` command \(iproute2\) is not installed"
            ):
                call()
        with pytest.raises(IpBindError, match=r"cannot list this host's addresses: the `ip`"):
            ipbind.host_ipv4_addresses()
    assert binder.added == ()
    assert not has_address(ns, f"{OURS}/32")


def test_ip_is_found_in_sbin_when_path_lacks_it(netns, monkeypatch, tmp_path):
    if not any(os.access(f"{d}/ip", os.X_OK) for d in ("/usr/sbin", "/sbin")):
        missing("netns", "ip is neither in /usr/sbin nor in /sbin here")
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    monkeypatch.setenv("PATH", f"{tmp_path}:relative/bin:")  # relative entries are ignored
    assert binder.bind(OURS) is True
    assert OURS in binder.bound()
    monkeypatch.undo()
    assert has_address(ns, f"{OURS}/32")


def test_ip_runs_in_the_c_locale_with_no_stdin(netns, monkeypatch, tmp_path):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    script = f'echo "saw LC_ALL=$LC_ALL LANG=$LANG stdin=[$({tool("cat")})] args=$*" >&2; exit 1'
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    with only_this_ip(monkeypatch, tmp_path / "bin", script), pytest.raises(IpBindError) as error:
        binder.bound()
    assert str(error.value) == (
        f"cannot list the addresses on lo in network namespace {ns.name}: saw LC_ALL=C"
        f" LANG=de_DE.UTF-8 stdin=[] args=-n {ns.name} -j addr show dev lo"
    )


@pytest.mark.parametrize(
    ("stderr", "cause"),
    [
        ("RTNETLINK answers: Operation not permitted", NET_ADMIN_MESSAGE),
        (
            "RTNETLINK answers: Permission denied",
            NET_ADMIN_MESSAGE.replace("operation not permitted", "permission denied"),
        ),
        ("RTNETLINK answers: No such device", "no such interface"),
        ('Cannot find device "lo"', "no such interface"),
        ('Device "lo" does not exist.', "no such interface"),
        (
            'Cannot open network namespace "x": No such file or directory',
            "the network namespace does not exist",
        ),
        (
            'Cannot open network namespace "x": Permission denied',
            "cannot open the network namespace: permission denied",
        ),
        ("Error: ipv4: Invalid prefix length.", "ipv4: invalid prefix length"),
        ("RTNETLINK answers: Invalid argument", "invalid argument"),
        ("Something New happened", "something New happened"),
        ("", "`ip` failed (exit status 2) without saying why"),
    ],
)
def test_what_ip_says_becomes_the_cause(netns, monkeypatch, tmp_path, stderr, cause):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    script = f"echo {shlex.quote(stderr)} >&2; exit 2" if stderr else "exit 2"
    with only_this_ip(monkeypatch, tmp_path / "bin", script):
        with pytest.raises(IpBindError) as error:
            binder.bound()
        assert (
            str(error.value)
            == f"cannot list the addresses on lo in network namespace {ns.name}: {cause}"
        )
        with pytest.raises(IpBindError) as error:
            ipbind.host_ipv4_addresses()
        assert str(error.value) == f"cannot list this host's addresses: {cause}"


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "not json",
        "{}",
        "[1]",
        '[{"ifindex": 1, "addr_info": {}}]',
        '[{"ifindex": 1, "addr_info": [1]}]',
        '[{"addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]}]',
        '[{"ifindex": "1", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]}]',
        '[{"ifindex": 1, "addr_info": [{"local": "127.0.0.300", "prefixlen": 8}]}]',
        '[{"ifindex": 1, "addr_info": [{"local": 1, "prefixlen": 8}]}]',
        '[{"ifindex": 1, "addr_info": [{"family": "inet", "prefixlen": 8}]}]',
        '[{"ifindex": 1, "addr_info": [{"local": "127.0.0.1"}]}]',
        '[{"ifindex": 1, "addr_info": [{"local": "127.0.0.1", "prefixlen": 33}]}]',
        '[{"ifindex": 1, "addr_info": [{"local": "127.0.0.1", "prefixlen": true}]}]',
        '[{"ifindex": true, "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]}]',
    ],
)
def test_unexpected_output_from_ip_is_an_error(netns, monkeypatch, tmp_path, stdout):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    with only_this_ip(monkeypatch, tmp_path / "bin", f"printf %s {shlex.quote(stdout)}"):
        with pytest.raises(IpBindError, match=r"unexpected output from `ip -j addr`") as error:
            binder.bound()
        assert str(error.value).startswith(
            f"cannot list the addresses on lo in network namespace {ns.name}: "
        )
        with pytest.raises(IpBindError, match=r"^cannot add .* unexpected output"):
            binder.bind(OURS)
        with pytest.raises(IpBindError, match=r"^cannot list this host's addresses: unexpected"):
            ipbind.host_ipv4_addresses()
    assert binder.added == ()


def test_the_listing_takes_what_it_knows_and_skips_the_rest(netns, monkeypatch, tmp_path):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    links = [
        {},  # older iproute2 prints an empty object for an interface filtered out
        {"ifindex": 3, "addr_info": [{"family": "inet", "local": "10.3.0.1", "prefixlen": 24}]},
        {"ifindex": 2, "addr_info": []},
        {
            "ifindex": 1,
            "ifname": "lo",
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                {"family": "inet", "local": "10.2.0.1", "address": "10.2.0.2", "prefixlen": 32},
                {"address": "10.9.0.1", "prefixlen": 32},  # no family, no local: the address
                {"family": "mpls", "local": "whatever"},
                {"family": "inet6", "local": "FD00:0::1", "prefixlen": 128},
            ],
        },
    ]
    with only_this_ip(monkeypatch, tmp_path / "bin", f"printf %s {shlex.quote(json.dumps(links))}"):
        assert binder.bound() == {"10.3.0.1", "127.0.0.1", "10.2.0.1", "10.9.0.1", "fd00::1"}
        assert ipbind.host_ipv4_addresses() == ("127.0.0.1", "10.2.0.1", "10.9.0.1", "10.3.0.1")


def test_ip_that_hangs_is_stopped_and_reported(netns, monkeypatch, tmp_path):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    monkeypatch.setattr(ipbind, "_IP_TIMEOUT", 0.3)
    before = open_fds()
    with only_this_ip(monkeypatch, tmp_path / "bin", f"exec {tool('sleep')} 30"):
        with pytest.raises(IpBindError, match=r"^cannot add .*: `.*/ip` timed out") as error:
            binder.bind(OURS)
        assert "0.3 s" in str(error.value)
    assert open_fds() == before
    assert binder.added == ()


def test_someone_binding_or_removing_the_address_meanwhile_is_no_change(
    netns, monkeypatch, tmp_path
):
    """`ip addr add|del` runs twice: the first run is "someone else", who wins the race."""
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    ip = tool("ip")
    racing = f'case " $* " in *" addr add "*|*" addr del "*) {ip} "$@" ;; esac\nexec {ip} "$@"'
    with only_this_ip(monkeypatch, tmp_path / "race", racing):
        assert binder.bind(OURS) is False  # "File exists" / "Address already assigned"
        assert binder.bind(OURS6) is False
    assert has_address(ns, f"{OURS}/32")
    assert binder.added == ()
    with only_this_ip(monkeypatch, tmp_path / "race", None):
        assert binder.release(OURS) is False  # "Cannot assign requested address"/"not found"
        assert binder.release(OURS6) is False
    assert not has_address(ns, f"{OURS}/32")
    assert OURS6 not in binder.bound()


@pytest.mark.parametrize(
    ("ip", "stderr"),
    [
        (OURS, "RTNETLINK answers: File exists"),  # kernels without extended acks
        (OURS, "Error: ipv4: Address already assigned."),
        (OURS6, "Error: ipv6: address already assigned."),
    ],
)
def test_already_there_is_no_change_however_ip_words_it(netns, monkeypatch, tmp_path, ip, stderr):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    calls = tmp_path / "calls"
    script = (
        f'echo "$*" >>{shlex.quote(str(calls))}\n'
        'case " $* " in *" addr show "*) echo "[]"; exit 0 ;; esac\n'
        f"echo {shlex.quote(stderr)} >&2; exit 2"
    )
    with only_this_ip(monkeypatch, tmp_path / "bin", script):
        assert binder.bind(ip) is False
    prefixlen = 128 if ":" in ip else 32
    nodad = " nodad" if ":" in ip else ""
    assert calls.read_text().splitlines() == [  # no second look: the words were enough
        f"-n {ns.name} -j addr show dev lo",
        f"-n {ns.name} addr add {ip}/{prefixlen} dev lo{nodad}",
    ]
    assert binder.added == ()


@pytest.mark.parametrize(
    ("ip", "stderr"),
    [
        (OURS, "RTNETLINK answers: Cannot assign requested address"),
        (OURS, "Error: ipv4: Address not found."),
        (OURS6, "Error: ipv6: address not found."),
    ],
)
def test_not_there_is_no_change_however_ip_words_it(netns, monkeypatch, tmp_path, ip, stderr):
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    calls = tmp_path / "calls"
    script = f'echo "$*" >>{shlex.quote(str(calls))}; echo {shlex.quote(stderr)} >&2; exit 2'
    with only_this_ip(monkeypatch, tmp_path / "bin", script):
        assert binder.release(ip) is False
    prefixlen = 128 if ":" in ip else 32
    assert calls.read_text().splitlines() == [f"-n {ns.name} addr del {ip}/{prefixlen} dev lo"]


def test_an_error_ip_says_in_words_we_do_not_know_is_checked_against_a_listing(
    netns, monkeypatch, tmp_path
):
    """A kernel may word "already there"/"not there" differently: the listing decides."""
    ns = netns()
    binder = IpBinder("lo", netns=ns.name)
    ip = tool("ip")
    unknown = (
        f'case " $* " in *" addr add "*|*" addr del "*) {ip} "$@"'
        ' ; echo "Error: something we have never seen." >&2; exit 2 ;; esac\n'
        f'exec {ip} "$@"'
    )
    with only_this_ip(monkeypatch, tmp_path / "unknown", unknown):
        assert binder.bind(OURS) is False  # it failed, and the address is there
        assert binder.release(OURS) is False  # it failed, and the address is gone
    assert not has_address(ns, f"{OURS}/32")
    assert binder.added == ()

    ns.ip("addr", "add", f"{THEIRS}/24", "dev", "lo")
    ns.ip("addr", "add", f"{OURS}/32", "dev", "lo")
    failing = (
        f'case " $* " in *" addr add "*|*" addr del "*)'
        ' echo "Error: something we have never seen." >&2; exit 2 ;; esac\n'
        f'exec {ip} "$@"'
    )
    with only_this_ip(monkeypatch, tmp_path / "failing", failing):
        assert binder.release(THEIRS) is False  # THEIRS/32 is not there (THEIRS/24 is)
        with pytest.raises(IpBindError) as error:
            binder.release(OURS)  # it failed, and the address is still there
        assert str(error.value) == (
            f"cannot remove {OURS}/32 from lo in network namespace {ns.name}:"
            " something we have never seen"
        )
        with pytest.raises(IpBindError, match="something we have never seen"):
            binder.bind(OURS6)  # it failed, and the address is not there
    assert has_address(ns, f"{THEIRS}/24")
    assert has_address(ns, f"{OURS}/32")
    assert OURS6 not in binder.bound()
    assert binder.added == ()


def test_bound_lists_every_address_on_the_interface(netns):
    ns = netns()
    made = ns.ip("link", "add", "sc-va", "type", "veth", "peer", "name", "sc-vb", check=False)
    if made.returncode != 0:
        missing("netns", f"no veth here: {made.stderr.strip()}")
    for cidr in ("10.3.0.1/24", "10.3.0.2/24", "10.4.0.1/16", "fd00::3/64", "fd00::4/128"):
        ns.ip("addr", "add", cidr, "dev", "sc-va", "nodad")
    ns.ip("addr", "add", "10.2.0.1", "peer", "10.2.0.2/32", "dev", "sc-va")
    ns.ip("addr", "add", "10.5.0.1/32", "dev", "sc-vb")
    binder = IpBinder("sc-va", netns=ns.name)
    listed = {
        line.split()[3].split("/")[0]  # "2: sc-va inet 10.2.0.1 peer 10.2.0.2/32 ..."
        for line in ns.ip("-o", "addr", "show", "dev", "sc-va").stdout.splitlines()
    }
    assert {"10.3.0.1", "10.3.0.2", "10.4.0.1", "10.2.0.1", "fd00::3", "fd00::4"} <= listed
    assert binder.bound() == listed
    assert "10.2.0.2" not in binder.bound()  # the peer is not ours
    assert binder.bind("10.3.0.2") is False  # there as a /24
    assert binder.bind("10.2.0.1") is False  # there as the local end of a point-to-point link
    assert binder.bind("10.2.0.2") is True  # the peer's address is not on it
    assert binder.release_added() == ("10.2.0.2",)
    assert has_address(ns, "10.3.0.2/24", dev="sc-va")


def test_host_ipv4_addresses_are_those_ip_lists_by_interface_index(netns):
    ns = netns()
    made = ns.ip("link", "add", "sc-va", "type", "veth", "peer", "name", "sc-vb", check=False)
    if made.returncode != 0:
        missing("netns", f"no veth here: {made.stderr.strip()}")
    # Added out of index order: the later interface first, lo last.
    ns.ip("addr", "add", "10.5.0.1/24", "dev", "sc-vb")
    ns.ip("addr", "add", "10.5.0.9/32", "dev", "sc-vb")
    ns.ip("addr", "add", "10.2.0.1", "peer", "10.2.0.2/32", "dev", "sc-va")
    ns.ip("addr", "add", "10.3.0.1/24", "dev", "sc-va")
    ns.ip("addr", "add", "fd00::5/128", "dev", "sc-va", "nodad")
    ns.ip("addr", "add", f"{THEIRS}/32", "dev", "lo")
    links = json.loads(ns.ip("-j", "-4", "addr", "show").stdout)
    expected = [
        info["local"]
        for link in sorted(links, key=lambda link: link["ifindex"])
        for info in link.get("addr_info", [])
    ]
    assert "10.2.0.2" not in expected
    assert {"127.0.0.1", THEIRS, "10.2.0.1", "10.3.0.1", "10.5.0.1", "10.5.0.9"} <= set(expected)

    snippet = "from sidecar.adapters.ipbind import host_ipv4_addresses as h; print(' '.join(h()))"
    done = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == expected
