"""Real-socket, real-TLS tests of the agent simulator's actions API (DESIGN section 1)."""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import ssl
import threading
import uuid
from collections.abc import Iterator

import pytest
import requests

from replicante_poller import agentsim
from replicante_poller.agentsim import AgentSim, Fault, NodeSpec

ACTIONS = "/api/unstable/actions"
SCHEDULE = ACTIONS + "/schedule/"
PING = "agent.replicante.io/test.ping"
FAIL = "agent.replicante.io/test.fail"
FORGET = "agent.replicante.io/test.forget"
WHOLE_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
ERROR_KEYS = {"error", "layers", "trace", "variant"}
WAIT = 5.0  # upper bound of every wait_for_state: a failing test fails within it
FAST = 0.02  # action_seconds of the simulators that must finish actions


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, ssl.SSLContext]:
    return agentsim.throwaway_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def session(ca: tuple[pathlib.Path, ssl.SSLContext]) -> Iterator[requests.Session]:
    with requests.Session() as s:  # one per test: a Session is not shared between threads
        s.trust_env = False
        s.verify = str(ca[0])
        yield s


@pytest.fixture(scope="module")
def fast(ca: tuple[pathlib.Path, ssl.SSLContext]) -> Iterator[AgentSim]:
    """Actions finish in a few tens of milliseconds; nodes include faulty ones."""
    nodes = agentsim.fleet(1, 2) + [NodeSpec("faulty", f"faulty-{f.value}", fault=f)
                                    for f in (Fault.NODE_DOWN, Fault.GARBAGE, Fault.AGENT_ERROR)]
    with AgentSim(nodes, ca[1], action_seconds=FAST) as sim:
        yield sim


@pytest.fixture(scope="module")
def frozen(ca: tuple[pathlib.Path, ssl.SSLContext]) -> Iterator[AgentSim]:
    """Actions stay NEW for the whole module: queue contents are stable."""
    with AgentSim(agentsim.fleet(1, 1), ca[1], action_seconds=3600) as sim:
        yield sim


def fresh_url(sim: AgentSim, node_id: str = "mongo-1-node-1") -> str:
    return next(url for spec, url in sim.agents if spec.node_id == node_id)


def body(action_id: str | None = None, **fields: object) -> dict[str, object]:
    doc: dict[str, object] = {"action_id": action_id or str(uuid.uuid4()), "args": {"n": 1},
                              "created_ts": "2026-11-25T19:00:00Z", "requester": "CORE_API"}
    doc.update(fields)
    return doc


def schedule(session: requests.Session, url: str, kind: str = PING, doc: dict | None = None,
             **kwargs: object) -> requests.Response:
    return session.post(url + SCHEDULE + kind, json=body() if doc is None else doc, timeout=5, **kwargs)


def get(session: requests.Session, url: str, path: str) -> requests.Response:
    return session.get(url + ACTIONS + path, timeout=5)


def stored(sim: AgentSim, url: str) -> list[str]:
    return [action["id"] for action in sim.actions(url)]


def ids(listing: list[dict]) -> list[str]:
    assert all(set(item) == {"id", "kind", "state"} for item in listing)
    return [item["id"] for item in listing]


# --- schedule ------------------------------------------------------------------------------------

def test_schedule_answers_the_id_and_stores_the_action_with_its_headers(frozen, session):
    url = fresh_url(frozen)
    doc = body(args={"deep": [1, None, "x"]})
    response = schedule(session, url, doc=doc, headers={"X-Trace": "abc"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.json() == {"id": doc["action_id"]}
    (stored,) = [a for a in frozen.actions(url) if a["id"] == doc["action_id"]]
    assert (stored["kind"], stored["args"], stored["state"]) == (PING, {"deep": [1, None, "x"]}, "NEW")
    headers = stored["headers"]
    assert headers["x-trace"] == "abc" and headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(response.request.body)
    stored["args"]["deep"].append("mutated")  # the record is a copy
    assert next(a for a in frozen.actions(url) if a["id"] == doc["action_id"])["args"] == doc["args"]


def test_an_upper_case_uuid_is_stored_in_canonical_form_and_looked_up_exactly(frozen, session):
    """As legacy agents: serde's Uuid parses either case and stores the canonical (lower-case)
    form; /info/{id} looks the id up as a string, so only the canonical spelling is known."""
    url = fresh_url(frozen)
    action_id = str(uuid.uuid4())
    response = schedule(session, url, doc=body(action_id.upper()))
    assert response.status_code == 200 and response.json() == {"id": action_id}
    assert get(session, url, "/info/" + action_id).json()["action"]["id"] == action_id
    unknown = get(session, url, "/info/" + action_id.upper())
    assert (unknown.status_code, unknown.content) == (404, b"")


def test_duplicate_is_409_already_exists_and_never_executed_twice(fast, session):
    url = fresh_url(fast, "mongo-1-node-2")
    doc = body()
    posts = fast.schedule_posts(url)
    assert schedule(session, url, doc=doc).status_code == 200
    conflict = schedule(session, url, doc=doc)  # while NEW or RUNNING
    assert fast.wait_for_state(url, doc["action_id"], "DONE", WAIT)
    again = schedule(session, url, doc=body(doc["action_id"], args="other"))  # once DONE
    for response in (conflict, again):
        assert response.status_code == 409 and response.headers["Content-Type"] == "application/json"
        error = response.json()
        assert set(error) == ERROR_KEYS and error["variant"] == "ActionAlreadyExists"
        assert error["error"] == "action already exists" and error["trace"] is None
        assert isinstance(error["layers"], list) and error["layers"]
    assert fast.executions(url)[doc["action_id"]] == 1
    assert [a["args"] for a in fast.actions(url) if a["id"] == doc["action_id"]] == [doc["args"]]
    assert fast.schedule_posts(url) == posts + 3
    assert all(count == 1 for count in fast.executions(url).values())


def test_kinds_keep_their_slashes_unencoded(fast, session):
    url = fresh_url(fast)
    for kind in (PING, "a/b/c.d", "plain"):
        doc = body()
        assert schedule(session, url, kind, doc).status_code == 200
        assert get(session, url, "/info/" + doc["action_id"]).json()["action"]["kind"] == kind
    assert session.post(url + SCHEDULE, json=body(), timeout=5).status_code == 404  # no kind


VALID = body("00000000-0000-4000-8000-000000000001")


@pytest.mark.parametrize("raw", [
    b"",
    b"not json",
    b'{"action_id": "00000000-0000-4000-8000-000000000001",',  # truncated
    b"[]",
    b'"a string"',
    json.dumps({k: v for k, v in VALID.items() if k != "action_id"}).encode(),
    json.dumps({k: v for k, v in VALID.items() if k != "args"}).encode(),
    json.dumps({k: v for k, v in VALID.items() if k != "created_ts"}).encode(),
    json.dumps({k: v for k, v in VALID.items() if k != "requester"}).encode(),
    json.dumps({**VALID, "action_id": "x"}).encode(),
    json.dumps({**VALID, "action_id": 42}).encode(),
    json.dumps({**VALID, "action_id": None}).encode(),
    json.dumps({**VALID, "action_id": "{00000000-0000-4000-8000-000000000001}"}).encode(),
    json.dumps({**VALID, "created_ts": "yesterday"}).encode(),
    json.dumps({**VALID, "created_ts": "2026-13-01T00:00:00Z"}).encode(),
    json.dumps({**VALID, "created_ts": "2026-11-25T19:00:00"}).encode(),  # no offset
    json.dumps({**VALID, "created_ts": 1700000000}).encode(),
    json.dumps({**VALID, "created_ts": "\u0662026-11-25T19:00:00Z"}, ensure_ascii=False).encode(),
    json.dumps({**VALID, "requester": "SOMEONE"}).encode(),
    json.dumps({**VALID, "requester": ["CORE_API"]}).encode(),
    json.dumps(VALID).encode()[:-1] + b', "args": 2}',  # duplicate key
    json.dumps({**VALID, "args": "NAN"}).encode().replace(b'"NAN"', b"NaN"),
    json.dumps(VALID).encode().replace(b"CORE_API", b"CORE_API\xff"),  # not UTF-8
    b'{"args":' + b"[" * 15_000 + b"]" * 15_000 + b"}",  # nesting beyond the parser
], ids=lambda raw: repr(raw[:40]))
def test_bad_bodies_are_400_invalid_args_and_store_nothing(fast, session, raw):
    url = fresh_url(fast, "faulty-agent_error")  # a fault on agent info leaves actions alone
    before, posts = stored(fast, url), fast.schedule_posts(url)
    response = session.post(url + SCHEDULE + PING, data=raw, timeout=5,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    error = response.json()
    assert error["kind"] == "InvalidArgs" and isinstance(error["error"], str) and error["error"]
    assert stored(fast, url) == before and fast.schedule_posts(url) == posts + 1


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_400(fast, session, content_type):
    url = fresh_url(fast)
    headers = {"Content-Type": content_type} if content_type else {}
    response = session.post(url + SCHEDULE + PING, data=json.dumps(body()).encode(), headers=headers, timeout=5)
    assert response.status_code == 400 and response.json()["kind"] == "InvalidArgs"


def test_created_ts_is_normalised_to_whole_seconds_in_utc(fast, session):
    url = fresh_url(fast)
    doc = body(created_ts="2026-11-25T20:00:00.987654321+01:00")
    assert schedule(session, url, doc=doc).status_code == 200
    assert get(session, url, "/info/" + doc["action_id"]).json()["action"]["created_ts"] == "2026-11-25T19:00:00Z"


def test_body_of_32_kib_is_accepted_and_one_byte_more_is_an_empty_413(fast, session):
    url = fresh_url(fast)

    def sized(size: int) -> bytes:
        doc = body(args="")
        raw = json.dumps(doc).encode()
        return json.dumps({**doc, "args": "x" * (size - len(raw))}).encode()

    headers = {"Content-Type": "application/json"}
    fits, too_big = sized(32 * 1024), sized(32 * 1024 + 1)
    assert (len(fits), len(too_big)) == (32768, 32769)
    assert session.post(url + SCHEDULE + PING, data=fits, headers=headers, timeout=5).status_code == 200
    before = stored(fast, url)
    response = session.post(url + SCHEDULE + PING, data=too_big, headers=headers, timeout=5)
    assert (response.status_code, response.content) == (413, b"")  # released agents say no more
    assert stored(fast, url) == before
    assert schedule(session, url).status_code == 200  # the connection is still good


def test_a_chunked_body_is_411_and_the_answer_arrives_intact(fast, session):
    url = fresh_url(fast)
    before = stored(fast, url)
    chunks = iter([json.dumps(body()).encode()])  # a generator body: requests sends it chunked
    response = session.post(url + SCHEDULE + PING, data=chunks, timeout=5,
                            headers={"Content-Type": "application/json"})
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 411 and response.headers["Connection"] == "close"
    assert set(response.json()) == ERROR_KEYS
    assert stored(fast, url) == before


def test_methods_are_checked_per_endpoint(fast, session):
    url = fresh_url(fast)
    response = session.get(url + SCHEDULE + PING, timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    for path in ("/queue", "/finished", "/info/" + str(uuid.uuid4())):
        response = session.post(url + ACTIONS + path, json={}, timeout=5)
        assert response.status_code == 405 and response.headers["Allow"] == "GET"
    response = get(session, url, "/nope")
    assert (response.status_code, response.content) == (404, b"")


# --- reading actions -----------------------------------------------------------------------------

def test_queue_is_oldest_first_and_holds_new_actions(frozen, session):
    url = fresh_url(frozen)
    queued = ids(get(session, url, "/queue").json())
    scheduled = [str(uuid.uuid4()) for _ in range(3)]
    for action_id in scheduled:
        assert schedule(session, url, doc=body(action_id)).status_code == 200
    listing = get(session, url, "/queue").json()
    assert ids(listing) == queued + scheduled
    assert {item["state"] for item in listing} == {"NEW"}
    assert get(session, url, "/finished").json() == []


def test_finished_is_newest_first_with_done_and_failed(ca, session):
    with AgentSim([NodeSpec("c", "n")], ca[1], action_seconds=FAST) as sim:
        url = sim.agents[0][1]
        order = []
        for kind, state in ((PING, "DONE"), (FAIL, "FAILED"), (PING, "DONE")):
            doc = body()
            assert schedule(session, url, kind, doc).status_code == 200
            assert sim.wait_for_state(url, doc["action_id"], state, WAIT)
            order.append((doc["action_id"], state))
        finished = get(session, url, "/finished").json()
        assert [(item["id"], item["state"]) for item in finished] == order[::-1]
        assert get(session, url, "/queue").json() == []


def test_info_shape_and_whole_second_timestamps(frozen, session):
    url = fresh_url(frozen)
    doc = body(args=[1, {"two": 2}])
    assert schedule(session, url, doc=doc).status_code == 200
    response = get(session, url, "/info/" + doc["action_id"])
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    info = response.json()
    assert set(info) == {"action", "history"}
    action = info["action"]
    assert set(action) == {"args", "created_ts", "finished_ts", "headers", "id", "kind", "requester",
                           "scheduled_ts", "state", "state_payload"}
    assert (action["args"], action["id"], action["kind"], action["requester"]) == (
        doc["args"], doc["action_id"], PING, "CORE_API")
    assert (action["state"], action["state_payload"], action["finished_ts"], action["headers"]) == (
        "NEW", None, None, {})
    assert action["created_ts"] == "2026-11-25T19:00:00Z" and WHOLE_SECONDS.fullmatch(action["scheduled_ts"])
    (entry,) = info["history"]
    assert entry == {"action_id": doc["action_id"], "timestamp": action["scheduled_ts"],
                     "state": "NEW", "state_payload": None}


def test_unknown_info_is_404_with_an_empty_body(fast, session):
    url = fresh_url(fast)
    for action_id in (str(uuid.uuid4()), "not-a-uuid", ""):
        response = get(session, url, "/info/" + action_id)
        assert (response.status_code, response.content, response.headers["Content-Length"]) == (404, b"", "0")


# --- execution -----------------------------------------------------------------------------------

def history_of(session: requests.Session, url: str, action_id: str) -> tuple[dict, list[tuple]]:
    info = get(session, url, "/info/" + action_id).json()
    return info["action"], [(h["state"], h["state_payload"]) for h in info["history"]]


def test_an_action_runs_once_to_done(fast, session):
    url = fresh_url(fast)
    doc = body()
    assert schedule(session, url, doc=doc).status_code == 200
    assert fast.wait_for_state(url, doc["action_id"], "DONE", WAIT)
    action, history = history_of(session, url, doc["action_id"])
    assert history == [("NEW", None), ("RUNNING", None), ("DONE", None)]
    assert action["state"] == "DONE" and action["state_payload"] is None
    assert WHOLE_SECONDS.fullmatch(action["finished_ts"]) and action["finished_ts"] >= action["scheduled_ts"]
    info = get(session, url, "/info/" + doc["action_id"]).json()
    assert all(WHOLE_SECONDS.fullmatch(h["timestamp"]) for h in info["history"])
    assert fast.executions(url)[doc["action_id"]] == 1
    assert doc["action_id"] in ids(get(session, url, "/finished").json())
    assert doc["action_id"] not in ids(get(session, url, "/queue").json())


def test_a_test_fail_action_ends_failed_with_a_payload(fast, session):
    url = fresh_url(fast)
    doc = body()
    assert schedule(session, url, FAIL, doc).status_code == 200
    assert fast.wait_for_state(url, doc["action_id"], "FAILED", WAIT)
    action, history = history_of(session, url, doc["action_id"])
    payload = {"error": "simulated failure"}
    assert history == [("NEW", None), ("RUNNING", None), ("FAILED", payload)]
    assert action["state_payload"] == payload and action["finished_ts"] is not None
    assert fast.executions(url)[doc["action_id"]] == 1


def test_a_test_forget_action_vanishes_once_running(fast, session):
    url = fresh_url(fast)
    doc = body()
    assert schedule(session, url, FORGET, doc).status_code == 200
    assert fast.wait_for_state(url, doc["action_id"], "RUNNING", WAIT)
    assert fast.wait_for_state(url, doc["action_id"], agentsim.FORGOTTEN, WAIT)
    assert not fast.wait_for_state(url, doc["action_id"], "DONE", 0)
    response = get(session, url, "/info/" + doc["action_id"])
    assert (response.status_code, response.content) == (404, b"")
    assert doc["action_id"] not in ids(get(session, url, "/queue").json())
    assert doc["action_id"] not in ids(get(session, url, "/finished").json())
    assert doc["action_id"] not in [a["id"] for a in fast.actions(url)]
    assert fast.executions(url)[doc["action_id"]] == 1


def test_wait_for_state_times_out_for_a_state_never_reached(frozen, session):
    url = fresh_url(frozen)
    doc = body()
    assert schedule(session, url, doc=doc).status_code == 200
    assert frozen.wait_for_state(url, doc["action_id"], "NEW", 0)
    assert not frozen.wait_for_state(url, doc["action_id"], "RUNNING", 0.05)
    assert not frozen.wait_for_state(url, str(uuid.uuid4()), "NEW", 0)


def test_many_actions_over_nodes_each_run_exactly_once(fast, session):
    urls = [url for spec, url in fast.agents if spec.cluster_id == "mongo-1"]
    scheduled = [(url, body()["action_id"]) for url in urls for _ in range(10)]
    for url, action_id in scheduled:
        assert schedule(session, url, doc=body(action_id)).status_code == 200
    for url, action_id in scheduled:
        assert fast.wait_for_state(url, action_id, "DONE", WAIT)
    for url in urls:
        executions = fast.executions(url)
        assert all(executions[action_id] == 1 for u, action_id in scheduled if u == url)


@pytest.mark.parametrize("node_id", ["faulty-node_down", "faulty-garbage", "faulty-agent_error"])
def test_actions_work_on_agents_with_faults_that_keep_the_connection(fast, session, node_id):
    url = fresh_url(fast, node_id)
    doc = body()
    assert schedule(session, url, doc=doc).json() == {"id": doc["action_id"]}
    assert fast.wait_for_state(url, doc["action_id"], "DONE", WAIT)
    assert get(session, url, "/info/" + doc["action_id"]).json()["action"]["state"] == "DONE"


def test_stop_joins_the_executor_with_actions_pending(ca, session):
    threads_before = set(threading.enumerate())
    sim = AgentSim([NodeSpec("c", "n")], ca[1], action_seconds=3600).start()
    assert schedule(session, sim.agents[0][1]).status_code == 200
    assert any(t.name == "agentsim-actions" for t in threading.enumerate())
    session.close()  # let the connection handler go too
    sim.stop()
    assert set(threading.enumerate()) <= threads_before


# --- actions disabled, verifier hook -------------------------------------------------------------

def executors() -> int:
    return sum(t.name == "agentsim-actions" for t in threading.enumerate())


def test_actions_disabled_answer_404_empty_on_every_path_and_still_count_posts(ca, session):
    running = executors()
    with AgentSim([NodeSpec("c", "n")], ca[1], actions=False) as sim:
        assert executors() == running  # no executor thread without actions
        url = sim.agents[0][1]
        doc = body()
        responses = [schedule(session, url, doc=doc), schedule(session, url, "x", doc=doc),
                     get(session, url, "/queue"), get(session, url, "/finished"),
                     get(session, url, "/info/" + doc["action_id"]), get(session, url, "/anything")]
        for response in responses:
            assert (response.status_code, response.content, response.headers["Content-Length"]) == (404, b"", "0")
        assert (sim.schedule_posts(url), sim.actions(url), sim.executions(url)) == (2, [], {})
        assert not sim.wait_for_state(url, doc["action_id"], "NEW", 0)
        # replicante-io/agents' sdk says so at the actions root (api/actions/mod.rs: index_disabled)
        disabled = session.get(url + "/api/unstable/actions", timeout=5)
        assert (disabled.status_code, disabled.json()) == (200, {"actions": False})


def test_agents_with_actions_on_say_so_at_the_actions_scope(ca, session):
    with AgentSim([NodeSpec("c", "n")], ca[1]) as sim:
        url = sim.agents[0][1]
        assert get(session, url, "/").json() == {"actions": True}
        assert session.get(url + "/api/unstable/actions", timeout=5).status_code == 404


class Recorder:
    """A verifier that records its calls and answers `verdict` (or raises it)."""

    def __init__(self, verdict: object) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str, dict, bytes]] = []

    def __call__(self, method: str, path: str, headers, body: bytes) -> object:
        self.calls.append((method, path, dict(headers), body))
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict


@pytest.mark.parametrize("verdict", [False, None, "", "signature expired", 1, ValueError("bad signature")])
def test_a_refusing_verifier_gives_401_and_stores_nothing(ca, session, verdict):
    verifier = Recorder(verdict)
    with AgentSim([NodeSpec("c", "n")], ca[1], action_seconds=FAST, verifier=verifier) as sim:
        url = sim.agents[0][1]
        for _ in range(2):
            response = schedule(session, url)
            assert response.status_code == 401 and response.json() == {"error": "unauthorized"}
        bad = session.post(url + SCHEDULE + PING, data=b"nope", timeout=5)
        assert bad.status_code == 401  # verification comes before the body is looked at
        assert (sim.schedule_posts(url), sim.actions(url), sim.executions(url)) == (3, [], {})
        assert get(session, url, "/queue").json() == [] and len(verifier.calls) == 3


def test_an_accepting_verifier_sees_the_request_as_sent(ca, session):
    verifier = Recorder(True)
    with AgentSim([NodeSpec("c", "n")], ca[1], action_seconds=FAST, verifier=verifier) as sim:
        url = sim.agents[0][1]
        doc = body()
        response = schedule(session, url, FAIL, doc, headers={"Signature": "replicante=:AAAA:"})
        assert response.status_code == 200
        ((method, path, headers, raw),) = verifier.calls
        assert (method, path, raw) == ("POST", SCHEDULE + FAIL, response.request.body)
        assert headers["signature"] == "replicante=:AAAA:" and headers["content-type"] == "application/json"
        assert sim.wait_for_state(url, doc["action_id"], "FAILED", WAIT)
        assert [a["headers"] for a in sim.actions(url)] == [headers]
        assert get(session, url, "/queue").status_code == 200 and len(verifier.calls) == 1  # GETs unchecked


def test_constructor_checks(ca):
    with pytest.raises(ValueError):
        AgentSim([], ca[1], action_seconds=-1)
    with pytest.raises(TypeError):
        AgentSim([], ca[1], verifier="yes")  # type: ignore[arg-type]


# --- CLI -----------------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agentsim.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_actions_options(tmp_path):
    defaults = parse(["--out", str(tmp_path)])
    assert (defaults.actions, defaults.action_seconds) == (True, 0.2)
    chosen = parse(["--out", str(tmp_path), "--no-actions", "--action-seconds", "0"])
    assert (chosen.actions, chosen.action_seconds) == (False, 0.0)


def test_cli_negative_action_seconds_is_one_line_exit_2(tmp_path, capsys):
    assert agentsim.main(parse(["--out", str(tmp_path), "--action-seconds", "-1"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--action-seconds" in err
