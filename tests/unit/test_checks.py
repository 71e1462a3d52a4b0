"""The health checks that touch nothing outside the process: address parsing, the check
that always succeeds, and Docker's own health verdict. (Checks of real endpoints and
processes are integration tests: tests/integration/test_checks.py.)"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.adapters.checks import CheckOutcome, run_check, split_host_port
from sidecar.state.discovery import CheckSpec, CheckType


def test_split_host_port_reads_ipv4_names_and_bracketed_ipv6() -> None:
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("example.com:8080") == ("example.com", 8080)
    assert split_host_port("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="::1"):
        split_host_port("[::1]")


def check(spec: CheckSpec, docker_health: str | None = None) -> CheckOutcome:
    # Neither kind makes a request: no session is needed.
    outcome = run_check(spec, timeout=1.0, session=None, docker_health=docker_health)  # type: ignore[arg-type]
    return asyncio.run(asyncio.wait_for(outcome, 5))


def test_always_successful_and_docker_health() -> None:
    docker = CheckSpec(CheckType.DOCKER, "")
    assert check(CheckSpec(CheckType.ALWAYS_SUCCESSFUL, "")).healthy is True
    assert check(docker, docker_health="healthy").healthy is True
    assert check(docker, docker_health="unhealthy").healthy is False
    assert check(docker, docker_health="starting").healthy is None
    assert check(docker, docker_health=None).healthy is None
