"""SQLite files of the project (action journal, replay store): opened one way, errors
translated in one place.

A store's file is created whole (schema written to a private temporary file, then linked
into place, mode 0600; SQLite's WAL and SHM files take the same mode), so an empty or
half-made file is never one of ours. An existing file is checked before anything writes
to it (read-only: empty, not SQLite, failing `PRAGMA integrity_check`, none of the store's
tables, or a subclass's own `damage()` check): a damaged store is refused with a
`StoreError` and the file is left exactly as it is. It runs in WAL mode with full sync
and is used under one lock by the threads of a process (several processes share it
through SQLite's own locking). Every use goes through `locked()` (or `translated()`), so a
locked, full or corrupt database is a `StoreError` naming the file, never a sqlite3
traceback.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Iterator, Optional

from .errors import StoreError, os_problem

BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's transaction
MEMORY = ":memory:"
MAX_REPORTED = 3  # integrity problems quoted in the error


class SqliteStore:
    """Base of the SQLite stores: the connection, its lock and its error translation."""

    what = "store"  # how messages name it

    def __init__(self, path: str, schema: str, timeout: float = BUSY_TIMEOUT, readonly: bool = False):
        self._path = path
        self._timeout = timeout
        self._lock = threading.Lock()
        with self.translated():
            if readonly and not os.path.isfile(path):
                raise StoreError(path, self.what, "no such file")
            if not readonly and path != MEMORY and not os.path.exists(path):
                _create(path, schema)
            if os.path.isfile(path):
                self._refuse_damaged(schema, timeout)
            if readonly:
                self._db = _connect_readonly(path, timeout)
                return
            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            _configure(self._db)
            with self._lock:
                self._db.executescript(schema)  # executescript commits on its own
                self._db.execute("BEGIN IMMEDIATE")  # writable now: a lock held elsewhere is found at open
                self._db.execute("ROLLBACK")

    def __str__(self) -> str:
        return self._path

    def _refuse_damaged(self, schema: str, timeout: float) -> None:
        """StoreError when the existing file is damaged; read-only, so the file stays as it is."""
        problem = _empty(self._path)
        if problem is None:
            db = _connect_readonly(self._path, timeout)
            try:
                problem = _integrity(db) or _foreign(db, schema, self.what) or self.damage(db)
            except sqlite3.OperationalError:  # cannot be read now (locked, unreadable): not a verdict
                raise
            except sqlite3.DatabaseError as exc:  # not SQLite, or too damaged to check
                problem = str(exc)
            finally:
                db.close()
        if problem is not None:
            raise StoreError(self._path, self.what, f"damaged, refusing to use it ({problem}); the file is left as it "
                                                    f"is: restore it from a backup, or move it aside to start an empty "
                                                    f"{self.what}")

    def damage(self, db: sqlite3.Connection) -> Optional[str]:
        """What a subclass finds wrong in the records of an existing file (read-only), or None."""
        return None

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """sqlite3 and file errors inside the block become StoreError naming the file."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):  # "database is locked", "database table is locked"
                raise StoreError(self._path, self.what, f"locked by another process for more than {self._timeout:g}s"
                                                        " (the busy timeout)") from None
            raise StoreError(self._path, self.what, exc) from None
        except sqlite3.Error as exc:
            raise StoreError(self._path, self.what, exc) from None
        except OSError as exc:
            problem = os_problem(exc) + (f" ({exc.filename})" if exc.filename else "")
            raise StoreError(self._path, self.what, problem) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the store's lock, with errors translated."""
        with self._lock, self.translated():
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _configure(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")


def _connect_readonly(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that never writes the file (nor checkpoints a WAL into it on close)."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)


def _create(path: str, schema: str) -> None:
    """A new store file with its schema, linked into place whole (another process may win)."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".new", dir=folder)  # mode 0600
    os.close(fd)
    try:
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            _configure(db)
            db.executescript(schema)
        finally:
            db.close()  # checkpoints the WAL into the file and syncs it
        with contextlib.suppress(FileExistsError):  # created meanwhile by another process: use that one
            os.link(temporary, path)
        _sync_folder(folder)
    finally:
        for leftover in (temporary, temporary + "-wal", temporary + "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _empty(path: str) -> Optional[str]:
    """An empty file is a truncated store: a new one is never linked into place empty."""
    if os.path.getsize(path) == 0:
        return "the file is empty: truncated?"
    return None


def _integrity(db: sqlite3.Connection) -> Optional[str]:
    """SQLite's own check of every page, index and record; None when it says ok."""
    rows = [str(row[0]) for row in db.execute("PRAGMA integrity_check").fetchall()]
    if rows == ["ok"]:
        return None
    lines = [line for row in rows for line in row.splitlines() if line and not line.startswith("***")]
    more = f" and {len(lines) - MAX_REPORTED} more" if len(lines) > MAX_REPORTED else ""
    return "integrity check: " + "; ".join(lines[:MAX_REPORTED]) + more


def _foreign(db: sqlite3.Connection, schema: str, what: str) -> Optional[str]:
    """A valid SQLite file that holds none of the store's tables is somebody else's file."""
    expected = _tables(schema)
    present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if expected and not expected & present:
        return f"none of the {what}'s tables ({', '.join(sorted(expected))}) are in it: another program's database?"
    return None


def _tables(schema: str) -> set[str]:
    memory = sqlite3.connect(MEMORY)
    try:
        memory.executescript(schema)
        return {row[0] for row in memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        memory.close()
