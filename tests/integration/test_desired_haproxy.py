"""The rendered config is one the real HAProxy 2.6 accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sidecar.reconcile import desired
from sidecar.reconcile.desired import HaproxySettings
from sidecar.state import views
from tests import builders

pytestmark = pytest.mark.haproxy


def service(host, sid, name, ip, port, service_port, mode="http"):
    return builders.service(host, sid, name=name, ip=ip, ports=((port, service_port),), mode=mode)


def test_haproxy_accepts_the_rendered_config(tmp_path):
    records = [
        service("h1", "aaaaaaaaaaa1", "web", "127.0.0.1", 32001, 8080),
        service("h2", "aaaaaaaaaaa2", "web", "fd00::2", 32002, 8080),
        service("h1", "bbbbbbbbbbb1", "Registry/API:v2", "127.0.0.1", 32003, 9000, "ws"),
        service("h3", "ccccccccccc1", "db", "10.0.0.3", 5432, 5432, "tcp"),
    ]
    state = builders.cluster_state("me", *records)
    settings = HaproxySettings(bind_ip="127.0.0.77", admin_socket=str(tmp_path / "admin.sock"))
    result = desired.desired(views.routing_table(state), settings)
    assert len(result.frontends) == 3
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(result.config)
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
