"""The sidecar container image (docker/), run on the real Engine exactly as docker/run does it:
host networking, the Docker socket, the label SidecarDiscover=false, NET_ADMIN.

The test's traffic stays on addresses it owns: the API, gossip and HAProxy's frontends are on
fresh 127.0.0.x addresses (`SIDECAR_HTTP_ADDRESS`, `HAPROXY_BIND_IP`), HAProxy's stats on
free ports; HAProxy's files stay inside the container. The image is built once per session
by scripts/build-image.sh on the local debootstrap base (cached between runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from docker.errors import NotFound

from .conftest import REPO, TEST_LABELS, http_request, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from docker.client import DockerClient
    from docker.models.containers import Container

    from .conftest import Loopback

pytestmark = pytest.mark.docker

IMAGE = "sidecar:test"
BUILD = REPO / "scripts" / "build-image.sh"
BUILD_TIMEOUT = 900.0  # a fresh machine: debootstrap (~1 min) and the image (~1 min)
HAPROXY_CONFIG = "/etc/haproxy.cfg"
# The seed's Testing section, with the local busybox image standing in for nginx: an httpd
# on 80 and one on 443 (plain HTTP: only the port matters here).
SEED_LABELS = {
    "HealthCheck": "HttpGet",
    "ServicePort_80": "8080",
    "ServicePort_443": "8443",
    "HealthCheckArgs": "http://{{ host }}:{{ tcp 8080 }}/",
}
TWO_HTTPDS = ["sh", "-c", "httpd -p 443 -h /www && exec httpd -f -p 80 -h /www"]
ALIVE = 0


@pytest.fixture(scope="session")
def sidecar_image(docker_client: DockerClient) -> str:
    """The image built from this checkout (its base built first when missing)."""
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(BUILD), IMAGE],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{BUILD} failed:\n{exc.stdout}\n{exc.stderr}", pytrace=False)
    print(f"{done.stdout.strip()} (fixture: {time.monotonic() - t0:.1f}s)")
    docker_client.images.get(IMAGE)
    return IMAGE


class Sidecar:
    """One sidecar container of a test, with where its API and HAProxy answer."""

    def __init__(self, container: Container, env: dict[str, str]) -> None:
        self.container = container
        self.env = env
        self.api = f"http://{env['SIDECAR_HTTP_ADDRESS']}"
        self.bind_ip = env["HAPROXY_BIND_IP"]

    def services(self) -> dict[str, Any]:
        reply = http_request(f"{self.api}/api/services.json", timeout=2.0)
        assert reply.status == 200, reply
        return json.loads(reply.body)

    def record(self, sid: str) -> dict[str, Any] | None:
        """The record with ID `sid` in /api/services.json, under whatever name."""
        for records in self.services()["Services"].values():
            for each in records:
                if each["ID"] == sid:
                    return each
        return None

    def alive(self, sid: str) -> dict[str, Any] | None:
        found = self.record(sid)
        return found if found and found["Status"] == ALIVE else None

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")

    def exec(self, *command: str) -> str:
        code, out = self.container.exec_run(list(command))
        assert code == 0, (command, code, out)
        return out.decode()

    def file(self, path: str) -> str:
        """A file of the container (running or stopped)."""
        chunks, _ = self.container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            member = tar.extractfile(Path(path).name)
            assert member is not None, path
            return member.read().decode()


@pytest.fixture
def start_sidecar(
    docker_client: DockerClient, sidecar_image: str, loopback: Loopback
) -> Iterator[Callable[..., Sidecar]]:
    """Factory: a sidecar container as docker/run starts it, on the test's own addresses."""
    made: list[Container] = []

    def start(**settings: str) -> Sidecar:
        ip = loopback.address(ports=(7777, 7946))
        env = {
            "SIDECAR_SEEDS": ip,  # itself as the seed, as docker/run does with 127.0.0.1
            "ADVERTISE_IP": ip,
            "SIDECAR_HTTP_ADDRESS": f"{ip}:7777",
            "SIDECAR_CHECK_INTERVAL": "1s",
            "HAPROXY_BIND_IP": loopback.address(),
            "HAPROXY_STATS_PORT": str(loopback.port()),
            "HAPROXY_STATS_BACKEND_PORT": str(loopback.port()),
            **settings,
        }
        container = docker_client.containers.run(
            sidecar_image,
            detach=True,
            name=f"sc-test-sidecar-{TEST_LABELS['sidecar-test-run']}-{len(made)}",
            labels={"SidecarDiscover": "false", **TEST_LABELS},
            environment=env,
            network_mode="host",
            cap_add=["NET_ADMIN"],
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        )
        made.append(container)
        return Sidecar(container, env)

    try:
        yield start
    finally:
        for container in reversed(made):
            with contextlib.suppress(NotFound):
                container.remove(force=True)


def api_answers(sidecar: Sidecar) -> bool:
    return http_request(f"{sidecar.api}/api/services.json", timeout=1.0).status == 200


def start_service(run_container: Callable[..., Container]) -> Container:
    return run_container(command=TWO_HTTPDS, labels=SEED_LABELS, publish_all_ports=True)


# The image has no procps: the daemon is the process whose command line has "sidecar run".
FIND_DAEMON = (
    "import os; print(*(p for p in os.listdir('/proc') if p.isdigit() and "
    "b'/sidecar\\x00run\\x00' in open(f'/proc/{p}/cmdline', 'rb').read()))"
)


def daemon_pid(sidecar: Sidecar) -> str:
    """The pid of the one `sidecar run` in the container (not PID 1, the entrypoint)."""
    pids = sidecar.exec("python3", "-c", FIND_DAEMON).split()
    assert len(pids) == 1, pids
    assert pids[0] != "1", pids
    return pids[0]


def served(sidecar: Sidecar, port: int = 8080) -> bool:
    reply = http_request(f"http://{sidecar.bind_ip}:{port}/", timeout=2.0)
    return reply.status == 200 and b"sidecar-test-busybox" in reply.body


def test_the_image_discovers_the_seeds_example_and_serves_it_through_haproxy(
    start_sidecar, run_container
):
    t0 = time.monotonic()
    sidecar = start_sidecar()
    wait_for(lambda: api_answers(sidecar), what="the API of the sidecar container", timeout=30)
    started = time.monotonic() - t0
    print(f"docker run -> API answering: {started:.2f}s")
    logs = sidecar.logs()
    # SIDECAR_SEEDS became a flag, ADVERTISE_IP too.
    assert f"--cluster-ip {sidecar.env['SIDECAR_SEEDS']}" in logs, logs
    assert f"--advertise-ip {sidecar.env['ADVERTISE_IP']}" in logs, logs
    service = start_service(run_container)
    sid = service.id[:12]

    record = wait_for(lambda: sidecar.alive(sid), what=f"{sid} ALIVE", timeout=30)
    assert sorted((p["Port"] != 0, p["ServicePort"]) for p in record["Ports"]) == [
        (True, 8080),
        (True, 8443),
    ], record
    # The sidecar container itself (SidecarDiscover=false) is not discovered.
    ids = {r["ID"] for rs in sidecar.services()["Services"].values() for r in rs}
    assert sidecar.container.id[:12] not in ids
    # HAProxy, in the container, serves both ports on the bind IP.
    wait_for(lambda: served(sidecar, 8080), what="HAProxy serving 8080", timeout=30)
    wait_for(lambda: served(sidecar, 8443), what="HAProxy serving 8443", timeout=30)
    # The web UI is in the image (package data): the page and its script.
    page = http_request(f"{sidecar.api}/ui/", timeout=5.0)
    assert (page.status, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert http_request(f"{sidecar.api}/ui/app.js", timeout=5.0).status == 200


def test_docker_stop_exits_0_within_the_bound_and_leaves_haproxys_config_whole(
    start_sidecar, run_container
):
    sidecar = start_sidecar()
    service = start_service(run_container)
    wait_for(lambda: api_answers(sidecar), what="the API", timeout=30)
    wait_for(lambda: served(sidecar), what="HAProxy serving 8080", timeout=30)

    t0 = time.monotonic()
    sidecar.container.stop(timeout=10)
    took = time.monotonic() - t0
    sidecar.container.reload()
    state = sidecar.container.attrs["State"]
    assert state["ExitCode"] == 0, (state, sidecar.logs())
    assert took < 5.0, (took, sidecar.logs())  # no SIGKILL after Docker's 10 s
    assert "after SIGTERM" in sidecar.logs()
    config = sidecar.file(HAPROXY_CONFIG)
    assert f"{sidecar.bind_ip}:8080" in config, config
    assert f"{sidecar.bind_ip}:8443" in config, config
    assert service.id[:12] in config, config
    # Whole: HAProxy itself accepts it (written beside and renamed into place).
    with_config = Path(f"/tmp/sc-test-image-{service.id[:12]}.cfg")
    try:
        with_config.write_text(config)
        check = subprocess.run(
            ["haproxy", "-c", "-f", str(with_config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        with_config.unlink(missing_ok=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_killed_daemon_comes_back_while_haproxy_keeps_serving(start_sidecar, run_container):
    sidecar = start_sidecar()
    service = start_service(run_container)
    sid = service.id[:12]
    wait_for(lambda: sidecar.alive(sid), what=f"{sid} ALIVE", timeout=30)
    wait_for(lambda: served(sidecar), what="HAProxy serving 8080", timeout=30)
    pid = daemon_pid(sidecar)

    sidecar.exec("sh", "-c", f"kill -9 {pid}")
    # Meanwhile HAProxy (the daemon's child, in its own session) answers every request, until
    # the new daemon's API answers.
    requests = 0
    back = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not back:
        assert served(sidecar), f"HAProxy failed a request after {requests}"
        requests += 1
        try:
            back = api_answers(sidecar)
        except OSError:
            back = False
        time.sleep(0.05)
    assert back, sidecar.logs()
    assert requests > 1
    logs = sidecar.logs()
    assert "was killed by SIGKILL" in logs, logs
    assert daemon_pid(sidecar) != pid
    wait_for(lambda: sidecar.alive(sid), what=f"{sid} ALIVE again", timeout=30)
    assert served(sidecar)
