"""docker/entrypoint's pure helpers: what the seed's environment becomes for `sidecar run`.

The script has no .py suffix and runs `main` only as `__main__`: it is loaded as a module of
its own here, nothing of it runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import signal
from pathlib import Path
from types import ModuleType

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint"


def load_entrypoint() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("sidecar_entrypoint", str(ENTRYPOINT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


entrypoint = load_entrypoint()


# ---------------------------------------------------------------- SIDECAR_SEEDS


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        pytest.param("a, b c", ["a", "b", "c"], id="commas-and-spaces"),
        pytest.param("seed1 host2 seed3", ["seed1", "host2", "seed3"], id="the-seeds-example"),
        pytest.param("127.0.0.1", ["127.0.0.1"], id="one"),
        pytest.param(" ,a,,b\t\nc , ", ["a", "b", "c"], id="stray-separators"),
        pytest.param("", [], id="empty"),
        pytest.param("  , ", [], id="separators-only"),
    ],
)
def test_each_seed_becomes_one_cluster_ip_flag(seeds: str, expected: list[str]) -> None:
    flags = entrypoint.seed_flags(seeds)
    assert flags == [word for seed in expected for word in ("--cluster-ip", seed)]


# ---------------------------------------------------------------- ADVERTISE_IP


def test_advertise_ip_becomes_the_flag() -> None:
    assert entrypoint.advertise_flags({"ADVERTISE_IP": "10.0.0.5"}) == [
        "--advertise-ip",
        "10.0.0.5",
    ]


def test_sidecar_advertise_ip_wins_over_advertise_ip() -> None:
    # The daemon reads SIDECAR_ADVERTISE_IP itself: no flag, which would override it.
    env = {"ADVERTISE_IP": "10.0.0.5", "SIDECAR_ADVERTISE_IP": "10.0.0.6"}
    assert entrypoint.advertise_flags(env) == []


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="unset"),
        pytest.param({"ADVERTISE_IP": ""}, id="empty"),
        pytest.param({"ADVERTISE_IP": "  "}, id="blank"),
    ],
)
def test_no_advertise_ip_no_flag(env: dict[str, str]) -> None:
    assert entrypoint.advertise_flags(env) == []


def test_a_blank_sidecar_advertise_ip_leaves_advertise_ip_in_charge() -> None:
    env = {"ADVERTISE_IP": " 10.0.0.5 ", "SIDECAR_ADVERTISE_IP": " "}
    assert entrypoint.advertise_flags(env) == ["--advertise-ip", "10.0.0.5"]


# ---------------------------------------------------------------- DOCKER_HOST / DOCKER_URL


def test_docker_host_alone_makes_docker_url_empty() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1"}
    assert entrypoint.docker_environment(env) == {**env, "DOCKER_URL": ""}


@pytest.mark.parametrize(
    "docker_url",
    [
        pytest.param("tcp://10.0.0.7:2375", id="a-url"),
        pytest.param("", id="already-empty"),
    ],
)
def test_an_explicit_docker_url_is_kept(docker_url: str) -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_URL": docker_url}
    assert entrypoint.docker_environment(env) == env


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="neither"),
        pytest.param({"DOCKER_HOST": ""}, id="empty-host"),
        pytest.param({"DOCKER_HOST": "  "}, id="blank-host"),
    ],
)
def test_without_docker_host_the_socket_default_stays(env: dict[str, str]) -> None:
    assert "DOCKER_URL" not in entrypoint.docker_environment(env)


def test_docker_environment_leaves_its_argument_alone() -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.5:2376"}
    entrypoint.docker_environment(env)
    assert env == {"DOCKER_HOST": "tcp://10.0.0.5:2376"}


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize("code", [0, 1, 2, 255])
def test_an_exit_is_its_code(code: int) -> None:
    assert entrypoint.exit_code(code << 8) == code  # a wait status: the code in the high byte


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGKILL, 137), (signal.SIGTERM, 143), (signal.SIGINT, 130)],
)
def test_a_death_by_signal_is_128_plus_its_number(signum: int, expected: int) -> None:
    assert entrypoint.exit_code(int(signum)) == expected  # a wait status: the signal, low bits
