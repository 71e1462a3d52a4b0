"""Make `docs/ui.png`: the web UI of a real two-host cluster with a few services.

    .venv/bin/python bench/ui_screenshot.py [--out docs/ui.png] [--width 1280]

Not a benchmark; it lives here because it starts daemons as bench/daemon.py does. Two
`sidecar run` daemons, `edge-01` and `edge-02`, each on a 127.0.0.x of its own (API on 7777,
gossip on 7946, each the other's seed) with a managed HAProxy on another 127.0.0.x, and static
discovery of a few services each (servers on 127.0.0.1 at ports nothing listens on: no
request is sent to them; checks `AlwaysSuccessful`, and one `Tcp` check to such a port, so
that service is UNHEALTHY; one service without a service port, which HAProxy leaves out).
Once both hosts see every service, one of edge-01's instances is drained, and headless
Chromium takes the page of edge-01 as a screenshot. Everything started is stopped on the way
out, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import daemon as d
from procs import kill_pids, pids_mentioning, sigterm_as_interrupt

CHROMIUM = "/usr/bin/chromium"
CLOSED_PORT_BASE = 41000  # the made-up ports of the instances: nothing listens there


def target(name: str, image: str, port: int, service_port: int, check: str = "") -> Any:
    ports = [{"Type": "tcp", "Port": port, "IP": "127.0.0.1"}]
    if service_port:
        ports[0]["ServicePort"] = service_port
    return {
        "Service": {"Name": name, "Image": image, "Ports": ports, "ProxyMode": "http"},
        "Check": {"Type": "Tcp", "Args": f"127.0.0.1:{port}"}
        if check == "tcp"
        else {"Type": "AlwaysSuccessful", "Args": ""},
    }


HOSTS = {
    "edge-01": [
        target("api", "acme/api:2.4.1", CLOSED_PORT_BASE + 1, 9000),
        target("web", "acme/web:1.18.0", CLOSED_PORT_BASE + 2, 8080),
        target("search", "acme/search:0.9.3", CLOSED_PORT_BASE + 3, 9200),
        target("payments", "acme/payments:3.1.0", CLOSED_PORT_BASE + 4, 9100, check="tcp"),
    ],
    "edge-02": [
        target("api", "acme/api:2.4.1", CLOSED_PORT_BASE + 11, 9000),
        target("web", "acme/web:1.19.0-rc1", CLOSED_PORT_BASE + 12, 8080),
        target("payments", "acme/payments:3.1.0", CLOSED_PORT_BASE + 14, 9100),
        target("reports-worker", "acme/reports:5.0.2", CLOSED_PORT_BASE + 15, 0),
    ],
}
DRAINED = ("edge-01", "search")


def services_seen(daemon: d.DaemonProcess) -> int:
    document = json.loads(daemon.get("/api/services.json").body)
    return sum(len(records) for records in (document.get("Services") or {}).values())


def settled(daemon: d.DaemonProcess) -> bool:
    """Whether every record has its check's verdict (none UNKNOWN) and no plan is pending."""
    document = json.loads(daemon.get("/api/services.json").body)
    statuses = [r["Status"] for records in document["Services"].values() for r in records]
    return 3 not in statuses and json.loads(daemon.get("/api/plan").body)["pending"] is False


def drain(daemon: d.DaemonProcess, service_id: str) -> None:
    conn = http.client.HTTPConnection(daemon.api_ip, 7777, timeout=10)
    try:
        conn.request("POST", f"/api/services/{service_id}/drain")
        answer = conn.getresponse()
        if answer.status != 202:
            raise RuntimeError(f"drain {service_id}: {answer.status} {answer.read()[:200]!r}")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=d.REPO / "docs" / "ui.png")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sidecar-ui-shot-"))
    loopback = d.Loopback()
    daemons: list[d.DaemonProcess] = []
    try:
        with sigterm_as_interrupt():
            addresses = {host: loopback.address(ports=[7777, 7946]) for host in HOSTS}
            for host, targets in HOSTS.items():
                static = root / f"{host}.json"
                static.write_text(json.dumps(targets, indent=1))
                other = next(ip for name, ip in addresses.items() if name != host)
                ports = [t["Service"]["Ports"][0].get("ServicePort", 0) for t in targets]
                daemon = d.DaemonProcess(
                    root,
                    host,
                    loopback,
                    {
                        "SIDECAR_HOSTNAME": host,
                        "SIDECAR_DISCOVERY": "static",
                        "STATIC_CONFIG_FILE": str(static),
                        "SIDECAR_ADVERTISE_IP": addresses[host],
                        "SIDECAR_SEEDS": other,
                        "HAPROXY_BIND_IP": loopback.address(ports=[p for p in ports if p]),
                    },
                )
                daemon.api_ip = addresses[host]
                daemon.env["SIDECAR_HTTP_ADDRESS"] = f"{addresses[host]}:7777"
                daemons.append(daemon)
                daemon.start()
            total = sum(len(targets) for targets in HOSTS.values())
            for daemon in daemons:
                daemon.wait_up()
                d.wait_for(
                    lambda daemon=daemon: services_seen(daemon) == total,
                    what=f"{total} services on {daemon.name}",
                    limit=60,
                    interval=0.2,
                )
            first = daemons[0]
            state = json.loads(first.get("/api/state.json").body)
            own = state["Servers"][DRAINED[0]]["Services"]
            drained = next(sid for sid, s in own.items() if s["Name"] == DRAINED[1])
            d.wait_for(
                lambda: settled(first),
                what="every check run and HAProxy following",
                limit=60,
                interval=0.2,
            )
            drain(first, drained)
            time.sleep(2)  # the drain reaches HAProxy and the page's next look
            shoot(first, args)
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        for daemon in daemons:
            with contextlib.suppress(Exception):
                daemon.stop()
        kill_pids(pids_mentioning(str(root)))
        shutil.rmtree(root, ignore_errors=True)


def shoot(daemon: d.DaemonProcess, args: argparse.Namespace) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": args.width, "height": 800})
            page.goto(f"http://{daemon.api_ip}:7777/ui/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(1500)  # the local view's next look, ages ticking
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
        finally:
            browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
