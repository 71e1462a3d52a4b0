"""The HTTP API's trust rule: who may drain (loopback peers, or the API token)."""

from __future__ import annotations

import pytest

from sidecar.adapters import http


@pytest.mark.parametrize(
    "peer",
    ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "::ffff:127.0.0.1"],
)
def test_loopback_peers_may_drain_without_a_token(peer: str) -> None:
    assert http.is_trusted(peer, None, "")
    assert not http.is_trusted(peer, None, "", trust_loopback=False)


@pytest.mark.parametrize(
    "peer",
    ["10.0.0.5", "192.168.168.168", "0.0.0.0", "::", "fe80::1%eth0", "::ffff:10.0.0.1", "", None],
)
def test_other_peers_need_the_token(peer: str | None) -> None:
    assert not http.is_trusted(peer, None, "s3cret")
    assert not http.is_trusted(peer, "Bearer wrong", "s3cret")
    assert not http.is_trusted(peer, "Bearer s3cret-and-more", "s3cret")
    assert not http.is_trusted(peer, "Basic s3cret", "s3cret")
    assert not http.is_trusted(peer, "s3cret", "s3cret")
    assert http.is_trusted(peer, "Bearer s3cret", "s3cret")
    assert http.is_trusted(peer, "bearer  s3cret ", "s3cret")


def test_an_empty_configured_token_never_matches() -> None:
    assert not http.is_trusted("10.0.0.5", "Bearer ", "")
    assert not http.is_trusted("10.0.0.5", "Bearer", "")
