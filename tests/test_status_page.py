"""The status pages in a real browser: selenium drives Debian's chromium (headless) against
the running service polling agent-sim over TLS, with healthy and faulty agents and one whose
node id is `<script>alert(1)</script>`.

Screenshots go to $ARTIFACTS_DIR, else tests/artifacts/ (git-ignored); the path is printed.
One browser and one fleet for the whole module. Chromium or chromedriver missing is a
failure, never a skip (.ci/run installs both); selenium never downloads anything: it is
given both paths, so Selenium Manager does not run.
"""
from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from replicante_poller.agentsim import AgentSim, Fault, NodeSpec, server_contexts
from replicante_poller.config import parse_config
from replicante_poller.service import Service

from harness import ACTIONS_TOKEN, action_files, actions_config, all_polled

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
XSS_NODE = "<script>alert(1)</script>"
XSS_NAME = '<img src=x onerror="alert(2)">'
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or Path(__file__).parent / "artifacts")
WIDE, PHONE = (1400, 900), (420, 900)

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # failed in the fixture with a clear message, not at collection
    webdriver = None

NODES = [
    NodeSpec("mongo-1", "mongo-1-node-1", "MongoDB"),
    NodeSpec("mongo-1", "mongo-1-node-2", "MongoDB", Fault.NODE_DOWN),
    NodeSpec("mongo-1", XSS_NODE, "MongoDB", display_name=XSS_NAME),
    NodeSpec("kafka-2", "kafka-2-broker-1", "Kafka", generation="replisdk"),
    NodeSpec("kafka-2", "kafka-2-broker-2", "Kafka", generation="replisdk", node_status="JOINING_CLUSTER"),
    NodeSpec("kafka-2", "kafka-2-broker-3", "Kafka", Fault.SERVICE_UNAVAILABLE, generation="replisdk"),
    NodeSpec("zk-3", "zk-3-node-1", "Zookeeper"),
    NodeSpec("zk-3", "zk-3-node-2", "Zookeeper", Fault.GARBAGE),
    NodeSpec("zk-3", "zk-3-node-3", "Zookeeper", Fault.WRONG_CLUSTER),
    *[NodeSpec("mongo-4", f"mongo-4-node-{n}", "MongoDB", display_name="Orders (eu-west)") for n in range(1, 10)],
]
PING = "agent.replicante.io/test.ping"
SECRET_ARG = "args-are-not-shown-8d1f"


@pytest.fixture(scope="module")
def fleet(pki: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """agent-sim (over TLS, as agents serve it) and the service polling it, with actions on:
    the same parts conftest's start_sim and start_service start, for the whole module."""
    folder = tmp_path_factory.mktemp("status-page")
    sim = AgentSim(NODES, server_contexts(pki["server"].configure_cert, None), drip_seconds=0.2).start()
    service = None
    try:
        urls = {spec.node_id: url for spec, url in sim.agents}
        text = actions_config([(spec.cluster_id, url) for spec, url in sim.agents], pki, action_files(folder))
        service = Service(parse_config(text))
        service.start()
        all_polled(service)
        host, port = service.api_address
        yield {"base": f"http://{host}:{port}", "urls": urls, "service": service}
    finally:
        if service is not None:
            service.stop()
        sim.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator["webdriver.Chrome"]:
    """Headless chromium through chromedriver (Debian's packages)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browser tests need Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    if webdriver is None:
        pytest.fail("selenium is not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WIDE[0]},{WIDE[1]}", "--force-color-profile=srgb", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nstatus page screenshots: {ARTIFACTS}")
    try:
        yield driver
    finally:
        driver.quit()


def viewport(driver: "webdriver.Chrome", size: tuple[int, int]) -> None:
    """The page's viewport: a desktop window, or a phone (mobile, so the viewport meta counts)."""
    width, height = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 800})


def screenshot(driver: "webdriver.Chrome", name: str) -> Path:
    """The whole page (beyond the viewport) as ARTIFACTS/name.png."""
    width, height = driver.execute_script(
        "const e = document.documentElement; return [Math.max(e.scrollWidth, innerWidth), e.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def no_alert(driver: "webdriver.Chrome") -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text


def only_our_script(driver: "webdriver.Chrome") -> None:
    """No element an agent string could have injected: the one script is the page's own."""
    sources = driver.execute_script("return Array.from(document.scripts, s => s.getAttribute('src'))")
    assert len(sources) == 1 and sources[0].startswith("/static/status.js?v="), sources
    assert driver.execute_script("return document.images.length + document.querySelectorAll('[onerror]').length") == 0


def rows(driver: "webdriver.Chrome") -> list[dict[str, str]]:
    """The overview's agent rows: status, cluster and agent URL of each, in page order."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('table.agents tr.row'), tr => ({
            status: tr.querySelector('td.st').textContent.trim(),
            cluster: tr.cells[1].querySelector('span').textContent,
            url: tr.querySelector('td.agent a').textContent,
            group: tr.parentElement.className}));""")


def load(driver: "webdriver.Chrome", url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_overview_shows_problems_first_counts_and_agent_strings_as_text(fleet, browser):
    viewport(browser, WIDE)
    load(browser, fleet["base"] + "/?refresh=0")
    seen = rows(browser)
    targets = requests.get(fleet["base"] + "/api/v1/targets", timeout=5).json()["targets"]
    assert len(seen) == len(targets) == len(NODES)
    count = {status: sum(1 for t in targets if t["status"] == status) for status in ("UP", "AGENT_DOWN", "NODE_DOWN")}
    assert count == {"UP": len(NODES) - 4, "AGENT_DOWN": 1, "NODE_DOWN": 3}, count
    down = [r for r in seen if r["status"] != "UP"]
    assert len(down) == 4 and seen[:len(down)] == down, "every problem comes before the first UP agent"
    assert {r["group"] for r in down} == {"problems"}
    tiles = {t.find_element(By.TAG_NAME, "span").text.lower(): int(t.find_element(By.TAG_NAME, "b").text)
             for t in browser.find_elements(By.CSS_SELECTOR, ".tiles a")}
    assert tiles == {"agents": len(NODES), "problems": 4, "agent down": 1, "node down": 3, "not polled": 0,
                     "up": len(NODES) - 4}, tiles
    assert "4 problems" in browser.title
    # The hostile node id and display name are text, and nothing ran.
    body = browser.find_element(By.TAG_NAME, "body").text
    assert XSS_NODE in body and XSS_NAME in body
    no_alert(browser)
    only_our_script(browser)
    # The deferred agent's note stays in its cell: nothing past the window's right edge.
    deferred = browser.find_element(By.XPATH, "//tr[.//a[text()='%s']]" % fleet["urls"]["kafka-2-broker-3"])
    assert "Retry-After" in deferred.text
    right = browser.execute_script("return Math.max(...Array.from(arguments[0].cells, c => c.getBoundingClientRect().right))",
                                   deferred)
    assert right <= WIDE[0]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= WIDE[0]
    load(browser, fleet["base"] + "/")  # as an operator opens it: refreshing every 10 s
    screenshot(browser, "overview-1400")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    screenshot(browser, "overview-1400-dark")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


def test_filters_in_the_url_select_and_survive_as_links(fleet, browser):
    viewport(browser, WIDE)
    load(browser, fleet["base"] + "/?status=AGENT_DOWN&refresh=0")
    assert [r["url"] for r in rows(browser)] == [fleet["urls"]["zk-3-node-2"]]
    assert Select(browser.find_element(By.NAME, "status")).first_selected_option.get_attribute("value") == "AGENT_DOWN"
    load(browser, fleet["base"] + "/?cluster=zk-3&reason=invalid_json&refresh=0")
    assert [r["url"] for r in rows(browser)] == [fleet["urls"]["zk-3-node-2"]]
    load(browser, fleet["base"] + "/?" + urlencode({"cluster": "mongo-1", "status": "problems", "refresh": "0"}))
    assert [r["url"] for r in rows(browser)] == [fleet["urls"]["mongo-1-node-2"]]
    load(browser, fleet["base"] + "/?status=bogus&refresh=0")  # not understood: said so, and everything shown
    assert len(rows(browser)) == len(NODES)
    assert "Ignored status 'bogus'" in browser.find_element(By.ID, "live").text


def test_filter_with_the_page_control_updates_the_url_and_the_table(fleet, browser):
    viewport(browser, WIDE)
    load(browser, fleet["base"] + "/?refresh=0")
    Select(browser.find_element(By.NAME, "cluster")).select_by_value("kafka-2")
    WebDriverWait(browser, 5).until(lambda d: {r["cluster"] for r in rows(d)} == {"kafka-2"})
    assert parse_qs(urlsplit(browser.current_url).query) == {"cluster": ["kafka-2"], "refresh": ["0"]}
    assert [r["status"] for r in rows(browser)][0] == "NODE_DOWN"  # its problem first
    search = browser.find_element(By.NAME, "q")
    search.send_keys("broker-2")
    WebDriverWait(browser, 5).until(lambda d: len(rows(d)) == 1)
    assert parse_qs(urlsplit(browser.current_url).query)["q"] == ["broker-2"]
    screenshot(browser, "overview-filtered-1400")
    browser.back()  # the previous filters come back, in the URL and the controls
    WebDriverWait(browser, 5).until(lambda d: len(rows(d)) == 3)
    assert browser.find_element(By.NAME, "q").get_attribute("value") == ""


def test_auto_refresh_keeps_scroll_position_and_filter(fleet, browser):
    viewport(browser, PHONE)
    load(browser, fleet["base"] + "/?cluster=mongo-4&refresh=1")
    assert browser.execute_script("return document.documentElement.scrollHeight") > PHONE[1] + 400
    browser.execute_script("window.scrollTo(0, 400)")
    # Read through scripts (atomic in the page): the refresh replaces elements every second,
    # so a WebElement found a moment ago may be gone when it is read.
    generated = "return document.getElementById('live').getAttribute('data-generated')"
    before = browser.execute_script(generated)
    url = browser.current_url
    WebDriverWait(browser, 6, poll_frequency=0.1).until(lambda d: d.execute_script(generated) != before)
    assert browser.execute_script("return window.scrollY") == 400
    assert browser.current_url == url
    assert browser.execute_script("return document.querySelector('select[name=cluster]').value") == "mongo-4"
    assert {r["cluster"] for r in rows(browser)} == {"mongo-4"} and len(rows(browser)) == 9
    assert browser.execute_script("return document.getElementById('refresh-state').textContent.trim()") == ""


def test_agent_page_shows_polls_with_failures_shards_certificate_and_actions(fleet, browser):
    viewport(browser, WIDE)
    failing = fleet["urls"]["mongo-1-node-2"]
    load(browser, fleet["base"] + "/?refresh=0")
    browser.find_element(By.LINK_TEXT, failing).click()
    WebDriverWait(browser, 5).until(lambda d: d.find_elements(By.ID, "polls"))
    assert parse_qs(urlsplit(browser.current_url).query) == {"cluster": ["mongo-1"], "url": [failing]}
    hero = browser.find_element(By.CSS_SELECTOR, ".hero").text
    assert "NODE_DOWN" in hero and "http_status" in hero
    failed = browser.find_elements(By.CSS_SELECTOR, "#polls tr.failed")
    assert failed and "http_status" in failed[0].text

    healthy = fleet["urls"]["kafka-2-broker-1"]
    reply = requests.post(fleet["base"] + "/api/v1/actions", json={"agent": healthy, "kind": PING,
                                                                  "args": {"note": SECRET_ARG}},
                          headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"}, timeout=5)
    assert reply.status_code == 202, reply.text
    load(browser, fleet["base"] + "/agent?" + urlencode({"cluster": "kafka-2", "url": healthy, "refresh": "0"}))
    facts = browser.find_element(By.CSS_SELECTOR, ".panels").text
    assert "replisdk" in facts and "kafka-2-broker-1" in facts and "kafka" in facts.lower()
    assert re.search(r"Certificate\s+expires in \d+", facts), facts
    shards = browser.find_elements(By.CSS_SELECTOR, "#shards tbody tr")
    assert shards and all(re.search(r"(primary|secondary|recovering|unknown)", s.text) for s in shards)
    assert any(re.search(r"\d+ (s|ms|messages|offset)\b", s.text) for s in shards), [s.text for s in shards]
    assert browser.find_elements(By.CSS_SELECTOR, "#polls tbody tr")
    actions = browser.find_element(By.ID, "actions").text
    assert PING in actions and reply.json()["id"] in actions
    assert SECRET_ARG not in browser.page_source
    screenshot(browser, "agent-1400")
    viewport(browser, PHONE)
    load(browser, fleet["base"] + "/agent?" + urlencode({"cluster": "kafka-2", "url": healthy, "refresh": "0"}))
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    screenshot(browser, "agent-420")
    load(browser, fleet["base"] + "/agent?" + urlencode({"cluster": "mongo-1", "url": failing, "refresh": "0"}))
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    screenshot(browser, "agent-failing-420")


def test_agent_reporting_a_script_as_its_node_id_is_shown_as_text(fleet, browser):
    viewport(browser, WIDE)
    url = fleet["urls"][XSS_NODE]
    load(browser, fleet["base"] + "/agent?" + urlencode({"cluster": "mongo-1", "url": url, "refresh": "0"}))
    assert XSS_NODE in browser.find_element(By.CSS_SELECTOR, ".panels").text
    assert XSS_NAME in browser.find_element(By.CSS_SELECTOR, ".panels").text
    no_alert(browser)
    only_our_script(browser)


def test_phone_layout_has_no_horizontal_overflow(fleet, browser):
    viewport(browser, PHONE)
    load(browser, fleet["base"] + "/?refresh=0")
    assert browser.execute_script("return window.innerWidth") == PHONE[0]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    first = browser.find_element(By.CSS_SELECTOR, "table.agents tr.row")
    assert first.rect["width"] <= PHONE[0]  # a card, not a row wider than the phone
    screenshot(browser, "overview-420")
    browser.save_screenshot(str(ARTIFACTS / "overview-420-screen.png"))  # what the phone shows first


def test_pages_are_self_contained_and_unknown_agents_are_404(fleet):
    page = requests.get(fleet["base"] + "/", timeout=5)
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "no external asset"
    script = re.search(r'<script src="(/static/status\.js\?v=\w+)"', page.text).group(1)
    served = requests.get(fleet["base"] + script, timeout=5)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("text/javascript")
    assert not re.search(r"\beval\(|innerHTML|document\.write", served.text)
    missing = requests.get(fleet["base"] + "/agent?" + urlencode({"cluster": "mongo-1", "url": "https://nowhere:1"}),
                           timeout=5)
    assert missing.status_code == 404 and "No such agent" in missing.text
    assert missing.headers["Content-Security-Policy"] == policy


# --- rendering without a browser: every agent-reported string is escaped -------------------

PROBE = '<xss-probe a="1">\'"&'


class HostileActions:
    """An actions provider whose journal holds an action with hostile fields."""

    def agent_actions(self, agent: str, limit: int = 20) -> list[dict]:
        return [{"id": PROBE, "kind": PROBE, "state": PROBE, "attempts": 1, "created_ts": 1.0, "updated_ts": 2.0}]


def hostile_view(now: float):
    """A target whose configuration and every answer field carry PROBE."""
    from replicante_poller.config import PollSettings, TlsSettings
    from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, NodeStatus, Offset, Shard
    from replicante_poller.polling.discovery import Target
    from replicante_poller.polling.poll import PollResult
    from replicante_poller.polling.state import FleetState
    from replicante_poller.reasons import Reason, Status

    target = Target(PROBE, "https://agent:1/" + PROBE, PROBE, PollSettings(10.0, 1.0), TlsSettings())
    state = FleetState(fall=1, rise=1)
    state.set_targets([target])
    answered = dict(agent=AgentInfo(AgentVersion(PROBE, PROBE, PROBE)),
                    datastore=DatastoreInfo(PROBE, PROBE, PROBE, PROBE, PROBE),
                    shards=(Shard(PROBE, "unknown", PROBE, Offset(PROBE, 1, True), Offset(PROBE, 2, True)),),
                    cert_not_after=now + 86400, node_status=NodeStatus("UNKNOWN", PROBE), api="replisdk")
    state.record(PollResult(target, Status.UP, None, PROBE, now - 20, 0.1, **answered))
    state.record(PollResult(target, Status.NODE_DOWN, Reason.CLUSTER_MISMATCH, PROBE, now - 10, 0.1, retry_after=30,
                            **answered))
    return state.snapshot()


def test_every_agent_reported_string_is_escaped_in_both_pages():
    from replicante_poller.web.page import serve

    now = time.time()
    views = hostile_view(now)
    target = views[0].target
    overview = serve("/", "", lambda: views, None, now)
    agent = serve("/agent", urlencode({"cluster": target.cluster_id, "url": target.url}), lambda: views,
                  HostileActions(), now)
    assert overview.status == agent.status == 200
    for page in (overview.body.decode(), agent.body.decode()):
        assert "<xss-probe" not in page and 'a="1"' not in page
        assert "&lt;xss-probe a=&quot;1&quot;&gt;&#x27;&quot;&amp;" in page
    agent_text = agent.body.decode()
    assert agent_text.count("&lt;xss-probe") >= 12  # node, clusters, versions, shard, units, status, message, action
    assert "cluster_mismatch" in agent_text and "deferred" in agent_text  # the note of a deferred agent


def test_query_parameters_not_understood_change_nothing():
    from replicante_poller.web.page import DEFAULT_REFRESH, MAX_ROWS, Filters, _params

    filters = Filters.parse(_params("status=nope&reason=%3Cb%3E&limit=%C2%B2&refresh=-1&q=++node-1++"))
    assert (filters.status, filters.reason, filters.limit, filters.refresh, filters.text) == \
        ("", "", MAX_ROWS, DEFAULT_REFRESH, "node-1")
    assert filters.ignored == ("status 'nope'", "reason '<b>'")
    assert Filters.parse(_params("refresh=0&limit=all")).refresh == 0.0
    assert Filters.parse(_params("refresh=2.5&limit=7")).limit == 7
