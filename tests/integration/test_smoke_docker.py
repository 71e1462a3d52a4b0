"""The harness reaches a real Docker Engine: a container of the local test image serves HTTP."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.docker


def published_port(container, private: str) -> int:
    """The host port Docker published for `private` (e.g. "80/tcp") on 0.0.0.0."""
    bindings = container.attrs["NetworkSettings"]["Ports"][private]
    assert bindings, f"{private} is not published: {container.attrs['NetworkSettings']['Ports']}"
    ports = {int(b["HostPort"]) for b in bindings if b["HostIp"] in ("0.0.0.0", "")}
    assert len(ports) == 1, bindings
    return ports.pop()


def test_a_container_of_the_test_image_answers_on_its_published_port(
    run_container, wait_until, http_get
):
    container = run_container(publish_all_ports=True, labels={"ServicePort_80": "8080"})

    assert container.status == "running"
    assert container.labels["sidecar-test"] == "1"
    assert container.labels["ServicePort_80"] == "8080"
    # Both EXPOSEd ports are published by -P, each on its own host port.
    port = published_port(container, "80/tcp")
    assert published_port(container, "443/tcp") != port

    index = wait_until(
        lambda: http_get(f"http://127.0.0.1:{port}/"),
        what=f"the container's httpd on 127.0.0.1:{port}",
        timeout=20,
    )
    assert index.status == 200
    assert b"sidecar-test-busybox" in index.body

    version = http_get(f"http://127.0.0.1:{port}/version")
    assert version.status == 200
    assert version.body.startswith(b"sidecar-test-busybox ")

    missing = http_get(f"http://127.0.0.1:{port}/no-such-page")
    assert missing.status == 404


def test_run_container_labels_its_containers_for_the_cleanup(docker_client, run_container):
    container = run_container(command=["sleep", "30"])

    found = docker_client.containers.list(all=True, filters={"label": "sidecar-test=1"})
    assert container.id in {c.id for c in found}
    assert container.labels["sidecar-test-run"]
    assert container.name.startswith("sc-test-")
    assert container.attrs["Config"]["Image"] == "sidecar-test-busybox:latest"
