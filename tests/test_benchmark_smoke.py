"""The benchmark runs end to end at a tiny size, so it cannot rot.

Benchmarks are not tests: nothing here looks at a timing or a ratio, only that
`benchmarks/bench.py` starts its nginx agents, runs every part (floor, peer, the
poll_target loop, the real service, signing) and reports every field it promises.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
CLIENT_FIELDS = {"polls", "errors", "polls_per_s", "cpu_ms_per_poll", "peak_rss_mb", "per_poll"}
SERVICE_FIELDS = {"polls", "polls_per_s", "cpu_ms_per_poll", "lag_p50_ms", "lag_p99_ms", "peak_rss_mb", "errors",
                  "failures", "skipped", "agents_not_polled_within_interval", "metrics_scrape_cpu_ms", "exit_code"}


def test_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "bench.json"

    done = subprocess.run([sys.executable, str(BENCH), "--agents", "3", "--duration", "1.0", "--repeat", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    for heading in ("polls/s", "CPU ms/poll", "lag p50 ms", "lag p99 ms", "peak RSS MB", "errors",
                    "service/floor", "peer/service", "signing"):
        assert heading in done.stdout, done.stdout
    report = json.loads(out.read_text())
    for part in ("floor", "peer", "transport"):
        assert CLIENT_FIELDS <= set(report[part]), report[part]
        assert report[part]["polls"] > 0
    assert SERVICE_FIELDS <= set(report["service"]), report["service"]
    assert report["service"]["polls"] > 0 and report["service"]["exit_code"] == 0
    assert {"sign", "sign_action"} <= set(report["signing"])
    assert {"service_over_floor", "peer_over_service"} <= set(report["ratios"])


def test_the_publisher_benchmark_runs_at_a_tiny_size():
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_publisher.py"), "--sizes", "200"],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["200", "snapshot"], ["200", "first"], ["200", "publisher"], ["200", "ratios"]]
    assert "publisher/first" in rows[3] and "publisher/snapshot" in rows[3]
