"""A mixed fleet: 200 simulated agents, one in five hostile. Hostile agents must not delay
anyone else: every healthy agent is polled in every interval and no poll is skipped.
(How late polls start is a figure for the benchmark, not a functional outcome.)"""
from __future__ import annotations

from collections import defaultdict

from replicante_poller.agentsim import Fault, NodeSpec, fleet
from replicante_poller.web.metrics import sample

from harness import config_text

HOSTILE = {Fault.HANGING: 12, Fault.SLOW: 12, Fault.HUGE: 4, Fault.GARBAGE: 4, Fault.AGENT_ERROR: 4,
           Fault.WRONG_CLUSTER: 4}
INTERVAL, POLLS = 2.0, 4


def test_hostile_agents_do_not_delay_healthy_ones(start_sim, start_service, pki):
    nodes: list[NodeSpec] = fleet(20, 10, HOSTILE)
    assert len(nodes) == 200 and sum(1 for n in nodes if n.fault is not Fault.HEALTHY) == 40
    sim = start_sim(nodes, drip_seconds=0.2)
    text = config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"],
                       interval=f"{INTERVAL:g}s", timeout="1s").replace("workers = 8", "workers = 32")
    service = start_service(text)
    healthy = {url for spec, url in sim.agents if spec.fault is Fault.HEALTHY}

    polls: dict[str, set[float]] = defaultdict(set)

    def enough(views) -> bool:  # called on every recorded result: collects poll start times
        for view in views:
            if view.result is not None:
                polls[view.target.url].add(view.result.started)
        return all(len(polls[url]) >= POLLS for url in healthy)

    assert service.state.wait_for(enough, timeout=30), "healthy agents were not polled every interval"

    for url in healthy:
        starts = sorted(polls[url])
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(INTERVAL - 1.0 < gap < INTERVAL + 1.0 for gap in gaps), (url, gaps)
    views = {v.target.url: v for v in service.snapshot()}
    assert all(views[url].result.ok for url in healthy)
    hostile_down = [views[url].result.ok is False for spec, url in sim.agents if spec.fault is not Fault.HEALTHY
                    and views[url].result is not None]
    assert hostile_down and all(hostile_down)

    registry = service.registry
    assert sample(registry, "replicante_poller_scheduler_lag_seconds_count") >= len(healthy) * POLLS
    for reason in ("queue_full", "behind", "in_flight"):
        assert sample(registry, "replicante_poller_polls_skipped_total", {"reason": reason}) == 0.0, reason
