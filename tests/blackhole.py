"""Loopback addresses whose TCP connect never completes (no firewall needed).

A listener whose accept queue is full makes Linux drop further SYNs, so a connect to it
hangs exactly like one to a blackholed address. Used in-process and, through ns_helper,
inside a network namespace.
"""
from __future__ import annotations

import socket
from typing import Optional


class Blackhole:
    """A listener on `host` with its accept queue filled; `port` is where connects hang."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._fillers: list[socket.socket] = []
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(0)
        self.host, self.port = self._listener.getsockname()[:2]
        for _ in range(8):  # Linux queues backlog + 1; the first connect that hangs proves it full
            filler = socket.socket(self._listener.family)
            self._fillers.append(filler)
            filler.settimeout(0.2)
            try:
                filler.connect((self.host, self.port))
            except TimeoutError:
                return
        self.close()
        raise RuntimeError(f"could not fill the accept queue of {host}:{self.port}")

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        self.close()
