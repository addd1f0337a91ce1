"""The real service, `replicante-poller run`, as a subprocess at steady state: its CPU,
polls, scheduler lag, memory and errors, from /proc and its own /metrics."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

from bench_agents import Agents
from bench_proc import context_switches, proc_cpu_seconds, proc_status_mb

REPO = Path(__file__).resolve().parent.parent

def scrape(port: int) -> dict[str, Any]:
    """The figures the benchmark needs from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    out: dict[str, Any] = {"polls": {}, "failures": {}, "skipped": {}, "lag": {}, "last_success": {},
                           "threads": 0.0}
    sample = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')
    label = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        match = sample.match(line)
        if match is None:
            continue
        name, labels, value = match.group(1), dict(label.findall(match.group(2) or "")), float(match.group(3))
        name = name.removeprefix("replicante_poller_")
        if name == "polls_total":
            out["polls"][labels["result"]] = value
        elif name == "poll_failures_total":
            out["failures"][labels["reason"]] = value
        elif name == "polls_skipped_total":
            out["skipped"][labels["reason"]] = value
        elif name == "scheduler_lag_seconds_bucket":
            out["lag"][float(labels["le"])] = value
        elif name == "last_poll_success_timestamp_seconds":
            out["last_success"][labels["agent"]] = value
        elif name == "thread_errors_total":
            out["threads"] += value
    out["bytes"] = len(text)
    return out


def quantile(buckets: dict[float, float], q: float) -> Optional[float]:
    """histogram_quantile over cumulative bucket counts (linear inside the bucket)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def diff(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def service_config(folder: Path, agents: Agents, count: int, interval: float, timeout: float, workers: int,
                   port: int) -> Path:
    discovery = folder / f"discovery-{count}.json"
    discovery.write_text(json.dumps(agents.discovery(count)))
    config = folder / f"poller-{count}.ini"
    config.write_text(
        "[poller]\n"
        f"interval = {interval * 1000:.0f}ms\n"
        f"timeout = {timeout * 1000:.0f}ms\n"
        f"workers = {workers}\n"
        "[tls]\n"
        f"ca_file = {agents.ca_file}\n"
        "[discovery]\n"
        f"files = {discovery}\n"
        "[http]\n"
        f"listen = 127.0.0.1:{port}\n")
    return config


def run_service(agents: Agents, count: int, interval: float, duration: float, workers: int,
                cpu: Optional[int], profile: Optional[str] = None, tree: Optional[str] = None) -> dict:
    """The real service at steady state: CPU, polls, lag, RSS and errors over `duration`."""
    timeout = min(5.0, interval / 2)
    config = service_config(agents.folder, agents, count, interval, timeout, workers, 0)  # the log says which port
    command = [sys.executable, "-m", "replicante_poller", "run", "--config", str(config)]
    env = dict(os.environ)
    if tree:  # `python -m` puts the working directory first on sys.path
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=tree or REPO, env=env)
    if cpu is not None:
        os.sched_setaffinity(process.pid, {cpu})  # before its threads start: they inherit it
    all_polled = threading.Event()
    log: list[str] = []
    listening: list[int] = []

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line.rstrip())
            found = re.search(r"status on http://[^:]+:(\d+)/", line)
            if found:
                listening.append(int(found.group(1)))
            if re.search(r"all \d+ agents polled", line):
                all_polled.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    started = time.monotonic()
    spy = None
    try:
        give_up = time.monotonic() + interval + 60
        while not (all_polled.wait(0.25) and listening):  # the first cycle: every agent once
            if process.poll() is not None or time.monotonic() > give_up:
                reader.join(5)
                raise SystemExit("the service did not poll every agent:\n" + "\n".join(log[-20:]))
        warm = time.monotonic() - started
        port = listening[0]
        # Polls are counted between the middles of two scrapes; CPU between their ends,
        # so the scrapes' own cost stays out of the per-poll figure (it is reported apart).
        t0 = time.monotonic()
        before = scrape(port)
        cpu0, wall0 = proc_cpu_seconds(process.pid), time.monotonic()
        mid0 = (t0 + wall0) / 2
        if profile:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(process.pid), "--duration", str(int(duration)),
                                    "--rate", "250", "--gil", "--format", "raw", "--output", profile,
                                    "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        switches0, nginx0 = context_switches(process.pid), agents.cpu_seconds()
        time.sleep(duration)
        switches1, nginx1 = context_switches(process.pid), agents.cpu_seconds()
        cpu1, wall1 = proc_cpu_seconds(process.pid), time.monotonic()
        after = scrape(port)
        t1, after_unix = time.monotonic(), time.time()
        mid1 = (wall1 + t1) / 2
        cpu_rate = (cpu1 - cpu0) / (wall1 - wall0)
        scrape_cpu0, s0 = proc_cpu_seconds(process.pid), time.monotonic()
        scrape(port)
        scrape_cost = proc_cpu_seconds(process.pid) - scrape_cpu0 - cpu_rate * (time.monotonic() - s0)
        peak, rss = proc_status_mb(process.pid, "VmHWM"), proc_status_mb(process.pid, "VmRSS")
        threads = len(os.listdir(f"/proc/{process.pid}/task"))
    finally:
        if spy is not None:
            spy.wait(timeout=duration + 60)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        reader.join(5)
    polls = diff(after["polls"], before["polls"])
    done = polls.get("success", 0.0) + polls.get("failure", 0.0)
    failures = {k: v for k, v in diff(after["failures"], before["failures"]).items() if v}
    skipped = {k: v for k, v in diff(after["skipped"], before["skipped"]).items() if v}
    lag = diff(after["lag"], before["lag"])
    wall, cpu_s = mid1 - mid0, cpu_rate * (mid1 - mid0)
    stale = [url for url, ts in after["last_success"].items() if after_unix - ts > interval + timeout + 1]
    missing = count - len(after["last_success"])
    return {
        "agents": count, "interval_s": interval, "timeout_s": timeout, "workers": workers,
        "duration_s": wall, "warmup_s": warm, "polls": done, "expected_polls": count * wall / interval,
        "polls_per_s": done / wall, "cpu_s": cpu_s, "cpu_ms_per_poll": 1000 * cpu_s / max(done, 1),
        "cpu_percent_of_core": 100 * cpu_s / wall,
        "lag_p50_ms": _ms(quantile(lag, 0.50)), "lag_p99_ms": _ms(quantile(lag, 0.99)),
        "lag_over_1s": lag.get(float("inf"), 0.0) - lag.get(1.0, 0.0),
        "peak_rss_mb": peak, "rss_mb": rss, "threads": threads,
        "errors": int(polls.get("failure", 0.0) + sum(skipped.values()) + diff(
            {"t": after["threads"]}, {"t": before["threads"]})["t"]),
        "failures": failures, "skipped": skipped,
        "agents_not_polled_within_interval": len(stale) + missing,
        "context_switches_per_poll": (switches1 - switches0) / max(done, 1),
        "nginx_cpu_ms_per_poll": 1000 * (nginx1 - nginx0) * (mid1 - mid0) / (wall1 - wall0) / max(done, 1),
        "metrics_scrape_cpu_ms": max(0.0, 1000 * scrape_cost), "metrics_bytes": after["bytes"],
        "exit_code": code,
    }


def _ms(value: Optional[float]) -> Optional[float]:
    return None if value is None else 1000 * value
