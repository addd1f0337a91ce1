"""Operating the real `replicante-poller run` process: restart, reload, shutdown."""
from __future__ import annotations

import json
import signal
import time

import pytest

from replicante_poller.agentsim import Fault, NodeSpec

from harness import config_text
from process import PollerProcess


@pytest.fixture
def processes():
    started: list[PollerProcess] = []

    def start(config) -> PollerProcess:
        process = PollerProcess(config)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_restart_keeps_health_and_last_success(tmp_path, start_sim, pki, processes):
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "n2", fault=Fault.AGENT_ERROR)])
    agents = [("rs", url) for _, url in sim.agents]
    path = tmp_path / "poller.ini"
    state = tmp_path / "state"
    path.write_text(config_text(agents, pki["ca"], interval="1s", timeout="500ms").replace(
        "[poller]\n", f"[poller]\nstate_dir = {state}\n"))
    first = processes(path)
    first.expect(r"all 2 agents polled: 1 UP, 1 down")
    before = first.targets()
    assert first.stop() == 0
    saved = json.loads((state / "state.json").read_text())
    assert {t["url"] for t in saved["targets"]} == {url for _, url in agents}

    # Second run with a one-hour interval: nothing is polled during the test, so what the
    # API shows right after start can only come from the saved state.
    path.write_text(path.read_text().replace("interval = 1s", "interval = 1h"))
    second = processes(path)
    second.expect(r"restored the state of 2 of 2 agents")
    after = second.targets()
    for url in before:
        for field in ("status", "reason", "health", "last_success", "last_poll", "datastore"):
            assert after[url][field] == before[url][field], (url, field)
    metrics = second.metrics()
    good = next(url for url, t in before.items() if t["status"] == "UP")
    assert metrics[("replicante_poller_agent_up", (("agent", good), ("cluster", "rs")))] == 1.0
    assert second.stop() == 0


def test_unreadable_state_file_is_set_aside_and_service_starts_fresh(tmp_path, start_sim, pki, processes):
    sim = start_sim([NodeSpec("rs", "n1")])
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{not json")
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", sim.agents[0][1])], pki["ca"], interval="1s", timeout="500ms").replace(
        "[poller]\n", f"[poller]\nstate_dir = {state}\n"))
    process = processes(path)
    process.expect(r"state file .* cannot be used")
    process.expect(r"all 1 agents polled: 1 UP")
    assert [p.name for p in state.iterdir() if p.name.startswith("state.json.unreadable-")]
    assert process.stop() == 0


def test_sighup_reload_adds_and_removes_agents_and_a_bad_file_keeps_the_last_good(tmp_path, start_sim, pki, processes):
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "n2")])
    (_, first_url), (_, second_url) = sim.agents
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", first_url)], pki["ca"], interval="1s", timeout="500ms"))
    process = processes(path)
    process.expect(r"all 1 agents polled")

    path.write_text(config_text([("rs", second_url)], pki["ca"], interval="1s", timeout="500ms"))
    process.signal(signal.SIGHUP)
    process.expect(r"now polling 1 agents")
    process.expect(r"all 1 agents polled")
    metrics = process.metrics()
    assert metrics[("replicante_poller_agent_up", (("agent", second_url), ("cluster", "rs")))] == 1.0
    assert not [k for k in metrics if ("agent", first_url) in k[1]], "removed agent's series must disappear"
    assert metrics[("replicante_poller_config_last_reload_successful", ())] == 1.0

    path.write_text("[poller]\ninterval = often\n")
    process.signal(signal.SIGHUP)
    process.expect(r"configuration reload failed, still running the last good one: .*\[poller\] interval")
    metrics = process.metrics()
    assert metrics[("replicante_poller_config_last_reload_successful", ())] == 0.0
    assert set(process.targets()) == {second_url}
    assert process.stop() == 0


def test_discovery_file_change_is_picked_up_without_a_signal(tmp_path, start_sim, pki, processes):
    sim = start_sim([NodeSpec("zk", "z1"), NodeSpec("zk", "z2")])
    (_, first_url), (_, second_url) = sim.agents
    discovery = tmp_path / "discovery.json"
    discovery.write_text(json.dumps([{"cluster_id": "zk", "nodes": [first_url]}]))
    path = tmp_path / "poller.ini"
    path.write_text(config_text([], pki["ca"], interval="1s", timeout="500ms")
                    + f"[discovery]\nfiles = {tmp_path}/*.json\nrefresh = 200ms\n")
    process = processes(path)
    process.expect(r"all 1 agents polled")
    discovery.write_text(json.dumps([{"cluster_id": "zk", "nodes": [first_url, second_url]}]))
    process.expect(r"discovery files changed")
    process.expect(r"now polling 2 agents")
    assert set(process.targets()) == {first_url, second_url}  # the line's promise: the API lists them already
    process.expect(r"all 2 agents polled: 2 UP")

    discovery.write_text("[{broken")
    process.expect(r"configuration reload failed.*discovery.json")
    assert set(process.targets()) == {first_url, second_url}
    assert process.metrics()[("replicante_poller_config_last_reload_successful", ())] == 0.0
    assert process.stop() == 0


def test_sigterm_lets_in_flight_polls_end_and_saves_state(tmp_path, start_sim, pki, processes):
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "hang", fault=Fault.HANGING)])
    state = tmp_path / "state"
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", url) for _, url in sim.agents], pki["ca"], interval="3s", timeout="2s")
                    .replace("[poller]\n", f"[poller]\nstate_dir = {state}\n"))
    process = processes(path)
    process.expect(r"all 2 agents polled")
    started = time.monotonic()
    assert process.stop() == 0
    assert time.monotonic() - started < 2 + 5  # timeout + 5 s
    saved = json.loads((state / "state.json").read_text())
    reasons = sorted(t["result"]["reason"] or "" for t in saved["targets"])
    assert reasons == ["", "timeout"]
