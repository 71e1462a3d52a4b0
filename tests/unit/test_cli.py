"""The command line: `sidecar simulate` and `sidecar decode`."""

from __future__ import annotations

import io

import pytest

from sidecar import cli, simulate
from tests.unit.test_codec import GO_SERVICE


def test_the_simulated_cluster_converges_and_reports_every_step():
    lines = list(simulate.run(4, loss=0.3, seed=3))
    steps = [line for line in lines if "reached every live node" in line]
    assert len(steps) == 4
    assert not any("never" in line for line in steps)
    assert any("same services and statuses: True" in line for line in lines)
    # node3 crashed: nothing of it is routed; the three live hosts serve every service
    routes = lines[lines.index(next(x for x in lines if x.startswith("Routing table"))) + 1 :]
    assert len(routes) == 3
    assert all("node3-" not in route for route in routes)


def test_simulate_is_deterministic_for_a_seed():
    assert list(simulate.run(3, loss=0.2, seed=5)) == list(simulate.run(3, loss=0.2, seed=5))


def test_decode_prints_a_go_document_back_byte_for_byte(capsys, monkeypatch, tmp_path):
    path = tmp_path / "service.json"
    path.write_bytes(GO_SERVICE)
    assert cli.main(["decode", str(path)]) == 0
    assert capsys.readouterr().out == GO_SERVICE.decode() + "\n"


def test_decode_names_the_field_go_would_refuse(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"Status": "up"}')))
    assert cli.main(["decode", "-"]) == 1
    assert "Service.status" in capsys.readouterr().err


def test_bad_simulation_arguments_are_refused_with_the_value(capsys):
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--loss", "1.5"])
    assert "--loss must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_json_logs_are_one_object_per_line(capsys):
    import json
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        cli.setup_logging(level="debug", json_format=True)
        logging.getLogger("sidecar.test").info("hello %s", "world")
        logging.getLogger("sidecar.test").debug("details")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.strip().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("info", "sidecar.test", "hello world"),
        ("debug", "sidecar.test", "details"),
    ]
    assert all("time" in e for e in entries)


@pytest.fixture
def root_logger():
    """The root logger, its handlers and level restored after the test."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_text_log_record_is_one_line_whatever_its_values_carry(capsys, root_logger):
    import logging

    cli.setup_logging(level="info", json_format=False)
    log = logging.getLogger("sidecar.test")
    log.info("static service %s refused", "web\n2026-01-01 INFO forged")
    log.info("name %r", "a\r\x1b[2Kb\x85c\u2028d\te")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(
        "INFO sidecar.test: static service web\\n2026-01-01 INFO forged refused"
    )
    assert lines[1].endswith("name 'a\\r\\x1b[2Kb\\x85c\\u2028d\\te'")


def test_a_traceback_is_indented_below_its_record(capsys, root_logger):
    import logging

    cli.setup_logging(level="info", json_format=False)
    try:
        raise ValueError("bad\n2026-01-01 INFO forged")
    except ValueError:
        logging.getLogger("sidecar.test").exception("it failed")
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.endswith("ERROR sidecar.test: it failed")
    assert all(line.startswith("    ") for line in rest), rest
    assert "    Traceback (most recent call last):" in rest
    assert "    2026-01-01 INFO forged" in rest  # the exception's own line break: indented


def test_a_json_log_record_is_one_line_whatever_its_values_carry(capsys, root_logger):
    import json
    import logging

    cli.setup_logging(level="info", json_format=True)
    logging.getLogger("sidecar.test").info("service %s", "web\n2026-01-01 INFO forged\u2028x")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["message"] == "service web\n2026-01-01 INFO forged\u2028x"
