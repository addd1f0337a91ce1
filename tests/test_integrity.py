"""Data that must not be lost or turn against the service: the action journal, the state
file and the actions API, attacked through the real process (CLI subprocess, or the
service in-process for the API)."""
from __future__ import annotations

import datetime
import hashlib
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from replicante_poller.actions.api import ActionsApi
from replicante_poller.actions.journal import Journal
from replicante_poller.agentsim import NodeSpec

from harness import ACTIONS_TOKEN, action_files, actions_config, config_text
from process import PollerProcess

PING = "agent.replicante.io/test.ping"
AGENT = "https://127.0.0.1:9"  # configured, never answers: submissions only need it configured
CLI = [sys.executable, "-m", "replicante_poller"]
BEARER = {"Authorization": f"Bearer {ACTIONS_TOKEN}"}


@pytest.fixture
def keys(tmp_path: Path) -> dict:
    return action_files(tmp_path)


@pytest.fixture
def config(tmp_path: Path, pki: dict, keys: dict) -> Path:
    """A configuration with actions on, polling one agent that never answers."""
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", AGENT)], pki, keys))
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_with_history(path: Path, count: int = 200) -> None:
    journal = Journal(str(path))
    for i in range(count):
        journal.submit(AGENT, PING, {"i": i, "padding": "x" * 300})
    journal.close()


def run(config: Path, *verb: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`replicante-poller VERB --config FILE`; a `run` that keeps running fails the test."""
    process = subprocess.Popen(CLI + list(verb) + ["--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{' '.join(verb)} kept running instead of refusing; log:\n{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@contextlib.contextmanager
def poller(config: Path, seconds: float = 60.0, **options: object) -> Iterator[PollerProcess]:
    """A `run` process, killed after `seconds` at the latest: a service that logs an error
    every tick would otherwise keep `expect` reading forever."""
    process = PollerProcess(config, **options)
    watchdog = threading.Timer(seconds, process.kill)
    watchdog.start()
    try:
        yield process
    finally:
        watchdog.cancel()
        process.kill()


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


# -- the action journal ------------------------------------------------------------------

def truncate_to_nothing(path: Path) -> None:
    os.truncate(path, 0)


def truncate_the_tail(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 100)  # pages still whole, an index entry gone


def truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def overwrite_a_page(path: Path) -> None:
    with open(path, "r+b") as out:  # the header of page 6: SQLite can no longer read that b-tree page
        out.seek(4096 * 5)
        out.write(b"\xff" * 16)


def overwrite_a_record(path: Path) -> None:
    """Damage that SQLite cannot see (records carry no checksum): one action's args stop being JSON."""
    db = sqlite3.connect(str(path))
    db.execute("UPDATE actions SET args = '{\"i\": 3, ' WHERE rowid = 4")
    db.commit()
    db.close()


def another_programs_database(path: Path) -> None:
    path.unlink()
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE photos (name TEXT, taken REAL)")
    db.commit()
    db.close()


def not_a_database(path: Path) -> None:
    path.write_bytes(b"this is not SQLite at all, but it is where the journal was\n" * 100)


@pytest.mark.parametrize("damage", [truncate_to_nothing, truncate_the_tail, truncate_half, overwrite_a_page,
                                    overwrite_a_record, another_programs_database, not_a_database])
def test_a_damaged_journal_stops_the_service_and_the_cli_and_is_kept_as_it_is(config, keys, damage):
    journal = keys["journal"]
    journal_with_history(journal)
    damage(journal)
    before = digest(journal)

    error = one_line_error(run(config, "run"))
    assert f"{journal}: action journal: damaged" in error and "left as it is" in error
    for verb in (["action", "submit", "--agent", AGENT, "--kind", PING], ["action", "list"]):
        assert f"{journal}: action journal: damaged" in one_line_error(run(config, *verb))
    assert digest(journal) == before, "a damaged journal must be kept exactly as it was"
    assert not [p for p in journal.parent.iterdir() if p.name.startswith(f".{journal.name}.")], "no temporary left"


def test_a_missing_journal_is_created_whole_and_private(config, keys):
    done = run(config, "action", "submit", "--agent", AGENT, "--kind", PING)
    assert done.returncode == 0, done.stderr
    journal = keys["journal"]
    assert sorted(p.name for p in journal.parent.iterdir() if "actions.db" in p.name) == ["actions.db"]
    assert journal.stat().st_mode & 0o077 == 0
    reader = Journal(str(journal), readonly=True)
    assert [a.id for a in reader.list()] == [done.stdout.strip()]
    reader.close()


# A process whose files may not grow past FILE_LIMIT bytes: the journal's 32 KiB WAL index
# fits, a commit of ~30 KB of args does not (its WAL frames would), a small one does.
FILE_LIMIT = 40_000
LIMITED = [sys.executable, "-c", "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, "
           f"({FILE_LIMIT}, {FILE_LIMIT})); os.execv(sys.argv[1], sys.argv[1:])"]
BIG_ARGS = {"blob": "y" * 30_000}


def test_a_submission_whose_commit_fails_is_never_acknowledged(config, keys):
    Journal(str(keys["journal"])).close()
    with poller(config, prefix=LIMITED) as process:
        api = f"http://{process.address}/api/v1/actions"
        refused = requests.post(api, json={"agent": AGENT, "kind": PING, "args": BIG_ARGS}, headers=BEARER, timeout=30)
        assert refused.status_code == 503, refused.text
        assert "not stored" in refused.json()["error"] and "action journal" in refused.json()["error"]
        process.expect(r"action not stored: .*action journal")
        accepted = requests.post(api, json={"agent": AGENT, "kind": PING, "args": {"small": 1}}, headers=BEARER,
                                 timeout=30)
        assert accepted.status_code == 202, accepted.text
        stored = [a.id for a in Journal(str(keys["journal"]), readonly=True).list()]
        assert stored == [accepted.json()["id"]], "only the acknowledged submission is in the journal"
        assert process.stop() == 0

    done = subprocess.run(LIMITED + CLI + ["action", "submit", "--config", str(config), "--agent", AGENT, "--kind",
                                           PING, "--args", json.dumps(BIG_ARGS)], capture_output=True, text=True,
                          timeout=30)
    assert "action journal" in one_line_error(done) and not done.stdout
    assert len(Journal(str(keys["journal"]), readonly=True).list()) == 1


# -- the state file ----------------------------------------------------------------------

def state_config(tmp_path: Path, pki: dict, url: str, **poller: str) -> tuple[Path, Path]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    settings = "".join(f"{k} = {v}\n" for k, v in {"state_dir": str(state), **poller}.items())
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", url)], pki["ca"], interval="1s", timeout="500ms").replace(
        "[poller]\n", "[poller]\n" + settings))
    return path, state / "state.json"


def saved(url: str, **fields: object) -> str:
    """A state file as the service writes it: one agent that answered 503 with Retry-After."""
    now = time.time()
    target = {"cluster": "rs", "url": url, "health": {"state": "unhealthy", "streak": 0, "transitions": [now - 60]},
              "last_success": now - 120, "deferred_until": now + 1, "api": "legacy",
              "result": {"status": "AGENT_DOWN", "reason": "http_status", "message": "HTTP 503", "started": now - 10,
                         "duration": 0.01, "cert_not_after": None, "retry_after": 30.0, "agent": None,
                         "datastore": None, "shards": None, "api": "legacy", "node_status": None}}
    target.update(fields)
    return json.dumps({"format": 1, "saved_at": now - 5, "targets": [target]})


def set_aside(state: Path) -> list[str]:
    return [p.name for p in state.parent.iterdir() if p.name.startswith("state.json.unreadable-")]


def page_and_targets_answer(process: PollerProcess) -> dict:
    page = requests.get(f"http://{process.address}/", timeout=5)
    assert page.status_code == 200 and "replicante-poller" in page.text
    return process.targets()


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, r"not strict JSON: the file is nested too deeply"),
    ('{"format": 1, "targets": [], "targets": []}', r"not strict JSON: duplicate key 'targets'"),
    ('{"format": 1, "saved_at": NaN, "targets": []}', r"not strict JSON: NaN is not valid JSON"),
], ids=["nested", "duplicate-keys", "nan"])
def test_a_state_file_that_is_not_strict_json_is_set_aside_and_the_service_starts(tmp_path, pki, text, problem):
    path, state = state_config(tmp_path, pki, AGENT)
    state.write_text(text)
    started = time.time()
    with poller(path) as process:
        process.expect(r"state file \S+state.json cannot be used \(" + problem)
        assert set_aside(state) and not state.exists()
        # fresh state: not polled yet, or already polled by this run (its first slot may come at
        # once, the interval is 1s): the line never promised that no poll had ended yet
        shown = page_and_targets_answer(process)[AGENT]
        polled = shown["last_poll"] and datetime.datetime.fromisoformat(shown["last_poll"].replace("Z", "+00:00"))
        assert shown["message"] == "not polled yet" or (polled and polled.timestamp() >= started), shown
        assert process.stop() == 0


@pytest.mark.parametrize("fields, problem", [
    ({"deferred_until": "soon"}, r"\$\.targets\[0\]\.deferred_until: expected a time"),
    ({"last_success": 1e12}, r"\$\.targets\[0\]\.last_success: 1000000000000\.0 is out of range"),
    ({"health": {"state": "sick", "streak": 0}}, r"\$\.targets\[0\]\.health\.state: expected one of unknown"),
    ({"health": {"state": "healthy", "streak": -3}}, r"\$\.targets\[0\]\.health\.streak: -3 is out of range"),
    ({"last_success": time.time() + 86400}, r"\$\.targets\[0\]\.last_success: .* is in the future"),
], ids=["deferred-soon", "last-success-year-33658", "health-state", "negative-streak", "future-success"])
def test_a_state_file_with_a_bad_field_is_set_aside_and_the_agent_polled(tmp_path, pki, start_sim, fields, problem):
    sim = start_sim([NodeSpec("rs", "n1")])
    url = sim.agents[0][1]
    path, state = state_config(tmp_path, pki, url)
    state.write_text(saved(url, **fields))
    with poller(path) as process:
        process.expect(r"state file \S+state.json cannot be used \(" + problem + r".*starting with fresh state")
        process.expect(r"all 1 agents polled: 1 UP")
        assert set_aside(state)
        assert page_and_targets_answer(process)[url]["status"] == "UP"
        assert process.stop() == 0


def test_a_restored_deferral_ends_within_max_retry_after(tmp_path, pki, start_sim):
    sim = start_sim([NodeSpec("rs", "n1")])
    url = sim.agents[0][1]
    path, state = state_config(tmp_path, pki, url, max_retry_after="2s")
    state.write_text(saved(url, deferred_until=1e12))  # year 33658: valid JSON, nothing can show it
    with poller(path) as process:
        process.expect(r"restored the state of 1 of 1 agents")
        deferred = page_and_targets_answer(process)[url]["deferred_until"]
        assert deferred is not None
        assert datetime.datetime.fromisoformat(deferred.replace("Z", "+00:00")).timestamp() <= time.time() + 2
        process.expect(r"all 1 agents polled: 1 UP")  # polled once the capped deferral ended
        assert not set_aside(state)
        assert process.stop() == 0


# -- the actions API ---------------------------------------------------------------------

def test_listing_and_showing_actions_needs_the_bearer_token(start_service, pki, keys):
    service = start_service(actions_config([("rs", AGENT)], pki, keys))
    action = service.journal.submit(AGENT, PING, {"secret": "args of an action"})
    base = "http://%s:%d/api/v1/actions" % service.api_address
    for url in (base, f"{base}/{action.id}"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ACTIONS_TOKEN}):
            answer = requests.get(url, headers=headers, timeout=5)
            assert answer.status_code == 401, (url, headers, answer.text)
            assert "secret" not in answer.text and action.id not in answer.text
    listed = requests.get(base, headers=BEARER, timeout=5)
    assert listed.status_code == 200, listed.text  # the listener hands the Authorization header over
    assert [a["args"] for a in listed.json()["actions"]] == [{"secret": "args of an action"}]
    assert requests.get(f"{base}/{action.id}", headers=BEARER, timeout=5).json()["id"] == action.id


def test_the_actions_api_reads_with_the_token():
    """`ActionsApi.get` with the listener's Authorization header (the listener hands it over)."""
    class Listing:
        def list(self):
            return []

    api = ActionsApi(Listing(), lambda url: None, ACTIONS_TOKEN.encode(), lambda: None)
    assert api.get("/api/v1/actions", f"Bearer {ACTIONS_TOKEN}") == (200, {"actions": []})
    assert api.get("/api/v1/actions")[0] == 401
    assert ActionsApi(Listing(), lambda url: None, None, lambda: None).get("/api/v1/actions", "Bearer x")[0] == 403


@pytest.mark.parametrize("body", [
    b'{"agent": "%s", "kind": "%s", "args": NaN}', b'{"agent": "%s", "kind": "%s", "args": [Infinity]}',
    b'{"agent": "%s", "kind": "%s", "args": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    b'{"agent": "%s", "kind": "%s", "args": ' + b"[" * 65 + b"]" * 65 + b"}",
], ids=["nan", "infinity", "30000-deep", "65-deep"])
def test_args_with_nan_infinity_or_deep_nesting_are_refused_at_submission(start_service, pki, keys, body):
    service = start_service(actions_config([("rs", AGENT)], pki, keys))
    data = body.replace(b"%s", AGENT.encode(), 1).replace(b"%s", PING.encode(), 1)
    answer = requests.post("http://%s:%d/api/v1/actions" % service.api_address, data=data,
                           headers={**BEARER, "Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400, answer.text
    assert service.journal.list() == []
