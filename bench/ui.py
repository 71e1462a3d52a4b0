"""Benchmark: the web UI with many services — how long the page takes to show them, how long
a state change takes to reach the page, the page's memory, and what an open page costs the
daemon.

    .venv/bin/python bench/ui.py [--services 1000] [--changes 20] [--idle 10]

Needs HAProxy, Debian's Chromium (`/usr/bin/chromium`) and Playwright (the `ui` dependency
group). One `sidecar run`, started as bench/daemon.py starts it (environment from scratch,
API and HAProxy on fresh 127.0.0.x addresses, files in a temporary directory), with static
discovery of SERVICES targets (`svc-0000`..., one instance each, check `AlwaysSuccessful`,
servers on 127.0.0.1 at made-up ports nothing contacts) and a managed HAProxy, so the page
shows HAProxy's state for every one of them. Once all are ALIVE and in HAProxy:

1. **First render**: headless Chromium opens `/ui/`; the time from `goto` to the page saying
   it has rendered the first state and local view (`body[data-ready]`), and the rows counted.
2. **Change to page**: CHANGES times, one service after another, the page itself POSTs its
   drain (`/api/services/<id>/drain`, as its Drain button does) and a MutationObserver
   notes when that row's status cell reads DRAINING: the time between, on the page's own
   clock (the daemon's drain, the event stream, the page's parse and its diff render).
3. **Memory**: Chromium's own metrics for the page (`Performance.getMetrics` over the
   DevTools protocol, through Playwright): JS heap used and total, DOM nodes, after the
   changes.
4. **An open page's cost**: the daemon's CPU (% of a core) over IDLE seconds with the page
   open, then IDLE seconds with it closed (the page's stream looks at HAProxy's stats every
   second).

Traffic goes to loopback only. Everything is bounded in count and time; the daemon, its
HAProxy and Chromium are stopped on the way out, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import daemon as d
from procs import kill_pids, pids_mentioning, sigterm_as_interrupt

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
PAGE_LIMIT_MS = 60_000
CHANGE_LIMIT_MS = 30_000

# Resolves to the ms from the drain's POST to the row reading DRAINING (page clock).
DRAIN_AND_WATCH = """
async ([key, id, limit]) => {
  const selector = `[data-instance="${key}"] [data-field="status"]`;
  const shows = () => document.querySelector(selector)?.textContent.trim() === "DRAINING";
  let observer;
  const seen = new Promise((resolve) => {
    observer = new MutationObserver(() => { if (shows()) resolve(performance.now()); });
    observer.observe(document.body, {subtree: true, childList: true, characterData: true});
  });
  const timeout = new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`${key} not DRAINING after ${limit} ms`)), limit));
  const began = performance.now();
  const answer = await fetch(`/api/services/${id}/drain`, {method: "POST"});
  if (!answer.ok) throw new Error(`drain ${id}: ${answer.status}`);
  try {
    return (await Promise.race([seen, timeout])) - began;
  } finally {
    observer.disconnect();
  }
}
"""


def own_ids(daemon: d.DaemonProcess) -> list[tuple[str, str]]:
    """Return (hostname/ID, ID) of the daemon's svc-* services, sorted by name."""
    document = json.loads(daemon.get("/api/services.json", timeout=10.0).body)
    found = [
        (name, f"{r['Hostname']}/{r['ID']}", r["ID"])
        for name, records in document["Services"].items()
        if name.startswith("svc-")
        for r in records
    ]
    return [(key, sid) for _, key, sid in sorted(found)]


def metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def measure(daemon: d.DaemonProcess, args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, Any] = {}
    targets = own_ids(daemon)[: args.changes]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            began = time.monotonic()
            page.goto(f"http://{daemon.api_ip}:7777/ui/", timeout=PAGE_LIMIT_MS)
            page.wait_for_selector("body[data-ready='1']", timeout=PAGE_LIMIT_MS)
            figures["first_render"] = time.monotonic() - began
            figures["rows"] = page.locator("[data-instance]").count()
            print(
                f"[ui] first render: {figures['first_render']:.2f} s for {figures['rows']} rows",
                flush=True,
            )
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            figures["before"] = metrics(cdp)
            changes = []
            for key, sid in targets:
                ms = page.evaluate(DRAIN_AND_WATCH, [key, sid, CHANGE_LIMIT_MS])
                changes.append(ms)
                print(f"[ui] drain {key}: on the page after {ms:.0f} ms", flush=True)
            figures["changes_ms"] = changes
            page.evaluate("() => new Promise((r) => setTimeout(r, 1000))")
            cdp.send("HeapProfiler.collectGarbage")
            figures["after"] = metrics(cdp)
            figures["open"] = daemon.idle_cpu(args.idle)
            page.close()
            figures["closed"] = daemon.idle_cpu(args.idle)
            figures["console_errors"] = problems
        finally:
            browser.close()
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    changes = sorted(figures["changes_ms"])
    after, before = figures["after"], figures["before"]
    mib = 1024 * 1024
    print()
    print(f"== web UI, {args.services} services, {len(changes)} changes ==")
    print(f"first render            {figures['first_render']:.2f} s ({figures['rows']} rows)")
    print(
        f"change -> page          p50 {statistics.median(changes):.0f} ms, "
        f"p95 {changes[max(0, round(len(changes) * 0.95) - 1)]:.0f} ms, "
        f"max {changes[-1]:.0f} ms"
    )
    print(
        f"page JS heap            {after['JSHeapUsedSize'] / mib:.1f} MiB used of "
        f"{after['JSHeapTotalSize'] / mib:.1f} MiB (before the changes: "
        f"{before['JSHeapUsedSize'] / mib:.1f} MiB)"
    )
    print(f"page DOM nodes          {after['Nodes']:.0f}; documents {after['Documents']:.0f}")
    print(
        f"daemon CPU, page open   {figures['open'].percent:.2f} % of a core; closed "
        f"{figures['closed'].percent:.2f} % (over {args.idle:g} s each)"
    )
    print(f"console errors          {len(figures['console_errors'])}")
    for problem in figures["console_errors"][:5]:
        print(f"  {problem}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000, help="static services (1000)")
    parser.add_argument("--changes", type=int, default=20, help="drains timed (20)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of CPU each (10)")
    args = parser.parse_args()
    if not 1 <= args.services <= 5000 or not 1 <= args.changes <= min(100, args.services):
        parser.error("--services must be 1..5000 and --changes 1..min(100, services)")
    if not 1 <= args.idle <= 120:
        parser.error("--idle must be 1..120 seconds")
    for needed in ("haproxy", CHROMIUM):
        if shutil.which(needed) is None:
            raise SystemExit(f"{needed} is not installed")
    root = Path(tempfile.mkdtemp(prefix="sidecar-bench-ui-"))
    loopback = d.Loopback()
    ports = [d.STATIC_PORT_BASE + i for i in range(args.services)]
    static = root / "static.json"
    static.write_text(json.dumps(d.static_targets(args.services), indent=1))
    daemon = d.DaemonProcess(
        root,
        "ui",
        loopback,
        {
            "SIDECAR_DISCOVERY": "static",
            "STATIC_CONFIG_FILE": str(static),
            "HAPROXY_BIND_IP": loopback.address(ports=ports),
        },
    )
    failed = False
    try:
        with sigterm_as_interrupt():
            daemon.start()
            daemon.wait_up()
            d.wait_for(
                lambda: d.all_served(daemon, args.services),
                what=f"{args.services} services ALIVE and in HAProxy",
                limit=120,
                interval=0.5,
            )
            figures = measure(daemon, args)
            report(figures, args)
            failed = bool(figures["console_errors"])
    except KeyboardInterrupt:
        print("interrupted; stopping everything it started", flush=True)
        raise SystemExit(130) from None
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        kill_pids(pids_mentioning(str(root)))
        shutil.rmtree(root, ignore_errors=True)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
