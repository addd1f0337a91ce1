"""Signal handling for long-running verbs: handlers only set an Event (gunicorn's way)."""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop`; the handlers do nothing else."""
    def handler(signum: int, frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
