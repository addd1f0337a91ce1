"""Signed actions in a coordinated fleet (issue 14, DESIGN section 9): one elected
dispatcher, the action journal in a real ZooKeeper, submissions on any instance, and a
leader SIGKILLed in the middle of dispatching many actions without any action lost or
executed twice (counted at the agents, which check every signature)."""
from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests
from kazoo.client import KazooClient

from replicante_poller.actions.journal import ActionState
from replicante_poller.agentsim import NodeSpec
from replicante_poller.agentside.verifier import Keyring
from replicante_poller.config import CoordinationSettings, parse_config
from replicante_poller.coordination.journal import ZkJournal
from replicante_poller.errors import ActionNotFound, CancelRefused, ConfigError, StoreError
from conftest import free_port
from harness import ACTIONS_TOKEN, action_files, config_text
from process import PollerProcess
from test_coordination import ZooKeeper, metric, wait_for, zookeeper  # noqa: F401 (the fixture)

PING = "agent.replicante.io/test.ping"  # legacy: NEW -> RUNNING -> DONE
SESSION_TIMEOUT = 4.0
AUTH = {"Authorization": f"Bearer {ACTIONS_TOKEN}"}


def coordinated(zookeeper: ZooKeeper, keys: dict, path: str = "/test-actions", **actions: str) -> str:
    """`[actions]` and `[coordination]` of a coordinated instance (no journal file: ZooKeeper's)."""
    settings = {"enabled": "true", "signing_key": str(keys["key"]), "api_token_file": str(keys["token"]),
                "track_interval": "200ms", "backoff": "100ms", **actions}
    return ("[actions]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
            + f"[coordination]\nbackend = zookeeper\nhosts = {zookeeper.hosts}\npath = {path}\n"
            f"session_timeout = {SESSION_TIMEOUT:g}s\n")


@pytest.fixture
def keys(tmp_path: Path) -> dict:
    return action_files(tmp_path)


@pytest.fixture
def client(zookeeper: ZooKeeper) -> Iterator[KazooClient]:
    kazoo = KazooClient(zookeeper.hosts, timeout=5)
    kazoo.start(timeout=10)
    yield kazoo
    kazoo.stop()
    kazoo.close()


def settings(zookeeper: ZooKeeper) -> CoordinationSettings:
    return CoordinationSettings(backend="zookeeper", hosts=zookeeper.hosts, path="/unit")


def fence(client: KazooClient) -> str:
    """An ephemeral znode standing for a won election."""
    return client.create("/unit/leader/x-", b"", ephemeral=True, sequence=True, makepath=True)


# -- configuration -------------------------------------------------------------------------

def test_actions_run_with_zookeeper_and_keep_no_journal_file(tmp_path: Path, keys: dict) -> None:
    section = (f"[actions]\nenabled = true\nsigning_key = {keys['key']}\n"
               "[coordination]\nbackend = zookeeper\nhosts = 127.0.0.1:2181\n")
    config = parse_config(f"[poller]\nstate_dir = {tmp_path}\n" + section)
    assert config.actions.enabled and config.actions.journal is None
    with pytest.raises(ConfigError, match=r"\[actions\] journal: .*lives in ZooKeeper"):
        parse_config(section.replace("[coordination]", f"journal = {tmp_path / 'j.db'}\n[coordination]"))


def test_the_cli_names_the_zookeeper_hosts_it_cannot_reach(tmp_path: Path, keys: dict) -> None:
    dead = f"127.0.0.1:{free_port()}"
    path = tmp_path / "poller.ini"
    path.write_text(f"[actions]\nenabled = true\nsigning_key = {keys['key']}\n"
                    f"[coordination]\nbackend = zookeeper\nhosts = {dead}\nsession_timeout = 1s\n")
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "action", "list", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: [coordination] hosts: no ZooKeeper answered at {dead}" in lines[0], lines


def test_the_coordination_threads_errors_exist_at_zero_from_the_start(tmp_path: Path, keys: dict) -> None:
    """thread_errors_total has every thread's series at 0 from the start (README), so that
    `increase()` sees the first error: the coordination and election threads' too (before,
    they appeared only with their first error). No ZooKeeper needed: the series are there
    before any session."""
    path = tmp_path / "poller.ini"
    path.write_text(f"[http]\nlisten = 127.0.0.1:0\n[actions]\nenabled = true\nsigning_key = {keys['key']}\n"
                    f"[coordination]\nbackend = zookeeper\nhosts = 127.0.0.1:{free_port()}\nsession_timeout = 1s\n")
    poller = PollerProcess(path)
    try:
        samples = poller.metrics()
        for thread in ("coordination", "election", "scheduler", "dispatcher"):
            assert samples.get(("replicante_poller_thread_errors_total", (("thread", thread),))) == 0.0, thread
    finally:
        poller.stop()


# -- the journal in ZooKeeper ----------------------------------------------------------------

def test_the_zookeeper_journal_keeps_actions_and_attempts(zookeeper: ZooKeeper, client: KazooClient) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    action = journal.submit("https://a:1", PING, {"n": 1})
    assert journal.get(action.id) == action and journal.list() == [action] and journal.get("not-an-id") is None
    assert journal.lead(fence(client)) == 1 and journal.pending() == 1
    assert [a.id for a in journal.due(time.time() + 1)] == [action.id]
    n = journal.begin_attempt(action, "rs", "node-1")
    assert n == 1 and [(a.n, a.outcome) for a in journal.attempts(action.id)] == [(1, "sending")]
    journal.end_attempt(action.id, 1, "accepted", "HTTP 200", ActionState.SCHEDULED, time.time() + 5, "delivered")
    delivered = journal.get(action.id)
    assert delivered is not None and delivered.state is ActionState.SCHEDULED
    assert journal.update(delivered, ActionState.DONE, time.time(), "agent reports DONE", [{"state": "DONE"}])

    reader = ZkJournal(client, settings(zookeeper))  # another instance's view: ZooKeeper's
    seen = reader.get(action.id)
    assert seen is not None and seen.state is ActionState.DONE and seen.attempts == 1
    assert seen.cluster_id == "rs" and seen.agent_history == [{"state": "DONE"}] and seen.args == {"n": 1}
    assert seen.delivered_ts is not None and seen.finished_ts is not None
    assert [(a.n, a.outcome, a.detail) for a in reader.attempts(action.id)] == [(1, "accepted", "HTTP 200")]
    assert journal.due(time.time() + 10) == [] and journal.pending() == 0


def test_a_listing_reads_the_newest_actions(zookeeper: ZooKeeper, client: KazooClient) -> None:
    now = [1_800_000_000.0]
    journal = ZkJournal(client, settings(zookeeper), clock=lambda: now[0])
    submitted = []
    for n in range(6):
        now[0] += 1
        submitted.append(journal.submit("https://a:1", PING, {"n": n}).id)
    assert [a.id for a in journal.list(3)] == submitted[:-4:-1]
    now[0] += 1
    newer = journal.submit("https://a:1", PING, None).id
    other = ZkJournal(client, settings(zookeeper))  # another process: reads the times afresh
    assert [a.id for a in other.list(2)] == [newer, submitted[-1]] == [a.id for a in journal.list(2)]


def test_a_deposed_leader_writes_nothing(zookeeper: ZooKeeper, client: KazooClient) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    action = journal.submit("https://a:1", PING, None)
    term = fence(client)
    journal.lead(term)
    client.delete(term)  # its session expired, say: another instance may lead now
    with pytest.raises(StoreError, match="no longer the dispatcher leader"):
        journal.begin_attempt(action, "rs", "node-1")
    assert journal.get(action.id) == action and journal.attempts(action.id) == []
    journal.unlead()
    with pytest.raises(StoreError, match="no longer the dispatcher leader"):
        journal.update(action, ActionState.DONE, 0.0, "late")
    assert journal.get(action.id) == action


def test_a_write_that_lost_a_race_changes_nothing(zookeeper: ZooKeeper, client: KazooClient) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    action = journal.submit("https://a:1", PING, None)
    journal.lead(fence(client))
    state_path = f"/unit/journal/actions/{action.id}/state"
    document = json.loads(client.get(state_path)[0])
    client.set(state_path, json.dumps({**document, "message": "written by another"}).encode())
    assert journal.update(action, ActionState.PENDING, 0.0, "stale write") is False
    assert journal.get(action.id).message == "written by another"  # type: ignore[union-attr]
    assert journal.update(action, ActionState.PENDING, 0.0, "after reading it again")  # read again: now it writes
    assert journal.get(action.id).message == "after reading it again"  # type: ignore[union-attr]


def test_a_damaged_record_is_left_alone_and_named(zookeeper: ZooKeeper, client: KazooClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    good, bad = journal.submit("https://a:1", PING, None), journal.submit("https://a:1", PING, None)
    client.set(f"/unit/journal/actions/{bad.id}/state", b"{not json")
    with caplog.at_level(logging.ERROR):
        assert [a.id for a in journal.list()] == [good.id]
        assert journal.lead(fence(client)) == 1
    assert f"the record of action {bad.id} cannot be read" in caplog.text
    assert client.get(f"/unit/journal/actions/{bad.id}/state")[0] == b"{not json"


def test_final_actions_are_pruned_after_retention_only(zookeeper: ZooKeeper, client: KazooClient) -> None:
    from replicante_poller.coordination.journal import RETENTION

    now = [1_800_000_000.0]
    journal = ZkJournal(client, settings(zookeeper), clock=lambda: now[0])
    old, recent, live = (journal.submit("https://a:1", PING, None) for _ in range(3))
    journal.lead(fence(client))
    journal.update(old, ActionState.DONE, now[0], "done long ago")
    now[0] += RETENTION - 10
    journal.update(recent, ActionState.DONE, now[0], "done lately")
    now[0] += 11
    assert [a.id for a in journal.due(float("inf"))] == [live.id]  # the dispatcher asks with +inf
    assert journal.get(old.id) is None and client.exists(f"/unit/journal/actions/{old.id}") is None
    assert journal.get(recent.id) is not None and journal.get(live.id) is not None


def test_a_final_action_without_its_attempts_znode_is_still_pruned(zookeeper: ZooKeeper, client: KazooClient) -> None:
    """A damaged final action (its `attempts` znode gone) is deleted like the others, not
    forgotten and read again at every listing, forever."""
    from replicante_poller.coordination.journal import RETENTION

    now = [1_800_000_000.0]
    journal = ZkJournal(client, settings(zookeeper), clock=lambda: now[0])
    damaged = journal.submit("https://a:1", PING, None)
    journal.lead(fence(client))
    journal.update(damaged, ActionState.DONE, now[0], "done long ago")
    client.delete(f"/unit/journal/actions/{damaged.id}/attempts")
    now[0] += RETENTION + 1
    journal.due(float("inf"))
    assert client.exists(f"/unit/journal/actions/{damaged.id}") is None


def test_any_instance_cancels_and_the_leader_never_sends(zookeeper: ZooKeeper, client: KazooClient) -> None:
    leader = ZkJournal(client, settings(zookeeper))
    action, sent, delivered = (leader.submit("https://a:1", PING, None) for _ in range(3))
    leader.lead(fence(client))
    leader.due(time.time() + 1)  # the leader has read them all
    other = ZkJournal(client, settings(zookeeper))  # another instance, or the CLI
    assert other.resolve(action.id[:8]) == action.id
    with pytest.raises(ActionNotFound, match="no action 0000"):
        other.resolve("0000")
    cancelled = other.cancel(action.id)
    assert cancelled.state is ActionState.CANCELLED and cancelled.message == "cancelled before any attempt"
    assert leader.begin_attempt(action, "rs", "node-1") is None  # its version is gone: never sent
    assert leader.get(action.id).state is ActionState.CANCELLED and leader.attempts(action.id) == []  # type: ignore[union-attr]
    assert action.id not in [a.id for a in leader.due(time.time() + 1)]

    assert leader.begin_attempt(sent, "rs", "node-1") == 1  # in flight: refused
    with pytest.raises(CancelRefused, match="attempt 1 is being sent right now"):
        other.cancel(sent.id)
    assert leader.end_attempt(sent.id, 1, "failed", "timeout", ActionState.PENDING, 0.0, "retrying")
    assert "the agent may have received it" in other.cancel(sent.id).message
    assert leader.end_attempt(delivered.id, leader.begin_attempt(delivered, "rs", "n") or 0, "accepted", "HTTP 200",
                              ActionState.SCHEDULED, 0.0, "delivered")
    with pytest.raises(CancelRefused, match="is SCHEDULED, not PENDING"):
        other.cancel(delivered.id)


def test_a_failed_read_of_new_submissions_is_retried(zookeeper: ZooKeeper, client: KazooClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    journal.lead(fence(client))
    action = journal.submit("https://a:1", PING, None)
    znodes = journal._znodes  # what the leader's view reads through
    real = znodes.read_many
    monkeypatch.setattr(znodes, "read_many", lambda ids: (_ for _ in ()).throw(StoreError("zk", "journal", "no answer")))
    journal._leader._listing.set()  # the children watch fired
    with pytest.raises(StoreError):
        journal.due(time.time() + 1)
    monkeypatch.setattr(znodes, "read_many", real)
    assert [a.id for a in journal.due(time.time() + 1)] == [action.id]  # listed again, not forgotten


def test_pruning_goes_on_while_too_many_final_actions_are_kept(zookeeper: ZooKeeper, client: KazooClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import replicante_poller.coordination.leader_view as module

    monkeypatch.setattr(module, "PRUNE_BATCH", 2)
    monkeypatch.setattr(module, "MAX_FINAL", 1)
    journal = ZkJournal(client, settings(zookeeper))
    actions = [journal.submit("https://a:1", PING, None) for _ in range(5)]
    journal.lead(fence(client))
    for action in actions:
        journal.update(action, ActionState.DONE, 0.0, "done")
    counts = []
    for _ in range(3):  # one pass per dispatcher look, not one per PRUNE_EVERY while over the cap
        journal.due(time.time())
        counts.append(len(client.get_children("/unit/journal/actions")))
    assert counts == [3, 1, 1]
    assert journal.get(actions[-1].id) is not None  # the newest final action is kept


def test_a_journal_deleted_under_the_leader_is_made_again(zookeeper: ZooKeeper, client: KazooClient) -> None:
    journal = ZkJournal(client, settings(zookeeper))
    journal.submit("https://a:1", PING, None)
    journal.lead(fence(client))
    client.delete("/unit/journal", recursive=True)
    journal._leader._listing.set()  # the children watch fired
    assert journal.due(time.time() + 1) == [] and client.exists("/unit/journal/actions") is not None


def test_a_submission_without_an_answer_is_never_said_not_stored(zookeeper: ZooKeeper, client: KazooClient,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ZooKeeper stalls (paused) while a submission is committed: the answer says it may have
    been stored and names it, and it is there once ZooKeeper goes on (a 503 "not stored" would
    have Core submit it again: the action twice, with two ids)."""
    import replicante_poller.coordination.action_znodes as module

    monkeypatch.setattr(module, "OP_TIMEOUT", 1.0)
    journal = ZkJournal(client, settings(zookeeper))
    journal.submit("https://a:1", PING, None)  # the base znode exists
    assert zookeeper.proc is not None
    zookeeper.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreError, match=r"action (\S+) may have been stored.*check `action show \1`") as caught:
            journal.submit("https://a:1", PING, {"n": 2})
    finally:
        zookeeper.proc.send_signal(signal.SIGCONT)
    action_id = re.search(r"action (\S+) may have been stored", str(caught.value)).group(1)  # type: ignore[union-attr]
    wait_for(lambda: journal.get(action_id) is not None, 10, "the stalled submission committed")


def test_a_contender_stops_while_zookeeper_is_away(zookeeper: ZooKeeper) -> None:
    from replicante_poller.coordination.election import Election

    clients = [KazooClient(zookeeper.hosts, timeout=5) for _ in range(2)]
    elected = threading.Event()
    elections = [Election(c, settings(zookeeper), f"instance-{n}", lambda fence: elected.set(), lambda: None)
                 for n, c in enumerate(clients)]
    for client, election in zip(clients, elections):
        client.start(timeout=10)
        election.start()
    try:
        assert elected.wait(10)
        contender = next(n for n, e in enumerate(elections) if e.leader() == 0.0)
        zookeeper.stop()
        started = time.monotonic()
        elections[contender].stop(1.0)  # kazoo's lock retries while ZooKeeper is away: stop() does not wait for it
        assert time.monotonic() - started < 3
        clients[contender].stop()  # closing the session ends the thread
        assert elections[contender].join(10)
    finally:
        for client, election in zip(clients, elections):
            election.stop(1.0)
            client.stop()
            client.close()


# -- three real instances, one leader, SIGKILL ----------------------------------------------

def enforcing_sim(start_sim, keys: dict, nodes: list[NodeSpec]):
    """Legacy agents that check every signature with the public key, quick actions."""
    return start_sim(nodes, keyring=Keyring.from_entries([str(keys["pub"])]), action_seconds=0.05)


def poller_config(sim, pki: dict, folder: Path, extra: str) -> Path:
    """A configuration file polling every agent of `sim` every second, with `extra` sections."""
    path = folder / "poller.ini"
    path.write_text(config_text([(node.cluster_id, url) for node, url in sim.agents], pki["ca"], interval="1s",
                                timeout="500ms", extra=extra))
    return path


def leaders(pollers: list[PollerProcess]) -> list[PollerProcess]:
    return [p for p in pollers  # no series at all on an instance with actions off
            if p.proc.poll() is None and p.metrics().get(("replicante_poller_coordination_leader", ())) == 1]


def test_the_leader_killed_mid_dispatch_leaves_every_action_executed_once(
        zookeeper: ZooKeeper, start_sim, pki: dict, keys: dict, tmp_path: Path) -> None:
    sim = enforcing_sim(start_sim, keys, [NodeSpec(f"rs-{c}", f"node-{n}") for c in range(8) for n in range(3)])
    urls = [url for _, url in sim.agents]
    path = poller_config(sim, pki, tmp_path, coordinated(zookeeper, keys, dispatch_workers="2"))
    pollers = [PollerProcess(path) for _ in range(3)]
    try:
        wait_for(lambda: len(leaders(pollers)) == 1, 30, "one leader")
        leader = leaders(pollers)[0]
        others = [p for p in pollers if p is not leader]
        assert all(metric(p, "coordination_leader") == 0 for p in others)

        # Watch leadership from outside all along: never two leaders at once.
        most, sampling = [1], threading.Event()

        def sample() -> None:
            while not sampling.wait(0.1):
                try:
                    most[0] = max(most[0], len(leaders(others)) + (leader.proc.poll() is None and
                                                                    metric(leader, "coordination_leader") == 1))
                except requests.RequestException:
                    continue
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        # Submit 120 actions to the other instances (and one through the CLI), 40 per second;
        # SIGKILL the leader after a second and a half, while it is dispatching them.
        submitted: list[tuple[str, str]] = []
        cli = subprocess.run([sys.executable, "-m", "replicante_poller", "action", "submit", "--config", str(path),
                              "--agent", urls[0], "--kind", PING], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        submitted.append((cli.stdout.strip(), urls[0]))
        killed_at = None
        for n in range(120):
            if n == 60:
                leader.proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                executed_at_kill = sum(sum(sim.executions(u).values()) for u in urls)
            url = urls[n % len(urls)]
            reply = requests.post(f"http://{others[n % 2].address}/api/v1/actions", headers=AUTH, timeout=10,
                                  json={"agent": url, "kind": PING, "args": {"n": n}})
            assert reply.status_code == 202, reply.text
            submitted.append((reply.json()["id"], url))
            threading.Event().wait(0.025)
        leader.proc.wait()
        assert 0 < executed_at_kill < len(submitted) - 60, executed_at_kill  # killed mid-dispatch

        wait_for(lambda: len(leaders(others)) == 1, SESSION_TIMEOUT + 15, "a new leader")
        takeover = time.monotonic() - killed_at  # type: ignore[operator]

        def states() -> dict[str, str]:
            listed = requests.get(f"http://{others[0].address}/api/v1/actions", headers=AUTH, timeout=10).json()
            return {a["id"]: a["state"] for a in listed["actions"]}
        wait_for(lambda: all(states().get(i) == "DONE" for i, _ in submitted), 60, "every action DONE")
        sampling.set()
        sampler.join()

        executions = {u: sim.executions(u) for u in urls}
        for action_id, url in submitted:
            assert executions[url].get(action_id) == 1, (action_id, url, executions[url].get(action_id))
        assert sum(sum(e.values()) for e in executions.values()) == len(submitted)  # nothing else ran
        assert most[0] == 1, f"{most[0]} leaders at once"
        print(f"\n{len(submitted)} actions, leader SIGKILLed after {executed_at_kill} executions; new leader "
              f"{takeover:.1f}s after the kill (session_timeout {SESSION_TIMEOUT:g}s); each executed exactly once")
    finally:
        for poller in pollers:
            poller.stop()


def test_zookeeper_down_deposes_the_leader_and_actions_resume(
        zookeeper: ZooKeeper, start_sim, pki: dict, keys: dict, tmp_path: Path) -> None:
    sim = enforcing_sim(start_sim, keys, [NodeSpec(f"rs-{c}", "node-1") for c in range(4)])
    url = sim.agents[0][1]
    path = poller_config(sim, pki, tmp_path, coordinated(zookeeper, keys, path="/test-outage"))
    pollers = [PollerProcess(path) for _ in range(2)]
    try:
        wait_for(lambda: len(leaders(pollers)) == 1, 30, "one leader")
        zookeeper.stop()
        # No contact: the leader steps down at once (before the server could expire its
        # session and elect another), and submissions are refused, not left hanging.
        wait_for(lambda: not leaders(pollers), SESSION_TIMEOUT, "no leader while ZooKeeper is away")
        refused = requests.post(f"http://{pollers[0].address}/api/v1/actions", headers=AUTH, timeout=10,
                                json={"agent": url, "kind": PING})
        assert refused.status_code == 503 and "not connected to ZooKeeper" in refused.json()["error"], refused.text
        zookeeper.start()
        wait_for(lambda: len(leaders(pollers)) == 1, SESSION_TIMEOUT + 15, "one leader again")
        accepted = requests.post(f"http://{pollers[1].address}/api/v1/actions", headers=AUTH, timeout=10,
                                 json={"agent": url, "kind": PING})
        assert accepted.status_code == 202, accepted.text
        action_id = accepted.json()["id"]
        assert sim.wait_for_state(url, action_id, "DONE", 30)
        assert sim.executions(url) == {action_id: 1}
    finally:
        for poller in pollers:
            poller.stop()


# -- the election alone ----------------------------------------------------------------------

def test_one_instance_leads_and_a_successor_follows_at_once(zookeeper: ZooKeeper) -> None:
    from replicante_poller.coordination.election import Election

    clients = [KazooClient(zookeeper.hosts, timeout=5) for _ in range(2)]
    terms: list[tuple[int, str]] = []
    changed = threading.Condition()

    def elected(n: int) -> Callable[[str], None]:
        def record(fence: str) -> None:
            with changed:
                terms.append((n, fence))
                changed.notify_all()
        return record
    elections = [Election(c, settings(zookeeper), f"instance-{n}", elected(n), lambda: None)
                 for n, c in enumerate(clients)]
    try:
        for client, election in zip(clients, elections):
            client.start(timeout=10)
            election.start()
        with changed:
            assert changed.wait_for(lambda: terms, 10)
        first, fence = terms[0]
        assert clients[first].exists(fence) is not None
        assert [e.leader() for e in elections].count(1.0) == 1 and elections[first].leader() == 1.0
        elections[first].stop()  # leaves: its znode is deleted, the other leads without waiting for a session
        with changed:
            assert changed.wait_for(lambda: len(terms) == 2, 5)
        assert terms[1][0] == 1 - first and clients[0].exists(fence) is None
        assert elections[1 - first].leader() == 1.0 and elections[first].leader() == 0.0
    finally:
        for client, election in zip(clients, elections):
            election.stop()
            client.stop()
            client.close()


def test_the_leader_does_not_sign_for_agents_their_owner_distrusts(
        zookeeper: ZooKeeper, start_sim, pki: dict, keys: dict, tmp_path: Path) -> None:
    """Two agents of a cluster another instance polls report one node id (a relay, or a
    cloned node): the owner marks both duplicate_node and publishes it; the leader, which
    would otherwise learn each one's identity from a poll of its own, sends them nothing,
    neither before their owner published anything nor after."""
    from replicante_poller.coordination.rendezvous import owner

    sim = enforcing_sim(start_sim, keys, [NodeSpec("rs-0", "node-1")])
    discovered = tmp_path / "discovered.ini"
    discovered.write_text("")
    extra = coordinated(zookeeper, keys, path="/test-distrust") + f"[discovery]\nfiles = {discovered}\nrefresh = 1s\n"
    path = poller_config(sim, pki, tmp_path, extra)
    owner_config = tmp_path / "owner.ini"  # the same fleet, actions off: this instance never leads
    owner_config.write_text(path.read_text().replace("[actions]\nenabled = true\n", "[actions]\nenabled = false\n")
                            .replace(f"signing_key = {keys['key']}\n", ""))
    pollers = [PollerProcess(path), PollerProcess(owner_config)]
    try:
        wait_for(lambda: len(leaders(pollers)) == 1, 30, "one leader")
        leader = pollers[0]
        ids = [p.expect(r"coordination through ZooKeeper \S+ as (\S+)").group(1) for p in pollers]
        cluster = next(f"dup-{n}" for n in range(1000) if owner(f"dup-{n}", ids) == ids[1])  # held by the other
        twins = start_sim([NodeSpec(cluster, "same-node"), NodeSpec(cluster, "same-node")],
                          keyring=Keyring.from_entries([str(keys["pub"])]), action_seconds=0.05)
        urls = [url for _, url in twins.agents]
        discovered.write_text(f"[cluster:{cluster}]\nagents = {', '.join(urls)}\n")

        def distrusted() -> bool:
            seen = leader.targets()
            return all(u in seen and seen[u]["reason"] == "duplicate_node" and seen[u]["owner"] == ids[1] for u in urls)
        # Submitted as soon as the leader knows the agents, before their owner published
        # anything: the leader's own poll alone is not enough to sign.
        submitted = []
        for url in urls:
            def accepted() -> bool:
                reply = requests.post(f"http://{leader.address}/api/v1/actions", headers=AUTH, timeout=10,
                                      json={"agent": url, "kind": PING})
                if reply.status_code == 202:
                    submitted.append(reply.json()["id"])
                return reply.status_code == 202
            wait_for(accepted, 30, f"the leader knows {url}")
        wait_for(distrusted, 30, "the owner's published health reaches the leader: duplicate_node")
        distrusted_at = time.time()
        control = requests.post(f"http://{leader.address}/api/v1/actions", headers=AUTH, timeout=10,
                                json={"agent": sim.agents[0][1], "kind": PING}).json()["id"]
        assert sim.wait_for_state(sim.agents[0][1], control, "DONE", 30)  # the leader dispatches meanwhile

        def listed() -> dict[str, dict]:
            return {a["id"]: a for a in requests.get(f"http://{leader.address}/api/v1/actions", headers=AUTH,
                                                     timeout=10).json()["actions"]}
        wait_for(lambda: all(listed()[i]["updated_ts"] > distrusted_at for i in submitted), 30,
                 "the leader looked at both actions again since their owner distrusted the agents")
        assert [twins.schedule_posts(u) for u in urls] == [0, 0]
        actions = listed()
        assert all(actions[i]["state"] == "PENDING" and "waiting" in actions[i]["message"] for i in submitted), actions
    finally:
        for poller in pollers:
            poller.stop()


def test_the_action_commands_use_the_journal_in_zookeeper(zookeeper: ZooKeeper, keys: dict, tmp_path: Path) -> None:
    """submit, list, show (by prefix) and cancel, from the command line, no instance running."""
    path = tmp_path / "poller.ini"
    path.write_text("[cluster:rs]\nagents = https://127.0.0.1:9\n" + coordinated(zookeeper, keys, path="/test-cli"))

    def command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicante_poller", "action", *args, "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
    submitted = command("submit", "--agent", "https://127.0.0.1:9", "--kind", PING, "--args", '{"n": 1}')
    assert submitted.returncode == 0, submitted.stderr
    action_id = submitted.stdout.strip()
    listed = command("list")
    assert listed.returncode == 0 and action_id in listed.stdout and "PENDING" in listed.stdout, listed
    shown = command("show", action_id[:8])
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["id"] == action_id and document["args"] == {"n": 1} and document["created_ts"].endswith("Z")
    cancelled = command("cancel", action_id[:8])
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout, cancelled
    again = command("cancel", action_id)
    assert again.returncode == 1 and again.stderr.strip().endswith("is CANCELLED, not PENDING: only an action not "
                                                                   "delivered yet can be cancelled"), again
    unknown = command("show", "abcd")
    assert unknown.returncode == 1 and f"no action abcd in the action journal ZooKeeper {zookeeper.hosts}" in unknown.stderr
