"""The command line (`sidecar.cli`): `sidecar simulate` and `sidecar decode`, the log format,
`plan`'s flags and `discover`'s namer."""

from __future__ import annotations

import io

import pytest

from sidecar import cli, simulate
from sidecar.cli import plan
from sidecar.cli.shared import setup_logging
from tests.unit.test_codec import GO_SERVICE


def test_the_simulated_cluster_converges_and_reports_every_step():
    lines = list(simulate.run(6, loss=0.3, seed=3))
    steps = [line for line in lines if line.startswith("  ") and " s" in line[-3:]]
    labels = [
        "containers start",
        "fails its health check",
        "stops",
        "node4 leaves",
        "node5 crashes: suspected",
        "node5 crashes: declared dead",
        "node5's services tombstoned",
    ]
    assert [next(label for label in labels if label in step) for step in steps] == labels
    assert not any("never" in step for step in steps)
    summary = next(line for line in lines if "every live host shows the same services" in line)
    assert "services: True" in summary
    assert "4 hosts up" in summary
    assert "rejected input 0" in summary
    # node5 crashed: nothing of it is routed; node0 and node1 serve every service but web
    table = lines.index("Routing table (the HAProxy frontends every live host would serve):")
    routes = [line for line in lines[table + 1 :] if not line.startswith("wall time")]
    assert len(routes) == 3
    assert all("node5-" not in route for route in routes)
    assert sum(route.count("node") for route in routes) == 5


def test_simulate_is_deterministic_for_a_seed():
    def report(seed: int) -> list[str]:
        return [x for x in simulate.run(5, loss=0.2, seed=seed) if not x.startswith("wall time")]

    assert report(5) == report(5)
    assert report(5) != report(6)


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
        setup_logging(level="debug", json_format=True)
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

    setup_logging(level="info", json_format=False)
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

    setup_logging(level="info", json_format=False)
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

    setup_logging(level="info", json_format=True)
    logging.getLogger("sidecar.test").info("service %s", "web\n2026-01-01 INFO forged\u2028x")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["message"] == "service web\n2026-01-01 INFO forged\u2028x"


def test_a_cluster_of_150_hosts_converges_and_detects_a_crash():
    lines = list(simulate.run(150, loss=0.1, seed=2, duration=40))
    steps = [line for line in lines if line.startswith("  ") and " s" in line[-3:]]
    assert len(steps) == 7
    assert not any("never" in step for step in steps)
    summary = next(line for line in lines if "every live host shows the same services" in line)
    assert "services: True" in summary
    assert "148 hosts up" in summary


def test_every_plan_flag_overrides_a_haproxy_key_the_daemon_reads():
    from sidecar.config import Config

    keys = set(type(Config().haproxy).model_fields)
    assert set(plan._PLAN_FLAGS.values()) <= keys
    destinations = {
        action.dest
        for group in cli._parser()._subparsers._group_actions  # the subcommands
        for name, sub in group.choices.items()
        if name == "plan"
        for action in sub._actions
    }
    assert set(plan._PLAN_FLAGS) <= destinations


def test_discover_refuses_a_regex_namer_without_a_group_as_the_daemon_does(capsys, tmp_path):
    static = tmp_path / "static.json"
    static.write_text("[]")
    assert cli.main(["discover", "--no-docker", "--static", str(static), "--namer", "web"]) == 1
    assert "no capture group" in capsys.readouterr().err
