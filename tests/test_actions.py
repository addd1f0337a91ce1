"""Signed actions end to end: journal, dispatcher, signatures, tracking, API and CLI,
against agent-sim's actions API over real TLS."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import requests

from replicante_poller.agentsim import Fault, NodeSpec
from replicante_poller.actions.httpsig import parse_signature, parse_signature_input, signature_base, content_digest
from replicante_poller.actions.protocols import LegacyActions
from replicante_poller.actions.journal import ActionState
from replicante_poller.web.metrics import sample
from replicante_poller.actions.signing import generate_keypair, load_public_key

from harness import ACTIONS_TOKEN, action_files, actions_config, all_polled

TOKEN = ACTIONS_TOKEN
PING, FAIL, FORGET = "agent.replicante.io/test.ping", "agent.replicante.io/test.fail", "agent.replicante.io/test.forget"


@pytest.fixture
def keys(tmp_path):
    return action_files(tmp_path)


def final(journal, action_id: str, timeout: float = 15.0):
    action = journal.wait_for(action_id, lambda a: a.state.final, timeout)
    assert action is not None and action.state.final, f"action not final: {action}"
    return action


def post(service, document, token=TOKEN):
    host, port = service.api_address
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"http://{host}:{port}/api/v1/actions", json=document, headers=headers, timeout=5)


def test_action_is_signed_delivered_once_and_tracked_to_done(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    service = start_service(actions_config([("rs", url)], pki, keys))
    all_polled(service)

    reply = post(service, {"agent": url, "kind": PING, "args": {"n": 1}})
    assert reply.status_code == 202, reply.text
    action_id = reply.json()["id"]
    done = final(service.journal, action_id)
    assert done.state is ActionState.DONE and done.attempts == 1
    assert done.agent_history and done.agent_history[-1]["state"] == "DONE"
    assert sim.executions(url) == {action_id: 1}

    # The agent received exactly the signed request of DESIGN section 7: verify it independently.
    stored, = sim.actions(url)
    headers = {k.lower(): v for k, v in stored["headers"].items()}
    (params, raw), = parse_signature_input(headers["signature-input"]).values()
    signature = parse_signature(headers["signature"])["replicante"]
    assert params.keyid == keys["kid"] and params.tag == "replicante-action-v2"
    assert params.components == ("@method", "@path", "content-type", "content-digest", "replicante-agent",
                                 "replicante-cluster", "replicante-node")
    assert params.expires - params.created == 60
    assert (headers["replicante-agent"], headers["replicante-cluster"], headers["replicante-node"]) == (url, "rs", "node-1")
    base = signature_base("POST", f"/api/unstable/actions/schedule/{PING}", None, headers, params, raw)
    assert load_public_key(keys["pub"]).verify(base, signature)
    assert headers["content-digest"] == content_digest(LegacyActions().schedule(done)[1])
    assert json.loads(LegacyActions().schedule(done)[1])["action_id"] == action_id

    bearer = {"Authorization": f"Bearer {TOKEN}"}  # reading actions needs the token too
    listed = requests.get("http://%s:%d/api/v1/actions" % service.api_address, headers=bearer, timeout=5).json()["actions"]
    assert [(a["id"], a["state"]) for a in listed] == [(action_id, "DONE")]
    shown = requests.get("http://%s:%d/api/v1/actions/%s" % (*service.api_address, action_id), headers=bearer,
                         timeout=5).json()
    assert [a["outcome"] for a in shown["attempts_log"]] == ["accepted"]

    registry = service.registry
    assert sample(registry, "replicante_poller_actions_total", {"result": "delivered"}) == 1.0
    assert sample(registry, "replicante_poller_actions_total", {"result": "done"}) == 1.0
    assert sample(registry, "replicante_poller_actions_total", {"result": "retry"}) == 0.0
    assert sample(registry, "replicante_poller_actions_pending") == 0.0
    assert sample(registry, "replicante_poller_action_dispatch_seconds_count") == 1.0


def test_failed_and_lost_actions_are_tracked_to_their_final_state(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    service = start_service(actions_config([("rs", url)], pki, keys))
    all_polled(service)
    failed = post(service, {"agent": url, "kind": FAIL}).json()["id"]
    lost = post(service, {"agent": url, "kind": FORGET}).json()["id"]
    assert final(service.journal, failed).state is ActionState.FAILED
    assert final(service.journal, lost).state is ActionState.LOST


def test_409_already_exists_counts_as_delivered_and_runs_once(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    text = actions_config([("rs", url)], pki, keys)
    # Journal the action first, then let the agent receive it "from an earlier attempt".
    from replicante_poller.config import parse_config
    from replicante_poller.actions.journal import Journal
    journal = Journal(str(keys["journal"]))
    action = journal.submit(url, PING, None)
    journal.close()
    first = requests.post(f"{url}/api/unstable/actions/schedule/{PING}", verify=str(pki["ca"]), timeout=5,
                          json={"action_id": action.id, "args": None, "created_ts": "2026-01-01T00:00:00Z",
                                "requester": "CORE_API"})
    assert first.status_code == 200
    assert parse_config(text).actions.enabled
    service = start_service(text)
    done = final(service.journal, action.id)
    assert done.state is ActionState.DONE
    assert [a.outcome for a in service.journal.attempts(action.id)] == ["already exists"]
    assert sim.executions(url) == {action.id: 1} and sim.schedule_posts(url) == 2


def test_actions_wait_for_the_agent_identity_and_rejections_are_final(start_sim, start_service, pki, keys):
    down = start_sim([NodeSpec("rs", "down", fault=Fault.AGENT_ERROR)])
    no_actions = start_sim([NodeSpec("rs", "plain")], actions=False)
    down_url, plain_url = down.agents[0][1], no_actions.agents[0][1]
    service = start_service(actions_config([("rs", down_url), ("rs", plain_url)], pki, keys))
    all_polled(service)
    waiting = post(service, {"agent": down_url, "kind": PING}).json()["id"]
    rejected = post(service, {"agent": plain_url, "kind": PING}).json()["id"]
    assert final(service.journal, rejected).state is ActionState.REJECTED
    pending = service.journal.wait_for(waiting, lambda a: "waiting for a successful poll" in a.message, 10)
    assert pending.state is ActionState.PENDING and pending.attempts == 0
    assert down.schedule_posts(down_url) == 0


def test_transient_failures_are_retried_with_backoff_then_abandoned(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    service = start_service(actions_config([("rs", url)], pki, keys, max_attempts="3"))
    all_polled(service)
    sim.stop()  # the agent goes away after its identity was learned: connections are refused
    action_id = post(service, {"agent": url, "kind": PING}).json()["id"]
    abandoned = final(service.journal, action_id)
    assert abandoned.state is ActionState.ABANDONED and abandoned.attempts == 3
    attempts = service.journal.attempts(action_id)
    assert [a.outcome for a in attempts] == ["failed"] * 3
    gaps = [b.ts - a.ts for a, b in zip(attempts, attempts[1:])]
    assert gaps[1] > gaps[0] * 1.5  # backoff doubles (100ms, 200ms)


def test_action_api_requires_the_bearer_token_and_valid_submissions(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    service = start_service(actions_config([("rs", url)], pki, keys))
    assert post(service, {"agent": url, "kind": PING}, token=None).status_code == 401
    assert post(service, {"agent": url, "kind": PING}, token="wrong").status_code == 401
    assert post(service, {"agent": "https://unknown:1", "kind": PING}).status_code == 400
    assert post(service, {"agent": url, "kind": "bad kind"}).status_code == 400
    assert post(service, ["not", "an", "object"]).status_code == 400
    assert service.journal.list() == []


def test_loose_permissions_on_key_or_token_refuse_to_start(tmp_path, pki, keys):
    os.chmod(keys["key"], 0o640)
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", "https://127.0.0.1:9")], pki, keys))
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "chmod 600" in done.stderr and "Traceback" not in done.stderr
    os.chmod(keys["key"], 0o600)
    os.chmod(keys["token"], 0o644)
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "api_token_file" in done.stderr


def test_cli_submit_list_show(tmp_path, start_sim, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", url)], pki, keys))
    cli = [sys.executable, "-m", "replicante_poller"]
    done = subprocess.run(cli + ["action", "submit", "--config", str(path), "--agent", url, "--kind", PING,
                                 "--args", '{"why": "test"}'], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    action_id = done.stdout.strip()
    listed = subprocess.run(cli + ["action", "list", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert action_id in listed.stdout and "PENDING" in listed.stdout
    shown = json.loads(subprocess.run(cli + ["action", "show", action_id, "--config", str(path)],
                                      capture_output=True, text=True, timeout=30).stdout)
    assert (shown["id"], shown["args"], shown["kind"]) == (action_id, {"why": "test"}, PING)
    bad = subprocess.run(cli + ["action", "submit", "--config", str(path), "--agent", url, "--kind", PING,
                                "--args", "{nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--args" in bad.stderr


def test_sigkill_during_dispatch_loses_nothing_and_runs_nothing_twice(tmp_path, start_sim, pki, keys):
    from replicante_poller.actions.journal import Journal
    from process import PollerProcess

    sim = start_sim([NodeSpec("rs", "node-1"), NodeSpec("rs", "node-2")], action_seconds=0.05)
    urls = [url for _, url in sim.agents]
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", u) for u in urls], pki, keys))
    journal = Journal(str(keys["journal"]))
    submitted = [journal.submit(urls[i % 2], PING, {"i": i}).id for i in range(30)]
    journal.close()

    for _ in range(3):  # SIGKILL right after a delivery, while the next one is on its way
        process = PollerProcess(path)
        try:
            process.expect(r"action \S+ \(\S+\) delivered to")
        finally:
            process.proc.kill()
            process.proc.wait()

    process = PollerProcess(path)
    try:
        for i, action_id in enumerate(submitted):
            assert sim.wait_for_state(urls[i % 2], action_id, "DONE", timeout=30), action_id
    finally:
        assert process.stop() == 0
    executions = {**sim.executions(urls[0]), **sim.executions(urls[1])}
    assert sorted(executions) == sorted(submitted), "every submitted action reached its agent"
    assert set(executions.values()) == {1}, "no action ran twice"
    journal = Journal(str(keys["journal"]))
    states = {a.id: a.state for a in journal.list()}
    journal.close()
    assert sorted(states) == sorted(submitted)
    assert not [s for s in states.values() if s in (ActionState.PENDING, ActionState.ABANDONED, ActionState.LOST)]


def test_enforcing_agent_sim_accepts_the_pollers_signed_action_and_refuses_a_forgery(
        tmp_path, start_sim, start_service, pki, keys):
    import time
    import uuid

    from replicante_poller.actions.httpsig import sign_action
    from replicante_poller.actions.signing import load_signing_key
    from replicante_poller.agentside.verifier import Keyring

    sim = start_sim([NodeSpec("rs", "node-1")], keyring=Keyring.from_entries([str(keys["pub"])]))
    url = sim.agents[0][1]
    service = start_service(actions_config([("rs", url)], pki, keys))
    all_polled(service)
    action_id = post(service, {"agent": url, "kind": PING}).json()["id"]
    assert final(service.journal, action_id).state is ActionState.DONE

    generate_keypair(str(tmp_path / "forger"))
    forger = load_signing_key(tmp_path / "forger.key")
    body = json.dumps({"action_id": str(uuid.uuid4()), "args": None, "created_ts": "2026-11-25T00:00:00Z",
                       "requester": "CORE_API"}).encode()
    path = f"/api/unstable/actions/schedule/{PING}"
    headers = sign_action(method="POST", path=path, body=body, agent_url=url, cluster_id="rs", node_id="node-1",
                          key_id=forger.key_id, sign=forger.sign, now=int(time.time()), nonce=os.urandom(16))
    forged = requests.post(url + path, data=body, headers=headers, verify=str(pki["ca"]), timeout=5)
    assert forged.status_code == 401
    unsigned = requests.post(url + path, data=body, headers={"Content-Type": "application/json"},
                             verify=str(pki["ca"]), timeout=5)
    assert unsigned.status_code == 401
    assert [a["id"] for a in sim.actions(url)] == [action_id]


def test_unusable_journal_is_one_line_error_and_files_are_private(tmp_path, pki, keys):
    path = tmp_path / "poller.ini"
    cli = [sys.executable, "-m", "replicante_poller"]
    (tmp_path / "not-a-db").write_text("this is not SQLite")
    for journal in (tmp_path / "not-a-db", tmp_path):  # garbage, and a directory
        path.write_text(actions_config([("rs", "https://127.0.0.1:9")], pki, keys).replace(
            str(keys["journal"]), str(journal)))
        for verb in (["action", "list"], ["action", "submit", "--agent", "https://127.0.0.1:9", "--kind", PING]):
            done = subprocess.run(cli + verb + ["--config", str(path)], capture_output=True, text=True, timeout=30)
            assert done.returncode == 2, (journal, verb, done.stderr)
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
            assert "action journal" in done.stderr
    missing = tmp_path / "absent" / "actions.db"
    path.write_text(actions_config([("rs", "https://127.0.0.1:9")], pki, keys).replace(str(keys["journal"]), str(missing)))
    done = subprocess.run(cli + ["action", "list", "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "no such file" in done.stderr and not missing.exists()

    from replicante_poller.actions.journal import Journal
    journal = Journal(str(keys["journal"]))
    journal.submit("https://127.0.0.1:9", PING, None)
    for file in keys["journal"].parent.glob("actions.db*"):
        assert file.stat().st_mode & 0o077 == 0, file
    journal.close()


def test_a_locked_journal_is_a_one_line_error_not_a_traceback(tmp_path, pki, keys):
    """Another process holds the journal's write lock past the busy timeout (10 s)."""
    from replicante_poller.actions.journal import Journal
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", "https://127.0.0.1:9")], pki, keys))
    Journal(str(keys["journal"])).close()
    holder = sqlite3.connect(str(keys["journal"]), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        done = subprocess.run([sys.executable, "-m", "replicante_poller", "action", "submit", "--config", str(path),
                               "--agent", "https://127.0.0.1:9", "--kind", PING], capture_output=True, text=True,
                              timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "action journal" in done.stderr and "locked" in done.stderr


def test_an_action_that_breaks_the_dispatcher_delays_only_itself(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs", "node-1"), NodeSpec("rs", "node-2")])
    (_, good), (_, broken) = sim.agents
    service = start_service(actions_config([("rs", good), ("rs", broken)], pki, keys, max_attempts="2"))
    all_polled(service)
    real_find = service._dispatcher._find_target

    def find_target(url):  # a bug that only this agent's actions trigger
        if url == broken:
            raise RuntimeError("simulated bug")
        return real_find(url)

    service._dispatcher._find_target = find_target
    poisoned = post(service, {"agent": broken, "kind": PING}).json()["id"]
    healthy = post(service, {"agent": good, "kind": PING}).json()["id"]
    assert final(service.journal, healthy).state is ActionState.DONE
    stuck = service.journal.get(poisoned)
    assert stuck.state is ActionState.PENDING and "internal error" in stuck.message and stuck.next_ts > stuck.updated_ts
    assert sample(service.registry, "replicante_poller_thread_errors_total", {"thread": "dispatcher"}) >= 1


def test_sighup_rotates_the_signing_key_without_a_restart(tmp_path, start_sim, pki, keys):
    from process import PollerProcess
    from replicante_poller.agentside.verifier import Keyring

    new_kid = generate_keypair(str(tmp_path / "next"))
    sim = start_sim([NodeSpec("rs", "node-1")], keyring=Keyring.from_entries([str(keys["pub"]), str(tmp_path / "next.pub")]))
    url = sim.agents[0][1]
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", url)], pki, keys))
    cli = [sys.executable, "-m", "replicante_poller", "action", "submit", "--config", str(path), "--agent", url,
           "--kind", PING]

    def signed_by(action_id: str) -> str:
        assert sim.wait_for_state(url, action_id, "DONE", timeout=20), action_id
        stored = next(a for a in sim.actions(url) if a["id"] == action_id)
        (params, _), = parse_signature_input(stored["headers"]["signature-input"]).values()
        return params.keyid

    process = PollerProcess(path)
    try:
        process.expect(r"all 1 agents polled")
        first = subprocess.run(cli, capture_output=True, text=True, timeout=30).stdout.strip()
        assert signed_by(first) == keys["kid"]

        os.chmod(tmp_path / "next.key", 0o644)  # a bad key file: the reload fails, the old key stays
        path.write_text(path.read_text().replace(str(keys["key"]), str(tmp_path / "next.key")))
        process.signal(signal.SIGHUP)
        process.expect(r"configuration reload failed, still running the last good one: .*chmod 600")
        os.chmod(tmp_path / "next.key", 0o600)
        process.signal(signal.SIGHUP)
        process.expect(r"\[actions\] reloaded: signing with key " + new_kid)
        process.expect(r"configuration reloaded")  # this reload's end: the next expect is the next reload
        second = subprocess.run(cli, capture_output=True, text=True, timeout=30).stdout.strip()
        assert signed_by(second) == new_kid

        keys["token"].write_text("a-replaced-token-0123456789")  # rotated in place: same path
        process.signal(signal.SIGHUP)
        process.expect(r"configuration reloaded")
        api = f"http://{process.address}/api/v1/actions"
        old = requests.post(api, json={"agent": url, "kind": PING}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        new = requests.post(api, json={"agent": url, "kind": PING},
                            headers={"Authorization": "Bearer a-replaced-token-0123456789"}, timeout=5)
        assert (old.status_code, new.status_code) == (401, 202)
    finally:
        assert process.stop() == 0
