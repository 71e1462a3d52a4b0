"""sidecar.toml (Go's OLD layout), Go's NEW environment variables, command-line overrides."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from sidecar import config
from sidecar.config import Config, ConfigError, format_duration, load, parse_duration

# Go's NEW defaults (spec §9.1) where Go has the setting, this sidecar's own otherwise.
GO_DEFAULTS = {
    "sidecar.seeds": (),
    "sidecar.cluster_name": "default",
    "sidecar.advertise_ip": "",
    "sidecar.exclude_ips": ("192.168.168.168",),
    "sidecar.bind_port": 7946,
    "sidecar.discovery": ("docker",),
    "sidecar.logging_format": "text",
    "sidecar.logging_level": "info",
    "sidecar.default_check_endpoint": "/version",
    "sidecar.hostname": "",
    "sidecar.http_address": "0.0.0.0:7777",
    "sidecar.external_checks": False,
    "sidecar.check_interval": 3.0,
    "sidecar.health_rise": 1,
    "sidecar.health_fall": 2,
    "sidecar.push_pull_interval": 20.0,
    "sidecar.gossip_messages": 15,
    "docker_discovery.docker_url": "unix:///var/run/docker.sock",
    "static_discovery.config_file": "static.json",
    "static_discovery.max_size": 4 * 1024 * 1024,
    "services.namer": "docker_label",
    "services.name_label": "ServiceName",
    "services.name_match": "",
    "haproxy.disable": False,
    "haproxy.bind_ip": "192.168.168.168",
    "haproxy.template_file": "",
    "haproxy.config_file": "/etc/haproxy.cfg",
    "haproxy.pid_file": "/var/run/haproxy.pid",
    "haproxy.user": "haproxy",
    "haproxy.group": "",
    "haproxy.use_hostnames": False,
    "haproxy.reload_command": "",
    "haproxy.verify_command": "",
    "haproxy.mode": "managed",
    "haproxy.master_socket": "/var/run/sidecar/haproxy-master.sock",
    "haproxy.admin_socket": "/var/run/haproxy_stats.sock",
    "haproxy.interface": "lo",
    "haproxy.release_ip": True,
    "haproxy.stop_on_exit": False,
    "haproxy.apply": True,
    "haproxy.debounce_min": 0.02,
    "haproxy.debounce_max": 1.0,
    "haproxy.stats_port": 3212,
    "haproxy.stats_backend_port": 32012,
    "haproxy.stats_ip": "",
    "haproxy.hard_stop_after": 30.0,
    "listeners.urls": (),
}

# The sections and keys of Go OLD's sidecar.toml (spec §9.3), with logging_level, which Go
# ignores and we honour, and the three slashes Go's example lacks.
GO_TOML = """\
[sidecar]
exclude_ips = ["192.168.168.168", "10.0.0.9"]
discovery = ["docker", "static"]
stats_addr = "statsd:8125"
push_pull_interval = "20s"
gossip_messages = 20
logging_format = "standard"
logging_level = "debug"
default_check_endpoint = "/health"

[docker_discovery]
docker_url = "unix:///var/run/docker.sock"

[static_discovery]
config_file = "/etc/sidecar/static.json"

[services]
namer = "regex"
name_label = "ServiceName"
name_match = "^/(.+)(-[0-9a-z]{7,14})$"

[haproxy]
reload_command = "service haproxy reload"
verify_command = "haproxy -c -f /etc/haproxy.cfg"
bind_ip = "192.168.168.168"
template_file = "views/haproxy.cfg"
config_file = "/etc/haproxy.cfg"
pid_file = "/var/run/haproxy.pid"
disable = false
user = "haproxy"
group = "haproxy"
use_hostnames = true

[listeners]
urls = ["http://192.168.168.168:7778/update"]
"""


def value(cfg: Config, name: str) -> object:
    section, key = name.split(".")
    return getattr(getattr(cfg, section), key)


def problem(*, toml: str | None = None, environ=None, overrides=None, tmp_path=None) -> str:
    """Return the ConfigError message of a configuration that must be refused."""
    path = None
    if toml is not None:
        path = tmp_path / "sidecar.toml"
        path.write_text(textwrap.dedent(toml))
    with pytest.raises(ConfigError) as caught:
        load(path=path, environ=environ or {}, overrides=overrides)
    return str(caught.value)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so the file is the default `sidecar.toml` and messages say so."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------ defaults and layers


def test_defaults_are_gos():
    cfg = load(path=None, environ={})
    assert {name: value(cfg, name) for name in GO_DEFAULTS} == GO_DEFAULTS
    assert cfg.sidecar.api_token.get_secret_value() == ""
    assert cfg == Config()
    assert set(config.sources(cfg).values()) == {"default"}


def test_every_setting_has_exactly_one_variable_and_the_table_is_complete():
    names = [f"{section}.{key}" for section, key in config.ENV_VARS.values()]
    secrets = ["sidecar.api_token", "sidecar.gossip_key", "sidecar.gossip_keyring"]
    assert sorted(names) == sorted([*GO_DEFAULTS, *secrets])
    assert len(set(names)) == len(names)


def test_go_toml_layout_is_read(in_tmp):
    (in_tmp / "sidecar.toml").write_text(GO_TOML)
    cfg = load(environ={})
    assert cfg.sidecar.exclude_ips == ("192.168.168.168", "10.0.0.9")
    assert cfg.sidecar.discovery == ("docker", "static")
    assert cfg.sidecar.logging_format == "text"  # Go's "standard"
    assert cfg.sidecar.logging_level == "debug"  # honoured, unlike Go OLD
    assert cfg.sidecar.default_check_endpoint == "/health"
    assert cfg.static_discovery.config_file == "/etc/sidecar/static.json"
    assert cfg.services.namer == "regex"
    assert cfg.services.name_match == "^/(.+)(-[0-9a-z]{7,14})$"
    assert cfg.haproxy.reload_command == "service haproxy reload"
    assert cfg.haproxy.verify_command == "haproxy -c -f /etc/haproxy.cfg"
    assert cfg.haproxy.template_file == "views/haproxy.cfg"
    assert (cfg.haproxy.user, cfg.haproxy.group) == ("haproxy", "haproxy")
    assert cfg.haproxy.use_hostnames is True
    assert cfg.listeners.urls == ("http://192.168.168.168:7778/update",)
    origin = config.sources(cfg)
    assert origin["sidecar.logging_level"] == "sidecar.toml"
    assert origin["haproxy.disable"] == "sidecar.toml"
    assert origin["sidecar.bind_port"] == "default"
    assert (cfg.sidecar.push_pull_interval, cfg.sidecar.gossip_messages) == (20.0, 20)
    # the Go-only key loads, and is reported as ignored
    ignored = config.notices(cfg)
    assert len(ignored) == 1
    assert "[sidecar] stats_addr: a Go Sidecar setting, ignored" in ignored[0]


def test_an_empty_docker_url_means_the_docker_environment_as_in_go():
    assert load(path=None, environ={"DOCKER_URL": ""}).docker_discovery.docker_url == ""


def test_gos_two_slash_docker_url_is_refused_with_the_fix(in_tmp):
    (in_tmp / "sidecar.toml").write_text(
        '[docker_discovery]\ndocker_url = "unix://var/run/docker.sock"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(environ={})
    assert str(caught.value) == (
        "sidecar.toml [docker_discovery] docker_url='unix://var/run/docker.sock': the socket path "
        "is not absolute: did you mean 'unix:///var/run/docker.sock' (three slashes)?"
    )


def test_environment_beats_the_file_and_flags_beat_both(in_tmp):
    (in_tmp / "sidecar.toml").write_text(
        '[sidecar]\nseeds = ["file:7946"]\ncluster_name = "from-file"\nlogging_level = "error"\n'
        '[haproxy]\nbind_ip = "10.0.0.1"\nuser = "file-user"\n'
    )
    environ = {
        "SIDECAR_SEEDS": "env1,env2",
        "SIDECAR_CLUSTER_NAME": "from-env",
        "HAPROXY_BIND_IP": "10.0.0.2",
    }
    overrides = {"sidecar.seeds": ["flag1"], "sidecar.logging_level": "debug"}
    cfg = load(environ=environ, overrides=overrides)
    assert cfg.sidecar.seeds == ("flag1",)  # --cluster-ip replaces the whole list
    assert cfg.sidecar.cluster_name == "from-env"
    assert cfg.sidecar.logging_level == "debug"
    assert cfg.haproxy.bind_ip == "10.0.0.2"
    assert cfg.haproxy.user == "file-user"
    origin = config.sources(cfg)
    assert origin["sidecar.seeds"] == "--cluster-ip"
    assert origin["sidecar.logging_level"] == "--logging-level"
    assert origin["sidecar.cluster_name"] == "SIDECAR_CLUSTER_NAME"
    assert origin["haproxy.user"] == "sidecar.toml"
    assert origin["haproxy.mode"] == "default"
    # without the flags, the environment wins over the file
    assert load(environ=environ).sidecar.seeds == ("env1", "env2")


def test_the_file_is_optional_unless_required(in_tmp):
    cfg = load(environ={})
    assert cfg == Config()
    assert config.notices(cfg) == (
        "sidecar.toml: no such file; using the environment and defaults",
    )
    with pytest.raises(ConfigError) as caught:
        load(required=True, environ={})
    assert str(caught.value) == "sidecar.toml: no such configuration file"


def test_config_path_comes_from_sidecar_config_file_only():
    assert config.config_path({}) == "sidecar.toml"
    assert config.config_path({"CONFIG_FILE": "/x.toml"}) == "sidecar.toml"
    assert config.config_path({"SIDECAR_CONFIG_FILE": "/etc/s.toml"}) == "/etc/s.toml"


def test_no_unprefixed_fallbacks():
    environ = {
        "USER": "root",
        "GROUP": "wheel",
        "BIND_IP": "1.2.3.4",
        "CONFIG_FILE": "x",
        "URL": "tcp://x:1",
        "SEEDS": "10.9.9.9",
        "DISCOVERY": "static",
        "EXCLUDE_IPS": "1.1.1.1",
        "NAMER": "regex",
        "NAME_MATCH": "^/(.+)$",
        "DISABLE": "true",
        "USE_HOSTNAMES": "true",
        "TEMPLATE_FILE": "t.cfg",
        "PID_FILE": "p.pid",
        "RELOAD_COMMAND": "true",
        "URLS": "http://x/",
        "DEBUG": "true",
        # and unrelated SIDECAR_* variables are not errors
        "SIDECAR_REQUIRE": "docker,haproxy,netns",
        "SIDECAR_HYPOTHESIS_PROFILE": "ci",
        "SIDECAR_STATS_ADDR": "not even an address",
    }
    cfg = load(path=None, environ=environ)
    assert cfg == Config()
    assert cfg.haproxy.user == "haproxy"


# ------------------------------------------------------------------ environment syntax


def test_an_explicitly_empty_variable_counts_as_set():
    cfg = load(path=None, environ={"HAPROXY_BIND_IP": ""})
    assert cfg.haproxy.bind_ip == ""
    assert config.sources(cfg)["haproxy.bind_ip"] == "HAPROXY_BIND_IP"
    assert 'haproxy.bind_ip = "" (from HAPROXY_BIND_IP)' in config.describe(cfg)
    # an empty string that must not be empty is an error, not the default
    assert problem(environ={"SIDECAR_CLUSTER_NAME": ""}) == (
        "SIDECAR_CLUSTER_NAME='': empty (a value is required)"
    )


def test_an_empty_list_variable_is_an_empty_list():
    cfg = load(path=None, environ={"SIDECAR_DISCOVERY": "", "SIDECAR_EXCLUDE_IPS": " , "})
    assert cfg.sidecar.discovery == ()  # a passive node
    assert cfg.sidecar.exclude_ips == ()


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("a, b c", ("a", "b", "c")),
        ("a,b,c", ("a", "b", "c")),
        ("  a\tb\n c ,", ("a", "b", "c")),
        ("10.0.0.1:7946,,10.0.0.2", ("10.0.0.1:7946", "10.0.0.2")),
    ],
)
def test_lists_split_on_commas_and_whitespace(text, items):
    assert load(path=None, environ={"SIDECAR_SEEDS": text}).sidecar.seeds == items


def test_discovery_drops_duplicates_and_keeps_order():
    cfg = load(path=None, environ={"SIDECAR_DISCOVERY": "static docker static"})
    assert cfg.sidecar.discovery == ("static", "docker")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("1s", 1.0),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
        ("300us", 0.0003),
        ("2µs", 0.000002),
        ("2μs", 0.000002),
        ("10ns", 0.00000001),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1h1m1s1ms", 3661.001),
        ("+3s", 3.0),
        ("-3s", -3.0),
    ],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("text", ["", "3", "1d", "1 s", "s", ".s", "1.5", "-", "1s ", "1S", "٣s"])
def test_what_go_refuses_as_a_duration(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.05, "50ms"), (1.0, "1s"), (90.0, "1m30s"), (7200.0, "2h0m0s"), (1.5, "1.5s"), (0, "0s")],
)
def test_durations_are_written_as_go_writes_them(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_variables():
    cfg = load(
        path=None,
        environ={
            "HAPROXY_DEBOUNCE_MIN": "0",
            "HAPROXY_DEBOUNCE_MAX": "1m30s",
            "SIDECAR_CHECK_INTERVAL": "500ms",
        },
    )
    assert (cfg.haproxy.debounce_min, cfg.haproxy.debounce_max) == (0.0, 90.0)
    assert cfg.sidecar.check_interval == 0.5


def test_gossip_timing_zero_means_gos_defaults_and_negative_is_refused():
    cfg = load(
        path=None, environ={"SIDECAR_PUSH_PULL_INTERVAL": "0", "SIDECAR_GOSSIP_MESSAGES": "0"}
    )
    assert (cfg.sidecar.push_pull_seconds(), cfg.sidecar.gossip_packets()) == (79.0, 3)
    cfg = load(path=None, environ={"SIDECAR_PUSH_PULL_INTERVAL": "5s"})
    assert (cfg.sidecar.push_pull_seconds(), cfg.sidecar.gossip_packets()) == (5.0, 15)
    with pytest.raises(ConfigError) as caught:
        load(
            path=None,
            environ={"SIDECAR_PUSH_PULL_INTERVAL": "-1s", "SIDECAR_GOSSIP_MESSAGES": "-2"},
        )
    text = str(caught.value)
    assert "SIDECAR_PUSH_PULL_INTERVAL='-1s': negative" in text
    assert "SIDECAR_GOSSIP_MESSAGES='-2': out of range (expected 0..1000)" in text


def test_static_max_size_is_a_byte_count_from_the_file_or_the_environment(in_tmp):
    (in_tmp / "sidecar.toml").write_text("[static_discovery]\nmax_size = 65536\n")
    assert load(environ={}).static_discovery.max_size == 65536
    assert load(environ={"STATIC_MAX_SIZE": "1048576"}).static_discovery.max_size == 1048576
    assert problem(environ={"STATIC_MAX_SIZE": "4MiB"}) == (
        "STATIC_MAX_SIZE='4MiB': not a decimal integer"
    )


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true(text):
    cfg = load(path=None, environ={"HAPROXY_DISABLE": text, "HAPROXY_APPLY": text})
    assert cfg.haproxy.disable is True
    assert cfg.haproxy.apply is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false(text):
    cfg = load(path=None, environ={"SIDECAR_EXTERNAL_CHECKS": text, "HAPROXY_RELEASE_IP": text})
    assert cfg.sidecar.external_checks is False
    assert cfg.haproxy.release_ip is False


@pytest.mark.parametrize("text", ["yes", "on", "", "TRue", " true", "2"])
def test_what_go_refuses_as_a_boolean(text):
    assert problem(environ={"HAPROXY_USE_HOSTNAMES": text}) == (
        f"HAPROXY_USE_HOSTNAMES={text!r}: not a boolean "
        "(expected one of 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
    )


@pytest.mark.parametrize("text", ["0x10", "1_000", " 12", "12.0", "", "٣"])
def test_integers_are_decimal(text):
    assert problem(environ={"SIDECAR_BIND_PORT": text}) == (
        f"SIDECAR_BIND_PORT={text!r}: not a decimal integer"
    )


def test_logging_spellings():
    def level(text):
        return load(path=None, environ={"SIDECAR_LOGGING_LEVEL": text}).sidecar.logging_level

    assert [level(t) for t in ("DEBUG", "Info", "warning", "WARN", "error")] == [
        "debug",
        "info",
        "warn",
        "warn",
        "error",
    ]

    def fmt(text):
        return load(path=None, environ={"SIDECAR_LOGGING_FORMAT": text}).sidecar.logging_format

    assert [fmt(t) for t in ("", "standard", "text", "json", "JSON")] == [
        "text",
        "text",
        "text",
        "json",
        "json",
    ]


@pytest.mark.parametrize("seed", ["host", "host:7946", "10.0.0.1", "[::1]:7946", "[::1]", "::1"])
def test_good_seeds(seed):
    assert load(path=None, environ={"SIDECAR_SEEDS": seed}).sidecar.seeds == (seed,)


def test_addresses_and_names():
    cfg = load(
        path=None,
        environ={
            "SIDECAR_HTTP_ADDRESS": "[::1]:8080",
            "HAPROXY_BIND_IP": "0.0.0.0",
            "SIDECAR_ADVERTISE_IP": "fd00::5",
            "SIDECAR_HOSTNAME": "node-7",
        },
    )
    assert cfg.sidecar.http_listen() == ("::1", 8080)
    assert Config().sidecar.http_listen() == ("0.0.0.0", 7777)
    assert cfg.haproxy.bind_ip == "0.0.0.0"
    assert cfg.sidecar.node_name() == "node-7"
    assert Config().sidecar.node_name()  # the machine's host name


# ------------------------------------------------------------------ overrides


def test_override_text_is_parsed_like_the_environment():
    cfg = load(
        path=None,
        environ={"SIDECAR_DISCOVERY": "docker"},
        overrides={
            "sidecar.discovery": "static",
            "sidecar.external_checks": "true",
            "sidecar.check_interval": "5s",
            "sidecar.advertise_ip": None,  # a flag not given
        },
    )
    assert cfg.sidecar.discovery == ("static",)
    assert cfg.sidecar.external_checks is True
    assert cfg.sidecar.check_interval == 5.0
    assert config.sources(cfg)["sidecar.advertise_ip"] == "default"
    assert config.sources(cfg)["sidecar.external_checks"] == "command line"


def test_an_unknown_override_is_refused():
    assert problem(overrides={"sidecar.seed": ["x"]}) == (
        "command line sidecar.seed: unknown setting, did you mean sidecar.seeds?"
    )


# ------------------------------------------------------------------ bad values


def test_the_briefs_messages_exactly(in_tmp):
    assert problem(environ={"HAPROXY_BIND_IP": "banana"}) == (
        "HAPROXY_BIND_IP='banana': not an IP address (expected an IPv4 or IPv6 address, "
        '"" or 0.0.0.0 for all interfaces)'
    )
    assert problem(overrides={"sidecar.discovery": ["kubernetes_api"]}) == (
        "--discover 'kubernetes_api': not supported by this sidecar (allowed: docker, static)"
    )
    (in_tmp / "sidecar.toml").write_text('[haproxy]\nbnd_ip = "1.2.3.4"\n')
    message = _load_message()
    assert message.startswith(
        "sidecar.toml [haproxy] bnd_ip: unknown key, did you mean bind_ip? "
        "(known keys: admin_socket, apply, bind_ip, config_file, "
    )
    assert message.endswith(", verify_command)")
    (in_tmp / "sidecar.toml").write_text("[hapoxy]\nbind_ip = 1\n")
    assert _load_message() == (
        "sidecar.toml: unknown section [hapoxy], did you mean [haproxy]? "
        "(known: docker_discovery, haproxy, listeners, services, sidecar, static_discovery)"
    )


def _load_message() -> str:
    with pytest.raises(ConfigError) as caught:
        load(environ={})
    return str(caught.value)


# (variable, text in the environment, the same in TOML, what the message says)
BAD_VALUES = [
    ("HAPROXY_BIND_IP", "banana", '"banana"', "not an IP address"),
    ("SIDECAR_ADVERTISE_IP", "10.0.0.300", '"10.0.0.300"', "not an IP address"),
    ("SIDECAR_EXCLUDE_IPS", "10.0.0.1 nope", '["10.0.0.1", "nope"]', "item 'nope': not an IP"),
    ("SIDECAR_SEEDS", "a,:7946", '["a", ":7946"]', "item ':7946': no host before the port"),
    ("SIDECAR_SEEDS", "a:0", '["a:0"]', "item 'a:0': port '0' is not a port number 1..65535"),
    ("SIDECAR_BIND_PORT", "70000", "70000", "out of range (expected a port number 1..65535)"),
    ("SIDECAR_CLUSTER_NAME", "my cluster", '"my cluster"', "contains whitespace"),
    ("SIDECAR_DISCOVERY", "docker kubernetes_api", '["docker", "kubernetes_api"]', "not supported"),
    ("SIDECAR_DISCOVERY", "consul", '["consul"]', "unknown value (allowed: docker, static)"),
    ("SIDECAR_LOGGING_FORMAT", "xml", '"xml"', "unknown value (allowed: text, json)"),
    ("SIDECAR_LOGGING_LEVEL", "trace", '"trace"', "allowed: debug, info, warn, error"),
    ("SIDECAR_DEFAULT_CHECK_ENDPOINT", "version", '"version"', 'starting with "/"'),
    ("SIDECAR_HOSTNAME", "a b", '"a b"', "contains whitespace"),
    ("SIDECAR_HTTP_ADDRESS", "localhost:7777", '"localhost:7777"', "expected IP:port"),
    ("SIDECAR_HTTP_ADDRESS", "0.0.0.0", '"0.0.0.0"', "expected IP:port"),
    ("SIDECAR_CHECK_INTERVAL", "0", '"0"', "not above zero"),
    ("SIDECAR_CHECK_INTERVAL", "3", '"3"', "not a duration"),
    ("SIDECAR_HEALTH_RISE", "0", "0", "out of range (expected 1..100)"),
    ("SIDECAR_HEALTH_FALL", "101", "101", "out of range (expected 1..100)"),
    ("DOCKER_URL", "npipe:////./pipe/docker", '"npipe:////./pipe/docker"', "unsupported URL"),
    ("DOCKER_URL", "tcp://", '"tcp://"', "no host after tcp://"),
    ("STATIC_CONFIG_FILE", "", '""', "empty"),
    ("STATIC_MAX_SIZE", "0", "0", "out of range (expected 1..2147483648 bytes)"),
    ("SERVICES_NAMER", "label", '"label"', "allowed: docker_label, regex"),
    ("SERVICES_NAME_LABEL", "", '""', "empty"),
    ("HAPROXY_MODE", "manual", '"manual"', "allowed: managed, external"),
    ("HAPROXY_USER", "ha proxy", '"ha proxy"', "contains whitespace"),
    ("HAPROXY_GROUP", "wheel\n", '"wheel\\n"', "control character"),
    ("HAPROXY_INTERFACE", "a-very-long-ifname", '"a-very-long-ifname"', "interface name"),
    ("HAPROXY_DEBOUNCE_MIN", "-1s", '"-1s"', "negative"),
    ("HAPROXY_STATS_PORT", "0", "0", "out of range"),
    ("LISTENERS_URLS", "ftp://x/", '["ftp://x/"]', "item 'ftp://x/': not an http:// or https://"),
]


@pytest.mark.parametrize(("variable", "text", "toml", "says"), BAD_VALUES)
def test_a_bad_variable_is_named_with_its_value(variable, text, toml, says):
    message = problem(environ={variable: text})
    assert message.startswith(f"{variable}={text!r}: ")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(("variable", "text", "toml", "says"), BAD_VALUES)
def test_a_bad_file_value_is_named_with_its_section_key_and_value(
    variable, text, toml, says, tmp_path
):
    section, key = config.ENV_VARS[variable]
    message = problem(toml=f"[{section}]\n{key} = {toml}\n", tmp_path=tmp_path)
    assert message.startswith(f"{tmp_path / 'sidecar.toml'} [{section}] {key}=")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"sidecar.seeds": ["10.0.0.1", ":7946"]},
            '--cluster-ip \':7946\': no host before the port (expected "host" or "host:port")',
        ),
        (
            {"sidecar.advertise_ip": "nope"},
            "--advertise-ip 'nope': not an IP address "
            '(expected an IPv4 or IPv6 address, or "" to detect it)',
        ),
        ({"sidecar.cluster_name": ""}, "--cluster-name '': empty (a value is required)"),
        (
            {"sidecar.logging_level": "loud"},
            "--logging-level 'loud': unknown value (allowed: debug, info, warn, error)",
        ),
        (
            {"haproxy.disable": "maybe"},
            "command line haproxy.disable='maybe': not a boolean "
            "(expected one of 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)",
        ),
    ],
)
def test_a_bad_flag_is_named_with_its_value(overrides, message):
    assert problem(overrides=overrides) == message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('[sidecar]\nbind_port = "7946"', " [sidecar] bind_port='7946': expected an integer"),
        ('[haproxy]\ndisable = "true"', " [haproxy] disable='true': expected true or false"),
        ('[sidecar]\nseeds = "a,b"', " [sidecar] seeds='a,b': expected a list of strings"),
        ("[sidecar]\nseeds = [1]", " [sidecar] seeds=[1]: expected a list of strings"),
        ("[sidecar]\nhealth_rise = true", " [sidecar] health_rise=true: expected an integer"),
        ("[haproxy]\nbind_ip = 1", " [haproxy] bind_ip=1: expected a string"),
        (
            "[sidecar]\ncheck_interval = 3",
            ' [sidecar] check_interval=3: expected a duration string such as "3s"',
        ),
        ("sidecar = 1", ": sidecar=1 is not a section (expected [sidecar])"),
        ("bind_ip = 1", ": bind_ip: a key outside any section (known sections: docker_disc"),
    ],
)
def test_a_toml_value_of_the_wrong_type(line, expected, in_tmp):
    (in_tmp / "sidecar.toml").write_text(line + "\n")
    assert _load_message().startswith("sidecar.toml" + expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[haproxy]\nbind_ip = \n", "sidecar.toml line 2 column 11: not valid TOML: Invalid value"),
        (
            '[sidecar]\ncluster_name = "x\n',
            "sidecar.toml line 2 column 18: not valid TOML: Illegal character '\\n'",
        ),
        ("[sidecar]\n[sidecar]\n", "sidecar.toml line 2 column 9: not valid TOML: Cannot declare"),
        (
            '[sidecar]\ncluster_name = """x\n',
            "sidecar.toml at the end of the file: not valid TOML: Unterminated string",
        ),
    ],
)
def test_a_toml_syntax_error_names_the_file_line_and_column(text, message, in_tmp):
    (in_tmp / "sidecar.toml").write_text(text)
    assert _load_message().startswith(message)


def test_a_file_that_is_not_utf8(in_tmp):
    (in_tmp / "sidecar.toml").write_bytes(b'[sidecar]\ncluster_name = "\xff"\n')
    assert _load_message() == "sidecar.toml: not valid TOML: not UTF-8 (byte 27)"


def test_regex_namer_needs_a_capture_group():
    environ = {"SERVICES_NAMER": "regex", "SERVICES_NAME_MATCH": "^/.+$"}
    assert problem(environ=environ) == (
        "SERVICES_NAME_MATCH='^/.+$': no capture group, but the regex namer names a service by "
        "the pattern's first capture group (e.g. ^/(.+)(-[0-9a-z]{7,14})$)"
    )
    assert problem(environ={"SERVICES_NAMER": "regex"}).startswith(
        'services.name_match="" (default): empty, but the regex namer'
    )
    assert problem(environ={**environ, "SERVICES_NAME_MATCH": "^/(.+"}).startswith(
        "SERVICES_NAME_MATCH='^/(.+': not a valid regex: missing ), unterminated subpattern"
    )
    good = load(path=None, environ={**environ, "SERVICES_NAME_MATCH": "^/(.+)-[0-9a-f]+$"})
    assert good.services.name_match == "^/(.+)-[0-9a-f]+$"
    # the docker_label namer ignores name_match, even a broken one
    ignored = load(path=None, environ={"SERVICES_NAME_MATCH": "^/(.+"})
    assert ignored.services.namer == "docker_label"


def test_debounce_min_above_max_names_both(in_tmp):
    (in_tmp / "sidecar.toml").write_text('[haproxy]\ndebounce_max = "100ms"\n')
    with pytest.raises(ConfigError) as caught:
        load(environ={"HAPROXY_DEBOUNCE_MIN": "2s"})
    assert str(caught.value) == (
        "HAPROXY_DEBOUNCE_MIN='2s' and sidecar.toml [haproxy] debounce_max='100ms': the minimum "
        "wait is above the maximum (expected 0 <= debounce_min <= debounce_max)"
    )
    assert problem(environ={"HAPROXY_DEBOUNCE_MIN": "1.5s"}) == (
        "HAPROXY_DEBOUNCE_MIN='1.5s' and haproxy.debounce_max=\"1s\" (default): the minimum "
        "wait is above the maximum (expected 0 <= debounce_min <= debounce_max)"
    )
    equal = load(path=None, environ={"HAPROXY_DEBOUNCE_MIN": "1s"})
    assert equal.haproxy.debounce_min == equal.haproxy.debounce_max == 1.0


def test_stats_ports_must_differ():
    assert problem(environ={"HAPROXY_STATS_PORT": "32012"}) == (
        "HAPROXY_STATS_PORT='32012' and haproxy.stats_backend_port=32012 (default): "
        "the same port (expected two ports)"
    )


def test_several_problems_are_reported_together(in_tmp):
    (in_tmp / "sidecar.toml").write_text('[haproxy]\nbnd_ip = "x"\n[sidecar]\nbind_port = 0\n')
    with pytest.raises(ConfigError) as caught:
        load(
            environ={"HAPROXY_BIND_IP": "banana", "HAPROXY_DISABLE": "yes"},
            overrides={"sidecar.discovery": ["kubernetes_api"]},
        )
    lines = str(caught.value).splitlines()
    assert lines[0] == "5 configuration problems:"
    assert len(caught.value.problems) == 5
    assert lines[1:] == [f"  {p}" for p in caught.value.problems]
    assert [p.split(":")[0].split("=")[0] for p in caught.value.problems] == [
        "sidecar.toml [haproxy] bnd_ip",
        "HAPROXY_DISABLE",
        "sidecar.toml [sidecar] bind_port",
        "--discover 'kubernetes_api'",
        "HAPROXY_BIND_IP",
    ]


# ------------------------------------------------------------------ secrets and describe()


def test_a_gossip_key_and_keyring_are_base64_keys_the_first_encrypting():
    import base64

    def b64(key: bytes) -> str:
        return base64.b64encode(key).decode()

    assert load(environ={}).sidecar.gossip_keys() == ()  # off by default, as Go's
    primary, old = bytes(range(16)), bytes(32)
    cfg = load(environ={"SIDECAR_GOSSIP_KEY": b64(primary), "SIDECAR_GOSSIP_KEYRING": b64(old)})
    assert cfg.sidecar.gossip_keys() == (primary, old)
    assert not any(b64(primary) in line or b64(old) in line for line in config.describe(cfg))
    assert problem(environ={"SIDECAR_GOSSIP_KEY": "not base64!"}) == (
        "SIDECAR_GOSSIP_KEY=(secret): not base64 (expected the base64 of 16, 24 or 32 bytes)"
    )
    assert problem(environ={"SIDECAR_GOSSIP_KEY": b64(bytes(20))}) == (
        "SIDECAR_GOSSIP_KEY=(secret): 20 bytes (expected the base64 of 16, 24 or 32 bytes)"
    )
    assert "gossip_key encrypts" in problem(environ={"SIDECAR_GOSSIP_KEYRING": b64(old)})


def test_secrets_are_never_printed(in_tmp):
    cfg = load(environ={"SIDECAR_API_TOKEN": "s3cret-token"})
    assert cfg.sidecar.api_token.get_secret_value() == "s3cret-token"
    lines = config.describe(cfg)
    assert "sidecar.api_token = (set) (from SIDECAR_API_TOKEN)" in lines
    assert "sidecar.api_token = (not set) (default)" in config.describe(Config())
    assert not any("s3cret" in line for line in lines)
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in str(cfg)
    message = problem(environ={"SIDECAR_API_TOKEN": "s3cret\n"})
    assert message == "SIDECAR_API_TOKEN=(secret): contains a control character"
    (in_tmp / "sidecar.toml").write_text("[sidecar]\napi_token = 12345\n")
    assert _load_message() == "sidecar.toml [sidecar] api_token=(secret): expected a string"


def test_describe_says_where_each_value_came_from(in_tmp):
    (in_tmp / "sidecar.toml").write_text('[haproxy]\nuser = "proxy"\n')
    cfg = load(
        environ={"HAPROXY_BIND_IP": "10.1.2.3", "HAPROXY_DEBOUNCE_MAX": "2s"},
        overrides={"sidecar.seeds": ["10.0.0.1", "10.0.0.2:7946"]},
    )
    lines = config.describe(cfg)
    assert len(lines) == len(GO_DEFAULTS) + 3  # and the three secrets
    assert 'haproxy.bind_ip = "10.1.2.3" (from HAPROXY_BIND_IP)' in lines
    assert 'haproxy.user = "proxy" (from sidecar.toml)' in lines
    assert 'sidecar.seeds = ["10.0.0.1", "10.0.0.2:7946"] (from --cluster-ip)' in lines
    assert 'haproxy.debounce_max = "2s" (from HAPROXY_DEBOUNCE_MAX)' in lines
    assert 'haproxy.debounce_min = "20ms" (default)' in lines
    assert "haproxy.release_ip = true (default)" in lines
    assert "sidecar.bind_port = 7946 (default)" in lines


def test_equal_settings_are_equal_wherever_they_came_from():
    from_env = load(path=None, environ={"HAPROXY_BIND_IP": "192.168.168.168"})
    assert config.sources(from_env)["haproxy.bind_ip"] == "HAPROXY_BIND_IP"
    assert from_env == Config()
    assert hash(from_env) == hash(Config())
    assert from_env != load(path=None, environ={"HAPROXY_BIND_IP": "10.0.0.1"})


def test_sources_of_a_config_built_in_code():
    cfg = Config(haproxy=config.HaproxySection(bind_ip=""))
    assert config.sources(cfg)["haproxy.bind_ip"] == "set in code"
    assert config.sources(cfg)["haproxy.user"] == "default"


def test_the_config_is_frozen():
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.haproxy.bind_ip = "1.2.3.4"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.HaproxySection(bind_ipp="1.2.3.4")  # type: ignore[call-arg]
