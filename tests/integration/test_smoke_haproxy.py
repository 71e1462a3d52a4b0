"""The harness drives a real HAProxy: config validation, and traffic through a proxy."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import uuid

import pytest

pytestmark = pytest.mark.haproxy

DEFAULTS = """\
global
    log stderr format raw local0 warning

defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 5s
"""


def haproxy_check(cfg) -> subprocess.CompletedProcess[str]:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    return subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False
    )


def test_haproxy_accepts_a_valid_config(tmp_path, loopback):
    address = loopback.address()
    cfg = tmp_path / "valid.cfg"
    cfg.write_text(
        DEFAULTS
        + f"""
frontend fe_smoke
    bind {address}:{loopback.port(address)}
    default_backend be_smoke

backend be_smoke
    server s1 127.0.0.1:9 disabled
"""
    )

    result = haproxy_check(cfg)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("frontend_line", "expected"),
    [
        pytest.param(
            "no_such_directive 42",
            ["unknown keyword 'no_such_directive' in 'frontend' section", "invalid.cfg:{line}"],
            id="unknown-keyword",
        ),
        pytest.param(
            "default_backend be_missing",
            ["unable to find required default_backend: 'be_missing'"],
            id="missing-backend",
        ),
    ],
)
def test_haproxy_rejects_an_invalid_config_and_names_the_problem(
    tmp_path, loopback, frontend_line, expected
):
    address = loopback.address()
    cfg = tmp_path / "invalid.cfg"
    cfg.write_text(
        DEFAULTS
        + f"""
frontend fe_smoke
    bind {address}:{loopback.port(address)}
    {frontend_line}
"""
    )

    result = haproxy_check(cfg)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Fatal errors found in configuration" in output
    line = cfg.read_text().splitlines().index(f"    {frontend_line}") + 1
    for fragment in expected:
        assert fragment.format(line=line) in output


class _Backend(http.server.BaseHTTPRequestHandler):
    token = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.token)))
        self.end_headers()
        self.wfile.write(self.token)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def backend():
    """An HTTP server on 127.0.0.1:<free port> answering every GET with a unique token."""
    token = uuid.uuid4().hex.encode()
    handler = type("Backend", (_Backend,), {"token": token})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_haproxy_carries_traffic_to_a_local_backend(
    tmp_path, loopback, backend, spawn, wait_until, http_get
):
    backend_port, token = backend
    address = loopback.address()
    port = loopback.port(address)
    cfg = tmp_path / "proxy.cfg"
    cfg.write_text(
        DEFAULTS
        + f"""
frontend fe_smoke
    bind {address}:{port}
    http-response set-header X-Sidecar-Test through-haproxy
    default_backend be_smoke

backend be_smoke
    server s1 127.0.0.1:{backend_port}
"""
    )
    assert haproxy_check(cfg).returncode == 0

    haproxy = spawn.start(["haproxy", "-db", "-f", str(cfg)], name="haproxy")

    def fetch():
        if haproxy.poll() is not None:
            pytest.fail(f"haproxy exited with {haproxy.returncode}:\n{spawn.log('haproxy')}")
        return http_get(f"http://{address}:{port}/through")

    reply = wait_until(fetch, what=f"haproxy on {address}:{port}", timeout=15)

    assert haproxy.poll() is None, spawn.log("haproxy")
    assert reply.status == 200
    assert reply.body == token
    assert reply.headers.get("X-Sidecar-Test") == "through-haproxy"

    spawn.stop(haproxy)
    assert haproxy.returncode is not None
    with pytest.raises(ConnectionRefusedError):
        http_get(f"http://{address}:{port}/", timeout=2)
