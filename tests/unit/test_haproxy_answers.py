"""Reading HAProxy 2.6's runtime answers (captured from the real thing)."""

from __future__ import annotations

import pytest

from sidecar.reconcile.haproxy_answers import (
    ServerStat,
    parse_server_stats,
    parse_servers_state,
    parse_show_proc,
)

SHOW_PROC = """\
#<PID>          <type>          <reloads>       <uptime>        <version>
2649            master          3 [failed: 1]   0d00h00m44s     2.6.12-1+deb12u4
# workers
6129            worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
5962            worker          1               0d00h00m35s     2.6.12-1+deb12u4
# programs

"""

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord "
    "srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)
SERVERS_STATE = f"""\
1
{HEADER}
3 web-80 1 h1-a1 127.0.0.21 2 0 1 1 1 1 0 2 0 0 0 0 - 8081 - 0 0 - - 0
3 web-80 2 h2-b2 127.0.0.22 0 1 1 1 0 1 0 0 0 0 0 0 - 8082 - 0 0 - - 0
4 api-90 1 h3-c3 fd00::3 2 0 1 1 1 1 0 2 0 0 0 0 - 9000 - 0 0 - - 0
5 db-70 1 h4-d4 10.0.0.4 2 0 1 1 1 1 0 2 0 0 0 0 - 7000 - 0 0 - - 0

"""


def test_show_proc_gives_the_master_its_counters_and_workers():
    info = parse_show_proc(SHOW_PROC)
    assert (info.master, info.reloads, info.failed) == (2649, 3, 1)
    assert [(w.pid, w.reloads) for w in info.workers] == [(6129, 0)]
    assert [w.pid for w in info.old_workers] == [5962]


def test_show_proc_refuses_anything_else():
    with pytest.raises(ValueError, match="not a `show proc` answer"):
        parse_show_proc("Unknown command: 'show proc'\n")


def test_servers_state_gives_servers_by_backend_and_those_in_maintenance():
    servers, disabled = parse_servers_state(SERVERS_STATE)
    assert servers["web-80"] == {"h1-a1": ("127.0.0.21", 8081), "h2-b2": ("127.0.0.22", 8082)}
    assert servers["api-90"] == {"h3-c3": ("[fd00::3]", 9000)}  # bracketed as the config has it
    assert disabled == {("web-80", "h2-b2")}


def test_servers_named_by_host_in_the_config_keep_their_name():
    config = "backend db-70\n\tserver h4-d4 db4.internal:7000 cookie h4-7000\n"
    servers, _ = parse_servers_state(SERVERS_STATE, config=config)
    assert servers["db-70"] == {"h4-d4": ("db4.internal", 7000)}


# `show stat -1 4 -1` (servers only) from HAProxy 2.6, cut to the columns up to `status`
# and a few after: the parser finds its columns by the header's names.
SHOW_STAT = (
    (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
        "wredis,status,weight,act,\n"
    )
    + """\
stats_proxy,localhost,0,0,0,0,,0,0,0,,0,,0,0,0,0,no check,1,1,
web-8080,h1-a1,0,0,3,5,,9,0,0,,0,,0,0,0,0,no check,1,1,
web-8080,h2-b1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,
web-8080,BACKEND,0,0,3,5,,9,0,0,,0,,0,0,0,0,UP,1,1,
db-5432,h3-c1,0,0,,0,,0,0,0,,0,,0,0,0,0,DRAIN,0,1,

"""
)


def test_show_stat_gives_each_server_its_state_and_sessions() -> None:
    assert parse_server_stats(SHOW_STAT) == (
        ServerStat("stats_proxy", "localhost", "no check", 0),
        ServerStat("web-8080", "h1-a1", "no check", 3),
        ServerStat("web-8080", "h2-b1", "MAINT", 0),
        ServerStat("db-5432", "h3-c1", "DRAIN", 0),
    )


@pytest.mark.parametrize(
    "answer",
    ["", "Unknown command.\n", "# pxname,svname,qcur\nweb,h1,0\n"],
    ids=["nothing", "an-error", "no-status-column"],
)
def test_an_answer_that_is_not_stats_is_an_error(answer: str) -> None:
    with pytest.raises(ValueError, match="show stat"):
        parse_server_stats(answer)
