"""The verifier's memory: a replay cache of (key id, nonce) and idempotency on action_id.

SQLite, so both survive a restart and are shared by threads and processes. The replay
check-and-insert is one atomic statement; entries are kept until their signature's expiry
plus the clock skew, then purged. A claim on an action carries its owner's token: only the
owner of the current claim may record its outcome or release it, so a forwarder whose
stale claim was taken over can neither release nor overwrite the newer claim.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

from ..sqlitestore import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    keyid TEXT NOT NULL, nonce TEXT NOT NULL, keep_until REAL NOT NULL, PRIMARY KEY (keyid, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (keep_until);
CREATE TABLE IF NOT EXISTS actions (
    action_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER, content_type TEXT, body BLOB,
    first_seen REAL NOT NULL, owner TEXT NOT NULL DEFAULT ''
);
"""
OWNER_COLUMN = "ALTER TABLE actions ADD COLUMN owner TEXT NOT NULL DEFAULT ''"  # replay stores made before owners
PURGE_EVERY = 60.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the agent answered the first time an action was scheduled (None: still in progress)."""

    status: Optional[int]
    content_type: Optional[str]
    body: Optional[bytes]


class ReplayStore(SqliteStore):
    """Replay cache and idempotency records in one SQLite file."""

    what = "replay store"

    def __init__(self, path: str, clock: Callable[[], float] = time.time):
        super().__init__(path, SCHEMA)
        self._clock = clock
        self._next_purge = 0.0
        with self.locked() as db:
            if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(actions)")}:
                db.execute(OWNER_COLUMN)

    def remember_nonce(self, keyid: str, nonce: str, keep_until: float) -> bool:
        """Insert (keyid, nonce) unless present: True the first time, False for a replay."""
        now = self._clock()
        with self.locked() as db:
            if now >= self._next_purge:
                db.execute("DELETE FROM nonces WHERE keep_until < ?", (now,))
                self._next_purge = now + PURGE_EVERY
            cursor = db.execute("INSERT OR IGNORE INTO nonces (keyid, nonce, keep_until) VALUES (?, ?, ?)",
                                      (keyid, nonce, keep_until))
            return cursor.rowcount == 1

    def claim_action(self, action_id: str, fingerprint: str, stale_after: float = 60.0,
                     owner: str = "") -> tuple[bool, Optional[str], Optional[Outcome]]:
        """Claim `action_id` for forwarding, as `owner` (a token unique to this claimant).

        Returns (claimed, known fingerprint, first outcome): claimed is True for the first
        request with this id, and again for a claim left unanswered for `stale_after`
        seconds (its forwarder died: the agent's own idempotency decides; the claim is now
        `owner`'s); otherwise the caller compares fingerprints and answers with the first
        outcome (None while the first request is still in flight).
        """
        now = self._clock()
        with self.locked() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO actions (action_id, fingerprint, first_seen, owner) VALUES (?, ?, ?, ?)",
                (action_id, fingerprint, now, owner))
            if cursor.rowcount == 1:
                return True, fingerprint, None
            cursor = db.execute(
                "UPDATE actions SET first_seen = ?, owner = ? WHERE action_id = ? AND fingerprint = ?"
                " AND status IS NULL AND first_seen < ?", (now, owner, action_id, fingerprint, now - stale_after))
            if cursor.rowcount == 1:
                return True, fingerprint, None
            row = db.execute("SELECT fingerprint, status, content_type, body FROM actions WHERE action_id = ?",
                                   (action_id,)).fetchone()
        known, status, content_type, body = row
        return False, known, (Outcome(status, content_type, body) if status is not None else None)

    def record_outcome(self, action_id: str, status: int, content_type: str, body: bytes,
                       owner: Optional[str] = None) -> bool:
        """Keep the agent's first answer for later retries of the same action.

        Only while `owner` holds the unanswered claim (None: whoever holds it, for a lone
        forwarder that never takes claims over). False: not recorded (the claim was taken
        over, or an answer is already kept)."""
        with self.locked() as db:
            cursor = db.execute(
                "UPDATE actions SET status = ?, content_type = ?, body = ? WHERE action_id = ? AND status IS NULL"
                " AND (? IS NULL OR owner = ?)", (status, content_type, body, action_id, owner, owner))
            return cursor.rowcount == 1

    def release_action(self, action_id: str, owner: Optional[str] = None) -> bool:
        """Forget a claim whose forwarding failed before the agent answered, so a retry can go
        through; only `owner`'s claim (None: whoever holds it). False: nothing released."""
        with self.locked() as db:
            cursor = db.execute("DELETE FROM actions WHERE action_id = ? AND status IS NULL AND (? IS NULL OR owner = ?)",
                                (action_id, owner, owner))
            return cursor.rowcount == 1
