"""`sidecar run` as a real process: Docker discovery, checks, managed HAProxy, the HTTP API.

The daemon gets its own 127.0.0.x for the API and another for HAProxy's frontends (loopback
needs no binding), its HAProxy files in tmp_path, and advertises 127.0.0.1, where Docker
publishes the containers' ports. Each container answers `/` with its own host name (its
short ID), so a test can tell which instance served a request.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, daemon_environment, http_request, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.haproxy]

SERVES_ITS_NAME = ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 80 -h /www"]


@pytest.fixture
def daemon_env(tmp_path, loopback):
    """The environment of a test daemon: Docker discovery, everything on fresh loopback."""
    return daemon_environment(
        tmp_path, loopback, SIDECAR_DISCOVERY="docker", HAPROXY_STOP_ON_EXIT="true"
    )


def api_url(env, path):
    return f"http://{env['SIDECAR_HTTP_ADDRESS']}{path}"


def start(spawn, env, *args, name="sidecar"):
    return spawn.start(
        [sys.executable, "-m", "sidecar", "run", *args], name=name, env=env, cwd=REPO
    )


def services(env):
    reply = http_request(api_url(env, "/api/services.json"))
    assert reply.status == 200
    return json.loads(reply.body)


def record(env, name, sid):
    for each in services(env)["Services"].get(name, []):
        if each["ID"] == sid:
            return each
    return None


def not_served(url):
    """Whether HAProxy refuses `url` (no frontend) or has no server for it."""
    try:
        return http_request(url).status == 503
    except ConnectionRefusedError:
        return True


def served_by(url, requests=12):
    names = set()
    for _ in range(requests):
        reply = http_request(url)
        assert reply.status == 200, (reply.status, reply.body[:200])
        names.add(reply.body.decode().strip())
    return names


def test_the_daemon_serves_containers_through_haproxy_and_its_api(
    spawn, daemon_env, run_container, test_image
):
    env = daemon_env
    proc = start(spawn, env)
    wait_for(lambda: http_request(api_url(env, "/healthz")).status == 200, what="/healthz")
    name, port = f"web-{uuid.uuid4().hex[:6]}", 18000 + os.getpid() % 1000
    labels = {"ServiceName": name, "ServicePort_80": str(port)}
    first, second = (
        run_container(test_image, SERVES_ITS_NAME, labels=labels, publish_all_ports=True)
        for _ in range(2)
    )
    ids = {c.id[:12] for c in (first, second)}
    url = f"http://{env['HAPROXY_BIND_IP']}:{port}/"

    listed = wait_for(
        lambda: all((r := record(env, name, sid)) and r["Status"] == 0 for sid in ids),
        what="both containers ALIVE in /api/services.json",
        timeout=30,
    )
    assert listed
    document = services(env)
    assert list(document) == ["Services", "ClusterMembers", "ClusterName"]
    one = record(env, name, first.id[:12])
    assert list(one) == [
        "ID",
        "Name",
        "Image",
        "Created",
        "Hostname",
        "Ports",
        "Updated",
        "ProxyMode",
        "Status",
    ]
    assert one["Hostname"] == env["SIDECAR_HOSTNAME"]
    assert one["Ports"][0]["ServicePort"] == port
    assert one["Ports"][0]["IP"] == "127.0.0.1"
    assert set(document["ClusterMembers"]) == {env["SIDECAR_HOSTNAME"]}

    wait_for(lambda: served_by(url) == ids, what="HAProxy serving both containers", timeout=30)

    # `sidecar plan` with the daemon's own configuration (its environment) finds it converged.
    plan = subprocess.run(
        [sys.executable, "-m", "sidecar", "plan"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (plan.returncode, plan.stderr) == (0, ""), plan.stdout
    assert "Nothing to change" in plan.stdout
    served = json.loads(http_request(api_url(env, "/api/plan")).body)
    assert served["pending"] is False
    assert served["error"] is None

    drained = http_request(api_url(env, f"/api/services/{first.id[:12]}/drain"), method="POST")
    assert drained.status == 202, drained.body
    assert b"set to DRAINING" in drained.body
    wait_for(lambda: record(env, name, first.id[:12])["Status"] == 4, what="DRAINING listed")
    wait_for(lambda: served_by(url) == {second.id[:12]}, what="the drained one gets no requests")

    second.stop(timeout=5)
    wait_for(
        lambda: record(env, name, second.id[:12])["Status"] == 1, what="the stopped one a tombstone"
    )
    wait_for(lambda: not_served(url), what="no frontend left once nothing is ALIVE")

    metrics = http_request(api_url(env, "/metrics"))
    assert metrics.status == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
    alive = {s.labels["status"]: s.value for s in families["sidecar_services"].samples}
    assert alive["draining"] >= 1
    assert alive["tombstone"] >= 1
    assert families["sidecar_haproxy_reloads"].samples[0].value >= 0
    assert any(s.value > 0 for s in families["sidecar_check_results"].samples)

    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - began < 2.0
    log = spawn.log("sidecar")
    assert "config: haproxy.bind_ip" in log


def test_watch_streams_a_document_per_change(spawn, daemon_env, run_container, test_image):
    env = daemon_env
    start(spawn, env)
    wait_for(lambda: http_request(api_url(env, "/healthz")).status == 200, what="/healthz")
    name = f"watch-{uuid.uuid4().hex[:6]}"
    host, port = env["SIDECAR_HTTP_ADDRESS"].split(":")
    curl = subprocess.Popen(
        ["curl", "-sN", "--max-time", "30", f"http://{host}:{port}/api/watch?format=ndjson"],
        stdout=subprocess.PIPE,
    )
    try:
        first = json.loads(curl.stdout.readline())
        assert name not in first
        run_container(
            test_image,
            SERVES_ITS_NAME,
            labels={"ServiceName": name, "ServicePort_80": "18999"},
            publish_all_ports=True,
        )
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            document = json.loads(curl.stdout.readline())
            seen.append(document)
            if any(r["Status"] == 0 for r in document.get(name, [])):
                break
        assert any(r["Status"] == 0 for r in seen[-1].get(name, [])), seen[-1]
        assert len(seen) >= 1
    finally:
        curl.kill()
        curl.wait()
        curl.stdout.close()


def test_an_empty_docker_url_reaches_the_engine_through_the_docker_environment(
    spawn, daemon_env, run_container, test_image, tmp_path
):
    # Go's documented way without the socket mount: DOCKER_URL= and the DOCKER_* variables.
    # DOCKER_HOST names a path that is not there yet: the Engine is unreachable through it
    # (the default socket, which answers, is not used); once it links to the Engine's socket,
    # the daemon reconnects and discovers.
    link = tmp_path / "engine.sock"
    env = {**daemon_env, "DOCKER_URL": "", "DOCKER_HOST": f"unix://{link}"}
    start(spawn, env)
    wait_for(lambda: http_request(api_url(env, "/healthz")).status == 200, what="/healthz")
    wait_for(
        lambda: "Docker Engine unreachable" in spawn.log("sidecar"),
        what="the daemon trying DOCKER_HOST's missing socket",
    )
    link.symlink_to("/var/run/docker.sock")
    name = f"envurl-{uuid.uuid4().hex[:6]}"
    container = run_container(
        test_image,
        SERVES_ITS_NAME,
        labels={"ServiceName": name, "ServicePort_80": "18998"},
        publish_all_ports=True,
    )
    wait_for(
        lambda: (record(env, name, container.id[:12]) or {}).get("Status") == 0,
        what=f"{name} ALIVE, discovered through DOCKER_HOST",
    )


@pytest.mark.parametrize(
    ("env_change", "expected"),
    [
        pytest.param({"HAPROXY_BIND_IP": "banana"}, ["HAPROXY_BIND_IP", "banana"], id="bind-ip"),
        pytest.param({"SIDECAR_DISCOVERY": "kubernetes_api"}, ["kubernetes_api"], id="discovery"),
        pytest.param({"HAPROXY_DEBOUNCE_MIN": "5x"}, ["HAPROXY_DEBOUNCE_MIN", "5x"], id="duration"),
    ],
)
def test_bad_configuration_stops_start_up_with_a_clear_message(daemon_env, env_change, expected):
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run"],
        env={**daemon_env, **env_change},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    for words in expected:
        assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_key_in_the_file_is_named(daemon_env, tmp_path):
    config = tmp_path / "sidecar.toml"
    config.write_text('[haproxy]\nbnd_ip = "127.0.0.9"\n')
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(config)],
        env=daemon_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "bnd_ip" in result.stderr
    assert "unknown" in result.stderr


def test_observe_only_plans_without_touching_haproxy(spawn, daemon_env, run_container, test_image):
    env = {**daemon_env, "HAPROXY_APPLY": "false"}
    start(spawn, env)
    wait_for(lambda: http_request(api_url(env, "/healthz")).status == 200, what="/healthz")
    name = f"observed-{uuid.uuid4().hex[:6]}"
    run_container(
        test_image,
        SERVES_ITS_NAME,
        labels={"ServiceName": name, "ServicePort_80": "18998"},
        publish_all_ports=True,
    )

    def planned():
        document = json.loads(http_request(api_url(env, "/api/plan")).body)
        return document if f"+frontend {name}-18998" in document["diff"] else None

    document = wait_for(planned, what="the new service in the observed plan", timeout=30)
    assert document["apply"] is False
    assert document["pending"] is True
    assert [a["kind"] for a in document["actions"]] == ["write", "start"]
    assert not os.path.exists(env["HAPROXY_CONFIG_FILE"])
    assert not os.path.exists(env["HAPROXY_MASTER_SOCKET"])


def test_sighup_takes_a_new_template_without_a_restart(spawn, daemon_env, tmp_path):
    from sidecar.reconcile.desired import SHIPPED_TEMPLATE

    template = tmp_path / "haproxy.cfg.j2"
    template.write_text("# template v1\n" + SHIPPED_TEMPLATE)
    env = {**daemon_env, "HAPROXY_TEMPLATE_FILE": str(template)}
    proc = start(spawn, env)
    config = tmp_path / "haproxy" / "haproxy.cfg"
    wait_for(lambda: config.exists() and "# template v1" in config.read_text(), what="v1 rendered")

    template.write_text("# template v2\n" + SHIPPED_TEMPLATE)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "# template v2" in config.read_text(), what="v2 rendered after SIGHUP")
    assert proc.poll() is None
    assert "SIGHUP: haproxy.template_file" not in spawn.log("sidecar")  # same path, new text
    assert "SIGHUP:" in spawn.log("sidecar")


def test_start_up_refuses_a_template_jinja_cannot_parse_naming_the_line(daemon_env, tmp_path):
    template = tmp_path / "haproxy.cfg.j2"
    template.write_text("global\n\tdaemon\n{% for frontend in %}\n")
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run"],
        env={**daemon_env, "HAPROXY_TEMPLATE_FILE": str(template)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"haproxy.template_file is not a valid template: {template}, line 3: " in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(daemon_env["HAPROXY_CONFIG_FILE"])


def test_sighup_refuses_a_template_jinja_cannot_parse_and_keeps_the_old_configuration(
    spawn, daemon_env, tmp_path, run_container, test_image
):
    from sidecar.reconcile.desired import SHIPPED_TEMPLATE

    template = tmp_path / "haproxy.cfg.j2"
    template.write_text("# template v1\n" + SHIPPED_TEMPLATE)
    settings = tmp_path / "sidecar.toml"
    settings.write_text(f'[haproxy]\ntemplate_file = "{template}"\n')
    proc = start(spawn, daemon_env, "--config", str(settings))
    config = tmp_path / "haproxy" / "haproxy.cfg"
    wait_for(lambda: config.exists() and "# template v1" in config.read_text(), what="v1 rendered")

    # A broken template, and another live setting in the same reload: both refused.
    template.write_text("# template v2\n\n{% for frontend in %}\n" + SHIPPED_TEMPLATE)
    settings.write_text(
        f'[sidecar]\nlogging_level = "debug"\n[haproxy]\ntemplate_file = "{template}"\n'
    )
    proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: "SIGHUP: configuration not reloaded" in spawn.log("sidecar"),
        what="the SIGHUP refused",
    )
    log = spawn.log("sidecar")
    assert f"{template}, line 3: " in log
    assert "logging_level is now" not in log
    assert proc.poll() is None
    assert http_request(api_url(daemon_env, "/healthz")).status == 200

    # A change after the refused SIGHUP is still rendered, from the old template.
    name, port = f"hup-{uuid.uuid4().hex[:6]}", 18996
    run_container(
        test_image,
        SERVES_ITS_NAME,
        labels={"ServiceName": name, "ServicePort_80": str(port)},
        publish_all_ports=True,
    )
    wait_for(
        lambda: f"frontend {name}-{port}\n" in config.read_text(),
        what="the new container rendered",
        timeout=30,
    )
    assert config.read_text().startswith("# template v1\n")
    assert http_request(api_url(daemon_env, "/healthz")).status == 200

    # A good SIGHUP still takes both.
    template.write_text("# template v3\n" + SHIPPED_TEMPLATE)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: config.read_text().startswith("# template v3\n"), what="v3 after SIGHUP")
    assert "SIGHUP: sidecar.logging_level is now 'debug'" in spawn.log("sidecar")
    assert proc.poll() is None


def test_a_restarted_daemon_keeps_haproxy_serving_until_it_has_looked(
    spawn, tmp_path, loopback, run_container, test_image
):
    """The HAProxy a daemon left serving is adopted by the next one, which changes nothing
    before it knows what runs: its first look at Docker, and the first check of each
    container (here 1.5 s: an External `sleep 1.5`). A daemon that followed its empty first
    state would drop the frontend until then."""
    env = daemon_environment(
        tmp_path,
        loopback,
        SIDECAR_DISCOVERY="docker",
        SIDECAR_CHECK_INTERVAL="5s",
        SIDECAR_EXTERNAL_CHECKS="true",
    )
    pid_file = tmp_path / "haproxy" / "haproxy.pid"
    second = None
    try:
        first = start(spawn, env, name="first")
        wait_for(lambda: http_request(api_url(env, "/healthz")).status == 200, what="/healthz")
        name, port = f"web-{uuid.uuid4().hex[:6]}", loopback.port()
        labels = {
            "ServiceName": name,
            "ServicePort_80": str(port),
            "HealthCheck": "External",
            "HealthCheckArgs": "sleep 1.5",
        }
        container = run_container(
            test_image, SERVES_ITS_NAME, labels=labels, publish_all_ports=True
        )
        sid = container.id[:12]
        url = f"http://{env['HAPROXY_BIND_IP']}:{port}/"
        wait_for(lambda: served_by(url, 1) == {sid}, what="HAProxy serving it", timeout=30)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        assert served_by(url, 1) == {sid}  # left serving (haproxy.stop_on_exit is off)

        second = start(spawn, env, name="second")
        failures, alive_at, requests = [], None, 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            requests += 1
            try:
                answered = served_by(url, 1)
            except OSError as exc:
                answered = {repr(exc)}
            if answered != {sid}:
                failures.append((round(time.monotonic() - deadline + 30, 2), answered))
            if alive_at is None:
                with contextlib.suppress(OSError, ValueError):
                    if (r := record(env, name, sid)) and r["Status"] == 0:
                        alive_at = time.monotonic()
            elif time.monotonic() > alive_at + 1.0:
                break  # ALIVE in the new daemon's API, and served a second beyond
            time.sleep(0.05)
        assert alive_at is not None, spawn.log("second")
        assert failures == [], f"{len(failures)} of {requests} requests failed: {failures[:5]}"
        assert "HAProxy follows the state from now" in spawn.log("second")
    finally:
        # The daemon first (it would start HAProxy again), then the HAProxy it left serving.
        if second is not None:
            spawn.stop(second)
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)
