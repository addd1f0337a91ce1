"""Name resolution and TCP connect inside a poll's deadline (DESIGN section 3).

`socket.getaddrinfo` cannot be interrupted and `socket.create_connection` gives every
address the whole timeout, so a resolver that never answers, or a name whose addresses
all blackhole, would hold a worker for many times its deadline. The `Dialer` resolves on
a few daemon threads it owns (a poll waits for the answer only until its deadline, and an
abandoned lookup ends on its own later) and spreads what is left of the deadline over
the addresses, so every address is tried and the connect ends at the deadline.
"""
from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import queue
import socket
import threading
import time
from typing import Any, Callable, Optional

from ..reasons import LOCAL_ERRNOS, Reason

AddrInfo = tuple[Any, ...]  # (family, type, proto, canonname, sockaddr), as getaddrinfo gives it
Lookup = Callable[[str, int], list[AddrInfo]]


def _local(exc: OSError) -> "DialFailure":
    """The poller's own shortage (file descriptors, buffers, ports), not the agent's doing."""
    return DialFailure(Reason.LOCAL, f"the poller could not open a connection: {exc.strerror or exc} "
                                     "(a shortage of this process or host, not the agent's fault)")


class DialFailure(Exception):
    """Resolution or connect failed within the deadline; `reason` and message say how."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def system_lookup(host: str, port: int) -> list[AddrInfo]:
    """The system resolver (nsswitch: /etc/hosts, DNS ...), TCP addresses of any family."""
    return socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)


@functools.lru_cache(maxsize=4096)
def _literal(host: str, port: int) -> Optional[list[AddrInfo]]:
    """The address of an IP literal (no lookup, no thread), or None for a name (cached:
    the same agents are dialed every interval; callers only read the list)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


class Dialer:
    """Resolves and connects within a deadline; resolution runs on at most `threads` threads.

    Threads start on demand and are daemons: a lookup the resolver never answers keeps
    its thread until the system resolver gives up, never a poll or the shutdown. When
    every thread is stuck, new lookups wait in the queue and fail at their deadline.
    """

    def __init__(self, threads: int = 8, lookup: Lookup = system_lookup,
                 monotonic: Callable[[], float] = time.monotonic):
        self._lookup, self._monotonic = lookup, monotonic
        self._max_threads = max(1, threads)
        self._jobs: "queue.SimpleQueue[tuple[concurrent.futures.Future, str, int]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._idle = self._waiting = 0

    @property
    def threads(self) -> int:
        """Resolver threads started so far (at most the cap given at construction)."""
        return self._threads

    def resolve(self, host: str, port: int, deadline: float, timeout: float) -> list[AddrInfo]:
        """The addresses of `host`, or DialFailure(DNS) when the lookup fails or outlives `deadline`.

        `timeout` is the poll's whole deadline, for the message only.
        """
        literal = _literal(host, port)
        if literal is not None:
            return literal
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(future, host, port)
        try:
            addresses = future.result(timeout=max(0.0, deadline - self._monotonic()))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DialFailure(Reason.DNS, f"name resolution of {host} did not complete within {timeout:g}s") from None
        except (OSError, UnicodeError) as exc:  # socket.gaierror; a name IDNA cannot encode
            raise DialFailure(Reason.DNS, f"name resolution of {host} failed: {getattr(exc, 'strerror', None) or exc}") from None
        if not addresses:
            raise DialFailure(Reason.DNS, f"name resolution of {host} gave no address")
        return addresses

    def connect(self, host: str, port: int, deadline: float, timeout: float) -> socket.socket:
        """A connected TCP socket to `host`, trying each address with a share of what is left.

        `timeout` is the poll's whole deadline, for the message only.
        """
        addresses = self.resolve(host, port, deadline, timeout)
        last: Optional[OSError] = None
        tried = 0
        for index, (family, kind, proto, _, sockaddr) in enumerate(addresses):
            left = deadline - self._monotonic()
            if left <= 0:
                break
            tried += 1
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                raise _local(exc) from None
            try:
                sock.settimeout(left / (len(addresses) - index))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(sockaddr)
                sock.settimeout(max(deadline - self._monotonic(), 0.001))
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno in LOCAL_ERRNOS:
                    raise _local(exc) from None
                last = exc
        count = f"{tried} of {len(addresses)} address{'es' if len(addresses) > 1 else ''} of {host} tried"
        if last is None or isinstance(last, TimeoutError):
            raise DialFailure(Reason.CONNECT_TIMEOUT, f"TCP connect did not complete within {timeout:g}s ({count})")
        raise DialFailure(Reason.CONNECT, f"connection failed: {last.strerror or last} ({count})")

    def _submit(self, future: concurrent.futures.Future, host: str, port: int) -> None:
        """Queue a lookup, starting a thread when every running one is busy (up to the cap)."""
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._idle and self._threads < self._max_threads
            if start:
                self._threads += 1
                self._idle += 1
        self._jobs.put((future, host, port))
        if start:
            threading.Thread(target=self._run, name=f"resolver-{self._threads}", daemon=True).start()

    def _run(self) -> None:
        while True:
            future, host, port = self._jobs.get()
            with self._lock:
                self._idle -= 1
                self._waiting -= 1
            try:
                if future.set_running_or_notify_cancel():  # False: its poll already gave up
                    try:
                        future.set_result(self._lookup(host, port))
                    except BaseException as exc:  # handed to the poll, which translates it
                        future.set_exception(exc)
            finally:
                with self._lock:
                    self._idle += 1
