"""End to end in a network namespace: the loop binds 192.168.168.168 on the namespace's `lo`,
starts HAProxy there, and HAProxy serves the instances of the state at that address.

The daemon's code runs unchanged in the test process. Only its HAProxy binary is a wrapper
that runs `haproxy` inside the namespace (`ip netns exec NS haproxy ...`); the master socket
is a file, reachable from both sides. Backends are busybox httpd on the namespace's own
loopback, and every request is made from inside the namespace.
"""

from __future__ import annotations

import asyncio
import stat

import pytest

from sidecar.adapters.haproxy import HaproxyOptions
from sidecar.adapters.ipbind import IpBinder
from sidecar.reconcile.desired import HaproxySettings

from .conftest import wait_for
from .haproxy_kit import Backend, apply, master, reconciling

pytestmark = [pytest.mark.haproxy, pytest.mark.netns]

BIND_IP = "192.168.168.168"


def test_haproxy_serves_the_state_at_the_bind_address_in_a_namespace(netns, tmp_path):
    ns = netns()
    wrapper = tmp_path / "haproxy-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} haproxy "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)

    instances = []
    for number, (host, sid) in enumerate([("h1", "a1"), ("h2", "b2"), ("h3", "c3")], start=2):
        made = Backend(host, sid, f"127.0.0.{number}", 8000 + number)
        root = tmp_path / f"www-{sid}"
        root.mkdir()
        (root / "index.html").write_text(made.name)
        ns.start("busybox", "httpd", "-f", "-p", f"{made.ip}:{made.port}", "-h", str(root))
        instances.append(made)
    a, b, c = instances
    for each in instances:
        wait_for(
            lambda each=each: (
                ns.run("curl", "-sf", f"http://{each.ip}:{each.port}/", check=False).stdout.strip()
                == each.name
            ),
            what=f"{each.name} inside {ns.name}",
        )

    home = tmp_path / "haproxy"
    options = HaproxyOptions(
        config_file=home / "haproxy.cfg",
        pid_file=home / "haproxy.pid",
        master_socket=home / "master.sock",
        admin_socket=home / "admin.sock",
        binary=str(wrapper),
    )
    settings = HaproxySettings(bind_ip=BIND_IP, admin_socket=str(options.admin_socket))
    binder = IpBinder("lo", netns=ns.name)

    def served_by(requests: int = 12) -> set[str]:
        names = set()
        for _ in range(requests):
            reply = ns.run("curl", "-sS", "--max-time", "5", f"http://{BIND_IP}:8080/")
            names.add(reply.stdout.strip())
        return names

    async def scenario():
        async with reconciling(options, settings, addresses=binder, resync=0.3) as (
            haproxy,
            reconciler,
        ):
            first = await apply(reconciler, a, b)
            assert first.error is None, first.error
            assert [x.kind for x in first.done] == ["bind", "write", "start"]
            assert f"{BIND_IP}/32" in ns.ip("-o", "addr", "show", "dev", "lo").stdout
            assert await asyncio.to_thread(served_by) == {a.name, b.name}
            before = await master(haproxy)

            await apply(reconciler, a)
            assert await asyncio.to_thread(served_by) == {a.name}
            await apply(reconciler, a, c)
            assert await asyncio.to_thread(served_by) == {a.name, c.name}

            after = await master(haproxy)
            assert after.reloads == before.reloads
            assert reconciler.stats.binds == 1

            # The address removed by hand: the next resync binds it again, and it serves.
            ns.ip("addr", "del", f"{BIND_IP}/32", "dev", "lo")
            await asyncio.to_thread(
                wait_for,
                lambda: f"{BIND_IP}/32" in ns.ip("-o", "addr", "show", "dev", "lo").stdout,
                what="the bind IP bound again",
            )
            assert await asyncio.to_thread(served_by) == {a.name, c.name}
            assert reconciler.stats.binds == 2

    try:
        asyncio.run(scenario())
    finally:
        released = binder.release_added()
    assert released == (BIND_IP,)
    assert BIND_IP not in ns.ip("-o", "addr", "show", "dev", "lo").stdout
