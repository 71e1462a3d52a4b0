"""An Engine over TCP with TLS, for real: `DOCKER_URL=` (empty) and the Docker environment
(`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`), as Go's README documents.

A Docker Engine of the test's own (tests/integration/inner_engine.py) runs in a network
namespace the test makes, listening on its Unix socket (the test's own door) and on
`tcp://ENGINE_IP:2376` with `--tlsverify`: ENGINE_IP exists only on that namespace's `lo`.
The CA, the server certificate (SAN: ENGINE_IP) and the client certificates are made by
`openssl` for this run, valid for a day, in a temporary directory; a second CA signs the
certificates the Engine must refuse. A `sidecar run` daemon runs inside the namespace
(`nsenter --net`), HAProxy disabled (this is about discovery), and its API is read from
inside the namespace too.

1. With the right certificates, the daemon discovers a labelled container of that Engine.
2. Without the TLS options, with a client certificate of another CA, or with another CA to
   check the server against, it does not reach the Engine: it logs "Docker Engine
   unreachable" and discovers nothing (the options are really used, and really checked).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from docker.errors import DockerException

from .conftest import NETNS_PREFIX, REPO, Netns, daemon_environment, wait_for
from .inner_engine import InnerEngine, get_in_namespace, running_engine

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .conftest import Loopback, Processes

pytestmark = [pytest.mark.docker, pytest.mark.netns]

BRIDGE = "10.214.0.1/24"  # the inner engine's docker0; nothing outside the namespace has it
ENGINE_IP = "10.214.1.1"  # on the namespace's lo only: where the Engine listens with TLS
TLS_PORT = 2376
ALIVE = 0
CERT_DAYS = "1"


# ---------------------------------------------------------------- certificates


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, (args, done.stderr)


def make_ca(directory: Path, name: str) -> Path:
    """Return `directory` with a fresh self-signed CA in it: ca.pem and ca-key.pem."""
    directory.mkdir(parents=True)
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", CERT_DAYS, "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory


def make_cert(ca: Path, directory: Path, name: str, extensions: str) -> None:
    """Write `name`-key.pem and `name`-cert.pem into `directory`, signed by the CA in `ca`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca / "ca.pem"),
        "-CAkey", str(ca / "ca-key.pem"), "-CAcreateserial", "-days", CERT_DAYS,
        "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem",
        cwd=directory,
    )  # fmt: skip


def cert_path(directory: Path, *, ca: Path, cert: Path, key: Path) -> Path:
    """Return `directory` laid out as `DOCKER_CERT_PATH` wants it: ca.pem, cert.pem, key.pem."""
    directory.mkdir()
    for name, source in (("ca.pem", ca), ("cert.pem", cert), ("key.pem", key)):
        (directory / name).write_bytes(source.read_bytes())
    return directory


SERVER_EXT = f"subjectAltName=IP:{ENGINE_IP}\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Engine's files and one `DOCKER_CERT_PATH` per client: the right one (`client`), one
    whose certificate another CA signed (`stranger`), one that trusts another CA (`wary`)."""
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca", "sidecar-test-ca")
    other = make_ca(root / "other-ca", "sidecar-test-other-ca")
    make_cert(ca, root / "made", "server", SERVER_EXT)
    make_cert(ca, root / "made", "client", CLIENT_EXT)
    make_cert(other, root / "made", "stranger", CLIENT_EXT)
    made = root / "made"
    client = {"cert": made / "client-cert.pem", "key": made / "client-key.pem"}
    stranger = {"cert": made / "stranger-cert.pem", "key": made / "stranger-key.pem"}
    return {
        "ca": ca / "ca.pem",
        "server-cert": made / "server-cert.pem",
        "server-key": made / "server-key.pem",
        "client": cert_path(root / "client", ca=ca / "ca.pem", **client),
        "stranger": cert_path(root / "stranger", ca=ca / "ca.pem", **stranger),
        "wary": cert_path(root / "wary", ca=other / "ca.pem", **client),
    }


# ---------------------------------------------------------------- the engine


@pytest.fixture(scope="module")
def tls_engine(
    tmp_path_factory: pytest.TempPathFactory, test_image: str, pki: dict[str, Path]
) -> Iterator[InnerEngine]:
    """An Engine in a namespace of its own, on its socket and on TLS at ENGINE_IP:2376, with
    the test image loaded; the namespace, the Engine and all it made go at the end."""
    log_dir = tmp_path_factory.mktemp("tls-engine")
    ns = Netns(f"{NETNS_PREFIX}{uuid.uuid4().hex[:10]}", log_dir)
    subprocess.run(["ip", "netns", "add", ns.name], capture_output=True, timeout=15, check=True)
    try:
        ns.ip("link", "set", "lo", "up")
        ns.ip("addr", "add", f"{ENGINE_IP}/32", "dev", "lo")
        tls = [
            "--tlsverify",
            "--tlscacert", str(pki["ca"]),
            "--tlscert", str(pki["server-cert"]),
            "--tlskey", str(pki["server-key"]),
            "--host", f"tcp://{ENGINE_IP}:{TLS_PORT}",
        ]  # fmt: skip
        with running_engine(ns, log_dir / "dockerd.log", bridge=BRIDGE, extra_args=tls) as engine:
            engine.load(test_image)
            yield engine
    finally:
        ns.delete()


@pytest.fixture
def labelled_service(tls_engine: InnerEngine, test_image: str) -> Iterator[tuple[str, str]]:
    """A labelled container of the inner engine (its httpd answers /version): (name, id)."""
    name = f"tls-{uuid.uuid4().hex[:6]}"
    container = tls_engine.run(
        test_image, labels={"ServiceName": name, "ServicePort_80": "8080"}, publish_all_ports=True
    )
    try:
        yield name, container.id[:12]
    finally:
        with contextlib.suppress(DockerException):
            container.remove(force=True)


# ---------------------------------------------------------------- the daemon


# Where `requests` finds a CA bundle in the environment, it prefers it to the client's: the
# Docker SDK's ca.pem from DOCKER_CERT_PATH is then ignored (docker/docker-py#2433). The
# daemons here run without them; test_a_ca_bundle_in_the_environment_... shows the bug.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def start_daemon(
    spawn: Processes, engine: InnerEngine, tmp_path: Path, loopback: Loopback, **settings: str
) -> dict[str, str]:
    """Start `sidecar run` inside the engine's namespace, HAProxy disabled, without our DOCKER_*
    and CA bundle variables, `settings` on top; return its environment."""
    base = daemon_environment(
        tmp_path, loopback, SIDECAR_DISCOVERY="docker", HAPROXY_DISABLE="true"
    )
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith("DOCKER_") and k not in CA_BUNDLE_VARIABLES
    }
    env.update(settings)
    command = [sys.executable, "-m", "sidecar", "run"]
    spawn.start(
        ["nsenter", f"--net={engine.netns_path}", *command], name="sidecar", env=env, cwd=REPO
    )
    return env


def api_status(engine: InnerEngine, env: dict[str, str], path: str) -> int:
    host, port = env["SIDECAR_HTTP_ADDRESS"].rsplit(":", 1)
    return get_in_namespace(engine, host, int(port), path)[0]


def services(engine: InnerEngine, env: dict[str, str]) -> dict[str, Any]:
    host, port = env["SIDECAR_HTTP_ADDRESS"].rsplit(":", 1)
    status, body = get_in_namespace(engine, host, int(port), "/api/services.json")
    assert status == 200, (status, body)
    return dict(json.loads(body)["Services"])


def record(engine: InnerEngine, env: dict[str, str], name: str, sid: str) -> dict[str, Any] | None:
    return next((r for r in services(engine, env).get(name, []) if r["ID"] == sid), None)


def engine_refusals(engine: InnerEngine) -> int:
    """Return how many client certificates the Engine has refused so far (its log says)."""
    return engine.log.read_text(errors="replace").count("failed to verify client certificate")


def tls_environment(cert_dir: Path) -> dict[str, str]:
    return {
        "DOCKER_URL": "",
        "DOCKER_HOST": f"tcp://{ENGINE_IP}:{TLS_PORT}",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(cert_dir),
    }


def test_the_daemon_discovers_through_the_docker_environment_over_tls(
    tls_engine: InnerEngine,
    labelled_service: tuple[str, str],
    pki: dict[str, Path],
    spawn: Processes,
    tmp_path: Path,
    loopback: Loopback,
) -> None:
    name, sid = labelled_service
    env = start_daemon(spawn, tls_engine, tmp_path, loopback, **tls_environment(pki["client"]))
    found = wait_for(
        lambda: (r := record(tls_engine, env, name, sid)) and r["Status"] == ALIVE and r,
        what=f"{name} ({sid}) ALIVE, discovered over TLS",
        timeout=45,
        ignore=(OSError, AssertionError),
    )
    assert 8080 in [p["ServicePort"] for p in found["Ports"]], found
    assert "Docker Engine unreachable" not in spawn.log("sidecar"), spawn.log("sidecar")


@pytest.mark.parametrize(
    ("client", "why", "cause"),
    [
        pytest.param(
            None,
            "plain HTTP to the TLS port",
            ("Client sent an HTTP request to an HTTPS server",),
            id="without-tls-options",
        ),
        pytest.param(
            "stranger",
            "the Engine refuses a client of another CA",
            # TLS 1.3: the client may finish its handshake before the Engine's alert arrives;
            # it then sees the connection closed. The Engine's log says why (checked below).
            ("BAD_CERTIFICATE", "EOF occurred in violation of protocol"),
            id="foreign-client",
        ),
        pytest.param(
            "wary",
            "the client does not trust the Engine's CA",
            ("CERTIFICATE_VERIFY_FAILED",),
            id="foreign-ca",
        ),
    ],
)
def test_without_the_right_tls_options_the_engine_is_not_reached(
    tls_engine: InnerEngine,
    labelled_service: tuple[str, str],
    pki: dict[str, Path],
    spawn: Processes,
    tmp_path: Path,
    loopback: Loopback,
    client: str | None,
    why: str,
    cause: tuple[str, ...],
) -> None:
    name, _ = labelled_service
    if client is None:
        docker = {"DOCKER_URL": "", "DOCKER_HOST": f"tcp://{ENGINE_IP}:{TLS_PORT}"}
    else:
        docker = tls_environment(pki[client])
    refused_clients = engine_refusals(tls_engine)
    env = start_daemon(spawn, tls_engine, tmp_path, loopback, **docker)
    wait_for(
        lambda: "Docker Engine unreachable" in spawn.log("sidecar"),
        what=f"the daemon finding the Engine unreachable ({why})",
        timeout=45,
    )
    # It runs (its API answers), and what it serves holds nothing of that Engine.
    wait_for(lambda: api_status(tls_engine, env, "/healthz") == 200, what="/healthz", timeout=30)
    listed = services(tls_engine, env)
    assert name not in listed, listed
    log = spawn.log("sidecar")
    unreachable = [line for line in log.splitlines() if "Docker Engine unreachable" in line]
    assert any(words in unreachable[0] for words in cause), unreachable  # used, and refused
    assert "reachable again" not in log, log
    if client == "stranger":
        wait_for(
            lambda: engine_refusals(tls_engine) > refused_clients,
            what="the Engine's log of the refused client certificate",
        )


def test_a_ca_bundle_in_the_environment_does_not_replace_the_engines_ca(
    tls_engine: InnerEngine,
    labelled_service: tuple[str, str],
    pki: dict[str, Path],
    spawn: Processes,
    tmp_path: Path,
    loopback: Loopback,
) -> None:
    # Go's client checks the Engine against DOCKER_CERT_PATH's ca.pem whatever else is set;
    # a host-wide bundle for other HTTPS clients (common behind a corporate proxy) must not
    # make the Engine unreachable.
    name, sid = labelled_service
    bundle = {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    env = start_daemon(
        spawn, tls_engine, tmp_path, loopback, **tls_environment(pki["client"]), **bundle
    )
    wait_for(
        lambda: (r := record(tls_engine, env, name, sid)) and r["Status"] == ALIVE,
        what=f"{name} ({sid}) ALIVE with REQUESTS_CA_BUNDLE set",
        timeout=20,
        ignore=(OSError, AssertionError),
    )
