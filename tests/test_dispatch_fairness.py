"""Fair dispatch (issue 12, Medium): actions for different agents never wait on each other.

The real service (in process) with actions on, against agent-sim agents over TLS. A stalled
agent is one whose actions endpoint hangs: its polls are answered (so the poller knows its
identity and sends it actions), but every schedule request is held by the agent without an
answer (a verifier hook that blocks) until the test releases it; the poller's attempt then
ends at its deadline (`timeout`, 500ms in `actions_config`). With one dispatcher thread
stepping every due action in turn, 20 actions queued for such an agent cost 20 timeouts
before anything else is sent; here another agent's actions are DONE while the stalled
agent's first action is still being retried, its other actions wait behind it (per-agent
order), and everything is delivered exactly once, in submission order, once it answers.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import pytest
import requests

from replicante_poller.actions.journal import Action, ActionState
from replicante_poller.agentsim import AgentSim, NodeSpec

from harness import ACTIONS_TOKEN, action_files, actions_config, all_polled

PING = "agent.replicante.io/test.ping"  # legacy: NEW -> RUNNING -> DONE
SUCCESS = "agent.replicante.io/test.success"  # replisdk: NEW -> DONE
TIMEOUT = 0.5  # actions_config's [poller] timeout: how long an attempt at a stalled agent lasts


class Stall:
    """A verifier hook that holds every schedule request until `release()`: the agent has
    accepted the connection and read the whole request, and answers nothing. Released, it
    accepts them (requests whose poller side already gave up store the action anyway, as a
    real agent that was only slow would)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.held = 0
        self._released = False

    def __call__(self, method: str, path: str, headers: object, body: bytes) -> bool:
        with self._cond:
            self.held += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._released, 60)
        return True

    def wait_held(self, count: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.held >= count, timeout)

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()


@pytest.fixture
def keys(tmp_path):
    return action_files(tmp_path)


@pytest.fixture
def stalled(start_sim) -> Iterator[Callable[[str], tuple[AgentSim, str, Stall]]]:
    """Start a legacy agent whose schedule requests stall; released at teardown (before the
    simulators stop, so no handler is left waiting)."""
    stalls: list[Stall] = []

    def start(node_id: str) -> tuple[AgentSim, str, Stall]:
        stall = Stall()
        stalls.append(stall)
        sim = start_sim([NodeSpec("rs", node_id)], verifier=stall, action_seconds=0.01)
        return sim, sim.agents[0][1], stall

    yield start
    for stall in stalls:
        stall.release()


def submit(service, agent: str, kind: str = PING) -> str:
    """An action through the service's API (which wakes the dispatcher), as Core submits one."""
    host, port = service.api_address
    reply = requests.post(f"http://{host}:{port}/api/v1/actions", json={"agent": agent, "kind": kind},
                          headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"}, timeout=5)
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def final(service, action_id: str, timeout: float = 20.0) -> Action:
    action = service.journal.wait_for(action_id, lambda a: a.state.final, timeout)
    assert action is not None and action.state.final, f"action not final: {action}"
    return action


def test_a_stalled_agent_delays_neither_another_agent_nor_the_order_of_its_own_actions(stalled, start_sim,
                                                                                      start_service, pki, keys):
    stuck_sim, stuck, stall = stalled("stuck")
    ok_sim = start_sim([NodeSpec("rs", "ok")], action_seconds=0.05)
    ok = ok_sim.agents[0][1]
    service = start_service(actions_config([("rs", stuck), ("rs", ok)], pki, keys, max_attempts="50"))
    all_polled(service)

    queued = [submit(service, stuck) for _ in range(20)]
    assert stall.wait_held(1), "the stalled agent never received its first action"
    mine = [submit(service, ok) for _ in range(3)]  # while an attempt at the stalled agent is in flight
    done = [final(service, action_id) for action_id in mine]

    assert [a.state for a in done] == [ActionState.DONE] * 3, [a.message for a in done]
    waited = max(a.delivered_ts for a in done) - min(a.created_ts for a in done)
    assert waited < 4 * TIMEOUT, f"the healthy agent's actions waited {waited:.1f}s for the stalled agent's"
    behind = [service.journal.get(action_id) for action_id in queued]
    assert behind[0].state is ActionState.PENDING and behind[0].attempts >= 1
    assert [a.attempts for a in behind[1:]] == [0] * 19, "actions were sent past the agent's first, undelivered one"
    assert all(a.state is ActionState.PENDING for a in behind)
    assert stuck_sim.schedule_posts(stuck) == behind[0].attempts < 20

    retried = service.journal.wait_for(queued[0], lambda a: a.attempts >= 2, 10)  # attempt 1 timed out
    assert retried.attempts >= 2 and service.journal.attempts(queued[0])[0].outcome == "failed"
    assert all(service.journal.get(action_id).attempts == 0 for action_id in queued[1:])
    stall.release()  # the agent answers again (and stores what it held): everything arrives once, in order
    finals = [final(service, action_id) for action_id in queued]
    assert [a.state for a in finals] == [ActionState.DONE] * 20, [a.message for a in finals]
    assert [a["id"] for a in stuck_sim.actions(stuck)] == queued
    assert sorted(finals, key=lambda a: a.delivered_ts) == finals
    assert stuck_sim.executions(stuck) == {action_id: 1 for action_id in queued}
    outcomes = [a.outcome for a in service.journal.attempts(queued[0])]
    assert set(outcomes[:-1]) == {"failed"} and len(outcomes) >= 2 and outcomes[-1] in ("accepted", "already exists"), outcomes
    assert all(len(service.journal.attempts(action_id)) == 1 for action_id in queued[1:])
    assert [a["id"] for a in ok_sim.actions(ok)] == mine
    assert ok_sim.executions(ok) == {action_id: 1 for action_id in mine}


def test_stalled_agents_take_one_worker_each_for_at_most_their_timeout(stalled, start_sim, start_service, pki, keys):
    """Two stalled agents and two dispatch workers: each stalled agent holds one worker for
    one attempt at a time, so a third agent (of the other API generation) waits at most one
    timeout for a worker."""
    stuck = [stalled(f"stuck-{n}") for n in range(2)]
    sdk_sim = start_sim([NodeSpec("rs", "sdk", generation="replisdk")])
    sdk = sdk_sim.agents[0][1]
    agents = [("rs", url) for _, url, _ in stuck] + [("rs", sdk)]
    service = start_service(actions_config(agents, pki, keys, max_attempts="50", dispatch_workers="2"))
    all_polled(service)

    queued = {url: [submit(service, url) for _ in range(10)] for _, url, _ in stuck}
    for _, _, stall in stuck:
        assert stall.wait_held(1)
    action = final(service, submit(service, sdk, SUCCESS))

    assert action.state is ActionState.DONE, action.message
    assert action.delivered_ts - action.created_ts < 4 * TIMEOUT
    for _, url, _ in stuck:
        behind = [service.journal.get(action_id) for action_id in queued[url]]
        assert behind[0].attempts >= 1 and [a.attempts for a in behind[1:]] == [0] * 9
    assert sdk_sim.executions(sdk) == {action.id: 1}


def test_stop_returns_within_the_in_flight_attempts_timeout(stalled, start_service, pki, keys):
    _, stuck, stall = stalled("stuck")
    service = start_service(actions_config([("rs", stuck)], pki, keys, max_attempts="50"))
    all_polled(service)
    queued = [submit(service, stuck) for _ in range(20)]
    assert stall.wait_held(1)

    started = time.monotonic()
    service._dispatcher.stop()  # the service's own stop() does this first
    elapsed = time.monotonic() - started

    assert elapsed < TIMEOUT + 1.5, f"stop() took {elapsed:.2f}s with one attempt in flight"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("action-dispatcher")]
    attempts = service.journal.attempts(queued[0])
    assert attempts and all(a.outcome != "sending" for a in attempts), attempts  # the outcome was committed
    assert all(service.journal.get(action_id).attempts == 0 for action_id in queued[1:])


def test_an_action_submitted_while_the_service_was_down_waits_behind_the_one_it_was_retrying(start_sim,
                                                                                             start_service, pki, keys):
    """The previous run left the agent's first action retrying (its next attempt in 2s); one
    submitted since (the CLI writes the journal while the service is down) is due at once,
    but it is delivered after the first one."""
    from replicante_poller.actions.journal import Journal

    sim = start_sim([NodeSpec("rs", "node-1")], action_seconds=0.01)
    url = sim.agents[0][1]
    journal = Journal(str(keys["journal"]))
    first = journal.submit(url, PING, None)
    n = journal.begin_attempt(first, "rs", "node-1")
    journal.end_attempt(first.id, n, "failed", "connection refused", ActionState.PENDING, time.time() + 2.0,
                        "attempt 1 failed (connection refused); retrying in 2s")
    second = journal.submit(url, PING, None)
    journal.close()

    service = start_service(actions_config([("rs", url)], pki, keys))
    waiting = service.journal.wait_for(second.id, lambda a: "queued behind" in a.message, 10)
    assert waiting.state is ActionState.PENDING and waiting.attempts == 0 and first.id in waiting.message
    assert [final(service, a.id).state for a in (first, second)] == [ActionState.DONE] * 2
    assert [a["id"] for a in sim.actions(url)] == [first.id, second.id]
    assert sim.executions(url) == {first.id: 1, second.id: 1}
