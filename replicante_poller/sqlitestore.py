"""SQLite files of the project (action journal, replay store): opened one way, errors
translated in one place.

A store's file is created private (0600; SQLite's WAL and SHM files take the same mode),
runs in WAL mode with full sync, and is used under one lock by the threads of a process
(several processes share it through SQLite's own locking). Every use goes through
`locked()` (or `translated()`), so a locked, full or corrupt database is a `StoreError`
naming the file, never a sqlite3 traceback.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from .errors import StoreError

BUSY_TIMEOUT = 10.0  # seconds a write waits for another process's transaction


class SqliteStore:
    """Base of the SQLite stores: the connection, its lock and its error translation."""

    what = "store"  # how messages name it

    def __init__(self, path: str, schema: str, timeout: float = BUSY_TIMEOUT, readonly: bool = False):
        self._path = path
        self._lock = threading.Lock()
        with self.translated():
            if readonly:
                if not os.path.isfile(path):
                    raise StoreError(path, self.what, "no such file")
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout, isolation_level=None,
                                           check_same_thread=False)
                return
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # WAL and SHM files inherit the mode
            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._lock:
                self._db.executescript(schema)  # executescript commits on its own

    def __str__(self) -> str:
        return self._path

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """sqlite3 and file errors inside the block become StoreError naming the file."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(self._path, self.what, exc) from None

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the store's lock, with errors translated."""
        with self._lock, self.translated():
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()
