"""The dispatcher of a coordinated instance: a `Dispatcher` runs only while this instance
is the elected leader (`coordination/election.py` calls `elected` and `deposed`); the
service and the API talk to this class whatever the leadership."""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Protocol

from ..config import ActionsSettings
from .dispatcher import Dispatcher
from .signing import Signer

log = logging.getLogger(__name__)


class LeaderJournal(Protocol):
    """The journal side of leadership: its writes are fenced by the election znode."""

    def lead(self, fence: str) -> int: ...
    def unlead(self) -> None: ...


class ElectedDispatcher:
    """Starts a fresh Dispatcher on election and stops it when deposed."""

    def __init__(self, journal: LeaderJournal, make: Callable[[ActionsSettings, Signer], Dispatcher],
                 settings: ActionsSettings, signer: Signer):
        self._journal, self._make = journal, make
        self._config = (settings, signer)  # replaced whole by reconfigure()
        self._lock = threading.Lock()
        self._current: Optional[Dispatcher] = None

    def elected(self, fence: str) -> None:
        """This instance leads: read the journal, dispatch (StoreError when it cannot be read)."""
        live = self._journal.lead(fence)
        dispatcher = self._make(*self._config)
        with self._lock:
            self._current = dispatcher
        dispatcher.start()
        log.info("dispatching: %d live actions in the journal", live)

    def deposed(self) -> None:
        """No longer the leader: stop dispatching (in-flight attempts end), then write nothing."""
        with self._lock:
            dispatcher, self._current = self._current, None
        if dispatcher is not None:
            dispatcher.stop()
        self._journal.unlead()

    def wake(self) -> None:
        with self._lock:
            dispatcher = self._current
        if dispatcher is not None:
            dispatcher.wake()

    def reconfigure(self, settings: ActionsSettings, signer: Signer) -> None:
        self._config = (settings, signer)
        with self._lock:
            dispatcher = self._current
        if dispatcher is not None:
            dispatcher.reconfigure(settings, signer)

    @property
    def signer(self) -> Signer:
        return self._config[1]

    def start(self) -> None:
        """Nothing to start: the election starts the dispatcher."""

    def stop(self) -> None:
        self.deposed()
