"""Issue 12, the gateway's findings. Claims on an action carry an owner token, so a stale
owner can neither release nor overwrite a newer owner's claim (on the replay store, with a
clock).
"""
from __future__ import annotations

import sqlite3

import pytest

from replicante_poller.agentside.replay import ReplayStore


# -- claims carry an owner token -------------------------------------------------------------------


@pytest.fixture
def clock():
    return [1_800_000_000.0]


@pytest.fixture
def store(clock):
    return ReplayStore(":memory:", clock=lambda: clock[0])


def test_a_stale_owner_cannot_release_a_newer_owners_claim(store, clock):
    assert store.claim_action("a-1", "fp", stale_after=20, owner="first")[0]
    clock[0] += 21  # the first forwarder is stuck past the stale age
    assert store.claim_action("a-1", "fp", stale_after=20, owner="second")[0]  # taken over

    assert store.release_action("a-1", "first") is False  # the stuck one fails at last: not its claim any more

    assert store.claim_action("a-1", "fp", stale_after=20, owner="third") == (False, "fp", None)  # still in flight
    assert store.record_outcome("a-1", 200, "application/json", b'{"id":"a-1"}', "second") is True
    assert store.claim_action("a-1", "fp", stale_after=20, owner="third")[2].body == b'{"id":"a-1"}'


def test_a_stale_owner_cannot_overwrite_a_newer_owners_claim_or_answer(store, clock):
    assert store.claim_action("a-1", "fp", stale_after=20, owner="first")[0]
    clock[0] += 21
    assert store.claim_action("a-1", "fp", stale_after=20, owner="second")[0]

    assert store.record_outcome("a-1", 500, "text/plain", b"stale", "first") is False
    assert store.claim_action("a-1", "fp", stale_after=20, owner="third") == (False, "fp", None)
    assert store.record_outcome("a-1", 200, "application/json", b"{}", "second") is True
    assert store.record_outcome("a-1", 500, "text/plain", b"stale", "first") is False  # after it either
    assert store.record_outcome("a-1", 500, "text/plain", b"again", "second") is False  # the first answer is kept
    assert store.release_action("a-1", "second") is False  # an answered claim is never released
    claimed, _, previous = store.claim_action("a-1", "fp", stale_after=20, owner="third")
    assert not claimed and (previous.status, previous.body) == (200, b"{}")


def test_the_owner_releases_its_own_claim_so_a_retry_goes_through(store):
    assert store.claim_action("a-1", "fp", owner="first")[0]
    assert store.release_action("a-1", "other") is False
    assert store.release_action("a-1", "first") is True
    assert store.claim_action("a-1", "fp", owner="retry")[0]


def test_a_replay_store_from_before_owners_is_upgraded_in_place(tmp_path, clock):
    path = tmp_path / "replay.db"
    with sqlite3.connect(path) as db:  # the schema before claims had owners, with a claim in flight
        db.execute("CREATE TABLE actions (action_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER,"
                   " content_type TEXT, body BLOB, first_seen REAL NOT NULL)")
        db.execute("INSERT INTO actions VALUES ('old', 'fp', NULL, NULL, NULL, ?)", (clock[0] - 100,))
    db.close()
    store = ReplayStore(str(path), clock=lambda: clock[0])
    assert store.release_action("old", "someone") is False
    assert store.claim_action("old", "fp", stale_after=20, owner="new")[0]  # stale: taken over
    assert store.record_outcome("old", 200, "application/json", b"{}", "new") is True
