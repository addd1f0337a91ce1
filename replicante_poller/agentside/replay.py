"""The verifier's memory: a replay cache of (key id, nonce) and idempotency on action_id.

SQLite, so both survive a restart and are shared by threads and processes. The replay
check-and-insert is one atomic statement; entries are kept until their signature's expiry
plus the clock skew, then purged.
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
    first_seen REAL NOT NULL
);
"""
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

    def claim_action(self, action_id: str, fingerprint: str,
                     stale_after: float = 60.0) -> tuple[bool, Optional[str], Optional[Outcome]]:
        """Claim `action_id` for forwarding.

        Returns (claimed, known fingerprint, first outcome): claimed is True for the first
        request with this id, and again for a claim left unanswered for `stale_after`
        seconds (its forwarder died: the agent's own idempotency decides); otherwise the
        caller compares fingerprints and answers with the first outcome (None while the
        first request is still in flight).
        """
        now = self._clock()
        with self.locked() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO actions (action_id, fingerprint, first_seen) VALUES (?, ?, ?)",
                (action_id, fingerprint, now))
            if cursor.rowcount == 1:
                return True, fingerprint, None
            cursor = db.execute(
                "UPDATE actions SET first_seen = ? WHERE action_id = ? AND fingerprint = ? AND status IS NULL"
                " AND first_seen < ?", (now, action_id, fingerprint, now - stale_after))
            if cursor.rowcount == 1:
                return True, fingerprint, None
            row = db.execute("SELECT fingerprint, status, content_type, body FROM actions WHERE action_id = ?",
                                   (action_id,)).fetchone()
        known, status, content_type, body = row
        return False, known, (Outcome(status, content_type, body) if status is not None else None)

    def record_outcome(self, action_id: str, status: int, content_type: str, body: bytes) -> None:
        """Keep the agent's first answer for later retries of the same action."""
        with self.locked() as db:
            db.execute("UPDATE actions SET status = ?, content_type = ?, body = ? WHERE action_id = ?",
                             (status, content_type, body, action_id))

    def release_action(self, action_id: str) -> None:
        """Forget a claim whose forwarding failed before the agent answered, so a retry can go through."""
        with self.locked() as db:
            db.execute("DELETE FROM actions WHERE action_id = ? AND status IS NULL", (action_id,))
