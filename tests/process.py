"""A real `replicante-poller run` process, with its log read line by line (no sleeps)."""
from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import requests
from prometheus_client.parser import text_string_to_metric_families


class PollerProcess:
    """Starts `VERB --config PATH ARGS...` (default `run`), after `prefix` (a wrapper command)
    if given; `expect(regex)` waits for a log line."""

    def __init__(self, config: Path, verb: str = "run", ready: str = r"status on http://(\S+)/",
                 prefix: Sequence[str] = (), args: Sequence[str] = ()):
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "replicante_poller", verb, "--config", str(config),
                                      *args], stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.log: list[str] = []
        self._cursor = 0  # expect() matches lines from here on
        threading.Thread(target=self._read, daemon=True).start()
        self.address = self.expect(ready).group(1)
        self._cursor = 0  # lines logged before the listener are still there to expect

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """The first new log line matching `pattern`; fails on exit, or once `timeout`
        seconds passed in all (a process logging other lines does not extend it)."""
        regex = re.compile(pattern)
        while self._cursor < len(self.log):
            self._cursor += 1
            match = regex.search(self.log[self._cursor - 1])
            if match:
                return match
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; log:\n" + "".join(self.log))
            if line is None:
                raise AssertionError(f"process exited before {pattern!r}; log:\n" + "".join(self.log))
            self.log.append(line)
            self._cursor = len(self.log)
            match = regex.search(line)
            if match:
                return match

    def drained(self) -> list[str]:
        """Every line logged so far (those not expected yet included), without waiting."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.log
            if line is None:
                self.lines.put(None)  # the end stays for expect()
                return self.log
            self.log.append(line)

    def targets(self) -> dict[str, dict]:
        document = requests.get(f"http://{self.address}/api/v1/targets", timeout=5).json()
        return {t["url"]: t for t in document["targets"]}

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = requests.get(f"http://{self.address}/metrics", timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
