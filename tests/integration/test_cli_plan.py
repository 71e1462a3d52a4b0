"""`sidecar plan` as a real process, against a real HAProxy run by the reconcile loop."""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import sys
import threading

import pytest

from sidecar.state import codec
from tests.builders import cluster_state

from .conftest import REPO
from .haproxy_kit import Backend, apply, reconciling

pytestmark = pytest.mark.haproxy


def state_file(path, *records):
    state = cluster_state("me", *records)
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


def test_plan_on_a_fresh_host_plans_the_start_of_haproxy(haproxy_site, loopback, tmp_path):
    options, settings = haproxy_site
    ip = loopback.address()
    a, b = Backend("h1", "a1", ip, 3001), Backend("h2", "b2", ip, 3002)
    api = Backend("h3", "c3", ip, 3003, service_port=9000)
    path = state_file(tmp_path / "state.json", a.record(), b.record(), api.record(name="api"))

    code, out, err = asyncio.run(sidecar(*plan_args(options, settings, "--state", str(path))))
    assert code == 2, (out, err)
    assert f"no HAProxy answers on {options.master_socket} (managed mode)" in err
    assert out.startswith(
        "HAProxy is not running: it would be started with the config below, written to "
        f"{options.config_file}.\n2 action(s) pending (HAProxy to be started):\n"
        "  1. write  (HAProxy is not running)\n"
        "  2. start  (HAProxy is not running)\n"
    )
    assert (
        "2 frontend(s) and 3 server(s), all new:\n"
        f"  frontend api-9000 on {settings.bind_ip}:9000 (http)\n"
        f"    server h3-c3 {ip}:3003\n"
        f"  frontend web-8080 on {settings.bind_ip}:8080 (http)\n"
        f"    server h1-a1 {ip}:3001\n"
        f"    server h2-b2 {ip}:3002\n"
    ) in out
    assert f"--- {options.config_file} (missing)" in out
    assert "+frontend web-8080" in out

    code, out, _ = asyncio.run(
        sidecar(*plan_args(options, settings, "--state", str(path), "--json"))
    )
    document = json.loads(out)
    assert code == 2
    assert document["pending"] is True
    assert document["haproxy_running"] is False
    assert [x["kind"] for x in document["actions"]] == ["write", "start"]
    assert document["start"]["config_file"] == str(options.config_file)
    frontends = {f["name"]: f for f in document["start"]["frontends"]}
    assert sorted(frontends) == ["api-9000", "web-8080"]
    assert [s["name"] for s in frontends["web-8080"]["servers"]] == ["h1-a1", "h2-b2"]
    assert frontends["web-8080"]["bind"] == f"{settings.bind_ip}:8080"
    assert document["bind_ips"] == []  # a loopback bind IP needs no address added

    assert not options.config_file.parent.exists()  # plan wrote nothing


def test_plan_after_haproxy_stopped_diffs_against_the_file_it_left(haproxy_site, backend, tmp_path):
    options, settings = haproxy_site
    a, b = backend("h1", "a1"), backend("h2", "b2")

    async def scenario():
        async with reconciling(options, settings) as (_, reconciler):
            await apply(reconciler, a)
        # HAProxy is stopped now; its config file stays.
        path = state_file(tmp_path / "state.json", a.record(), b.record())
        return await sidecar(*plan_args(options, settings, "--state", str(path)))

    code, out, err = asyncio.run(scenario())
    assert code == 2, (out, err)
    assert "HAProxy is not running: it would be started" in out
    assert f"--- {options.config_file} (on disk)" in out
    assert f"+\tserver h2-b2 {b.ip}:{b.port} cookie h2-{b.port}" in out
    assert "+frontend web-8080" not in out  # the file has it already


@pytest.mark.netns
def test_plan_on_a_fresh_host_names_the_bind_ip_to_add(netns, tmp_path):
    ns = netns()  # its own `lo`, with 127.0.0.1 only
    home = tmp_path / "haproxy"
    path = state_file(tmp_path / "state.json", Backend("h1", "a1", "127.0.0.2", 3001).record())
    result = ns.run(
        sys.executable,
        "-m",
        "sidecar",
        "plan",
        "--state",
        str(path),
        "--bind-ip",
        "192.168.168.168",
        "--interface",
        "lo",
        "--config-file",
        str(home / "haproxy.cfg"),
        "--master-socket",
        str(home / "master.sock"),
        "--admin-socket",
        str(home / "admin.sock"),
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert (
        "  1. bind 192.168.168.168  (HAProxy binds 192.168.168.168, which is not on the "
        "interface)\n  2. write  (HAProxy is not running)\n  3. start  (HAProxy is not running)"
    ) in result.stdout
    assert "frontend web-8080 on 192.168.168.168:8080 (http)" in result.stdout
    assert "192.168.168.168" not in ns.ip("-o", "addr", "show", "dev", "lo").stdout
    assert not home.exists()


def test_plan_refuses_a_template_jinja_cannot_parse_naming_the_line(haproxy_site, tmp_path):
    options, settings = haproxy_site
    template = tmp_path / "broken.j2"
    template.write_text("global\n\tdaemon\n\tbind {{ bind_ip }\n")
    path = state_file(tmp_path / "state.json")
    code, out, err = asyncio.run(
        sidecar(*plan_args(options, settings, "--state", str(path), "--template", str(template)))
    )
    assert (code, out) == (1, "")
    assert f"sidecar plan: {template}, line 3: unexpected '}}'" in err


def test_plan_says_clearly_when_the_daemon_does_not_answer_or_the_state_is_refused(
    haproxy_site, tmp_path, loopback
):
    options, settings = haproxy_site
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
