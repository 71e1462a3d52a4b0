"""Plan laws: applying a plan yields what was desired, and planning again yields nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.reconcile import desired, haproxy_text, plans
from sidecar.reconcile.desired import HaproxySettings
from sidecar.reconcile.plans import Actual
from sidecar.state import views
from sidecar.state.model import Service, Status
from tests.builders import cluster_state, service

SETTINGS = HaproxySettings(bind_ip="192.168.168.168")

records = st.lists(
    st.builds(
        lambda host, sid, name, port, service_port, status: service(
            host,
            sid,
            name=name,
            image="i:1",
            ports=((port, service_port),),
            ip="10.0.0.1",
            status=status,
        ),
        host=st.sampled_from(["h1", "h2", "h3"]),
        sid=st.sampled_from(["a1", "b2", "c3"]),
        name=st.sampled_from(["web", "api"]),
        port=st.sampled_from([30001, 30002]),
        service_port=st.sampled_from([8080, 9000]),
        status=st.sampled_from([Status.ALIVE, Status.ALIVE, Status.UNHEALTHY]),
    ),
    max_size=6,
)


def desired_of(found: list[Service]) -> desired.Desired:
    state = cluster_state("me", *found)
    return desired.desired(views.routing_table(state), SETTINGS)


# A server a running HAProxy may have that its config lacks: named as the records above
# name theirs, or as none does; at a port they use, or not.
extra_server = st.tuples(
    st.sampled_from([f"{h}-{s}" for h in ("h1", "h2", "h3", "h9") for s in ("a1", "b2", "c3")]),
    st.sampled_from([30001, 1]),
)


@st.composite
def actuals(draw, found: list[Service]):
    """What a host may have: nothing, or HAProxy run from some config (often the one `found`
    gives, else one whose frontends and backends may differ), its runtime servers since
    changed (a server gone, one moved, servers the config lacks: left by a deletion that
    waits, or added by hand), maybe not running any more."""
    if draw(st.sampled_from(["nothing", "something", "something"])) == "nothing":
        return Actual()
    started = found if draw(st.sampled_from([True, True, False])) else draw(records)
    actual = plans.apply(Actual(), plans.plan(desired_of(started), Actual()))
    servers = {b: dict(s) for b, s in actual.servers.items()}
    for backend in servers:
        for name in list(servers[backend]):
            change = draw(st.sampled_from(["keep", "keep", "drop", "move"]))
            if change == "drop":
                del servers[backend][name]
            elif change == "move":
                servers[backend][name] = ("10.9.9.9", 1)
    backends = st.sampled_from(sorted(servers))  # the running config's: stats ones at least
    for _ in range(draw(st.sampled_from([0, 1, 2, 3]))):
        backend, (name, port) = draw(backends), draw(extra_server)
        servers[backend][name] = ("10.9.9.8", port)
    names = sorted((b, n) for b, names in servers.items() for n in names)
    return Actual(
        config=actual.config,
        running=draw(st.sampled_from([True, True, False])),
        servers=servers,
        disabled=frozenset(draw(st.lists(st.sampled_from(names), unique=True)) if names else ()),
        bound_ips=actual.bound_ips if draw(st.booleans()) else frozenset(),
    )


@given(records, st.data())
def test_applying_a_plan_yields_what_was_desired_and_then_nothing_is_pending(found, data):
    actual = data.draw(actuals(found), label="actual")
    want = desired_of(found)
    after = plans.apply(actual, plans.plan(want, actual))
    assert after.config == want.config
    assert after.running
    assert set(want.bind_ips) <= after.bound_ips
    wanted = haproxy_text.servers_in(want.config)
    # Every server running is wanted, in every backend (an extra one is deleted).
    assert {b: dict(s) for b, s in after.servers.items() if s} == {
        b: s for b, s in wanted.items() if s
    }
    assert not after.disabled & {(b, n) for b, names in wanted.items() for n in names}
    assert plans.plan(want, after) == ()


@given(records, records)
def test_a_server_only_change_never_reloads(before, now):
    old, new = desired_of(before), desired_of(now)
    actual = plans.apply(Actual(), plans.plan(old, Actual()))
    kinds = [a.kind for a in plans.plan(new, actual)]
    if haproxy_text.without_servers(old.config) == haproxy_text.without_servers(new.config):
        assert "reload" not in kinds
        assert "start" not in kinds
    else:
        assert kinds.count("reload") == 1
