"""The sidecar IMAGE against an Engine over TCP with TLS, without the socket mount: what
docker/README.md ("An Engine without the socket") tells a user to do, for real.

The Engine is test_docker_tls's (`tls_engine`): a Docker Engine of the test's own in a network
namespace the test makes, listening with `--tlsverify` on `tcp://ENGINE_IP:2376` (ENGINE_IP
exists only on that namespace's `lo`), its certificates made by `openssl` for this run
(`pki`). The sidecar image is copied into it once (`docker save | docker load`, the slow
part) and runs on it as docker/run runs it, but without `-v /var/run/docker.sock...`:
host networking (the namespace's), SidecarDiscover=false, NET_ADMIN, SIDECAR_SEEDS=127.0.0.1,
and the Docker environment `DOCKER_HOST=tcp://ENGINE_IP:2376 DOCKER_TLS_VERIFY=1
DOCKER_CERT_PATH=/certs` with a client certificate directory mounted read-only at /certs.
Nothing sets `DOCKER_URL`: the entrypoint sets it empty, as the README says. HAProxy runs as
the image runs it: the entrypoint adds 192.168.168.168 to the namespace's `lo` and HAProxy
serves there. The image's API (0.0.0.0:7777) is read at ENGINE_IP from inside the namespace.

1. With the right client certificate, a labelled container of that Engine becomes ALIVE in
   the image's /api/services.json and HAProxy serves it; the sidecar container itself is not
   discovered.
2. With a client certificate another CA signed, or with DOCKER_HOST alone (no TLS options, no
   certificates), the container logs "Docker Engine unreachable" for the reason the options
   give, and discovers nothing: the options are really used inside the image.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
from docker.errors import DockerException

from .conftest import wait_for
from .inner_engine import InnerEngine, get_in_namespace
from .test_docker_tls import (
    ALIVE,
    ENGINE_IP,
    TLS_PORT,
    api_status,
    engine_refusals,
    labelled_service,  # noqa: F401 -- fixture: a labelled busybox container of tls_engine
    pki,  # noqa: F401 -- fixture: the CA, the Engine's and the clients' certificates
    record,
    services,
    tls_engine,  # noqa: F401 -- fixture: the Engine in its namespace, TLS on ENGINE_IP:2376
)
from .test_image import IMAGE as SIDECAR_IMAGE
from .test_image import sidecar_image  # noqa: F401 -- the session fixture that builds SIDECAR_IMAGE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from docker.models.containers import Container

pytestmark = [pytest.mark.docker, pytest.mark.netns]

HAPROXY_IP = "192.168.168.168"  # the image's bind IP: added to the namespace's lo only
CERT_PATH = "/certs"  # DOCKER_CERT_PATH inside the container
# The image's http_address is 0.0.0.0:7777, the namespace's; test_docker_tls's readers
# (`services`, `record`, `api_status`) take the address from this key.
API = {"SIDECAR_HTTP_ADDRESS": f"{ENGINE_IP}:7777"}


@pytest.fixture(scope="module")
def engine(tls_engine: InnerEngine, sidecar_image: str) -> InnerEngine:  # noqa: F811
    """The TLS Engine with the sidecar image loaded too (once for the module)."""
    took = tls_engine.load(sidecar_image)
    print(f"{sidecar_image} loaded into the TLS engine in {took:.1f}s")
    return tls_engine


@pytest.fixture
def run_image(engine: InnerEngine) -> Iterator[Callable[..., Container]]:
    """Factory: the sidecar image on the TLS engine as docker/run runs it without the socket;
    `environment` is added to docker/run's, `certs` mounted read-only at CERT_PATH. Each
    container is removed at teardown (the API's port is the namespace's: one at a time)."""
    made: list[Container] = []

    def run(environment: dict[str, str], certs: Path | None = None) -> Container:
        container = engine.run(
            SIDECAR_IMAGE,
            labels={"SidecarDiscover": "false"},
            environment={"SIDECAR_SEEDS": "127.0.0.1", **environment},
            network_mode="host",
            cap_add=["NET_ADMIN"],
            volumes={str(certs): {"bind": CERT_PATH, "mode": "ro"}} if certs else None,
        )
        made.append(container)
        return container

    try:
        yield run
    finally:
        for container in reversed(made):
            with contextlib.suppress(DockerException):
                container.remove(force=True)


def logs(container: Container) -> str:
    return container.logs().decode(errors="replace")


def docker_environment(*, tls: bool) -> dict[str, str]:
    """Return the Docker environment docker/README.md gives (without DOCKER_URL), with or
    without the TLS options."""
    env = {"DOCKER_HOST": f"tcp://{ENGINE_IP}:{TLS_PORT}"}
    if tls:
        env |= {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": CERT_PATH}
    return env


def served_by_haproxy(engine: InnerEngine) -> bool:
    status, body = get_in_namespace(engine, HAPROXY_IP, 8080, "/")
    return status == 200 and b"sidecar-test-busybox" in body


def test_the_image_discovers_over_tls_without_the_socket(
    engine: InnerEngine,
    labelled_service: tuple[str, str],  # noqa: F811
    pki: dict[str, Path],  # noqa: F811
    run_image: Callable[..., Container],
) -> None:
    name, sid = labelled_service
    t0 = time.monotonic()
    sidecar = run_image(docker_environment(tls=True), certs=pki["client"])
    found: dict[str, Any] = wait_for(
        lambda: (r := record(engine, API, name, sid)) and r["Status"] == ALIVE and r,
        what=f"{name} ({sid}) ALIVE in the image's API, discovered over TLS",
        timeout=45,
        ignore=(OSError, AssertionError),
    )
    print(f"docker run -> the service ALIVE: {time.monotonic() - t0:.1f}s")
    assert 8080 in [p["ServicePort"] for p in found["Ports"]], found
    # The sidecar container itself (SidecarDiscover=false) is not discovered.
    ids = {r["ID"] for records in services(engine, API).values() for r in records}
    assert sidecar.id[:12] not in ids, ids
    # HAProxy, as the image runs it, serves the service on the namespace's 192.168.168.168.
    wait_for(lambda: served_by_haproxy(engine), what="HAProxy serving 8080", timeout=30)
    text = logs(sidecar)
    assert f"added {HAPROXY_IP}/32 to lo" in text, text
    assert "Docker Engine unreachable" not in text, text
    # docker/run's seed, 127.0.0.1, is this host: a cluster of one at once, no join retried.
    assert "no seed but this host: a cluster of one" in text, text
    assert "could not join" not in text, text


@pytest.mark.parametrize(
    ("client", "cause"),
    [
        pytest.param(
            None, ("Client sent an HTTP request to an HTTPS server",), id="without-tls-options"
        ),
        pytest.param(
            "stranger",
            # TLS 1.3: the client may finish its handshake before the Engine's alert arrives;
            # it then sees the connection closed. The Engine's log says why (checked below).
            ("BAD_CERTIFICATE", "EOF occurred in violation of protocol"),
            id="client-of-another-ca",
        ),
    ],
)
def test_the_image_without_the_right_tls_options_does_not_reach_the_engine(
    engine: InnerEngine,
    labelled_service: tuple[str, str],  # noqa: F811
    pki: dict[str, Path],  # noqa: F811
    run_image: Callable[..., Container],
    client: str | None,
    cause: tuple[str, ...],
) -> None:
    name, sid = labelled_service
    refused_clients = engine_refusals(engine)
    if client is None:
        sidecar = run_image(docker_environment(tls=False))
    else:
        sidecar = run_image(docker_environment(tls=True), certs=pki[client])
    wait_for(
        lambda: "Docker Engine unreachable" in logs(sidecar),
        what=f"the image finding the Engine unreachable ({client or 'no TLS options'})",
        timeout=45,
    )
    # It runs (its API answers), and what it serves holds nothing of that Engine.
    wait_for(lambda: api_status(engine, API, "/healthz") == 200, what="/healthz", timeout=30)
    assert services(engine, API) == {}, services(engine, API)
    assert record(engine, API, name, sid) is None
    text = logs(sidecar)
    unreachable = [line for line in text.splitlines() if "Docker Engine unreachable" in line]
    assert any(words in unreachable[0] for words in cause), unreachable  # used, and refused
    assert "reachable again" not in text, text
    if client is not None:
        wait_for(
            lambda: engine_refusals(engine) > refused_clients,
            what="the Engine's log of the refused client certificate",
        )
