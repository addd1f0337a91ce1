#!/usr/bin/env python3
"""CPU per poll of replicante-poller against the stdlib floor and the naive requests peer.

One command starts its own agents (one nginx on loopback serving N agents on N ports
from static JSON files, ECDSA P-256 certificate from a throw-away CA), then, in the same
run and against the same agents, measures:

  floor      stdlib socket + one shared ssl.SSLContext + hand-written HTTP/1.1,
             3 GETs on one fresh connection per poll (the Python floor)
  peer       requests.get(url, headers={"Connection": "close"}, verify=ca) per GET
             (what most scripts do)
  transport  replicante_poller's poll_target() in a loop: transport + validation only,
             no scheduler, pool, state or metrics (where the service's cost goes)
  service    the real service, `replicante-poller run`, as a subprocess with a generated
             configuration, at steady state for a fixed time: its CPU from /proc, polls
             and errors from /metrics, scheduler lag p50/p99 from the histogram
             buckets, peak RSS (VmHWM)
  signing    Signer.sign and httpsig.sign_action throughput (signatures/s)

Every measured client, the service included, is pinned to CPU 0 and nginx to CPU 1
(when there are two CPUs), so each gets a core of its own and CPU time per poll compares
like with like. Benchmarks are not tests: nothing here asserts a timing.

    python benchmarks/bench.py                      # 100 agents, table on stdout
    python benchmarks/bench.py --json out.json      # also the figures as JSON
    python benchmarks/bench.py --scale              # the service at 100, 1,000, 10,000 agents
    python benchmarks/bench.py --cprofile           # plus where the poll_target loop's time goes
    python benchmarks/bench.py --resumption         # plus the floor with TLS session resumption
    python benchmarks/bench.py --tree DIR           # the product from another tree (before/after)

benchmarks/README.md explains the method and holds the latest figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_agents import Agents  # noqa: E402  (after the path: the clients import the product)
from bench_clients import client_subprocess, profile_table, run_client  # noqa: E402
from bench_service import run_service  # noqa: E402

TARGET_FLOOR_RATIO = 2.5  # service CPU per poll at most 2.5x the floor's
TARGET_PEER_RATIO = 2.5  # the naive peer at least 2.5x the service's
SCALE_SIZES = (100, 1000, 10000)


# -- reporting ---------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def comparison_table(report: dict) -> str:
    rows = [("client (one poll = fresh TCP+TLS, 3 GETs)", "polls/s", "CPU ms/poll", "lag p50 ms", "lag p99 ms",
             "peak RSS MB", "errors", "nginx ms/poll")]
    names = {"floor": "stdlib floor (socket + shared SSLContext)",
             "floor_resumed": "stdlib floor + TLS session resumption",
             "peer": "naive peer (requests.get per GET)",
             "transport": "poll_target() loop (transport+validation)",
             "framework": "service machinery alone (canned polls)", "service": "replicante-poller run (whole service)"}
    for key in ("floor", "floor_resumed", "peer", "transport", "framework", "service"):
        r = report.get(key)
        if r is None:
            continue
        rows.append((names[key], fmt(r["polls_per_s"], 1), fmt(r["cpu_ms_per_poll"], 3),
                     fmt(r.get("lag_p50_ms"), 1), fmt(r.get("lag_p99_ms"), 1), fmt(r["peak_rss_mb"], 1),
                     fmt(int(r["errors"])), fmt(r.get("nginx_cpu_ms_per_poll"), 3)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    ratios = report["ratios"]
    lines.append("")
    runs = len(report["service"].get("cpu_ms_per_poll_runs", [0]))
    lines.append(f"medians of {runs} interleaved round{'s' if runs > 1 else ''}: "
                 f"service/floor = {fmt(ratios['service_over_floor'])} (target <= {TARGET_FLOOR_RATIO}"
                 f"{verdict(ratios['service_over_floor'], TARGET_FLOOR_RATIO, True)})   "
                 f"peer/service = {fmt(ratios['peer_over_service'])} (target >= {TARGET_PEER_RATIO}"
                 f"{verdict(ratios['peer_over_service'], TARGET_PEER_RATIO, False)})   "
                 f"transport/floor = {fmt(ratios['transport_over_floor'])}")
    for kind in ("floor", "peer", "transport", "service"):
        if len(report.get(kind, {}).get("cpu_ms_per_poll_runs", [])) > 1:
            lines.append(f"  {kind} CPU ms/poll per round: "
                         + ", ".join(fmt(v, 3) for v in report[kind]["cpu_ms_per_poll_runs"]))
    s = report.get("signing")
    if s:
        lines.append(f"signing: Signer.sign {s['sign']['per_s']:,.0f}/s ({s['sign']['us_each']:.1f} us), "
                     f"sign_action {s['sign_action']['per_s']:,.0f}/s ({s['sign_action']['us_each']:.1f} us) per core")
    svc = report["service"]
    lines.append(f"service: {svc['agents']} agents every {svc['interval_s']:g}s, {svc['workers']} workers, "
                 f"{fmt(svc['cpu_percent_of_core'], 1)}% of a core, {int(svc['polls'])} polls "
                 f"(expected {svc['expected_polls']:.0f}), agents not polled within an interval: "
                 f"{svc['agents_not_polled_within_interval']}, failures {svc['failures'] or 0}, "
                 f"skipped {svc['skipped'] or 0}")
    return "\n".join(lines)


def scale_table(runs: list[dict]) -> str:
    rows = [("agents", "interval s", "polls/s", "CPU % core", "CPU ms/poll", "lag p50 ms", "lag p99 ms",
             "peak RSS MB", "RSS MB", "errors", "not polled", "/metrics CPU ms")]
    for r in runs:
        rows.append((fmt(r["agents"]), fmt(r["interval_s"], 0), fmt(r["polls_per_s"], 1),
                     fmt(r["cpu_percent_of_core"], 1), fmt(r["cpu_ms_per_poll"], 3), fmt(r["lag_p50_ms"], 1),
                     fmt(r["lag_p99_ms"], 1), fmt(r["peak_rss_mb"], 1), fmt(r["rss_mb"], 1), fmt(r["errors"]),
                     fmt(r["agents_not_polled_within_interval"]), fmt(r["metrics_scrape_cpu_ms"], 0)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def median_run(runs: list[dict]) -> dict:
    """The run whose CPU per poll is the median (its other figures stay consistent with it),
    with every run's CPU per poll; the profile, taken in the last round, is kept."""
    ordered = sorted(runs, key=lambda r: r["cpu_ms_per_poll"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["cpu_ms_per_poll_runs"] = [r["cpu_ms_per_poll"] for r in runs]
    if "profile" in runs[-1]:
        chosen["profile"] = runs[-1]["profile"]
    return chosen


def verdict(value: Optional[float], target: float, at_most: bool) -> str:
    if value is None:
        return ""
    return " meets" if (value <= target if at_most else value >= target) else " MISSES"


def cpus() -> tuple[Optional[int], Optional[int]]:
    """(CPU for the measured client, CPU for nginx), or no pinning on one CPU."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(available) >= 2:
        return available[0], available[1]
    return None, None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help="agents served by nginx (default 100)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per client (default 15)")
    parser.add_argument("--interval", type=float, default=None,
                        help="service poll interval in seconds (default: agents/100, at least 1; 30 with --scale)")
    parser.add_argument("--workers", type=int, default=16, help="service workers (default 16)")
    parser.add_argument("--big-brokers", type=int, default=0,
                        help="that many Kafka agents answer 20,000 partitions (~3 MB of shards): the service's peak RSS")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of floor, peer, transport and service, interleaved; the median is reported (default 3)")
    parser.add_argument("--scale", action="store_true", help="the service alone at 100, 1,000 and 10,000 agents")
    parser.add_argument("--sizes", default=None, help="comma-separated agent counts for --scale")
    parser.add_argument("--resumption", action="store_true",
                        help="also measure the floor with TLS session resumption on each new connection")
    parser.add_argument("--framework", action="store_true",
                        help="also measure the service's machinery alone, poll_target() replaced by a canned result")
    parser.add_argument("--no-pin", action="store_true", help="do not pin clients and nginx to CPUs")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: floor,peer,transport,signing")
    parser.add_argument("--profile", default=None, help="py-spy raw profile of the service run to this file")
    parser.add_argument("--cprofile", action="store_true",
                        help="after timing them, profile the poll_target loop and the peer with cProfile")
    parser.add_argument("--tree", default=None,
                        help="run the service and the poll_target loop from another source tree "
                             "(e.g. `git archive HEAD | tar -x -C DIR`), to compare before and after a change")
    parser.add_argument("--json", dest="json_file", default=None, help="write the figures as JSON to this file")
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(run_client(json.loads(Path(args.client).read_text()))))
        return 0
    client_cpu, nginx_cpu = (None, None) if args.no_pin else cpus()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SCALE_SIZES)
    count = max(sizes) if args.scale else args.agents
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    folder = Path(tempfile.mkdtemp(prefix="replicante-bench-"))
    if args.tree:
        args.tree = str(Path(args.tree).resolve())
    report: dict[str, Any] = {"tree": args.tree or str(REPO), "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                          "client_cpu": client_cpu, "nginx_cpu": nginx_cpu,
                                          "ssl": ssl.OPENSSL_VERSION}}
    agents = None
    try:
        t0 = time.monotonic()
        agents = Agents(folder, count, nginx_cpu, args.big_brokers)
        print(f"nginx serving {count} agents on 127.0.0.1:{agents.ports[0]}..{agents.ports[-1]} "
              f"(started in {time.monotonic() - t0:.1f}s)", file=sys.stderr, flush=True)
        if args.scale:
            runs = []
            for size in sizes:
                interval = args.interval or 30.0
                print(f"service: {size} agents every {interval:g}s ...", file=sys.stderr, flush=True)
                runs.append(run_service(agents, size, interval, args.duration, args.workers, client_cpu,
                                        tree=args.tree))
                print(scale_table(runs[-1:]), file=sys.stderr, flush=True)
            report["scale"] = runs
            print(scale_table(runs))
        else:
            interval = args.interval or max(1.0, count / 100)
            kinds = ("floor", "floor_resumed", "peer", "transport") if args.resumption else ("floor", "peer", "transport")
            if args.framework:
                kinds += ("framework",)
            rounds: dict[str, list[dict]] = {}
            for round_ in range(1, max(1, args.repeat) + 1):
                last = round_ == max(1, args.repeat)
                for kind in kinds:
                    if kind not in skip:
                        print(f"round {round_}: {kind} ...", file=sys.stderr, flush=True)
                        rounds.setdefault(kind, []).append(client_subprocess(
                            kind, agents, count, args.duration, client_cpu, args.tree,
                            cprofile=last and args.cprofile and kind in ("transport", "peer")))
                print(f"round {round_}: service: {count} agents every {interval:g}s ...", file=sys.stderr, flush=True)
                rounds.setdefault("service", []).append(run_service(
                    agents, count, interval, args.duration, args.workers, client_cpu, last and args.profile or None,
                    args.tree))
            for kind, runs in rounds.items():
                report[kind] = median_run(runs)
            if "signing" not in skip:
                report["signing"] = client_subprocess("signing", agents, 0, min(args.duration, 4.0), client_cpu)
            svc = report["service"]["cpu_ms_per_poll"]
            floor = report.get("floor", {}).get("cpu_ms_per_poll")
            peer = report.get("peer", {}).get("cpu_ms_per_poll")
            transport = report.get("transport", {}).get("cpu_ms_per_poll")
            report["ratios"] = {
                "service_over_floor": svc / floor if floor else None,
                "peer_over_service": peer / svc if peer and svc else None,  # svc is 0 when a tiny run took < 1 tick
                "transport_over_floor": transport / floor if floor and transport else None,
                "targets": {"service_over_floor_max": TARGET_FLOOR_RATIO, "peer_over_service_min": TARGET_PEER_RATIO},
            }
            print(comparison_table(report))
            for kind in ("transport", "peer"):
                if "profile" in report.get(kind, {}):
                    print(f"\n{kind}: " + profile_table(report[kind]["profile"]))
        if args.json_file:
            Path(args.json_file).write_text(json.dumps(report, indent=2, default=str) + "\n")
    finally:
        if agents is not None:
            agents.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
