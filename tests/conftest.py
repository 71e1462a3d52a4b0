"""Test-wide set-up: hypothesis profiles, and the markers that need a real component.

Hypothesis profiles: `dev` (default), `ci`, `nightly`. The environment variable
`SIDECAR_HYPOTHESIS_PROFILE` picks one; pytest's own `--hypothesis-profile` wins over it.

Markers `docker`, `haproxy`, `netns`, `cluster` and `browser` say that a test needs a real
component.
Such a test is skipped, with the reason, when its component is missing, except when the
comma-separated environment variable `SIDECAR_REQUIRE` names the component (CI sets
`docker,haproxy,netns,cluster,browser`): then a missing component is an error of that test,
never a skip.
Each component is detected once per session, the first time a test asks for it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from typing import NoReturn

import pytest
from hypothesis import settings

# ---------------------------------------------------------------- hypothesis profiles

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=300, deadline=None, print_blob=True, derandomize=False)
settings.register_profile("nightly", max_examples=5000, deadline=None)

PROFILES = ("dev", "ci", "nightly")
PROFILE_ENV = "SIDECAR_HYPOTHESIS_PROFILE"

# ---------------------------------------------------------------- components

COMPONENTS = ("docker", "haproxy", "netns", "cluster", "browser")
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright drives it (no browser download here)
REQUIRE_ENV = "SIDECAR_REQUIRE"
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Availability:
    """Whether a component can be used here, and what was found (or what went wrong)."""

    ok: bool
    detail: str


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _ping_docker_socket(path: str) -> Availability:
    """The engine's answer to GET /_ping on its Unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while len(reply) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return Availability(ok=False, detail=f"{path}: {exc}")
    status = reply.split(b"\r\n", 1)[0].decode("latin-1")
    if status.startswith("HTTP/1.") and status.split()[1:2] == ["200"]:
        return Availability(ok=True, detail=f"{path} answers /_ping")
    return Availability(ok=False, detail=f"{path}: /_ping answered {status!r}")


def _detect_docker() -> Availability:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        found = _ping_docker_socket(host.removeprefix("unix://"))
        if found.ok:
            return found
        why = found.detail
    else:
        why = f"DOCKER_HOST={host}"
    docker = shutil.which("docker")
    if docker is None:
        return Availability(ok=False, detail=f"{why}; no docker client on PATH")
    try:
        info = _run([docker, "info", "--format", "{{.ServerVersion}}"])
    except subprocess.TimeoutExpired:
        return Availability(ok=False, detail=f"{why}; `docker info` timed out")
    if info.returncode == 0 and info.stdout.strip():
        return Availability(ok=True, detail=f"engine {info.stdout.strip()}")
    return Availability(
        ok=False, detail=f"{why}; `docker info`: {_first_line(info.stderr or info.stdout)}"
    )


def _detect_haproxy() -> Availability:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        return Availability(ok=False, detail="no haproxy on PATH")
    try:
        version = _run([haproxy, "-v"])
    except subprocess.TimeoutExpired:
        return Availability(ok=False, detail=f"`{haproxy} -v` timed out")
    line = _first_line(version.stdout)
    if version.returncode == 0 and "HAProxy version" in line:
        return Availability(ok=True, detail=line)
    return Availability(
        ok=False, detail=f"`{haproxy} -v` exited {version.returncode}: {line or version.stderr}"
    )


def _detect_netns() -> Availability:
    if os.geteuid() != 0:
        return Availability(ok=False, detail="not root")
    ip = shutil.which("ip")
    if ip is None:
        return Availability(ok=False, detail="no `ip` (iproute2) on PATH")
    name = f"sc-test-probe-{uuid.uuid4().hex[:8]}"
    try:
        made = _run([ip, "netns", "add", name])
        if made.returncode != 0:
            return Availability(ok=False, detail=f"`ip netns add`: {made.stderr.strip()}")
        try:
            lo = _run([ip, "-n", name, "link", "set", "lo", "up"])
        finally:
            _run([ip, "netns", "delete", name])
    except subprocess.TimeoutExpired as exc:
        return Availability(ok=False, detail=f"`{' '.join(exc.cmd)}` timed out")
    if lo.returncode != 0:
        return Availability(ok=False, detail=f"`ip -n NS link set lo up`: {lo.stderr.strip()}")
    return Availability(ok=True, detail="root, `ip netns add` works")


def _detect_browser() -> Availability:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        return Availability(ok=False, detail=f"Playwright is not installed ({exc})")
    if not os.access(CHROMIUM, os.X_OK):
        return Availability(ok=False, detail=f"no Chromium at {CHROMIUM} (Debian `chromium`)")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"], timeout=PROBE_TIMEOUT * 1000
            )
            version = browser.version
            browser.close()
    except Exception as exc:  # any failure to start it means: no usable browser
        return Availability(ok=False, detail=f"Chromium does not start: {_first_line(str(exc))}")
    return Availability(ok=True, detail=f"Chromium {version} through Playwright")


_DETECTORS = {
    "docker": _detect_docker,
    "haproxy": _detect_haproxy,
    "netns": _detect_netns,
    "cluster": _detect_netns,  # several daemons in namespaces of their own
    "browser": _detect_browser,
}


_detected: dict[str, Availability] = {}


def component(name: str) -> Availability:
    """Whether component `name` is usable; detected once per session."""
    if name not in _detected:
        _detected[name] = _DETECTORS[name]()
    return _detected[name]


def required_components() -> frozenset[str]:
    """The components that `SIDECAR_REQUIRE` names."""
    raw = os.environ.get(REQUIRE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def missing(name: str, why: str) -> NoReturn:
    """End a test that found part of component `name` missing: a failure when
    `SIDECAR_REQUIRE` names it (CI must have it), else a skip saying why."""
    if name in required_components():
        pytest.fail(f"{REQUIRE_ENV} names {name!r} but {why}", pytrace=False)
    pytest.skip(f"{why} ({REQUIRE_ENV}={name} makes it fail)")


# ---------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    unknown = sorted(required_components() - set(COMPONENTS))
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_ENV} names unknown components {unknown}; known: {', '.join(COMPONENTS)}"
        )
    if config.getoption("hypothesis_profile", default=None) is None:
        profile = os.environ.get(PROFILE_ENV) or "dev"
        if profile not in PROFILES:
            raise pytest.UsageError(f"{PROFILE_ENV}={profile!r}; expected one of {PROFILES}")
        settings.load_profile(profile)


def pytest_report_header(config: pytest.Config) -> list[str]:
    profile = settings.get_current_profile_name()
    required = ",".join(sorted(required_components())) or "(none)"
    return [f"sidecar: hypothesis profile {profile}, {REQUIRE_ENV}={required}"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, when required, fail) a test whose component is missing, before its fixtures."""
    required = required_components()
    for name in COMPONENTS:
        if item.get_closest_marker(name) is None:
            continue
        found = component(name)
        if found.ok:
            continue
        if name in required:
            pytest.fail(
                f"{REQUIRE_ENV} names {name!r} but it is not available here: {found.detail}",
                pytrace=False,
            )
        pytest.skip(f"{name} not available: {found.detail} ({REQUIRE_ENV}={name} makes it fail)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the components this session looked for, and what it found."""
    if not _detected:
        return
    terminalreporter.section("sidecar components")
    for name, found in _detected.items():
        state = "ok" if found.ok else "MISSING"
        terminalreporter.write_line(f"{name}: {state} ({found.detail})")
