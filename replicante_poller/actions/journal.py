"""The action journal: every submitted action and every attempt, durably, in SQLite (WAL).

Nothing is lost: an action is committed before anyone hears its id, an attempt is
committed before its request leaves, and its outcome after the answer. After a crash an
action is re-sent with the SAME action_id, which the agent's idempotency turns into
"already exists": delivered exactly once, or still pending.

A journal is checked whole when it is opened (the base's integrity check, and every
record readable): a damaged one is refused, and left as it is, rather than recreated or
half used. A submission is acknowledged only after its COMMIT returned.

An operator may cancel a PENDING action (`cancel`) from another process at any time, so
the dispatcher's writes (`begin_attempt`, `end_attempt`, `update`) change an action only
while it is still in the state the dispatcher read, and say when they did not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from ..errors import ActionNotFound, CancelRefused, ConfigError, StoreError
from ..folders import make_writable_folder, writable_folder
from ..sqlitestore import BUSY_TIMEOUT, SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    requester TEXT NOT NULL,
    created_ts REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ts REAL NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    cluster_id TEXT,
    node_id TEXT,
    delivered_ts REAL,
    finished_ts REAL,
    updated_ts REAL NOT NULL,
    agent_history TEXT
);
CREATE INDEX IF NOT EXISTS actions_due ON actions (state, next_ts);
CREATE TABLE IF NOT EXISTS attempts (
    action_id TEXT NOT NULL REFERENCES actions(id),
    n INTEGER NOT NULL,
    ts REAL NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (action_id, n)
);
"""


class ActionState(str, enum.Enum):
    """Where an action is. PENDING and the agent-side states are live; the rest are final."""

    PENDING = "PENDING"  # not delivered yet (waiting for the agent's identity, or retrying)
    SCHEDULED = "SCHEDULED"  # the agent accepted it (NEW on the agent)
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"  # the agent ran it and it failed
    LOST = "LOST"  # the agent forgot it after accepting it
    PRUNED = "PRUNED"  # it finished on the agent, which pruned its record before its outcome was seen
    REJECTED = "REJECTED"  # the agent refused it (4xx): it will never run
    ABANDONED = "ABANDONED"  # max_attempts transient failures: never delivered
    CANCELLED = "CANCELLED"  # cancelled by the operator while PENDING: never attempted again

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({ActionState.DONE, ActionState.FAILED, ActionState.LOST, ActionState.PRUNED, ActionState.REJECTED,
                   ActionState.ABANDONED, ActionState.CANCELLED})
TRACKED = (ActionState.SCHEDULED, ActionState.RUNNING)
MIN_PREFIX = 4  # hexadecimal digits of an id that `action show` and `cancel` accept for it
ID_PREFIX = re.compile(r"[0-9a-f-]{%d,36}" % MIN_PREFIX)


@dataclasses.dataclass(frozen=True)
class Action:
    """One journaled action."""

    id: str
    agent: str
    kind: str
    args: Any
    requester: str
    created_ts: float
    state: ActionState
    attempts: int
    next_ts: float
    message: str
    cluster_id: Optional[str]
    node_id: Optional[str]
    delivered_ts: Optional[float]
    finished_ts: Optional[float]
    updated_ts: float
    agent_history: Optional[list]

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["state"] = self.state.value
        return document


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One delivery attempt and its outcome."""

    n: int
    ts: float
    outcome: str
    detail: str


def cancellation(action: Optional[Action], action_id: str, journal: str, in_flight: bool) -> str:
    """The message a cancelled `action` keeps; ActionNotFound or CancelRefused (one line)
    when it cannot be cancelled: absent, not PENDING, or its last attempt in flight."""
    if action is None:
        raise ActionNotFound(f"no action {action_id} in the action journal {journal}")
    if action.state is not ActionState.PENDING:
        raise CancelRefused(f"action {action_id} is {action.state.value}, not PENDING: only an action not "
                            "delivered yet can be cancelled")
    if in_flight:
        raise CancelRefused(f"action {action_id}: attempt {action.attempts} is being sent right now; "
                            "try again once it ended (action show)")
    if not action.attempts:
        return "cancelled before any attempt"
    return (f"cancelled after {action.attempts} failed attempt{'s' if action.attempts > 1 else ''}: "
            "the agent may have received it if an attempt timed out or lost its connection "
            "(action show lists them)")


def matching(ids: Iterable[str], prefix: str, journal: str) -> str:
    """The one id of `ids` that starts with `prefix` (already checked by `resolve`);
    ActionNotFound when none or several do."""
    found = sorted(i for i in ids if i.startswith(prefix))
    if not found:
        raise ActionNotFound(f"no action {prefix} in the action journal {journal}")
    if len(found) > 1:
        raise ActionNotFound(f"{prefix} is the prefix of {len(found)} actions in {journal}: give more of the id")
    return found[0]


def check_prefix(prefix: str) -> str:
    """`prefix` normalised; ActionNotFound when it cannot be (the start of) an action id."""
    prefix = prefix.strip().lower()
    if not ID_PREFIX.fullmatch(prefix):
        raise ActionNotFound(f"{prefix!r} is not an action id or a prefix of one "
                             f"(at least {MIN_PREFIX} of its hexadecimal digits and dashes)")
    return prefix


class ActionStore(Protocol):
    """What the dispatcher, the API and the CLI use of a journal: the SQLite `Journal`, or
    the ZooKeeper one of coordinated instances (`coordination/journal.py`)."""

    def submit(self, agent: str, kind: str, args: Any, requester: str = ...) -> Action: ...
    def get(self, action_id: str) -> Optional[Action]: ...
    def resolve(self, prefix: str) -> str: ...
    def cancel(self, action_id: str) -> Action: ...
    def list(self, limit: int = ...) -> list[Action]: ...
    def attempts(self, action_id: str) -> list[Attempt]: ...
    def wait_for(self, action_id: str, predicate: Callable[[Action], bool], timeout: float) -> Optional[Action]: ...
    def due(self, now: float, limit: int = ...) -> list[Action]: ...
    def next_due(self) -> Optional[float]: ...
    def pending(self) -> int: ...
    def begin_attempt(self, action: Action, cluster_id: str, node_id: str) -> Optional[int]: ...
    def end_attempt(self, action_id: str, n: int, outcome: str, detail: str, state: ActionState,
                    next_ts: float, message: str) -> bool: ...
    def update(self, action: Action, state: ActionState, next_ts: float, message: str,
               agent_history: Optional[list] = None) -> bool: ...
    def close(self) -> None: ...


def _action(row: sqlite3.Row) -> Action:
    values = dict(row)
    values["args"] = json.loads(values["args"])
    values["state"] = ActionState(values["state"])
    values["agent_history"] = json.loads(values["agent_history"]) if values["agent_history"] else None
    return Action(**values)


# The first record the journal could not decode: one makes an existing journal damaged.
UNREADABLE = """
SELECT id FROM actions WHERE NOT json_valid(args) OR (agent_history IS NOT NULL AND NOT json_valid(agent_history))
    OR state NOT IN ({}) LIMIT 1
""".format(", ".join("'%s'" % state.value for state in ActionState))


class Journal(SqliteStore):
    """SQLite journal shared by the service, the API and the CLI (several processes)."""

    what = "action journal"

    def __init__(self, path: str, clock: Callable[[], float] = time.time, readonly: bool = False,
                 timeout: float = BUSY_TIMEOUT):
        """Open (or create, mode 0600) the journal; StoreError when it cannot be used.

        `readonly` opens an existing journal only (for `action list` and `show`)."""
        if readonly and not os.path.isfile(path):
            raise StoreError(path, self.what, "no such file (has the service run with actions enabled?)")
        super().__init__(path, SCHEMA, timeout, readonly)
        self._clock = clock
        self._changed = threading.Condition(self._lock)
        with self.locked() as db:
            db.row_factory = sqlite3.Row
            db.execute("SELECT COUNT(*) FROM actions").fetchone()

    def damage(self, db: sqlite3.Connection) -> Optional[str]:
        """An existing journal without its actions table, or with a record that cannot be read."""
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'actions'").fetchone() is None:
            return "it has no actions table"
        row = db.execute(UNREADABLE).fetchone()
        return None if row is None else f"the record of action {row[0]} cannot be read"

    def _decode(self, row: sqlite3.Row) -> Action:
        """The action of a row; StoreError when the record was damaged while the journal was open."""
        try:
            return _action(row)
        except (ValueError, TypeError):
            problem = f"the record of action {row['id']} cannot be read (damaged?)"
            raise StoreError(self._path, self.what, problem) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; waiters are told after it commits."""
        with self.locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._changed.notify_all()

    def _write(self, sql: str, *params: Any) -> int:
        with self._transaction() as db:
            return db.execute(sql, params).rowcount

    def submit(self, agent: str, kind: str, args: Any, requester: str = "CORE_API") -> Action:
        """Durably queue a new action; its id is the action_id the agent will see."""
        now = self._clock()
        action_id = str(uuid.uuid4())
        with self._transaction() as db:  # read back before COMMIT: returned only once stored and readable
            db.execute(
                "INSERT INTO actions (id, agent, kind, args, requester, created_ts, state, next_ts, message, updated_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, 'PENDING', ?, 'queued', ?)",
                (action_id, agent, kind, json.dumps(args), requester, now, now, now))
            action = self._get(action_id)
            if action is None:  # rolled back: never acknowledged
                raise StoreError(self._path, self.what, f"action {action_id} could not be read back")
        return action

    def get(self, action_id: str) -> Optional[Action]:
        with self.locked():
            return self._get(action_id)

    def resolve(self, prefix: str) -> str:
        """The id of the one action whose id starts with `prefix` (at least MIN_PREFIX
        characters, or a whole id); ActionNotFound when none or several do."""
        prefix = check_prefix(prefix)
        with self.locked() as db:
            rows = db.execute("SELECT id FROM actions WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 1000",
                              (len(prefix), prefix)).fetchall()
        if not rows:
            raise ActionNotFound(f"no action {prefix} in the action journal {self._path}")
        if len(rows) > 1:
            many = f"{len(rows)}" if len(rows) < 1000 else "1000 or more"
            raise ActionNotFound(f"{prefix} is the prefix of {many} actions in {self._path}: give more of the id")
        return str(rows[0][0])

    def cancel(self, action_id: str) -> Action:
        """Cancel a PENDING action with no attempt in flight: it becomes CANCELLED (final) and
        is never attempted again. CancelRefused (one line) for any other action."""
        now = self._clock()
        with self._transaction() as db:
            action = self._get(action_id)
            sending = db.execute("SELECT n FROM attempts WHERE action_id = ? AND n = ? AND outcome = 'sending'",
                                 (action_id, action.attempts if action else 0)).fetchone()  # the last attempt, in flight
            message = cancellation(action, action_id, self._path, sending is not None)
            db.execute("UPDATE actions SET state = 'CANCELLED', message = ?, updated_ts = ?, finished_ts = ?"
                       " WHERE id = ? AND state = 'PENDING'", (message, now, now, action_id))
            cancelled = self._get(action_id)
        assert cancelled is not None
        return cancelled

    def _get(self, action_id: str) -> Optional[Action]:
        row = self._db.execute("SELECT * FROM actions WHERE id = ?", (action_id,)).fetchone()
        return self._decode(row) if row else None

    def wait_for(self, action_id: str, predicate: Callable[[Action], bool], timeout: float) -> Optional[Action]:
        """Block until the action satisfies `predicate` after a write by this process, or timeout.

        Returns the action as last read (check the predicate again to tell a timeout)."""
        with self._changed, self.translated():
            found: list[Optional[Action]] = [None]

            def check() -> bool:
                found[0] = self._get(action_id)
                return found[0] is not None and predicate(found[0])

            self._changed.wait_for(check, timeout)
            return found[0]

    def list(self, limit: int = 200) -> list[Action]:
        """Newest first."""
        with self.locked() as db:
            rows = db.execute("SELECT * FROM actions ORDER BY created_ts DESC, id LIMIT ?", (limit,)).fetchall()
        return [self._decode(r) for r in rows]

    def attempts(self, action_id: str) -> list[Attempt]:
        with self.locked() as db:
            rows = db.execute("SELECT n, ts, outcome, detail FROM attempts WHERE action_id = ? ORDER BY n",
                                    (action_id,)).fetchall()
        return [Attempt(**dict(r)) for r in rows]

    def due(self, now: float, limit: int = 100) -> list[Action]:
        """Live actions whose next step is due: delivery of PENDING ones, tracking of the others."""
        with self.locked() as db:
            rows = db.execute(
                "SELECT * FROM actions WHERE state IN ('PENDING', 'SCHEDULED', 'RUNNING') AND next_ts <= ?"
                " ORDER BY next_ts LIMIT ?", (now, limit)).fetchall()
        return [self._decode(r) for r in rows]

    def next_due(self) -> Optional[float]:
        with self.locked() as db:
            row = db.execute(
                "SELECT MIN(next_ts) FROM actions WHERE state IN ('PENDING', 'SCHEDULED', 'RUNNING')").fetchone()
        return row[0]

    def pending(self) -> int:
        """Actions not delivered yet."""
        with self.locked() as db:
            return db.execute("SELECT COUNT(*) FROM actions WHERE state = 'PENDING'").fetchone()[0]

    def begin_attempt(self, action: Action, cluster_id: str, node_id: str) -> Optional[int]:
        """Commit that attempt n is about to be sent (before it is); returns n, or None when
        the action is no longer PENDING (cancelled meanwhile): then nothing may be sent."""
        n = action.attempts + 1
        now = self._clock()
        with self._transaction() as db:
            changed = db.execute("UPDATE actions SET attempts = ?, cluster_id = ?, node_id = ?, updated_ts = ?,"
                                 " message = ? WHERE id = ? AND state = 'PENDING'",
                                 (n, cluster_id, node_id, now, f"sending attempt {n}", action.id)).rowcount
            if not changed:
                return None
            db.execute("INSERT INTO attempts (action_id, n, ts, outcome, detail) VALUES (?, ?, ?, 'sending', '')",
                       (action.id, n, now))
        return n

    def end_attempt(self, action_id: str, n: int, outcome: str, detail: str, state: ActionState,
                    next_ts: float, message: str) -> bool:
        """Commit the outcome of attempt n and, when it is still PENDING, the action's new
        state; False when it no longer was (the outcome is recorded, the state kept)."""
        now = self._clock()
        delivered = now if state is ActionState.SCHEDULED else None
        finished = now if state.final else None
        with self._transaction() as db:
            db.execute("UPDATE attempts SET outcome = ?, detail = ? WHERE action_id = ? AND n = ?",
                       (outcome, detail, action_id, n))
            return db.execute("UPDATE actions SET state = ?, next_ts = ?, message = ?, updated_ts = ?,"
                              " delivered_ts = COALESCE(delivered_ts, ?), finished_ts = COALESCE(finished_ts, ?)"
                              " WHERE id = ? AND state = 'PENDING'",
                              (state.value, next_ts, message, now, delivered, finished, action_id)).rowcount > 0

    def update(self, action: Action, state: ActionState, next_ts: float, message: str,
               agent_history: Optional[list] = None) -> bool:
        """Record what tracking (or waiting) learned about `action`, only while it is still in
        the state it was read in; False when it was not (cancelled meanwhile): nothing changed."""
        now = self._clock()
        finished = now if state.final else None
        history = json.dumps(agent_history) if agent_history is not None else None
        return self._write("UPDATE actions SET state = ?, next_ts = ?, message = ?, updated_ts = ?,"
                           " agent_history = COALESCE(?, agent_history), finished_ts = COALESCE(finished_ts, ?)"
                           " WHERE id = ? AND state = ?",
                           state.value, next_ts, message, now, history, finished, action.id, action.state.value) > 0


def open_journal(source: str, path: str, clock: Callable[[], float] = time.time, readonly: bool = False,
                 create: bool = True) -> Journal:
    """The journal `[actions] journal` of configuration `source` names, opened as `run`
    opens it (created in a folder made writable when absent, unless `readonly` or not
    `create`). Any problem (unwritable folder, damaged, locked or absent journal) is a
    ConfigError naming the configuration file, the key and the journal."""
    readonly_absent = not create and not os.path.exists(path)  # refused as a read-only open refuses it
    if not readonly and not readonly_absent and not os.path.exists(path):
        problem = make_writable_folder(str(Path(path).parent))
        if problem is not None:
            raise ConfigError(source, "actions", "journal", problem)
    try:
        return Journal(path, clock, readonly=readonly or readonly_absent)
    except StoreError as exc:
        raise ConfigError(source, "actions", "journal", str(exc)) from None


def check_journal(source: str, path: str) -> None:
    """Raise what `open_journal` would, creating nothing: an existing journal is opened
    (checked, and its write lock taken and released), an absent one's folder probed."""
    if os.path.exists(path):
        open_journal(source, path).close()
        return
    problem = writable_folder(str(Path(path).parent))
    if problem is not None:
        raise ConfigError(source, "actions", "journal", problem)
