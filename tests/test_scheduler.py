"""The scheduler's stable slots and due-time heap, driven by a fake `now` (no clock, no sleeps)."""
from __future__ import annotations

import logging
import math
import queue
import random
import threading
from collections import Counter

import pytest

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.models import DatastoreInfo
from replicante_poller.web.metrics import PollerMetrics, new_registry, sample
from replicante_poller.polling.poll import PollResult
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.scheduler import SLOT_GRID, Due, Schedule, Scheduler, next_slot, slot
from replicante_poller.polling.state import FleetState


def target(n: int | str, interval: float = 10.0, cluster: str = "c", timeout: float = 1.0) -> Target:
    return Target(cluster, f"https://agent{n}:37017", None, PollSettings(interval, timeout), TlsSettings())


def run(schedule: Schedule, start: float, stop: float, step: float) -> list[Due]:
    """pop_due at every tick of a fake clock from start to stop (inclusive)."""
    popped: list[Due] = []
    ticks = int(round((stop - start) / step))
    for i in range(ticks + 1):
        popped.extend(schedule.pop_due(start + i * step))
    return popped


# --- slot ---------------------------------------------------------------------------


def test_slot_is_stable_and_in_range() -> None:
    for n in range(200):
        t = target(n)
        phase = slot(t)
        assert 0.0 <= phase < t.poll.interval
        assert slot(target(n)) == phase  # a new, equal Target: same slot (no per-process salt)


def test_slot_is_a_pure_function_of_identity_and_interval() -> None:
    t = target(1)
    renamed = Target(t.cluster_id, t.url, "display", PollSettings(10.0, 2.0, 1), TlsSettings(min_version="1.3"))
    assert slot(renamed) == slot(t)
    # same fraction of the interval whatever the interval
    assert slot(target(1, interval=60.0)) == pytest.approx(slot(t) * 6, abs=6 * SLOT_GRID)
    # the cluster is part of the identity
    assert slot(target(1, cluster="other")) != slot(t)
    assert slot(target(2)) != slot(t)


def test_slot_known_value() -> None:
    # sha256("c\0https://agent0:37017")[:8] / 2**64 * interval, down to the 100 ms grid: a
    # regression guard that the phase survives restarts and upgrades.
    import hashlib
    digest = hashlib.sha256(b"c\x00https://agent0:37017").digest()
    phase = int.from_bytes(digest[:8], "big") / 2**64 * 10.0
    assert slot(target(0, interval=10.0)) == math.floor(phase / 0.1) * 0.1
    assert phase - 0.1 < slot(target(0, interval=10.0)) <= phase


def test_slots_spread_uniformly() -> None:
    interval = 10.0
    slots = [slot(target(n, interval)) for n in range(1000)]
    buckets = Counter(int(s / interval * 10) for s in slots)
    assert set(buckets) == set(range(10))
    assert max(buckets.values()) <= 150, buckets
    assert min(buckets.values()) >= 50, buckets
    assert len(set(slots)) == 100  # every step of the 100 ms grid is used


def test_slots_fall_on_the_grid_and_a_step_is_due_at_once() -> None:
    targets = [target(n, 10.0) for n in range(200)]
    for t in targets:
        steps = slot(t) / SLOT_GRID
        assert steps == pytest.approx(round(steps), abs=1e-9)
    schedule = Schedule()
    schedule.set_targets(targets, 1000.0)
    first = schedule.next_due()
    popped = schedule.pop_due(first)
    same_step = [t for t in targets if next_slot(t, 1000.0) == first]

    assert len(same_step) >= 2  # 200 targets on 100 steps: some share one
    assert {d.target.key for d in popped} == {t.key for t in same_step}
    assert schedule.next_due() >= first + SLOT_GRID - 1e-9


def test_slots_spread_uniformly_over_clusters() -> None:
    slots = [slot(target(n % 10, 60.0, cluster=f"cluster{n // 10}")) for n in range(1000)]
    buckets = Counter(int(s / 60.0 * 10) for s in slots)
    assert max(buckets.values()) <= 150, buckets


# --- next_slot ----------------------------------------------------------------------


def test_next_slot_properties() -> None:
    rng = random.Random(1234)
    for n in range(300):
        interval = rng.choice([0.5, 1.0, 10.0, 15.0, 60.0, 3600.0])
        t = target(n, interval, timeout=0.1)
        phase = slot(t)
        for now in (0.0, phase, rng.uniform(0, 1e6), 1_700_000_000.0 + rng.uniform(0, interval)):
            at = next_slot(t, now)
            assert now <= at < now + interval
            cycles = (at - phase) / interval
            assert cycles == pytest.approx(round(cycles), abs=1e-6)


def test_next_slot_exactly_on_a_slot_is_now() -> None:
    t = target(7)
    phase = slot(t)
    assert next_slot(t, phase) == phase
    assert next_slot(t, phase + 30.0) == pytest.approx(phase + 30.0)
    assert next_slot(t, phase + 0.001) == pytest.approx(phase + 10.0)
    assert next_slot(t, 0.0) == phase


def test_next_slot_is_monotonic_in_now() -> None:
    t = target(3)
    times = [next_slot(t, i * 0.25) for i in range(400)]
    assert times == sorted(times)
    steps = {round(b - a, 6) for a, b in zip(times, times[1:])}
    assert steps == {0.0, 10.0}  # it only ever moves by whole intervals


# --- Schedule -------------------------------------------------------------------------


def test_empty_schedule() -> None:
    schedule = Schedule()
    assert len(schedule) == 0
    assert schedule.next_due() is None
    assert schedule.pop_due(1e9) == []


def test_first_polls_happen_at_each_slot() -> None:
    targets = [target(n) for n in range(20)]
    schedule = Schedule()
    schedule.set_targets(targets, now=0.0)
    assert len(schedule) == 20
    assert schedule.next_due() == min(slot(t) for t in targets)
    first = schedule.pop_due(10.0 - 1e-9)
    assert sorted(d.target.key for d in first) == sorted(t.key for t in targets)
    assert all(d.due == slot(d.target) and d.missed == 0 for d in first)
    # popped in due order
    assert [d.due for d in first] == sorted(d.due for d in first)


def test_pop_due_returns_each_target_once_per_interval_at_its_slot() -> None:
    targets = [target(n) for n in range(50)]
    schedule = Schedule()
    schedule.set_targets(targets, now=1000.0)
    popped = run(schedule, 1000.0, 1100.0 - 0.01, 0.01)
    per_target = Counter(d.target.key for d in popped)
    assert set(per_target.values()) == {10}
    for d in popped:
        assert d.missed == 0
        cycles = (d.due - slot(d.target)) / 10.0
        assert cycles == pytest.approx(round(cycles), abs=1e-6)
    for key in per_target:
        dues = sorted(d.due for d in popped if d.target.key == key)
        assert all(b - a == pytest.approx(10.0) for a, b in zip(dues, dues[1:]))


def test_pop_due_is_not_early_and_reschedules_after_now() -> None:
    t = target(1)
    schedule = Schedule()
    schedule.set_targets([t], now=0.0)
    phase = slot(t)
    assert schedule.pop_due(phase - 1e-6) == []
    assert schedule.pop_due(phase) == [Due(t, phase, 0)]
    assert schedule.pop_due(phase) == []
    assert schedule.next_due() == pytest.approx(phase + 10.0)
    assert schedule.pop_due(phase + 10.0 - 1e-6) == []
    (due,) = schedule.pop_due(phase + 10.5)  # a little late: same slot, not missed
    assert due.due == pytest.approx(phase + 10.0) and due.missed == 0
    assert schedule.next_due() == pytest.approx(phase + 20.0)


def test_missed_slots_are_counted_when_now_jumps() -> None:
    t = target(1)
    schedule = Schedule()
    schedule.set_targets([t], now=0.0)
    phase = slot(t)
    schedule.pop_due(phase)
    (due,) = schedule.pop_due(phase + 10.0 + 3.5 * 10.0)  # slots at +10, +20, +30, +40 passed
    assert due.missed == 3
    assert due.due == pytest.approx(phase + 40.0)  # the latest slot is the one polled
    assert schedule.next_due() == pytest.approx(phase + 50.0)
    assert schedule.next_due() > phase + 45.0
    (due,) = schedule.pop_due(phase + 50.0)
    assert due.missed == 0


def test_missed_slots_right_on_a_slot() -> None:
    t = target(2)
    schedule = Schedule()
    schedule.set_targets([t], now=0.0)
    phase = slot(t)
    (due,) = schedule.pop_due(phase + 20.0)
    assert (due.due, due.missed) == (pytest.approx(phase + 20.0), 2)
    assert schedule.next_due() == pytest.approx(phase + 30.0)


def test_missed_counts_per_target_with_different_intervals() -> None:
    fast, slow = target("fast", interval=1.0, timeout=0.5), target("slow", interval=60.0)
    schedule = Schedule()
    schedule.set_targets([fast, slow], now=0.0)
    popped = {d.target.key: d for d in schedule.pop_due(100.0)}
    assert popped[fast.key].missed == math.floor(100.0 - slot(fast))
    assert popped[slow.key].missed == math.floor((100.0 - slot(slow)) / 60.0)


def test_next_due_is_the_earliest() -> None:
    targets = [target(n) for n in range(10)]
    schedule = Schedule()
    schedule.set_targets(targets, now=5.0)
    expected = sorted(next_slot(t, 5.0) for t in targets)
    assert schedule.next_due() == expected[0]
    for when in sorted(set(expected)):  # targets on the same grid step are due together
        assert schedule.next_due() == when
        assert len(schedule.pop_due(when)) == expected.count(when)


def test_set_targets_keeps_slots_of_unchanged_targets() -> None:
    a, b, c = target("a"), target("b"), target("c")
    schedule = Schedule()
    schedule.set_targets([a, b], now=0.0)
    schedule.pop_due(10.0)  # both polled once, now due in the next interval
    # re-set at a time when a's and b's next polls are pending: they must not be re-queued
    schedule.set_targets([a, b, c], now=10.0)
    assert len(schedule) == 3
    popped = run(schedule, 10.0, 20.0 - 0.01, 0.01)
    assert Counter(d.target.key for d in popped) == {a.key: 1, b.key: 1, c.key: 1}
    assert {d.target.key: d.due for d in popped}[a.key] == pytest.approx(slot(a) + 10.0)
    assert {d.target.key: d.due for d in popped}[c.key] == pytest.approx(next_slot(c, 10.0))


def test_set_targets_same_targets_does_not_double_poll() -> None:
    targets = [target(n) for n in range(30)]
    schedule = Schedule()
    schedule.set_targets(targets, now=0.0)
    popped = []
    for i in range(1000):
        now = i * 0.1
        if i % 7 == 0:
            schedule.set_targets(list(targets), now=now)  # e.g. a discovery refresh every 0.7 s
        popped.extend(schedule.pop_due(now))
    popped.extend(schedule.pop_due(100.0 - 1e-9))
    counts = Counter(d.target.key for d in popped)
    assert set(counts.values()) == {10}


def test_set_targets_updates_settings_of_kept_targets() -> None:
    t = target(1)
    schedule = Schedule()
    schedule.set_targets([t], now=0.0)
    changed = Target(t.cluster_id, t.url, "renamed", PollSettings(10.0, 3.0), TlsSettings(min_version="1.3"))
    schedule.set_targets([changed], now=0.0)
    (due,) = schedule.pop_due(10.0)
    assert due.target is changed
    assert due.due == slot(t)


def test_set_targets_drops_removed_targets() -> None:
    a, b = target("a"), target("b")
    schedule = Schedule()
    schedule.set_targets([a, b], now=0.0)
    schedule.set_targets([a], now=0.0)
    assert len(schedule) == 1
    popped = run(schedule, 0.0, 100.0, 0.5)
    assert {d.target.key for d in popped} == {a.key}
    schedule.set_targets([], now=100.0)
    assert len(schedule) == 0 and schedule.next_due() is None
    assert schedule.pop_due(1e6) == []


def test_removed_then_readded_target_is_scheduled_once() -> None:
    a = target("a")
    schedule = Schedule()
    schedule.set_targets([a], now=0.0)
    schedule.set_targets([], now=1.0)
    schedule.set_targets([a], now=2.0)
    popped = run(schedule, 2.0, 12.0 - 0.01, 0.01)
    assert [d.target.key for d in popped] == [a.key]
    assert popped[0].due == pytest.approx(next_slot(a, 2.0))


def test_set_targets_reslots_when_the_interval_changes() -> None:
    t = target(1, interval=10.0)
    schedule = Schedule()
    schedule.set_targets([t], now=0.0)
    schedule.pop_due(10.0)
    slower = target(1, interval=60.0)
    schedule.set_targets([slower], now=10.0)
    assert len(schedule) == 1
    assert schedule.next_due() == pytest.approx(next_slot(slower, 10.0))
    popped = run(schedule, 10.0, 130.0 - 0.01, 0.01)
    assert len(popped) == 2
    assert all(d.target == slower and d.missed == 0 for d in popped)
    assert [d.due for d in popped] == pytest.approx([next_slot(slower, 10.0), next_slot(slower, 10.0) + 60.0])


def test_duplicate_targets_are_scheduled_once() -> None:
    t = target(1)
    schedule = Schedule()
    schedule.set_targets([t, target(1)], now=0.0)
    assert len(schedule) == 1
    assert len(run(schedule, 0.0, 9.99, 0.01)) == 1


def test_same_url_in_two_clusters_is_two_targets() -> None:
    a, b = target(1, cluster="a"), target(1, cluster="b")
    schedule = Schedule()
    schedule.set_targets([a, b], now=0.0)
    popped = schedule.pop_due(9.999)
    assert sorted(d.target.cluster_id for d in popped) == ["a", "b"]


def test_pop_due_after_a_jump_returns_a_target_once_with_fractional_intervals() -> None:
    # 300ms is not exact in binary: at unix-time magnitudes `when + 2 * 0.3` can round to
    # exactly `now` while `floor((now - when) / 0.3)` is 1. The target must still come back
    # once, with both skipped slots counted, and be rescheduled strictly after `now`.
    t = target(0, interval=0.3, timeout=0.1)
    schedule = Schedule()
    schedule.set_targets([t], now=1_700_000_000.0)
    when = schedule.next_due()
    assert when is not None
    now = when + 2 * 0.3
    popped = schedule.pop_due(now)
    assert [d.target.key for d in popped] == [t.key]
    assert popped[0].missed == 2
    assert popped[0].due == pytest.approx(now)
    assert schedule.next_due() > now


def test_pop_due_never_returns_a_target_twice_at_unix_times() -> None:
    rng = random.Random(42)
    targets = [target(n, interval=rng.choice([0.1, 0.3, 0.7, 1.1, 13.3]), timeout=0.05) for n in range(200)]
    schedule = Schedule()
    start = 1_700_000_000.0
    schedule.set_targets(targets, now=start)
    for _ in range(50):
        # a loop that wakes up exactly when the next poll is due, sometimes much later
        due_at = schedule.next_due()
        assert due_at is not None
        now = due_at + rng.choice([0, 0, 0, 1, 2, 5]) * targets[rng.randrange(200)].poll.interval
        popped = schedule.pop_due(now)
        keys = [d.target.key for d in popped]
        assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
        assert schedule.next_due() > now


# --- Scheduler: the decisions of the scheduler thread, driven by an explicit `now` -----------


class Pool:
    """Stands in for the worker pool's submit(): records what was queued; `full` refuses."""

    def __init__(self) -> None:
        self.queued: list[Due] = []
        self.full = False

    def submit(self, due: Due) -> bool:
        if self.full:
            return False
        self.queued.append(due)
        return True


def scheduler_with(targets, now: float = 1000.0):
    registry = new_registry()
    state = FleetState(fall=1, rise=1)
    pool = Pool()
    clock = [now]
    scheduler = Scheduler(state, PollerMetrics(registry, state.snapshot), pool.submit, queue.Queue(), lambda: clock[0])
    scheduler.set_targets(targets)
    return scheduler, pool, registry, clock


def skipped(registry, reason: str) -> float:
    return sample(registry, "replicante_poller_polls_skipped_total", {"reason": reason})


def result_of(due: Due, ok: bool = True, retry_after=None) -> PollResult:
    if not ok:
        return PollResult(due.target, Status.AGENT_DOWN, Reason.HTTP_STATUS, "test", due.due, 0.01, retry_after=retry_after)
    node = DatastoreInfo(None, due.target.cluster_id, "MongoDB", due.target.url, "6.0")
    return PollResult(due.target, Status.UP, None, "test", due.due, 0.01, datastore=node)


def test_a_target_is_never_queued_while_it_is_queued_or_in_flight() -> None:
    t = target(1)
    scheduler, pool, registry, _ = scheduler_with([t])
    first = next_slot(t, 1000.0)

    scheduler.queue_due(first)
    scheduler.queue_due(first + 10.0)  # its next slot: the first poll has not ended
    scheduler.queue_due(first + 20.0)

    assert [d.due for d in pool.queued] == [first]
    assert skipped(registry, "in_flight") == 2
    scheduler.record(result_of(pool.queued[0]))
    scheduler.queue_due(first + 30.0)
    assert [d.due for d in pool.queued] == [first, first + 30.0]


def test_a_full_queue_skips_the_poll_without_blocking_the_next_one() -> None:
    t = target(2)
    scheduler, pool, registry, _ = scheduler_with([t])
    first = next_slot(t, 1000.0)
    pool.full = True

    scheduler.queue_due(first)
    pool.full = False
    scheduler.queue_due(first + 10.0)

    assert skipped(registry, "queue_full") == 1 and skipped(registry, "in_flight") == 0
    assert [d.due for d in pool.queued] == [first + 10.0]


def test_a_deferred_target_is_skipped_until_its_deferral_ends() -> None:
    t = target(3)
    scheduler, pool, registry, _ = scheduler_with([t])
    first = next_slot(t, 1000.0)
    scheduler.queue_due(first)
    scheduler.record(result_of(pool.queued[0], ok=False, retry_after=25.0))  # deferred until first + 25

    scheduler.queue_due(first + 10.0)
    scheduler.queue_due(first + 20.0)
    scheduler.queue_due(first + 30.0)

    assert skipped(registry, "deferred") == 2
    assert [d.due for d in pool.queued] == [first, first + 30.0]


def test_missed_slots_are_counted_as_behind() -> None:
    t = target(4)
    scheduler, pool, registry, _ = scheduler_with([t])
    first = next_slot(t, 1000.0)

    scheduler.queue_due(first + 35.0)  # the loop woke three slots late

    assert skipped(registry, "behind") == 3
    assert [d.due for d in pool.queued] == [first + 30.0]


def test_progress_is_logged_when_every_target_was_polled_after_each_set_targets(caplog) -> None:
    a, b = target("a"), target("b")
    scheduler, pool, _, _ = scheduler_with([a, b])
    scheduler.queue_due(1000.0 + 10.0)
    with caplog.at_level(logging.INFO, logger="replicante_poller.polling.scheduler"):
        scheduler.record(result_of(pool.queued[0]))
        assert "all 2 agents polled" not in caplog.text
        scheduler.record(result_of(pool.queued[1], ok=False))
        assert "all 2 agents polled: 1 UP, 1 down" in caplog.text
        caplog.clear()
        scheduler.set_targets([a, b])  # a reload with the same targets: progress is reported anew
        scheduler.queue_due(1000.0 + 20.0)
        for due in pool.queued[2:]:
            scheduler.record(result_of(due))
        assert "all 2 agents polled: 2 UP, 0 down" in caplog.text


def test_commands_and_periodic_tasks_run_on_the_scheduler_thread() -> None:
    scheduler, _, _, _ = scheduler_with([])
    ran: dict[str, str] = {}
    done = threading.Event()

    def task() -> None:
        ran.setdefault("task", threading.current_thread().name)

    def command() -> None:
        ran["command"] = threading.current_thread().name
        done.set()

    scheduler.every(lambda: 0.0, task)  # due at once
    scheduler.start()
    try:
        scheduler.call(command)
        assert done.wait(5)
    finally:
        scheduler.stop()
    assert ran == {"task": "scheduler", "command": "scheduler"}
