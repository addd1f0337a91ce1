"""The whole service in process against simulated agents: every fault gets its status and
reason, identically in /api/v1/targets and /metrics."""
from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.agentsim import Fault, NodeSpec

from harness import EXPECTED, all_polled, config_text



def scrape(host: str, port: int) -> dict[tuple[str, tuple], float]:
    text = requests.get(f"http://{host}:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_simulated_fault_has_its_status_and_reason_in_api_and_metrics(start_sim, start_service, pki):
    nodes = [NodeSpec(f"c-{fault.value}", f"n-{fault.value}", fault=fault) for fault in Fault]
    sim = start_sim(nodes, drip_seconds=0.3)
    service = start_service(config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"]))
    all_polled(service)
    host, port = service.api_address

    targets = {t["url"]: t for t in requests.get(f"http://{host}:{port}/api/v1/targets", timeout=5).json()["targets"]}
    metrics = scrape(host, port)
    for spec, url in sim.agents:
        status, reason = EXPECTED[spec.fault][0].value, EXPECTED[spec.fault][1] and EXPECTED[spec.fault][1].value
        assert (targets[url]["status"], targets[url]["reason"]) == (status, reason), (spec.fault, targets[url]["message"])
        assert targets[url]["message"]
        labels = (("agent", url), ("cluster", spec.cluster_id))
        assert metrics[("replicante_poller_agent_up", labels)] == (1.0 if status == "UP" else 0.0), spec.fault
        for candidate in ("UP", "AGENT_DOWN", "NODE_DOWN"):
            one_hot = metrics[("replicante_poller_agent_status", labels + (("status", candidate),))]
            assert one_hot == (1.0 if candidate == status else 0.0), (spec.fault, candidate)
        if reason is not None:
            assert metrics[("replicante_poller_poll_failures_total", (("reason", reason),))] >= 1.0

    healthy_url = next(url for spec, url in sim.agents if spec.fault is Fault.HEALTHY)
    assert targets[healthy_url]["datastore"]["cluster_id"] == "c-healthy"
    assert metrics[("replicante_poller_tls_cert_expiry_timestamp_seconds",
                    (("agent", healthy_url), ("cluster", "c-healthy")))] > 0
    page = requests.get(f"http://{host}:{port}/", timeout=5).text
    assert "cluster_mismatch" in page and healthy_url in page


def test_duplicate_node_ids_in_one_cluster_mark_every_reporting_agent_node_down(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "same-node"), NodeSpec("rs", "same-node"), NodeSpec("rs", "other-node")])
    service = start_service(config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"]))
    views = all_polled(service)
    by_node: dict[str, list] = {}
    for view in views:
        by_node.setdefault(view.result.datastore.node_id, []).append(view.result)
    assert service.state.wait_for(lambda views: sum(
        1 for v in views if v.result and v.result.reason and v.result.reason.value == "duplicate_node") == 2, 10)
    same = [(v.result.status.value, v.result.reason.value) for v in service.snapshot()
            if v.result.datastore.node_id == "same-node"]
    assert same == [("NODE_DOWN", "duplicate_node")] * 2
    assert [r.status.value for r in by_node["other-node"]] == ["UP"]


def test_unknown_paths_are_404_and_metrics_have_fixed_reason_set(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "n1")])
    service = start_service(config_text([("rs", sim.agents[0][1])], pki["ca"]))
    all_polled(service)
    host, port = service.api_address
    assert requests.get(f"http://{host}:{port}/nope", timeout=5).status_code == 404
    zipped = requests.get(f"http://{host}:{port}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
    plain = requests.get(f"http://{host}:{port}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
    assert zipped.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
    assert "replicante_poller_polls_total" in zipped.text and "replicante_poller_polls_total" in plain.text
    metrics = scrape(host, port)
    reasons = {dict(labels)["reason"] for name, labels in metrics if name == "replicante_poller_poll_failures_total"}
    assert reasons == {"dns", "connect", "connect_timeout", "tls_handshake", "tls_verify", "tls_pin", "timeout",
                       "protocol", "http_status", "too_large", "content_type", "invalid_json", "schema", "cluster_mismatch",
                       "duplicate_node", "node_unavailable", "local", "internal"}
    assert metrics[("replicante_poller_config_last_reload_successful", ())] == 1.0
    assert metrics[("replicante_poller_targets", ())] == 1.0


def test_retry_after_defers_polls_and_shows_it(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "busy", fault=Fault.SERVICE_UNAVAILABLE), NodeSpec("rs", "ok")])
    (_, busy), (_, ok) = sim.agents
    service = start_service(config_text([("rs", busy), ("rs", ok)], pki["ca"], interval="500ms", timeout="400ms"))
    polled: set[float] = set()

    def healthy_polled_three_times(views) -> bool:  # the healthy agent is the clock: 3 slots passed
        polled.update(v.result.started for v in views if v.target.url == ok and v.result is not None)
        return len(polled) >= 3 and all(v.result is not None for v in views)

    assert service.state.wait_for(healthy_polled_three_times, timeout=15)
    assert sim.requests_seen(busy) == 1  # polled once, then deferred for its Retry-After: 30
    host, port = service.api_address
    target = next(t for t in requests.get(f"http://{host}:{port}/api/v1/targets", timeout=5).json()["targets"]
                  if t["url"] == busy)
    assert (target["status"], target["reason"]) == ("AGENT_DOWN", "http_status") and target["deferred_until"]
    metrics = scrape(host, port)
    assert metrics[("replicante_poller_polls_skipped_total", (("reason", "deferred"),))] >= 1
    assert metrics[("replicante_poller_agent_deferred_until_timestamp_seconds", (("agent", busy), ("cluster", "rs")))] > 0
