"""What one /metrics request costs the status listener: the selector front end of issue 12
(`web.server.CountingServer`) against the listener it replaced (stdlib ThreadingHTTPServer,
a thread per connection, a semaphore cap), measured in the same run.

Each listener runs the real `StatusServer` (its handler, headers and metrics rendering) in a
process of its own pinned to CPU 0; the client, pinned to CPU 1, sends `GET /metrics` on a
fresh connection per request (the status listener speaks HTTP/1.0 and closes), closed loop.
The listener's CPU is utime + stime from /proc over the loop. Two bodies: `small` (the real
PollerMetrics registry with no agent, ~6 KB) and `large` (a canned 1 MB body, as ~1,000
agents give, not gzipped: the client does not ask for it). Rounds alternate the listeners;
the figures are medians of the rounds.

    python benchmarks/bench_listener.py                  # 3 rounds of 3 s per listener and body
    python benchmarks/bench_listener.py --duration 1 --repeat 1 --json out.json

Prints figures and the ratio new/old of each; never asserts anything about time.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_proc import proc_cpu_seconds  # noqa: E402

LISTENERS = ("old", "new")
SIZES = ("small", "large")
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: poller\r\nUser-Agent: bench\r\n\r\n"


def old_listener_class() -> type:
    """The listener before issue 12, as it was: ThreadingHTTPServer, a thread per connection
    (TLS and reads on it), a BoundedSemaphore cap of 256, 30 s per read, backlog 5."""
    import logging
    import sys as _sys
    from http.server import ThreadingHTTPServer

    log = logging.getLogger("old-listener")

    class OldCountingServer(ThreadingHTTPServer):
        daemon_threads = True
        on_error = staticmethod(lambda: None)

        def __init__(self, address: Any, handler: Any, max_connections: int = 256, **ignored: Any):
            super().__init__(address, handler)
            self._slots = threading.BoundedSemaphore(max_connections)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._slots.acquire(blocking=False):
                log.warning("connection limit reached, refusing %s", client_address)
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                self._slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                request.settimeout(30.0)
                super().process_request_thread(request, client_address)
            finally:
                self._slots.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            if isinstance(_sys.exc_info()[1], (ConnectionError, TimeoutError)):
                return
            log.exception("request from %s failed", client_address)

    return OldCountingServer


def serve(listener: str, size: str) -> None:
    """The server process: a StatusServer with `listener`, its port on stdout, until stdin closes."""
    from replicante_poller.web import status
    from replicante_poller.web.metrics import PollerMetrics, new_registry, render

    if listener == "old":
        status.CountingServer = old_listener_class()  # type: ignore[misc]
    registry = new_registry()
    PollerMetrics(registry, lambda: [])
    if size == "small":
        def metrics() -> tuple[bytes, str]:
            return render(registry)
    else:
        line = b'replicante_poller_agent_up{agent="https://mongo-000.example:37017",cluster="rs-000"} 1.0\n'
        canned = line * (1024 * 1024 // len(line))

        def metrics() -> tuple[bytes, str]:
            return canned, "text/plain; version=0.0.4; charset=utf-8"
    server = status.StatusServer("127.0.0.1", 0, lambda: [], metrics)
    server.start()
    print(server.address[1], flush=True)
    sys.stdin.read()
    server.stop()


def get(port: int) -> tuple[float, int]:
    """One GET /metrics on a fresh connection: seconds and bytes."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(REQUEST)
        received = 0
        while True:
            chunk = sock.recv(262144)
            if not chunk:
                break
            if received == 0 and not chunk.startswith(b"HTTP/1.0 200"):
                raise RuntimeError(f"unexpected answer: {chunk[:80]!r}")
            received += len(chunk)
    return time.perf_counter() - started, received


def measure(pid: int, port: int, duration: float) -> dict[str, float]:
    for _ in range(20):  # warm-up
        get(port)
    latencies, size = [], 0
    cpu_before, wall_before = proc_cpu_seconds(pid), time.perf_counter()
    while time.perf_counter() - wall_before < duration:
        seconds, size = get(port)
        latencies.append(seconds)
    wall, cpu = time.perf_counter() - wall_before, proc_cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {"requests": len(latencies), "per_second": len(latencies) / wall, "cpu_ms": 1000 * cpu / len(latencies),
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "bytes": size}


def start(listener: str, size: str, cpu: Optional[int]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, "--serve", listener, "--size", size],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {cpu})
    return process


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=LISTENERS, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=SIZES, default="small", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per listener, body and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client to CPUs 0 and 1")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.size)
        return 0
    pin = not args.no_pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    servers: dict[tuple[str, str], tuple[subprocess.Popen, int]] = {}
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        for listener in LISTENERS:
            for size in SIZES:
                process = start(listener, size, 0 if pin else None)
                assert process.stdout is not None
                servers[listener, size] = process, int(process.stdout.readline())
        for round_ in range(args.repeat):
            for size in SIZES:
                for listener in (LISTENERS if round_ % 2 == 0 else LISTENERS[::-1]):
                    process, port = servers[listener, size]
                    rounds.setdefault((listener, size), []).append(measure(process.pid, port, args.duration))
    finally:
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)
    medians = {key: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
               for key, runs in rounds.items()}
    print(f"GET /metrics, fresh connection each, {args.repeat} rounds of {args.duration:g} s, medians"
          f"{' (server on CPU 0, client on CPU 1)' if pin else ''}")
    print(f"{'listener':<10}{'body':<7}{'bytes':>9}{'req/s':>9}{'CPU ms/req':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for size in SIZES:
        for listener in LISTENERS:
            m = medians[listener, size]
            print(f"{listener:<10}{size:<7}{m['bytes']:>9.0f}{m['per_second']:>9.0f}{m['cpu_ms']:>12.3f}"
                  f"{m['p50_ms']:>9.3f}{m['p99_ms']:>9.3f}")
        new, old = medians["new", size], medians["old", size]
        print(f"{'new/old':<17}{'':>9}{new['per_second'] / old['per_second']:>9.2f}{new['cpu_ms'] / old['cpu_ms']:>12.2f}"
              f"{new['p50_ms'] / old['p50_ms']:>9.2f}{new['p99_ms'] / old['p99_ms']:>9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": {f"{k[0]}/{k[1]}": v for k, v in rounds.items()},
                                               "medians": {f"{k[0]}/{k[1]}": v for k, v in medians.items()}},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
