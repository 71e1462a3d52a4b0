"""Reading HAProxy config text: servers by backend, cookies, what a reload would change."""

from __future__ import annotations

from sidecar.reconcile import haproxy_text


def test_servers_in_reads_backends_and_ipv6():
    config = "backend web-8080\n\tserver h1-a1 [fd00::1]:80 cookie x\nfrontend f\n\tserver no 1:1\n"
    assert haproxy_text.servers_in(config) == {"web-8080": {"h1-a1": ("[fd00::1]", 80)}}


def test_a_cookie_counts_in_its_backend_and_from_defaults_in_every_later_backend():
    config = (
        "defaults\n\tmode http\n"
        "backend a\n\tcookie SRV insert\n\tserver s1 10.0.0.1:80 cookie s1 weight 5\n"
        "backend b\n\tserver s2 10.0.0.2:80\n"
        "defaults\n\tcookie SRV insert\n"
        "backend c\n\tserver s3 10.0.0.3:80\n"
    )
    parsed = haproxy_text.parse_config(config)
    assert parsed.cookie_backends == {"a", "c"}
    assert parsed.servers["a"]["s1"] == ("10.0.0.1", 80, "cookie s1 weight 5")
    assert haproxy_text.server_options(parsed.servers["a"]["s1"]) == ("cookie", "s1", "weight", "5")


def test_without_servers_and_same_file_ignore_server_lines_and_rendered_times_only():
    one = "# at 2023-11-14 22:13:20 +0000 UTC\nbackend a\n\tserver s1 10.0.0.1:80\n"
    later = "# at 2023-11-14 22:13:21.5 +0000 UTC\nbackend a\n\tserver s1 10.0.0.1:80\n"
    moved = "# at 2023-11-14 22:13:20 +0000 UTC\nbackend a\n\tserver s1 10.0.0.9:80\n"
    assert haproxy_text.same_file(one, later)
    assert not haproxy_text.same_file(one, moved)
    assert not haproxy_text.same_file(None, one)
    assert haproxy_text.without_servers(one) == haproxy_text.without_servers(moved)
    assert haproxy_text.without_servers(one) == "\n# at <now>\nbackend a\n"
    assert haproxy_text.without_servers(one) != haproxy_text.without_servers("backend b\n")
