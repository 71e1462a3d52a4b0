"""`sidecar discover` as a real process against the real Engine: what `make run` shows."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

SIDECAR = Path(sys.executable).with_name("sidecar")


def test_discover_shows_a_labelled_container_alive_and_exits_cleanly(
    docker_client, test_image, run_container
):
    process = subprocess.Popen(
        [str(SIDECAR), "discover", "--check-interval", "0.5", "--hostname", "cli-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        container = run_container(
            test_image,
            labels={"ServiceName": "cli-web", "ServicePort_80": "8080"},
            publish_all_ports=True,
        )
        short = container.id[:12]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(short in line and "cli-web" in line and "Alive" in line for line in lines):
                break
            time.sleep(0.1)
        else:
            pytest.fail("no Alive line for the container:\n" + "".join(lines))
        alive = next(line for line in lines if short in line and "Alive" in line)
        assert "as :8080" in alive
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        reader.join(timeout=5)
        process.stdout.close()
    assert lines[0].startswith("sidecar discover: cli-test")
