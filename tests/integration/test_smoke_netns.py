"""The harness makes real network namespaces: an address bound on `lo` inside one serves HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

ADDRESS = "192.168.168.168"

FETCH = """\
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(sys.argv[1], timeout=3) as reply:
    sys.stdout.write(f"{reply.status} {reply.read().decode()}")
"""


def ip_output(*args: str) -> str:
    """What `ip ARGS...` prints, in the test process's own (the host's) namespace."""
    return subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=True, timeout=15
    ).stdout


def link_flags(line: str) -> set[str]:
    """The flags of a link as `ip -o link show` prints them: "1: lo: <LOOPBACK,UP,...>"."""
    return set(line.split("<", 1)[1].split(">", 1)[0].split(","))


def test_an_address_bound_in_a_namespace_serves_there_and_the_namespace_goes(
    netns, tmp_path, wait_until
):
    ns = netns()
    assert ns.name.startswith("sc-test-")
    assert ns.exists()
    assert "UP" in link_flags(ns.ip("-o", "link", "show", "lo").stdout)

    ns.ip("addr", "add", f"{ADDRESS}/32", "dev", "lo")
    assert f"inet {ADDRESS}/32" in ns.ip("addr", "show", "lo").stdout
    # The address exists only inside the namespace (checked without sending it anything).
    assert ADDRESS not in ip_output("addr", "show", "lo")

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text(f"hello from {ns.name}")
    www = str(tmp_path / "www")
    server = ns.start(
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        ADDRESS,
        "--directory",
        www,
        "8080",
        name="http",
    )

    def fetch():
        result = ns.run(
            sys.executable, "-c", FETCH, f"http://{ADDRESS}:8080/hello.txt", check=False
        )
        return result.stdout if result.returncode == 0 else None

    reply = wait_until(fetch, what=f"http.server on {ADDRESS}:8080 in {ns.name}", timeout=20)
    assert reply == f"200 hello from {ns.name}"
    assert server.poll() is None

    ns.delete()

    assert server.poll() is not None
    assert not ns.exists()
    assert ns.name not in ip_output("netns", "list")
    assert not Path(f"/run/netns/{ns.name}").exists()
