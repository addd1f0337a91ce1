"""Health moves with its cluster (DESIGN section 9): the health documents published in
ZooKeeper as pure units, then real `replicante-poller run` processes on a real ZooKeeper."""
from __future__ import annotations

import dataclasses
import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import requests

from replicante_poller.agentsim import Fault, NodeSpec
from replicante_poller.config import PollSettings, TlsSettings
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
from replicante_poller.coordination.rendezvous import owner
from replicante_poller.models import NodeStatus
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.health import HealthState
from replicante_poller.durations import rfc3339
from replicante_poller.polling.state import FleetState, Reported, TargetView
from replicante_poller.web.status import target_json, targets_document
from replicante_poller.reasons import Reason, Status
from harness import config_text
from process import PollerProcess
from test_coordination import ZooKeeper, instance_id, polled, wait_for, zookeeper  # noqa: F401 (the fixture)
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


def test_the_targets_document_marks_what_other_instances_reported() -> None:
    own, other = fleet(up(TARGET, 100.0), down(OTHER, 100.0)).snapshot()
    unreported = TargetView(dataclasses.replace(OTHER, url="https://c:1"))
    reported = [Reported(other, "b:2", 120.0), Reported(unreported), Reported(own, "b:2", 100.0)]  # own: just taken
    document = targets_document([own], lambda cluster: "a:1", reported, "a:1")
    rows = {row["url"]: row for row in document["targets"]}
    assert len(document["targets"]) == 3
    assert [row["url"] for row in document["targets"]] == sorted(rows)
    assert set(rows[TARGET.url]) == set(target_json(own)) | {"owner", "reported_by", "published_at"}
    assert (rows[TARGET.url]["reported_by"], rows[TARGET.url]["published_at"]) == ("a:1", None)
    assert rows[OTHER.url]["reported_by"] == "b:2" and rows[OTHER.url]["published_at"] == rfc3339(120.0)
    assert rows[OTHER.url]["health"] == "unhealthy" and rows[OTHER.url]["status"] == "AGENT_DOWN"
    assert rows["https://c:1"]["reported_by"] is None and rows["https://c:1"]["health"] == "unknown"


def test_a_result_another_instance_published_is_no_identity_to_act_on() -> None:
    from replicante_poller.config import parse_config
    from replicante_poller.service import Service

    service = Service(parse_config("[http]\nlisten = 127.0.0.1:0\n"), clock=lambda: 1000.0)
    polled_elsewhere = fleet(replisdk_up(TARGET, 1001.0, NodeStatus("HEALTHY"))).snapshot()  # after this start
    published = decode(stored(encode("rs", polled_elsewhere, "b:2", 1001.5)), "rs", [TARGET], 1002.0, 60.0)
    service.state.set_targets([TARGET], restored=published.views)
    assert service.state.view(TARGET.key).result.started == 1001.0
    assert service.identity(TARGET) is None  # the node may have changed since: nothing is signed for it
    service.state.record(replisdk_up(TARGET, 1002.0, NodeStatus("HEALTHY")))
    assert service.identity(TARGET) is not None  # polled by this instance


# -- real instances on a real ZooKeeper ---------------------------------------------------------

CLUSTERS = 8
SESSION_TIMEOUT = 4.0
ROOT = "/test-health"
ZK_CLOCK = 0.05  # ZooKeeper's mtime and this process's clock: the same machine's, rounded to ms


def start_fleet(zookeeper: ZooKeeper, start_sim, pki: dict, tmp_path: Path) -> tuple[list[tuple[str, str, bool]], Path]:
    """CLUSTERS clusters of two agents, node-0's node failing (NODE_DOWN), node-1's UP; a
    configuration polling them every second, coordinated under ROOT. ((cluster, url, failing)...)"""
    nodes = [NodeSpec(f"cluster-{c}", f"node-{n}", fault=Fault.NODE_DOWN if n == 0 else Fault.HEALTHY)
             for c in range(CLUSTERS) for n in range(2)]
    sim = start_sim(nodes)
    agents = [(node.cluster_id, url, node.fault is Fault.NODE_DOWN) for node, url in sim.agents]
    section = (f"[coordination]\nbackend = zookeeper\nhosts = {zookeeper.hosts}\npath = {ROOT}\n"
               f"session_timeout = {SESSION_TIMEOUT:g}s\n")
    path = tmp_path / "poller.ini"
    path.write_text(config_text([(c, u) for c, u, _ in agents], pki["ca"], interval="1s", timeout="800ms", extra=section))
    return agents, path


@dataclasses.dataclass
class Coordinated:
    """Pollers sharing the fleet of `start_fleet`, their ids and each cluster's owner."""

    agents: list[tuple[str, str, bool]]
    pollers: list[PollerProcess]
    ids: list[str]
    owners: dict[str, str]


@pytest.fixture
def coordinated(zookeeper: ZooKeeper, start_sim, pki: dict, tmp_path: Path):
    """Start `count` pollers on `start_fleet`'s fleet (stopped at teardown)."""
    started: list[PollerProcess] = []

    def start(count: int) -> Coordinated:
        agents, path = start_fleet(zookeeper, start_sim, pki, tmp_path)
        for _ in range(count):
            started.append(PollerProcess(path))
        ids = [instance_id(p) for p in started]
        return Coordinated(agents, list(started), ids, {c: owner(c, ids) for c, _, _ in agents})
    yield start
    for poller in started:
        poller.stop()


def as_expected(row: dict, failing: bool) -> bool:
    """The agent's row shows what its simulated node does (fall 2: unhealthy after 2 polls)."""
    if failing:
        return row["status"] == "NODE_DOWN" and row["health"] == "unhealthy"
    return row["status"] == "UP" and row["health"] == "healthy"


def shows_the_fleet(poller: PollerProcess, agents: list[tuple[str, str, bool]], owners: dict[str, str]) -> bool:
    """Every agent of `agents` listed, owned by its cluster's rendezvous owner, with the health it
    reported (published, for the agents of other instances)."""
    rows = poller.targets()
    return all(
        url in rows and rows[url]["owner"] == owners[cluster] and rows[url]["reported_by"] == owners[cluster]
        and as_expected(rows[url], failing) for cluster, url, failing in agents)


def test_every_instance_lists_the_whole_fleet_with_owners(coordinated) -> None:
    fleet_of = coordinated(3)
    agents, owners = fleet_of.agents, fleet_of.owners
    wait_for(lambda: all(shows_the_fleet(p, agents, owners) for p in fleet_of.pollers), 20,
             "every instance lists every agent with its owner and health")
    for poller, me in zip(fleet_of.pollers, fleet_of.ids):
        rows = poller.targets()
        assert len(rows) == len(agents)
        mine = polled(poller)
        assert set(mine) == {u for c, u, _ in agents if owners[c] == me}
        others = [r for u, r in rows.items() if u not in mine]
        holders = set(owners.values()) - {me}  # rendezvous may give an instance no cluster of the CLUSTERS
        assert others or not holders
        assert all(r["published_at"] is not None and r["reported_by"] in holders for r in others)
        # the status page too: every agent, those of the others with who reported them
        page = requests.get(f"http://{poller.address}/", timeout=5).text
        assert all(url in page for _, url, _ in agents)
        assert all(f'reported by <span class="v">{other}</span>' in page for other in holders)
        for other in others[:1]:
            agent = requests.get(f"http://{poller.address}/agent", params={"cluster": other["cluster"],
                                                                             "url": other["url"]}, timeout=5)
            assert agent.status_code == 200 and other["status"] in agent.text


class Watcher:
    """Reads an instance's /api/v1/targets and /metrics as often as it can (a thread) and
    keeps what they said of `urls` (stopped by `close`)."""

    def __init__(self, poller: PollerProcess, urls: set[str]):
        self.poller, self.urls = poller, urls
        self.rows: list[dict] = []
        self.metrics: list[dict] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                rows = self.poller.targets()
                self.rows.extend(rows[u] for u in self.urls if u in rows)
                self.metrics.append(self.poller.metrics())
            except Exception as exc:  # noqa: BLE001 - a failed read is reported by the test
                self.errors.append(repr(exc))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def agent_metric(sample: dict, name: str, cluster: str, url: str, status: Optional[str] = None) -> Optional[float]:
    labels = [("agent", url), ("cluster", cluster)] + ([("status", status)] if status else [])
    return sample.get(("replicante_poller_" + name, tuple(sorted(labels))))


def polled_twice_since(rows: list[dict], by: str, urls: set[str], since: str) -> bool:
    """Whether `rows` show every agent of `urls` polled by `by` at two times after `since`."""
    times: dict[str, set[str]] = {}
    for row in list(rows):
        if row["reported_by"] == by and row["last_poll"] and row["last_poll"] > since:
            times.setdefault(row["url"], set()).add(row["last_poll"])
    return set(times) == urls and all(len(t) >= 2 for t in times.values())


def test_health_moves_with_its_cluster_when_its_owner_dies(coordinated) -> None:
    fleet_of = coordinated(2)
    agents, pollers, ids, owners = fleet_of.agents, fleet_of.pollers, fleet_of.ids, fleet_of.owners
    # the victim: the instance with more clusters (at least one of the CLUSTERS)
    victim = max((0, 1), key=lambda i: sum(1 for c in set(owners) if owners[c] == ids[i]))
    survivor = 1 - victim
    moved = [(c, u, failing) for c, u, failing in agents if owners[c] == ids[victim]]
    assert any(failing for _, _, failing in moved)
    # the survivor shows the victim's agents as the victim published them: DOWN ones unhealthy
    wait_for(lambda: shows_the_fleet(pollers[survivor], moved, owners), 20, "the victim's health published")
    watcher = Watcher(pollers[survivor], {u for _, u, _ in moved})
    killed = time.time()
    pollers[victim].proc.send_signal(signal.SIGKILL)
    pollers[victim].proc.wait()
    try:
        wait_for(lambda: {u for _, u, _ in moved} <= set(polled(pollers[survivor])), SESSION_TIMEOUT + 10,
                 "the survivor polls the victim's clusters")
        pollers[survivor].expect(r"restored the state of \d+ agents of the clusters taken \((\d+) from the health")
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed))
        wait_for(lambda: polled_twice_since(watcher.rows, ids[survivor], {u for _, u, _ in moved}, since), 15,
                 "the survivor's own polls of each moved agent, twice, seen by the watcher")
    finally:
        watcher.close()
    expected = {u: failing for _, u, failing in moved}
    wrong = [r for r in watcher.rows if not as_expected(r, expected[r["url"]])]
    assert not wrong, f"{len(wrong)} of {len(watcher.rows)} views not as published, first: {wrong[0]}"
    # its metrics likewise, from the first scrape that has the agent: as published, never unknown
    seen = 0
    for sample in watcher.metrics:
        for cluster, url, failing in moved:
            healthy = agent_metric(sample, "agent_healthy", cluster, url)
            if healthy is None:
                continue
            seen += 1
            status = "NODE_DOWN" if failing else "UP"
            assert healthy == (0.0 if failing else 1.0), (url, healthy)
            assert agent_metric(sample, "agent_status", cluster, url, status) == 1.0, (url, status)
    assert seen
    assert not watcher.errors, watcher.errors[:3]
    print(f"\n{len(moved)} agents moved; {len(watcher.rows)} views and {len(watcher.metrics)} scrapes "
          f"of the survivor, every one as published")


def test_a_corrupt_health_znode_is_ignored_with_one_line(zookeeper: ZooKeeper, start_sim, pki: dict,
                                                         tmp_path: Path) -> None:
    from kazoo.client import KazooClient

    agents, path = start_fleet(zookeeper, start_sim, pki, tmp_path)
    cluster = "cluster-0"
    targets = [Target(cluster, u, None, PollSettings(interval=1, timeout=0.8), TlsSettings())
               for c, u, _ in agents if c == cluster]
    state = FleetState(fall=2, rise=1)
    state.set_targets(targets)
    for target in targets:  # claims every agent of the cluster unhealthy...
        state.record(dataclasses.replace(down(target, time.time() - 5), status=Status.NODE_DOWN))
    document = json.loads(encode(cluster, state.snapshot(), "ghost", time.time() - 5))
    document["targets"][1]["health"]["streak"] = -1  # ...but one field is out of range
    znode = f"{ROOT}/health/{cluster}"
    client = KazooClient(zookeeper.hosts)
    client.start(timeout=10)
    try:
        client.create(znode, json.dumps(document).encode(), makepath=True)
        poller = PollerProcess(path)
        try:
            me = instance_id(poller)
            watcher = Watcher(poller, {t.url for t in targets})
            try:
                wait_for(lambda: all(r["last_poll"] for u, r in polled(poller).items() if u in watcher.urls)
                         and len(polled(poller)) == len(agents), 20, "the cluster polled")
                threading.Event().wait(1.5)
            finally:
                watcher.close()
            lines = [line for line in poller.drained() if znode in line]
            assert len(lines) == 1 and re.search(r"cannot be used \(\$\.targets\[1\]\.health\.streak", lines[0]), lines
            # fresh: nothing of the document shown; first unknown, then what the agents say
            assert watcher.rows and not [r for r in watcher.rows if r["reported_by"] == "ghost"]
            first = [r for r in watcher.rows if r["reported_by"] == me]
            assert first[0]["health"] == "unknown"
            down_of = {u: d for _, u, d in agents}
            assert all(r["health"] == "unknown" or as_expected(r, down_of[r["url"]]) for r in first)
            # and the cluster's health published anew by its owner
            data, _ = client.get(znode)
            assert json.loads(data)["by"] == me
        finally:
            poller.stop()
    finally:
        client.stop()
        client.close()


def test_znodes_of_clusters_no_longer_configured_are_deleted_after_a_grace(zookeeper: ZooKeeper) -> None:
    from kazoo.client import KazooClient

    from replicante_poller.config import CoordinationSettings
    from replicante_poller.coordination.zookeeper import ZkCoordinator

    grace = 1.5
    client = KazooClient(zookeeper.hosts)
    client.start(timeout=10)
    gone = [f"{ROOT}/health/gone", f"{ROOT}/handover/gone"]
    kept = [f"{ROOT}/health/kept"]  # (its handover/kept would be taken by this instance, which takes the cluster)
    settings = CoordinationSettings("zookeeper", zookeeper.hosts, ROOT, SESSION_TIMEOUT)
    coordinator = ZkCoordinator(settings, "me", "127.0.0.1:1", lambda *held: None, cleanup_grace=grace, cleanup_every=0.2)
    try:
        for path in gone + kept:
            client.create(path, b"{}", makepath=True)
        created = time.time()
        coordinator.set_clusters(frozenset({"kept"}))
        coordinator.start()
        deleted: dict[str, float] = {}

        def all_gone() -> bool:
            for path in gone:
                if path not in deleted and client.exists(path) is None:
                    deleted[path] = time.time()
            return len(deleted) == len(gone)
        wait_for(all_gone, 10, "the znodes of a cluster no longer configured deleted")
        assert min(deleted.values()) - created >= grace - ZK_CLOCK
        assert all(client.exists(path) is not None for path in kept)  # configured: kept
    finally:
        coordinator.stop()
        client.stop()
        client.close()
