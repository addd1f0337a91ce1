"""End to end: an agent behind a real nginx terminating TLS, as Replicante's docs advise."""
from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.agentsim import NodeSpec

from harness import all_polled, config_text


def test_agent_behind_nginx_is_reported_up(start_sim, start_nginx, start_service, pki):
    sim = start_sim([NodeSpec("mongo-rs", "mongo-rs-1")], tls=False)
    (spec, upstream), = sim.agents
    url = start_nginx(upstream)

    service = start_service(config_text([("mongo-rs", url)], pki["ca"]))
    all_polled(service)
    host, port = service.api_address

    targets = requests.get(f"http://{host}:{port}/api/v1/targets", timeout=5).json()["targets"]
    assert [(t["url"], t["status"], t["reason"]) for t in targets] == [(url, "UP", None)]
    assert targets[0]["datastore"]["node_id"] == "mongo-rs-1"
    assert targets[0]["shards"][0]["role"] == "primary"
    assert sim.requests_seen(upstream) == 3  # all three GETs went through nginx to the agent

    text = requests.get(f"http://{host}:{port}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("replicante_poller_agent_up", (("agent", url), ("cluster", "mongo-rs")))] == 1.0
    assert samples[("replicante_poller_agent_status", (("agent", url), ("cluster", "mongo-rs"), ("status", "UP")))] == 1.0
    assert samples[("replicante_poller_polls_total", (("result", "success"),))] >= 1.0
