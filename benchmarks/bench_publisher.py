"""What the health publisher's look costs the scheduler thread (coordinated mode only).

Every second the scheduler asks `Publisher.due()` which held clusters' health changed. At
N agents (100 per cluster) this prints the CPU of one look when nothing was polled since the
last one and when 1/30 of the agents were (a 30 s interval), next to two references measured
in the same run: the state snapshot alone (the floor: a look cannot cost less) and the look
as first written (each cluster's digest as SHA-256 of JSON, recomputed at every look).

    python benchmarks/bench_publisher.py                  # 1,000 and 10,000 agents
    python benchmarks/bench_publisher.py --sizes 100000
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from typing import Callable, Iterable

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.coordination.publisher import Publisher
from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.poll import PollResult
from replicante_poller.polling.state import FleetState, TargetView
from replicante_poller.reasons import Status

LOOKS = 30  # per figure; the median is printed


def sha_digest(views: Iterable[TargetView]) -> str:
    """The first digest: every agent's fields as JSON, hashed (the baseline)."""
    items = []
    for view in sorted(views, key=lambda v: v.target.key):
        result = view.result
        items.append([view.target.url, view.health.state.value, view.health.streak, view.flapping, view.api,
                      result.status.value if result else None,
                      result.reason.value if result and result.reason else None,
                      result.node_status.to_json() if result and result.node_status else None])
    return hashlib.sha256(json.dumps(items, separators=(",", ":")).encode()).hexdigest()


class FirstPublisher(Publisher):
    """`Publisher` with the first digest, recomputed for every agent at every look."""

    def _digest(self, members, seen):  # type: ignore[override]
        return sha_digest(members)


def up(target: Target, node: int, started: float) -> PollResult:
    return PollResult(target, Status.UP, None, "all checks passed", started, 0.01,
                      agent=AgentInfo(AgentVersion("abc", "0.7.0", "not tainted")),
                      datastore=DatastoreInfo(None, target.cluster_id, "MongoDB", f"n{node}", "4.0.12"))


def measure(size: int, kind: Callable[..., Publisher] | None) -> tuple[float, float]:
    """Median CPU ms of one look: (nothing polled since the last, 1/30 of the agents polled)."""
    targets = [Target(f"c{i // 100}", f"https://a{i}:37017", None, PollSettings(30.0, 1.0), TlsSettings())
               for i in range(size)]
    state = FleetState(fall=3, rise=2)
    state.set_targets(targets)
    now = [1_700_000_000.0]
    for i, target in enumerate(targets):
        state.record(up(target, i, now[0]))
    look: Callable[[], object]
    if kind is None:
        look = state.snapshot
    else:
        publisher = kind("bench", lambda: 3600.0, lambda: now[0])  # refresh not due: only the look is measured
        publisher.due(state.snapshot())
        look = lambda: publisher.due(state.snapshot())  # noqa: E731
    figures = []
    for polled in (0, max(1, size // 30)):
        times = []
        for k in range(LOOKS):
            now[0] += 1.0
            start = (k * polled) % size
            for i in range(start, min(size, start + polled)):
                state.record(up(targets[i], i, now[0]))
            before = time.process_time()
            look()
            times.append(time.process_time() - before)
        figures.append(statistics.median(times) * 1000)
    return figures[0], figures[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="agent counts, comma-separated")
    args = parser.parse_args()
    print(f"{'agents':>8} {'part':<12} {'idle look':>10} {'1/30 polled':>12}   (CPU ms per look, median of {LOOKS})")
    for size in (int(s) for s in args.sizes.split(",")):
        floor = measure(size, None)
        first = measure(size, FirstPublisher)
        now = measure(size, Publisher)
        for part, (idle, busy) in (("snapshot", floor), ("first", first), ("publisher", now)):
            print(f"{size:>8} {part:<12} {idle:>10.2f} {busy:>12.2f}")
        print(f"{size:>8} {'ratios':<12} publisher/first {now[0] / first[0]:.2f} idle, {now[1] / first[1]:.2f} polled; "
              f"publisher/snapshot {now[0] / floor[0]:.1f} idle, {now[1] / floor[1]:.1f} polled")


if __name__ == "__main__":
    main()
