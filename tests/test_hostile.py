"""The hostile-agent matrix: every agent-sim fault through the real poll path.

Real `poll_target`, `AgentClient`, `TlsContexts` and `DeadlineReaper` against a real TLS
AgentSim on loopback. For each fault: the status and reason, which requests the agent saw
(the poll stops at the first failure, in the order of DESIGN section 2), that the poll
returned within its deadline plus a margin, and for the bodies built to exhaust memory
that the traced peak stays small.
"""
from __future__ import annotations

import time
import tracemalloc

import pytest

from replicante_poller.agentsim import AgentSim, Fault, NodeSpec
from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.poll import PollResult, poll_target
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.transport import AgentClient

from harness import EXPECTED

TIMEOUT = 1.0
MARGIN = 0.5  # the poll must be over within TIMEOUT + MARGIN, whatever the agent does
MEMORY_CAP = 4 << 20  # peak traced allocation of one poll against a memory-hostile agent

# fault -> (status, reason, HTTP requests the agent sees during the poll)

# bodies meant to exhaust the poller's memory: the poll runs under tracemalloc
MEMORY_HOSTILE = {Fault.HUGE, Fault.ENDLESS_CHUNKED, Fault.GZIP_BOMB, Fault.DEEP_NESTING}


def test_every_fault_has_an_expectation():
    assert set(EXPECTED) == set(Fault)


def target_of(sim: AgentSim, pki: dict) -> Target:
    spec, url = sim.agents[0]
    return Target(spec.cluster_id, url, None, PollSettings(interval=5, timeout=TIMEOUT),
                  TlsSettings(ca_file=str(pki["ca"])))


def timed_poll(client: AgentClient, target: Target, trace: bool) -> tuple[PollResult, float, int]:
    """Poll once; the wall time it took and, when traced, the peak of traced allocations."""
    if trace:
        tracemalloc.start()
    try:
        started = time.monotonic()
        result = poll_target(client, target)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
    finally:
        if trace:
            tracemalloc.stop()
    return result, elapsed, peak


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.value)
def test_hostile_agent(start_sim, pki, client, fault):
    sim = start_sim([NodeSpec(f"c-{fault.value}", f"n-{fault.value}", fault=fault)], drip_seconds=0.2)
    target = target_of(sim, pki)
    status, reason, requests = EXPECTED[fault]

    result, elapsed, peak = timed_poll(client, target, trace=fault in MEMORY_HOSTILE)

    assert (result.status, result.reason) == (status, reason), result.message
    assert elapsed < TIMEOUT + MARGIN, f"poll took {elapsed:.2f}s"
    assert result.duration < TIMEOUT + MARGIN
    assert result.message and result.target == target
    if fault in MEMORY_HOSTILE:
        assert peak < MEMORY_CAP, f"peak traced allocation {peak} bytes"
    assert sim.requests_seen(target.url) == requests
    if fault is Fault.SERVICE_UNAVAILABLE:
        assert result.retry_after == 30
    else:
        assert result.retry_after is None
    if status is Status.UP:
        assert result.datastore.node_id == f"n-{fault.value}"
        assert result.shards and result.agent.version.number == "0.7.0"
    if fault is not Fault.TLS_STALL:
        assert result.cert_not_after is not None  # the handshake happened: its certificate is known


def test_redirect_is_never_followed(start_sim, pki, client):
    sim = start_sim([NodeSpec("c", "n", fault=Fault.REDIRECT)])
    target = target_of(sim, pki)
    result = poll_target(client, target)
    assert (result.status, result.reason) == (Status.AGENT_DOWN, Reason.HTTP_STATUS)
    assert "302" in result.message
    # one request, to the agent itself: no follow-up to example.invalid nor a retry here
    assert sim.requests_seen(target.url) == 1


def test_a_client_survives_a_whole_hostile_fleet_and_still_polls_healthy_agents(start_sim, pki, client):
    hostile = [fault for fault in Fault if fault not in (Fault.HEALTHY, Fault.SLOW, Fault.HANGING, Fault.TLS_STALL)]
    sim = start_sim([NodeSpec(f"c-{f.value}", f"n-{f.value}", fault=f) for f in hostile]
                    + [NodeSpec("c-healthy", "n-healthy")])
    for spec, url in sim.agents:
        target = Target(spec.cluster_id, url, None, PollSettings(interval=5, timeout=TIMEOUT),
                        TlsSettings(ca_file=str(pki["ca"])))
        result = poll_target(client, target)
        assert (result.status, result.reason) == EXPECTED[spec.fault][:2], (spec.fault, result.message)
