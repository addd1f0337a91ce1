"""The dispatcher's delivery rules, one step at a time, against a real TLS agent on loopback.

The `Dispatcher` runs with a real journal, signer and transport; the agent is a scripted
server that sees each schedule request as it arrives: what the journal held at that
moment (through a separate read-only connection), and the exact signed headers.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme

from replicante_poller.config import ActionsSettings, PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.agentapi import ACTION, ACTION_PREFIX, ACTIONS_FINISHED, ACTIONS_QUEUE, SCHEDULE_PREFIX
from replicante_poller.actions.dispatcher import AgentIdentity, Dispatcher
from replicante_poller.actions.httpsig import parse_signature_input
from replicante_poller.actions.journal import ActionState, Journal
from replicante_poller.web.metrics import PollerMetrics, new_registry
from replicante_poller.actions.signing import generate_keypair, load_signing_key
from replicante_poller.polling.tls import TlsContexts
from replicante_poller.polling.transport import Transport

from tls_servers import Exchange, TlsServer, json_response, response_bytes, server_context

KIND = "agent.replicante.io/test.ping"


class Clock:
    """A clock the test moves: each attempt is signed at a later second."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Agent:
    """Answers schedule requests from a script of (status, body) and records each one."""

    def __init__(self, journal_path: str, answers: list[tuple[int, bytes]]):
        self.journal_path, self.answers = journal_path, list(answers)
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, ex: Exchange) -> bool:
        body = ex.rfile.read(int(ex.request.headers.get("content-length", "0")))
        document = json.loads(body)
        action_id = document.get("action_id") or document["id"]  # legacy, replisdk
        reader = Journal(self.journal_path, readonly=True)
        try:
            journaled = [(a.n, a.outcome) for a in reader.attempts(action_id)]
        finally:
            reader.close()
        with self.lock:
            self.seen.append({"headers": dict(ex.request.headers), "body": body, "journaled": journaled})
            status, answer = self.answers.pop(0) if self.answers else (200, json.dumps({"id": action_id}).encode())
        return ex.send(response_bytes(status, answer))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def setup(tmp_path: Path, ca: trustme.CA, reaper) -> Iterator[Callable[[list], tuple]]:
    """Make (agent, journal, dispatcher, client, clock) for a script of answers."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    generate_keypair(str(tmp_path / "core"))
    signer = load_signing_key(str(tmp_path / "core.key"))
    journal_path = str(tmp_path / "actions.db")
    servers: list[TlsServer] = []
    closers: list[Callable[[], None]] = []

    def make(answers: list[tuple[int, bytes]], api: str = "legacy") -> tuple:
        agent = Agent(journal_path, answers)
        path = ACTION if api == "replisdk" else SCHEDULE_PREFIX + KIND
        server = TlsServer(server_context(ca.issue_cert("127.0.0.1")), {path: agent}).__enter__()
        agent.server = server  # tests add the agent's other answers (everything else: an empty 404)
        servers.append(server)
        clock = Clock()
        journal = Journal(journal_path, clock)
        target = Target("rs", server.url, None, PollSettings(interval=10.0, timeout=2.0),
                        TlsSettings(ca_file=str(tmp_path / "ca.pem")))
        settings = ActionsSettings(enabled=True, max_attempts=5, backoff=1.0)
        transport = Transport(TlsContexts(), reaper=reaper)
        dispatcher = Dispatcher(journal, settings, signer, lambda url: target if url == target.url else None,
                                lambda t: AgentIdentity("rs", "node-1", api), transport, PollerMetrics(new_registry(), lambda: []), clock)
        client = transport.client()
        closers.extend([client.close, journal.close])
        return agent, journal, dispatcher, client, clock, target

    yield make
    for close in closers:
        close()
    for server in servers:
        server.stop()


def step_until_final(journal: Journal, dispatcher: Dispatcher, client: Any, clock: Clock, action_id: str,
                     steps: int = 10) -> Any:
    for _ in range(steps):
        action = journal.get(action_id)
        if action.state is not ActionState.PENDING:
            return action
        clock.now = max(clock.now + 1, action.next_ts)
        dispatcher.step(client, action)
    return journal.get(action_id)


def test_the_attempt_is_journaled_before_its_request_leaves(setup):
    agent, journal, dispatcher, client, clock, target = setup([])
    action = journal.submit(target.url, KIND, {"n": 1})

    dispatcher.step(client, action)

    (request,) = agent.seen
    assert request["journaled"] == [(1, "sending")], "the agent got the request before the journal had the attempt"
    assert [(a.n, a.outcome) for a in journal.attempts(action.id)] == [(1, "accepted")]


def test_every_attempt_is_signed_anew_with_the_same_action_id(setup):
    busy = (503, b'{"error":"busy","layers":[],"trace":null,"variant":null}')
    agent, journal, dispatcher, client, clock, target = setup([busy, busy])
    action = journal.submit(target.url, KIND, {"n": 1})

    final = step_until_final(journal, dispatcher, client, clock, action.id)

    assert final.state is ActionState.SCHEDULED and final.attempts == 3
    params = [next(iter(parse_signature_input(s["headers"]["signature-input"]).values()))[0] for s in agent.seen]
    assert len({p.nonce for p in params}) == 3, "a nonce was reused by a retry"
    assert len({p.created for p in params}) == 3, "a retry reused the signing time"
    assert {json.loads(s["body"])["action_id"] for s in agent.seen} == {action.id}
    assert [s["journaled"][-1] for s in agent.seen] == [(1, "sending"), (2, "sending"), (3, "sending")]


@pytest.mark.parametrize("answer, state", [
    (b'{"error":"action exists","layers":[],"trace":null,"variant":"ActionAlreadyExists"}', ActionState.SCHEDULED),
    (b'{"error":"conflict","layers":[],"trace":null,"variant":"StoreConflict"}', ActionState.REJECTED),
    (b'{"error":"conflict","layers":[],"trace":null,"variant":null}', ActionState.REJECTED),
    (b"", ActionState.REJECTED),
])
def test_only_the_agents_already_exists_answer_makes_a_409_delivered(setup, answer, state):
    agent, journal, dispatcher, client, clock, target = setup([(409, answer)])
    action = journal.submit(target.url, KIND, None)

    dispatcher.step(client, action)

    done = journal.get(action.id)
    assert done.state is state, done.message
    assert len(agent.seen) == 1


def test_an_agent_with_actions_disabled_is_a_clear_final_rejection(setup):
    agent, journal, dispatcher, client, clock, target = setup([(404, b"")])
    action = journal.submit(target.url, KIND, None)

    dispatcher.step(client, action)

    done = journal.get(action.id)
    assert done.state is ActionState.REJECTED
    assert "actions disabled" in done.message, done.message


def test_a_404_with_an_agent_error_keeps_the_agents_words(setup):
    unknown = b'{"error":"action kind not found","layers":[],"trace":null,"variant":"ActionNotFound"}'
    agent, journal, dispatcher, client, clock, target = setup([(404, unknown)])
    action = journal.submit(target.url, KIND, None)

    dispatcher.step(client, action)

    done = journal.get(action.id)
    assert done.state is ActionState.REJECTED and "action kind not found" in done.message, done.message


@pytest.mark.parametrize("finished, state", [(100, ActionState.PRUNED), (99, ActionState.LOST), (0, ActionState.LOST)])
def test_an_action_the_agent_forgot_is_pruned_when_its_finished_list_is_full_else_lost(setup, finished, state):
    """Legacy agents list and keep only their 100 newest finished actions: an action gone from
    /info/{id} and the queue, with a full finished list, finished and was pruned."""
    agent, journal, dispatcher, client, clock, target = setup([])
    action = journal.submit(target.url, KIND, None)
    dispatcher.step(client, action)  # delivered: SCHEDULED, tracked from now on
    others = [{"id": f"00000000-0000-4000-8000-{n:012d}", "kind": KIND, "state": "DONE"} for n in range(finished)]
    agent.server.handlers[ACTIONS_QUEUE] = json_response([])
    agent.server.handlers[ACTIONS_FINISHED] = json_response(others)

    scheduled = journal.get(action.id)
    clock.now = scheduled.next_ts
    dispatcher.step(client, scheduled)

    done = journal.get(action.id)
    assert done.state is state, done.message
    assert done.state.final


# -- replisdk agents -------------------------------------------------------------------

AGENTS = Path(__file__).parent / "data" / "agents"
REPLISDK_KIND = "agent.replicante.io/cluster.add"


def test_a_replisdk_agent_gets_its_own_body_and_path_signed(setup):
    agent, journal, dispatcher, client, clock, target = setup([], api="replisdk")
    action = journal.submit(target.url, REPLISDK_KIND, {"node": "mongo-1.rs:27017"})

    dispatcher.step(client, action)

    (request,) = agent.seen
    assert json.loads(request["body"]) == {"args": {"node": "mongo-1.rs:27017"}, "created_time": "2027-01-15T08:00:00.000Z",
                                           "id": action.id, "kind": REPLISDK_KIND,
                                           "metadata": {"requester": "CORE_API"}}
    assert set(json.loads(request["body"])) == {"args", "created_time", "id", "kind", "metadata"}
    assert request["headers"]["content-digest"].startswith("sha-256=:")
    assert '"@path"' in request["headers"]["signature-input"]
    assert journal.get(action.id).state is ActionState.SCHEDULED


@pytest.mark.parametrize("answer, state", [
    ((AGENTS / "replisdk/error.duplicate-id.json").read_bytes(), ActionState.SCHEDULED),  # core: 409 is success
    (b"", ActionState.REJECTED),
    (b"conflict", ActionState.REJECTED),
])
def test_a_replisdk_409_is_delivered_only_when_the_agent_says_so(setup, answer, state):
    agent, journal, dispatcher, client, clock, target = setup([(409, answer)], api="replisdk")
    action = journal.submit(target.url, REPLISDK_KIND, None)

    dispatcher.step(client, action)

    assert journal.get(action.id).state is state, journal.get(action.id).message


def test_a_replisdk_refusal_keeps_the_agents_message(setup):
    unknown = b'{"error":true,"error_msg":"metadata for action example.com/nope not found"}'
    agent, journal, dispatcher, client, clock, target = setup([(400, unknown)], api="replisdk")
    action = journal.submit(target.url, "example.com/nope", None)

    dispatcher.step(client, action)

    done = journal.get(action.id)
    assert done.state is ActionState.REJECTED
    assert "metadata for action example.com/nope not found" in done.message and "True" not in done.message


def _delivered(setup: Callable, **agent_answers: Any) -> tuple:
    agent, journal, dispatcher, client, clock, target = setup([], api="replisdk")
    action = journal.submit(target.url, REPLISDK_KIND, None)
    dispatcher.step(client, action)
    return agent, journal, dispatcher, client, clock, action


def test_a_replisdk_action_is_followed_to_its_final_phase_with_the_agents_error(setup):
    agent, journal, dispatcher, client, clock, action = _delivered(setup)
    failed = json.loads((AGENTS / "replisdk/action-execution.failed.json").read_bytes())
    failed["id"] = action.id
    agent.server.handlers[ACTION_PREFIX + action.id] = json_response(failed)

    scheduled = journal.get(action.id)
    clock.now = scheduled.next_ts
    dispatcher.step(client, scheduled)

    done = journal.get(action.id)
    assert done.state is ActionState.FAILED, done.message
    assert "test action failed intentionally" in done.message
    assert done.agent_history[0]["error"] == {"error_msg": "test action failed intentionally"}


@pytest.mark.parametrize("days, listed, state", [
    (13.9, False, ActionState.LOST), (14.1, False, ActionState.PRUNED), (30, True, ActionState.SCHEDULED),
])
def test_a_replisdk_action_gone_is_pruned_only_past_the_agents_clean_age(setup, days, listed, state):
    """replisdk agents delete finished actions after 14 days; /action/{id} is the truth, the
    lists (50, oldest first) only show what is still queued."""
    agent, journal, dispatcher, client, clock, action = _delivered(setup)
    queue = [{"id": action.id, "kind": REPLISDK_KIND, "phase": "RUNNING"}] if listed else []
    agent.server.handlers[ACTIONS_QUEUE] = json_response({"actions": queue})
    agent.server.handlers[ACTIONS_FINISHED] = json_response({"actions": []})

    clock.now += days * 86400
    dispatcher.step(client, journal.get(action.id))

    done = journal.get(action.id)
    assert done.state is state, done.message
