"""Helpers for tests that drive a real HAProxy through the reconcile loop: instance records,
routing tables, a running loop, and requests counted by the instance that answered.

The fixtures `backend` (a busybox httpd answering with its own name) and `haproxy_site`
(where a test's HAProxy keeps its files, with free stats ports) are in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib

from sidecar.adapters.haproxy import Haproxy, HaproxyOptions
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.loop import Reconciler
from sidecar.state import views
from sidecar.state.model import Service
from tests.builders import cluster_state, service

from .conftest import http_request


class Backend:
    """One instance: where it listens and the record the cluster would hold for it."""

    def __init__(self, host: str, sid: str, ip: str, port: int, service_port: int = 8080):
        self.host, self.sid, self.ip, self.port = host, sid, ip, port
        self.service_port = service_port

    @property
    def name(self) -> str:
        return f"{self.host}-{self.sid}"

    def record(self, *, name: str = "web") -> Service:
        return service(
            self.host, self.sid, name=name, ports=((self.port, self.service_port),), ip=self.ip
        )


def table(*backends: Backend, names: dict[str, str] | None = None):
    """The routing table of these instances (service `web`, or `names[instance name]`)."""
    names = names or {}
    records = [b.record(name=names.get(b.name, "web")) for b in backends]
    return views.routing_table(cluster_state("me", *records))


class Bound:
    """Stands in for the address adapter: the bind IP is a loopback address, always there."""

    def __init__(self, *ips: str) -> None:
        self.ips = frozenset(ips)

    def bound(self) -> frozenset[str]:
        return self.ips

    def bind(self, ip: str) -> bool:
        raise AssertionError(f"asked to bind {ip}, which is already there")


@contextlib.asynccontextmanager
async def reconciling(
    options: HaproxyOptions, settings: HaproxySettings, *, addresses=None, **kwargs
):
    """A running Reconciler over a managed Haproxy; HAProxy is stopped at the end."""
    haproxy = Haproxy(options)
    addresses = addresses if addresses is not None else Bound(settings.bind_ip)
    reconciler = Reconciler(haproxy, addresses, settings, **kwargs)
    haproxy.on_exit = reconciler.poke
    task = asyncio.create_task(reconciler.run())
    try:
        yield haproxy, reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await haproxy.close(stop=True)


async def apply(reconciler: Reconciler, *backends: Backend):
    reconciler.update(table(*backends))
    async with asyncio.timeout(30):
        return await reconciler.settled()


async def served_by(url: str, requests: int = 20) -> set[str]:
    """The names of the instances that answered `requests` GETs in a row (all must be 200)."""

    def fetch() -> set[str]:
        names = set()
        for _ in range(requests):
            reply = http_request(url)
            assert reply.status == 200, (reply.status, reply.body[:200])
            names.add(reply.body.decode())
        return names

    return await asyncio.to_thread(fetch)


async def master(haproxy: Haproxy):
    info = await haproxy.proc_info()
    assert info is not None, "no HAProxy master answers"
    assert info.workers, f"the HAProxy master has no worker: {info}"
    return info
