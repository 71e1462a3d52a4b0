"""`sidecar run` with static discovery, as a real process with its managed HAProxy: what a
hostile or broken `static.json` does to it.

- a static service whose name carries a line break is refused at discovery: never listed,
  in /api/rejections, and no forged line in the daemon's log;
- identical targets are one record and one HAProxy server, the others reported;
- a file over the size limit is refused without being read, the error is shown in
  /api/rejections and /healthz, the last good services stay; fixing it clears the error.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import REPO, daemon_environment, http_request, wait_for

pytestmark = [pytest.mark.haproxy]

DEFAULT_MAX_SIZE = 4 * 1024 * 1024
FORGED = "listen forged"


@pytest.fixture
def static_env(tmp_path, loopback):
    """The environment of a test daemon with static discovery only, on fresh loopback."""
    return daemon_environment(
        tmp_path,
        loopback,
        SIDECAR_DISCOVERY="static",
        STATIC_CONFIG_FILE=str(tmp_path / "static.json"),
        HAPROXY_STOP_ON_EXIT="true",
    )


def get(env, path):
    reply = http_request(f"http://{env['SIDECAR_HTTP_ADDRESS']}{path}")
    return reply.status, json.loads(reply.body)


def start(spawn, env):
    return spawn.start([sys.executable, "-m", "sidecar", "run"], name="sidecar", env=env, cwd=REPO)


def listed(env, name):
    """The services document once every record of `name` in it is ALIVE, else None."""
    status, document = get(env, "/api/services.json")
    records = document["Services"].get(name, [])
    if status == 200 and records and all(r["Status"] == 0 for r in records):
        return document
    return None


def target(name: str, port: int, service_port: int) -> dict[str, object]:
    return {
        "Service": {
            "Name": name,
            "Image": "img:1",
            "Ports": [{"Type": "tcp", "Port": port, "ServicePort": service_port}],
        },
        "Check": {"Type": "AlwaysSuccessful"},
    }


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and config tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_line_break_in_a_name_is_refused_and_identical_targets_are_one_server(
    spawn, static_env, loopback
):
    env = static_env
    path = Path(env["STATIC_CONFIG_FILE"])
    name = f"static-{uuid.uuid4().hex[:6]}"
    port, service_port = loopback.port(), loopback.port()
    good = target(name, port, service_port)
    evil = target(f"evil\n{FORGED}", port + 1, service_port + 1)
    good_text = json.dumps([good, good, good, evil])
    write(path, good_text)
    start(spawn, env)
    document = wait_for(
        lambda: listed(env, name), what=f"{name} ALIVE in /api/services.json", timeout=30
    )
    # Three identical targets: one record.
    assert len(document["Services"][name]) == 1
    served_id = document["Services"][name][0]["ID"]
    # The name with a line break is not announced at all.
    assert all("evil" not in service for service in document["Services"])
    status, rejections = get(env, "/api/rejections")
    assert status == 200
    by_stage = sorted((r["stage"], r["name"], r["reason"]) for r in rejections["Rejections"])
    assert by_stage == [
        (
            "discovery",
            f"evil\n{FORGED}",
            f"target 3.Service.Name 'evil\\n{FORGED}' contains a control character or line break",
        ),
        *(
            (
                "discovery",
                name,
                f"target {index} is a duplicate of target 0 (the same Hostname, Name and "
                f"Ports), which is served as ID {served_id}",
            )
            for index in (1, 2)
        ),
    ]

    # One HAProxy server for the one address.
    config = Path(env["HAPROXY_CONFIG_FILE"])
    address = f" 127.0.0.1:{port} "
    wait_for(
        lambda: config.exists() and address in config.read_text(),
        what="the static service in HAProxy's config",
        timeout=30,
    )
    assert config.read_text().count(address) == 1
    log = spawn.log("sidecar")
    assert not [line for line in log.splitlines() if line.startswith(FORGED)], log


@pytest.mark.parametrize("configured", [None, 4096], ids=["default-limit", "configured-limit"])
def test_a_static_file_over_the_limit_is_refused_visibly_and_the_last_good_services_stay(
    spawn, static_env, loopback, configured
):
    env = static_env if configured is None else {**static_env, "STATIC_MAX_SIZE": str(configured)}
    limit = configured or DEFAULT_MAX_SIZE
    size = limit + 1024 * 1024 if configured is None else 2 * limit
    path = Path(env["STATIC_CONFIG_FILE"])
    name = f"static-{uuid.uuid4().hex[:6]}"
    good_text = json.dumps([target(name, loopback.port(), loopback.port())])
    write(path, good_text)
    start(spawn, env)
    document = wait_for(
        lambda: listed(env, name), what=f"{name} ALIVE in /api/services.json", timeout=30
    )
    served_id = document["Services"][name][0]["ID"]
    status, health = get(env, "/healthz")
    assert (status, health["static_error"]) == (200, None)

    # A file over the limit: refused (its size, the limit and the file named), visible in
    # /api/rejections and /healthz, and the last good services are still served.
    big = path.with_suffix(".big")
    with big.open("wb") as file:
        file.truncate(size)  # sparse: costs no disk
    os.replace(big, path)
    expected = (
        f"{path} is {size} bytes, more than the limit of "
        f"{limit} bytes (static_discovery.max_size); "
        "keeping the last good static services"
    )

    def static_rejection():
        return [r for r in get(env, "/api/rejections")[1]["Rejections"] if r["stage"] == "static"]

    shown = wait_for(static_rejection, what="the static file's error in /api/rejections")
    assert shown == [
        {
            "stage": "static",
            "hostname": env["SIDECAR_HOSTNAME"],
            "id": "",
            "name": "",
            "file": str(path),
            "reason": expected,
        }
    ]
    status, health = get(env, "/healthz")
    assert (status, health["status"], health["static_error"]) == (200, "ok", expected)
    status, document = get(env, "/api/services.json")
    assert [(r["ID"], r["Status"]) for r in document["Services"][name]] == [(served_id, 0)]

    # Fixed: the error goes from both.
    write(path, good_text)
    wait_for(lambda: not static_rejection(), what="the static error gone from /api/rejections")
    status, health = get(env, "/healthz")
    assert (status, health["static_error"]) == (200, None)
