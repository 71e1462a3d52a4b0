"""The web UI in headless Chromium: against a real `sidecar run` (Docker discovery, managed
HAProxy) a container appears, drains and goes on the page without a reload; against the
API over an in-memory catalog, the token prompt, the filters in the URL, the reconnection
after a restart and a phone's width. No test leaves a console error unexplained.

Every wait is Playwright's bounded `expect(...)` or the suite's `wait_for`.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from sidecar.state import merge

from .browser_kit import ApiInThread, Console, open_browser
from .conftest import REPO, daemon_environment, http_request, wait_for
from .test_http_api import ME, PEER, MemoryCatalog, initial_state

pytestmark = pytest.mark.browser

LIVE = 30_000  # ms: a change reaches the page well within this, even on a loaded machine


def row(page: Page, hostname: str, service_id: str):
    return page.locator(f'[data-instance="{hostname}/{service_id}"]')


@pytest.fixture
def browser():
    with open_browser() as launched:
        yield launched


@pytest.fixture
def memory_api(loopback):
    """Factory: the API over a MemoryCatalog of `initial_state()`, served from a thread."""
    made: list[ApiInThread] = []

    def make(**options) -> ApiInThread:
        host = loopback.address()
        api = ApiInThread(MemoryCatalog(initial_state()), host, loopback.port(host), **options)
        made.append(api)
        api.start()
        return api

    yield make
    for api in made:
        api.close()


@pytest.mark.docker
@pytest.mark.haproxy
def test_a_container_appears_drains_and_goes_on_the_page_without_a_reload(
    spawn, tmp_path, loopback, run_container, test_image, browser
):
    env = daemon_environment(
        tmp_path, loopback, SIDECAR_DISCOVERY="docker", HAPROXY_STOP_ON_EXIT="true"
    )
    spawn.start([sys.executable, "-m", "sidecar", "run"], name="sidecar", env=env, cwd=REPO)
    base = f"http://{env['SIDECAR_HTTP_ADDRESS']}"
    wait_for(lambda: http_request(base + "/healthz").status == 200, what="/healthz", timeout=30)
    me = env["SIDECAR_HOSTNAME"]

    page = browser.new_page()
    console = Console(page)
    page.goto(base + "/")  # redirected to /ui/
    assert urlsplit(page.url).path == "/ui/"
    expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=LIVE)
    expect(page).to_have_title(re.compile(re.escape(me)))
    expect(page.locator(f'#members [data-member="{me}"]')).to_be_visible()
    page.evaluate("window.notReloaded = true")  # gone if the page ever reloads

    name, port = f"web-{uuid.uuid4().hex[:6]}", loopback.port()
    labels = {"ServiceName": name, "ServicePort_80": str(port)}
    container = run_container(test_image, labels=labels, publish_all_ports=True)
    sid = container.id[:12]
    instance = row(page, me, sid)
    expect(instance.locator('[data-field="status"]')).to_have_text("ALIVE", timeout=LIVE)
    expect(instance.locator('[data-field="haproxy"]')).to_have_text(
        re.compile(r"^\s*UP"), timeout=LIVE
    )
    expect(instance).to_contain_text(name)
    expect(instance).to_contain_text(f"{port}")

    page.once("dialog", lambda dialog: dialog.accept())
    instance.locator('[data-action="drain"]').click()
    expect(instance.locator('[data-field="status"]')).to_have_text("DRAINING", timeout=LIVE)
    # HAProxy takes it out: in maintenance while requests finish, then deleted.
    expect(instance.locator('[data-field="haproxy"]')).not_to_have_text(
        re.compile(r"^\s*UP"), timeout=LIVE
    )
    record = json.loads(http_request(base + "/api/services.json").body)["Services"][name][0]
    assert record["Status"] == 4
    bind = env["HAPROXY_BIND_IP"]
    wait_for(
        lambda: _refused_or_503(f"http://{bind}:{port}/"),
        what="HAProxy no longer serving the drained instance",
        timeout=30,
    )

    container.stop(timeout=5)
    expect(instance.locator('[data-field="status"]')).to_have_text("TOMBSTONE", timeout=LIVE)
    assert page.evaluate("window.notReloaded") is True
    assert console.problems == []


def _refused_or_503(url: str) -> bool:
    try:
        return http_request(url).status == 503
    except ConnectionRefusedError:
        return True


def test_drain_asks_for_the_token_when_the_api_refuses(memory_api, browser):
    api = memory_api(api_token="s3cret", trust_loopback=False)
    page = browser.new_page()
    # The two refusals below are the API's answers, logged by Chromium as failed loads.
    console = Console(page, expected=("403 (Forbidden)",))
    page.goto(api.url + "/ui/")
    expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=LIVE)
    own = row(page, ME, "aaa111aaa111")
    assert row(page, PEER, "bbb222bbb222").locator('[data-action="drain"]').count() == 0
    page.on("dialog", lambda dialog: dialog.accept())

    own.locator('[data-action="drain"]').click()
    token = page.get_by_label(re.compile("token", re.IGNORECASE))
    expect(token).to_be_visible(timeout=LIVE)
    token.fill("wrong")
    token.press("Enter")
    expect(page.get_by_text(re.compile("Forbidden")).first).to_be_visible(timeout=LIVE)
    expect(own.locator('[data-field="status"]')).to_have_text("ALIVE")

    own.locator('[data-action="drain"]').click()
    token = page.get_by_label(re.compile("token", re.IGNORECASE))
    expect(token).to_be_visible(timeout=LIVE)
    token.fill("s3cret")
    token.press("Enter")
    expect(own.locator('[data-field="status"]')).to_have_text("DRAINING", timeout=LIVE)
    assert page.evaluate("sessionStorage.length") >= 1  # asked once per tab
    assert console.problems == []


def test_the_filter_is_in_the_url_and_a_shared_url_opens_filtered(memory_api, browser):
    api = memory_api()
    page = browser.new_page()
    console = Console(page)
    page.goto(api.url + "/ui/?name=web&host=" + PEER)
    expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=LIVE)
    expect(page.locator("#filter-name")).to_have_value("web")
    expect(row(page, PEER, "bbb222bbb222")).to_be_visible()
    expect(row(page, ME, "aaa111aaa111")).to_be_hidden()  # another host
    expect(row(page, ME, "ddd444ddd444")).to_be_hidden()  # another name

    page.locator("#filter-host").fill("")
    page.locator("#filter-name").fill("my.")
    expect(row(page, ME, "ddd444ddd444")).to_be_visible()
    expect(row(page, PEER, "bbb222bbb222")).to_be_hidden()
    wait_for(
        lambda: parse_qs(urlsplit(page.url).query).get("name") == ["my."],
        what="the name filter in the URL",
        timeout=10,
    )
    assert "host" not in parse_qs(urlsplit(page.url).query)
    expect(page.locator("#shown-count")).to_contain_text("1")
    assert console.problems == []


def test_the_page_follows_the_daemon_across_a_restart(memory_api, browser):
    api = memory_api()
    page = browser.new_page()
    # While the daemon is away, the browser's reconnection attempts fail and say so.
    console = Console(page, expected=("ERR_CONNECTION_REFUSED", "api/ui/events"))
    page.goto(api.url + "/ui/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=LIVE)
    page.evaluate("window.notReloaded = true")

    api.stop()
    expect(page.locator("#connection")).to_have_attribute(
        "data-state", "reconnecting", timeout=LIVE
    )
    drained = merge.drain(api.catalog.state(), "aaa111aaa111", now=api.catalog.now)
    assert drained is not None
    api.publish(drained.state)  # what the restarted daemon knows
    api.start()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=LIVE)
    expect(row(page, ME, "aaa111aaa111").locator('[data-field="status"]')).to_have_text(
        "DRAINING", timeout=LIVE
    )
    assert page.evaluate("window.notReloaded") is True
    assert console.problems == []


def test_a_phone_reads_the_page_without_scrolling_sideways(memory_api, browser):
    api = memory_api()
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
    console = Console(page)
    page.goto(api.url + "/ui/")
    expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=LIVE)
    expect(row(page, ME, "aaa111aaa111")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    # Accessible names: every filter has a label, the tables are captioned.
    for field in ("#filter-name", "#filter-host", "#filter-status"):
        assert page.locator(f"label[for='{field[1:]}']").count() == 1, field
    assert page.locator("table caption").count() >= 2
    assert console.problems == []
