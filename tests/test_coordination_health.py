"""Health moves with its cluster (DESIGN section 9): the health documents published in
ZooKeeper as pure units, then real `replicante-poller run` processes on a real ZooKeeper."""
from __future__ import annotations

import dataclasses
import json

import pytest

from replicante_poller.coordination.health import (
    MAX_DOCUMENT,
    Published,
    Stored,
    Unusable,
    decode,
    digest,
    encode,
    newest,
)
from replicante_poller.coordination.publisher import Publisher
from replicante_poller.models import NodeStatus
from replicante_poller.polling.health import HealthState
from replicante_poller.polling.state import FleetState
from replicante_poller.reasons import Reason, Status
from test_persistence import OTHER, TARGET, down, replisdk_up, up

ZNODE = "/p/health/rs"


def fleet(*results) -> FleetState:
    """A state of TARGET and OTHER after `results` (fall 2, rise 1)."""
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET, OTHER])
    for result in results:
        state.record(result)
    return state


def stored(data: bytes, mzxid: int = 1) -> Stored:
    return Stored(ZNODE, data, mzxid)


# -- the document (pure) ---------------------------------------------------------------------

def test_a_document_round_trips_without_the_shards() -> None:
    views = fleet(up(TARGET, 100.0), down(OTHER, 100.0), down(OTHER, 110.0, retry_after=5)).snapshot()
    published = decode(stored(encode("rs", views, "a:1", 120.0)), "rs", [TARGET, OTHER], 130.0, 60.0)
    assert isinstance(published, Published)
    assert (published.cluster, published.by, published.published_at) == ("rs", "a:1", 120.0)
    by_key = {v.target.key: v for v in published.views}
    for view in views:  # everything but the shards (the 1 MB znode limit)
        expected = dataclasses.replace(view, result=dataclasses.replace(view.result, shards=None))
        assert by_key[view.target.key] == expected
    assert by_key[OTHER.key].health.state is HealthState.UNHEALTHY
    assert json.loads(encode("rs", views, "a:1", 120.0))["targets"][0]["result"]["shards"] is None


def test_only_known_targets_of_the_znodes_cluster_are_restored() -> None:
    moved = dataclasses.replace(OTHER, cluster_id="elsewhere")
    data = encode("rs", fleet(up(TARGET, 100.0), up(OTHER, 100.0)).snapshot(), "a:1", 120.0)
    published = decode(stored(data), "rs", [TARGET, moved], 130.0, 60.0)
    assert isinstance(published, Published) and [v.target for v in published.views] == [TARGET]


@pytest.mark.parametrize("change, where", [
    (lambda d: d.update(format=2), "$.format"),
    (lambda d: d.update(cluster="other"), "$.cluster"),
    (lambda d: d.update(by=7), "$.by"),
    (lambda d: d.update(published_at=4e9), "$.published_at"),  # far in the future
    (lambda d: d["targets"][1]["health"].update(streak=-1), "$.targets[1].health.streak"),
    (lambda d: d["targets"][0]["result"].update(status="DOWNISH"), "$.targets[0].result.status"),
    (lambda d: d["targets"][0].update(last_success=float("nan")), None),  # not strict JSON
])
def test_a_bad_document_is_unusable_as_a_whole_naming_the_field(change, where) -> None:
    document = json.loads(encode("rs", fleet(up(TARGET, 100.0), down(OTHER, 100.0)).snapshot(), "a:1", 120.0))
    change(document)
    decoded = decode(stored(json.dumps(document).encode()), "rs", [TARGET, OTHER], 130.0, 60.0)
    assert isinstance(decoded, Unusable) and decoded.znode == ZNODE
    assert (where or "not strict JSON") in decoded.problem
    assert ZNODE in str(decoded)


def test_other_clocks_may_be_a_little_ahead() -> None:
    data = encode("rs", fleet(up(TARGET, 102.0)).snapshot(), "a:1", 103.0)
    assert isinstance(decode(stored(data), "rs", [TARGET, OTHER], 100.0, 60.0), Published)
    assert isinstance(decode(stored(data), "rs", [TARGET, OTHER], 90.0, 60.0), Unusable)


def test_newest_view_of_each_agent_wins() -> None:
    older, newer = fleet(down(TARGET, 100.0)).snapshot(), fleet(up(TARGET, 200.0)).snapshot()
    chosen = {v.target.key: v for v in newest(older, newer)}
    assert chosen[TARGET.key].result.started == 200.0
    assert chosen[OTHER.key].result is None  # never polled in either: the first given
    assert {v.target.key: v for v in newest(newer, older)}[TARGET.key].result.started == 200.0


# -- what a publication is triggered by (pure) --------------------------------------------------

def test_the_digest_ignores_times_and_messages() -> None:
    base = fleet(up(TARGET, 100.0), down(OTHER, 100.0)).snapshot()
    later = fleet(up(TARGET, 150.0), dataclasses.replace(down(OTHER, 150.0), message="HTTP 503 again")).snapshot()
    assert digest(base) == digest(later) == digest(reversed(base))


def _other(change):
    """The views of TARGET (UP) and OTHER (AGENT_DOWN, unhealthy), OTHER's changed by `change`."""
    views = fleet(up(TARGET, 100.0), down(OTHER, 100.0)).snapshot()
    return [change(v) if v.target == OTHER else v for v in views]


@pytest.mark.parametrize("change", [
    lambda v: dataclasses.replace(v, result=dataclasses.replace(v.result, status=Status.NODE_DOWN)),
    lambda v: dataclasses.replace(v, result=dataclasses.replace(v.result, reason=Reason.TIMEOUT)),
    lambda v: dataclasses.replace(v, health=dataclasses.replace(v.health, state=HealthState.HEALTHY)),
    lambda v: dataclasses.replace(v, health=dataclasses.replace(v.health, streak=1)),
    lambda v: dataclasses.replace(v, flapping=True),
    lambda v: dataclasses.replace(v, api="replisdk"),
    lambda v: dataclasses.replace(v, result=None),
], ids=["status", "reason", "health", "streak", "flapping", "api", "never polled"])
def test_the_digest_sees_status_health_streak_and_reason(change) -> None:
    assert digest(_other(change)) != digest(_other(lambda v: v))


def test_the_digest_sees_node_status() -> None:
    healthy = fleet(replisdk_up(TARGET, 100.0, NodeStatus("HEALTHY"))).snapshot()
    degraded = fleet(replisdk_up(TARGET, 100.0, NodeStatus("DEGRADED"))).snapshot()
    assert digest(healthy) != digest(degraded)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_published_on_change_and_else_at_most_every_refresh() -> None:
    clock = Clock()
    publisher = Publisher("a:1", lambda: 10.0, clock)
    state = fleet(up(TARGET, 990.0), up(OTHER, 990.0))
    assert set(publisher.due(state.snapshot())) == {"rs"}  # first look: published
    assert publisher.due(state.snapshot()) == {}  # nothing new
    clock.now = 1001.0
    state.record(up(TARGET, 1000.5))
    assert publisher.due(state.snapshot()) == {}  # only times moved, within the refresh
    clock.now = 1002.0
    state.record(down(OTHER, 1001.5))
    document = publisher.due(state.snapshot())["rs"]  # OTHER's status changed: at once
    assert json.loads(document)["published_at"] == 1002.0
    clock.now = 1013.0
    assert publisher.due(state.snapshot()) == {}  # refresh passed, but no poll since
    state.record(down(OTHER, 1011.0))  # OTHER unhealthy now (fall 2): a change
    assert set(publisher.due(state.snapshot())) == {"rs"}
    clock.now = 1015.0
    state.record(up(TARGET, 1014.0))
    assert publisher.due(state.snapshot()) == {}
    clock.now = 1022.0
    assert publisher.due(state.snapshot()) == {}
    clock.now = 1023.5
    assert set(publisher.due(state.snapshot())) == {"rs"}  # new polls and the refresh passed
    assert set(publisher.final(state.snapshot())) == {"rs"}  # handover: whatever changed


def test_a_cluster_taken_again_is_published_at_once() -> None:
    clock = Clock()
    publisher = Publisher("a:1", lambda: 10.0, clock)
    views = fleet(up(TARGET, 990.0)).snapshot()
    assert publisher.due(views) and publisher.due([]) == {} and publisher.due(views)


def test_a_document_too_large_is_skipped_with_one_warning(caplog) -> None:
    huge = dataclasses.replace(up(TARGET, 990.0), message="x" * (MAX_DOCUMENT + 1))
    publisher = Publisher("a:1", lambda: 10.0, Clock())
    views = fleet(huge).snapshot()
    assert publisher.due(views) == {} and publisher.final(views) == {}
    assert len([r for r in caplog.records if "not published" in r.getMessage()]) == 1
