"""`sidecar plan` as a real process, against a real HAProxy run by the reconcile loop."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import sys
import threading

import pytest

from sidecar.state import codec, merge
from sidecar.state.model import ClusterState

from .conftest import REPO
from .haproxy_kit import T0, apply, reconciling

pytestmark = pytest.mark.haproxy


def state_file(path, *records):
    state = merge.merge_records(ClusterState(hostname="me"), list(records), now=T0).state
    path.write_bytes(codec.encode_state(state))
    return path


def plan_args(options, settings, *extra):
    return [
        "plan",
        "--bind-ip",
        settings.bind_ip,
        "--config-file",
        str(options.config_file),
        "--master-socket",
        str(options.master_socket),
        "--admin-socket",
        settings.admin_socket,
        "--stats-port",
        str(settings.stats_port),
        "--stats-backend-port",
        str(settings.stats_backend_port),
        "--user",
        settings.user,
        *extra,
    ]


async def sidecar(*args):
    """Exit code, stdout and stderr of `python -m sidecar ARGS`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def snapshot(directory):
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir() if p.is_file()
    }


def test_plan_is_empty_when_converged_and_shows_the_change_when_the_state_moves(
    haproxy_site, backend, tmp_path
):
    options, settings = haproxy_site
    a, b = backend("h1", "a1"), backend("h2", "b2")
    api = backend("h3", "c3", service_port=9000)

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            await apply(reconciler, a)
            files = snapshot(options.config_file.parent)

            converged = state_file(tmp_path / "now.json", a.record())
            code, out, err = await sidecar(*plan_args(options, settings, "--state", str(converged)))
            assert (code, err) == (0, ""), out
            assert "Nothing to change" in out

            grown = state_file(tmp_path / "grown.json", a.record(), b.record())
            code, out, err = await sidecar(*plan_args(options, settings, "--state", str(grown)))
            assert code == 2, (out, err)
            assert "add-server web-8080/h2-b2" in out
            assert "(h2-b2 joined web-8080)" in out
            assert "(no reload)" in out
            assert f"+\tserver h2-b2 {b.ip}:{b.port} cookie h2-{b.port}" in out

            code, out, _ = await sidecar(
                *plan_args(options, settings, "--state", str(grown), "--json")
            )
            document = json.loads(out)
            assert code == 2
            assert document["pending"] is True
            assert [x["kind"] for x in document["actions"]] == ["add-server", "write"]
            assert document["actions"][0]["server"] == "h2-b2"
            assert document["haproxy_running"] is True

            ported = state_file(tmp_path / "ported.json", a.record(), api.record(name="api"))
            code, out, _ = await sidecar(*plan_args(options, settings, "--state", str(ported)))
            assert code == 2
            assert "one reload" in out
            assert "+frontend api-9000" in out

            assert snapshot(options.config_file.parent) == files  # plan wrote nothing

    asyncio.run(scenario())


def test_plan_previews_a_template_and_lists_excluded_instances(haproxy_site, backend, tmp_path):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    bad = dataclasses.replace(a.record(), id="z9", proxy_mode="bogus", hostname="h9")
    template = tmp_path / "mine.j2"
    template.write_text("# my template\n{% for f in frontends %}# {{ f.name }}\n{% endfor %}")

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            await apply(reconciler, a)
            path = state_file(tmp_path / "state.json", a.record(), bad)
            code, out, err = await sidecar(
                *plan_args(options, settings, "--state", str(path), "--template", str(template))
            )
            assert code == 2, (out, err)
            assert "+# my template" in out
            assert "+# web-8080" in out
            assert "h9/z9 (web): ProxyMode 'bogus'" in out
            assert "one reload" in out

    asyncio.run(scenario())


def test_plan_reads_the_state_from_the_daemon_api(haproxy_site, backend, tmp_path, loopback):
    options, settings = haproxy_site
    a = backend("h1", "a1")
    body = state_file(tmp_path / "state.json", a.record()).read_bytes()

    class StateJson(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = 200 if self.path == "/api/state.json" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    host = loopback.address()
    server = http.server.HTTPServer((host, 0), StateJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            await apply(reconciler, a)
            url = f"http://{host}:{server.server_port}"
            return await sidecar(*plan_args(options, settings, "--api", url))

    try:
        code, out, err = asyncio.run(scenario())
    finally:
        server.shutdown()
        server.server_close()
    assert (code, err) == (0, ""), out
    assert "Nothing to change" in out


def test_plan_says_clearly_when_haproxy_or_the_daemon_does_not_answer(
    haproxy_site, tmp_path, loopback
):
    options, settings = haproxy_site
    path = state_file(tmp_path / "state.json")

    code, out, err = asyncio.run(sidecar(*plan_args(options, settings, "--state", str(path))))
    assert (code, out) == (1, "")
    assert f"HAProxy does not answer on {options.master_socket} (managed mode)" in err

    host = loopback.address()
    closed = f"http://{host}:{loopback.port(host)}"
    code, out, err = asyncio.run(sidecar(*plan_args(options, settings, "--api", closed)))
    assert (code, out) == (1, "")
    assert f"cannot read the cluster state from {closed}/api/state.json" in err
    assert "is the sidecar daemon running?" in err

    broken = tmp_path / "broken.json"
    broken.write_text('{"Servers": {"h1": {"Services": {"x": {"Status": 9}}}}}')
    code, _, err = asyncio.run(sidecar(*plan_args(options, settings, "--state", str(broken))))
    assert code == 1
    assert "the cluster state was refused" in err
