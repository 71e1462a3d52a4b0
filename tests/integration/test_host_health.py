"""Rise/fall end to end: a static service whose real HTTP endpoint flaps, through HostDiscovery.

No Docker needed: the service comes from a static.json and its endpoint is an aiohttp server
on 127.0.0.1 that answers a scripted sequence of statuses, one per check.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from sidecar.adapters.static import StaticDiscovery
from sidecar.host import HostDiscovery, HostObservation
from sidecar.state.discovery import DiscoveryPolicy
from sidecar.state.model import Status

# rise 2, fall 2: statuses after each answer, by hand:
#   200 A | 500 A (1 failure) | 200 A | 500 A | 500 U | 200 U (1 pass) | 200 A | 200 A
ANSWERS = [200, 500, 200, 500, 500, 200, 200, 200]
EXPECTED = [(1, Status.ALIVE), (5, Status.UNHEALTHY), (7, Status.ALIVE)]
SLACK = 1  # an observation may be read just after the next check was answered


def test_a_flapping_endpoint_changes_status_only_after_rise_and_fall_results(tmp_path):
    async def scenario() -> list[tuple[int, Status]]:
        answered = 0

        async def health(_: web.Request) -> web.Response:
            nonlocal answered
            status = ANSWERS[min(answered, len(ANSWERS) - 1)]
            answered += 1
            return web.Response(status=status, text=str(status))

        app = web.Application()
        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        static = tmp_path / "static.json"
        static.write_text(
            json.dumps(
                [
                    {
                        "Service": {
                            "Name": "flappy",
                            "Image": "flappy:1",
                            "Ports": [{"Type": "tcp", "Port": port, "ServicePort": 9999}],
                        },
                        "Check": {
                            "Type": "HttpGet",
                            "Args": "http://{{ host }}:{{ tcp 9999 }}/health",
                        },
                    }
                ]
            )
        )
        policy = DiscoveryPolicy(hostname="vm", advertise_ip="127.0.0.1", rise=2, fall=2)
        host = HostDiscovery(
            policy, static=StaticDiscovery(static, policy, poll_interval=0.05), check_interval=0.15
        )
        seen: list[tuple[int, Status]] = []
        try:
            async with host.running() as out:
                deadline = time.monotonic() + 10
                while answered < len(ANSWERS) and time.monotonic() < deadline:
                    try:
                        async with asyncio.timeout(0.5):
                            observation = await out.get()
                    except TimeoutError:
                        continue
                    for service in observation.services:
                        if not seen or seen[-1][1] is not service.status:
                            seen.append((answered, service.status))
        finally:
            await runner.cleanup()
        return [entry for entry in seen if entry[1] is not Status.UNKNOWN]

    seen = asyncio.run(scenario())
    assert [status for _, status in seen] == [status for _, status in EXPECTED], seen
    for (answered, _), (expected, _) in zip(seen, EXPECTED, strict=True):
        assert expected <= answered <= expected + SLACK, seen


def test_a_static_target_with_a_disabled_check_is_rejected_and_the_rest_served(tmp_path):
    static = tmp_path / "static.json"
    static.write_text(
        json.dumps(
            [
                {"Service": {"Name": "ok"}, "Check": {"Type": "AlwaysSuccessful"}},
                {"Service": {"Name": "cmd"}, "Check": {"Type": "External", "Args": "/bin/true"}},
            ]
        )
    )
    policy = DiscoveryPolicy(hostname="vm", advertise_ip="127.0.0.1")

    async def scenario() -> HostObservation:
        host = HostDiscovery(policy, static=StaticDiscovery(static, policy, poll_interval=0.05))
        async with host.running() as out, asyncio.timeout(5):
            while True:
                observation = await out.get()
                if observation.services and observation.services[0].status is Status.ALIVE:
                    return observation

    observation = asyncio.run(scenario())
    assert [s.name for s in observation.services] == ["ok"]
    assert [(r.name, "external checks disabled" in r.reason) for r in observation.rejected] == [
        ("cmd", True)
    ]
