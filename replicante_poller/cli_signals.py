"""Signal handling for long-running verbs: handlers do as little as gunicorn's do.

`install_stop_handlers` (the service): SIGTERM/SIGINT log a line and set the stop Event,
SIGHUP logs and calls `reload`, which only enqueues a command for the scheduler thread.
`signal_commands` (the gateway): every handler only puts STOP or RELOAD on a SimpleQueue
that the main thread reads.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event, reload: Optional[Callable[[], None]] = None) -> None:
    """SIGTERM and SIGINT set `stop`; SIGHUP calls `reload` (which only enqueues)."""
    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    def hangup(signum: int, frame: object) -> None:
        log.info("received SIGHUP, reloading")
        assert reload is not None
        reload()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if reload is not None:
        signal.signal(signal.SIGHUP, hangup)


STOP, RELOAD = "stop", "reload"


def signal_commands() -> "queue.SimpleQueue[str]":
    """A queue the signal handlers only put into: SIGTERM/SIGINT -> STOP, SIGHUP -> RELOAD.

    SimpleQueue, whose put() is reentrant: a signal may arrive while the main thread is in get()."""
    commands: "queue.SimpleQueue[str]" = queue.SimpleQueue()

    def handler(signum: int, frame: object) -> None:
        commands.put(RELOAD if signum == signal.SIGHUP else STOP)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, handler)
    return commands
