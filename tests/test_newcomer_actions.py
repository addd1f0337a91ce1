"""Issue 15, a newcomer's first hour (part): `action show` gives every time as RFC 3339 and
takes an id prefix; `action cancel` (and `POST /api/v1/actions/ID/cancel`) ends an action
not delivered yet, which the dispatcher then never touches again."""
from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import pytest
import requests

from harness import ACTIONS_TOKEN, action_files, actions_config
from replicante_poller.actions.journal import ActionState, Journal
from replicante_poller.errors import CancelRefused
from test_newcomer import cli, one_line_error

PING = "agent.replicante.io/test.ping"
AGENT = "https://127.0.0.1:9"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def journal_config(tmp_path: Path, pki: dict) -> tuple[Path, Path]:
    keys = action_files(tmp_path)
    path = tmp_path / "poller.ini"
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[cluster:rs]\nagents = {AGENT}\n"
                    f"[actions]\nenabled = true\nsigning_key = {keys['key']}\njournal = {keys['journal']}\n")
    return path, keys["journal"]


def test_action_show_gives_every_time_as_rfc3339_and_takes_a_prefix(tmp_path, pki):
    path, journal_path = journal_config(tmp_path, pki)
    journal = Journal(str(journal_path))
    action = journal.submit(AGENT, PING, {"x": 1})
    n = journal.begin_attempt(action, "rs", "node-1")
    journal.end_attempt(action.id, n, "failed", "read timed out", ActionState.PENDING, 0.0, "retrying")
    journal.close()
    done = cli("action", "show", action.id[:6], "--config", str(path))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["id"] == action.id
    times = {key: value for key, value in shown.items() if key.endswith("_ts")}
    assert set(times) == {"created_ts", "next_ts", "delivered_ts", "finished_ts", "updated_ts"}
    assert all(value is None or RFC3339.fullmatch(value) for value in times.values()), times
    assert times["created_ts"] and times["updated_ts"] and times["next_ts"] == "1970-01-01T00:00:00.000Z"
    assert [RFC3339.fullmatch(a["ts"]) is not None for a in shown["attempts_log"]] == [True]


def test_action_show_of_an_ambiguous_unknown_or_short_prefix_is_exit_1(tmp_path, pki):
    path, journal_path = journal_config(tmp_path, pki)
    journal = Journal(str(journal_path))
    for _ in range(3):
        journal.submit(AGENT, PING, None)
    journal.close()
    with sqlite3.connect(journal_path) as db:  # three ids with one prefix
        db.execute("UPDATE actions SET id = 'abcd' || substr(id, 5)")
    for prefix, message in (("abcd", f"abcd is the prefix of 3 actions in {journal_path}: give more of the id"),
                            ("0000", f"no action 0000 in the action journal {journal_path}"),
                            ("abc", "'abc' is not an action id or a prefix of one (at least 4")):
        for verb in ("show", "cancel"):
            done = cli("action", verb, prefix, "--config", str(path))
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert done.returncode == 1 and len(errors) == 1 and message in errors[0], (verb, prefix, done.stderr)


def test_cancel_refuses_an_action_not_pending_or_with_an_attempt_in_flight(tmp_path, pki):
    path, journal_path = journal_config(tmp_path, pki)
    journal = Journal(str(journal_path))
    sending = journal.submit(AGENT, PING, None)
    journal.begin_attempt(sending, "rs", "node-1")
    delivered = journal.submit(AGENT, PING, None)
    n = journal.begin_attempt(delivered, "rs", "node-1")
    journal.end_attempt(delivered.id, n, "accepted", "HTTP 200", ActionState.SCHEDULED, 0.0, "delivered")
    journal.close()
    for action, message in ((sending, f"action {sending.id}: attempt 1 is being sent right now"),
                            (delivered, f"action {delivered.id} is SCHEDULED, not PENDING")):
        done = cli("action", "cancel", action.id, "--config", str(path))
        assert done.returncode == 1 and done.stderr.startswith(f"error: {message}"), done.stderr
        assert len(done.stderr.splitlines()) == 1


def test_the_dispatcher_never_overwrites_a_cancelled_action(tmp_path):
    """The dispatcher read the action PENDING, then it was cancelled: its writes change nothing."""
    journal = Journal(str(tmp_path / "actions.db"))
    action = journal.submit(AGENT, PING, None)
    cancelled = journal.cancel(action.id)
    assert cancelled.state is ActionState.CANCELLED and cancelled.state.final and cancelled.finished_ts is not None
    assert cancelled.message == "cancelled before any attempt"
    assert journal.begin_attempt(action, "rs", "node-1") is None  # never sent
    assert not journal.update(action, ActionState.PENDING, 0.0, "waiting for a successful poll")
    assert journal.get(action.id) == cancelled and journal.attempts(action.id) == []
    with pytest.raises(CancelRefused, match="is CANCELLED, not PENDING"):
        journal.cancel(action.id)


def test_a_cancelled_action_is_never_attempted_again_by_a_running_service(tmp_path, pki, start_sim):
    from process import PollerProcess
    from replicante_poller.agentsim import NodeSpec

    posts: dict[str, int] = {}
    lock = threading.Lock()

    def refuse(method, path, headers, body) -> bool:  # the agent answers 401 to every attempt
        with lock:
            action_id = json.loads(body)["action_id"]
            posts[action_id] = posts.get(action_id, 0) + 1
        return False

    url = start_sim([NodeSpec("rs", "node-1")], verifier=refuse).agents[0][1]
    keys = action_files(tmp_path)
    path = tmp_path / "poller.ini"
    path.write_text(actions_config([("rs", url)], pki, keys, backoff="2s", max_attempts="5"))
    process = PollerProcess(path)
    try:
        process.expect(r"all 1 agents polled: 1 UP")
        submit = ["action", "submit", "--config", str(path), "--agent", url, "--kind", PING]
        first = cli(*submit).stdout.strip()
        process.expect(rf"action {first}: attempt 1 to {re.escape(url)} failed \(HTTP 401\); retrying in 2s")
        done = cli("action", "cancel", first[:8], "--config", str(path))  # attempt 2 is 2s away
        assert done.returncode == 0, done.stderr
        assert done.stdout == (f"{first}: CANCELLED: cancelled after 1 failed attempt: the agent may have received it "
                               "if an attempt timed out or lost its connection (action show lists them)\n")
        second = cli(*submit).stdout.strip()  # its second attempt comes after the first's would have
        process.expect(rf"action {second}: attempt 2 to {re.escape(url)} failed")
        shown = json.loads(cli("action", "show", first, "--config", str(path)).stdout)
        assert (shown["state"], shown["attempts"], posts[first]) == ("CANCELLED", 1, 1), (shown, posts)
        cancel = f"http://{process.address}/api/v1/actions/{second}/cancel"  # attempt 3 is 4s away
        assert requests.post(cancel, timeout=10).status_code == 401  # the bearer token is required
        answer = requests.post(cancel, timeout=10, headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"})
        assert answer.status_code == 200 and answer.json()["state"] == "CANCELLED", answer.text
        again = requests.post(cancel, timeout=10, headers={"Authorization": f"Bearer {ACTIONS_TOKEN}"})
        assert again.status_code == 409 and "is CANCELLED, not PENDING" in again.json()["error"], again.text
    finally:
        assert process.stop() == 0


def test_the_readme_names_exactly_the_statuses_the_dispatcher_retries():
    from replicante_poller.actions.dispatcher import retryable_status

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    said = re.search(r"\*\*Retries\.\*\* Transport failures \(connect, TLS, timeout\) and the answers ([\d, ]+) and "
                     r"every 5xx are retried", readme)
    assert said is not None, "the README's Retries paragraph changed"
    named = {int(n) for n in said.group(1).replace(",", " ").split()}
    assert {s for s in range(400, 500) if retryable_status(s)} == named
    assert all(retryable_status(s) for s in range(500, 600))
    assert "Every other 4xx" in readme and "is final (`REJECTED`)" in readme


def test_an_attempt_left_sending_by_a_crash_does_not_block_a_cancel_once_a_later_one_ended(tmp_path):
    journal = Journal(str(tmp_path / "actions.db"))
    action = journal.submit(AGENT, PING, None)
    journal.begin_attempt(action, "rs", "node-1")  # the service died here: attempt 1 stays "sending"
    again = journal.get(action.id)
    n = journal.begin_attempt(again, "rs", "node-1")
    journal.end_attempt(action.id, n, "failed", "read timed out", ActionState.PENDING, 0.0, "retrying")
    cancelled = journal.cancel(action.id)
    assert cancelled.state is ActionState.CANCELLED and "the agent may have received it" in cancelled.message
    assert cancelled.message.startswith("cancelled after 2 failed attempts")


def test_action_submit_refuses_args_with_a_duplicate_key(tmp_path, pki):
    """`--args '{"n": 1, "n": 2}'` queued {"n": 2} without a word: the operator's first value was dropped."""
    path, journal_path = journal_config(tmp_path, pki)

    done = cli("action", "submit", "--config", str(path), "--agent", AGENT, "--kind", PING,
               "--args", '{"n": 1, "n": 2}')

    one_line_error(done, "--args", "duplicate key 'n'")
    journal = Journal(str(journal_path))
    try:
        assert journal.list() == []
    finally:
        journal.close()


def test_action_submit_refuses_args_nested_too_deeply_in_one_line(tmp_path, pki):
    """20,000 nested lists in `--args` ended in a RecursionError traceback from json.loads."""
    path, _ = journal_config(tmp_path, pki)

    done = cli("action", "submit", "--config", str(path), "--agent", AGENT, "--kind", PING,
               "--args", "[" * 20_000 + "]" * 20_000)

    one_line_error(done, "--args", "nested deeper than 64 levels")


@pytest.mark.parametrize("limit", ["-3", "0"])
def test_action_list_refuses_a_limit_below_one(tmp_path, pki, limit):
    """`--limit -3` listed the whole journal (SQLite's LIMIT -3 is no limit) and `--limit 0`
    an empty table, both without a word."""
    path, journal_path = journal_config(tmp_path, pki)
    journal = Journal(str(journal_path))
    journal.submit(AGENT, PING, None)
    journal.close()

    done = cli("action", "list", "--config", str(path), "--limit", limit)

    assert done.returncode == 2 and "--limit" in done.stderr and "must be at least 1" in done.stderr, done.stderr
    assert done.stdout == ""
