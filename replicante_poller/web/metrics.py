"""Prometheus metrics (DESIGN section 6): the only module that imports prometheus_client.

Counters and histograms are updated by the scheduler and workers with pre-bound label
children (no label look-up per poll). Per-target series are produced at scrape time
from a state snapshot, so a removed target's series disappear with it.
"""
from __future__ import annotations

import contextlib
import platform
import threading
import weakref
from typing import Callable, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..models import NODE_STATUSES
from ..polling.state import TargetView
from ..reasons import Reason, Status
from .server import REFUSAL_REASONS

PREFIX = "replicante_poller_"
ACTION_RESULTS = ("delivered", "retry", "rejected", "abandoned", "done", "failed", "lost", "pruned")
SKIP_REASONS = ("in_flight", "queue_full", "behind", "deferred")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# registry -> its TargetCollector, whose text render() writes itself (a side table, not a global registry)
_RENDERED_APART: "weakref.WeakKeyDictionary[CollectorRegistry, TargetCollector]" = weakref.WeakKeyDictionary()


# The per-target families: (key, name, help); their order is the order they are exposed in.
TARGET_FAMILIES = (
    ("up", PREFIX + "agent_up", "1 when the latest poll found the agent and its node UP."),
    ("status", PREFIX + "agent_status", "Status of the latest poll, one-hot."),
    ("healthy", PREFIX + "agent_healthy", "Debounced health: 1 healthy, 0 unhealthy (after fall/rise)."),
    ("success", PREFIX + "last_poll_success_timestamp_seconds", "When the latest successful poll ended."),
    ("expiry", PREFIX + "tls_cert_expiry_timestamp_seconds", "notAfter of the agent's TLS certificate."),
    ("flapping", PREFIX + "agent_flapping", "1 when health changed too often within the flap window."),
    ("deferred", PREFIX + "agent_deferred_until_timestamp_seconds",
     "Polls deferred until then, as the agent asked with Retry-After."),
    ("node_status", PREFIX + "node_status", "node_status a replisdk agent reported in its latest answer, one-hot."),
    ("reason", PREFIX + "agent_reason", "1 for the reason of the latest poll's failure (absent while UP)."),
)
EXTRA_LABEL = {"status": "status", "node_status": "status", "reason": "reason"}  # families with a third label
CLUSTER_INFO = (PREFIX + "cluster_info", "1 for every cluster polled, with its display name (empty when none).")
THREADS = ("worker", "scheduler", "dispatcher", "reaper", "status_api")  # thread_errors_total labels


def _target_values(view: TargetView) -> Iterator[tuple[str, "str | None", float]]:
    """(family key, third label's value or None, value) of every per-target sample of `view`.

    Every agent has up, status, healthy, flapping and last success from the start (0 before
    its first poll or success), so "down" and "stale" alerts catch agents never seen UP."""
    result = view.result
    yield "up", None, 1.0 if result is not None and result.ok else 0.0
    for candidate in Status:
        yield "status", candidate.value, 1.0 if result is not None and result.status is candidate else 0.0
    yield "healthy", None, 1.0 if result is not None and view.health.healthy else 0.0
    yield "flapping", None, 1.0 if view.flapping else 0.0
    if result is not None and result.cert_not_after is not None:
        yield "expiry", None, result.cert_not_after
    yield "success", None, view.last_success or 0.0
    if result is not None and result.reason is not None:
        yield "reason", result.reason.value, 1.0
    if view.deferred_until is not None:
        yield "deferred", None, view.deferred_until
    if result is not None and result.node_status is not None:
        for name in NODE_STATUSES:
            yield "node_status", name, 1.0 if result.node_status.status == name else 0.0


def _label_value(text: str) -> str:
    """A label value escaped as the text format wants: backslash, newline, double quote."""
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _help(text: str) -> str:
    """A HELP text escaped as the text format wants: backslash and newline."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _clusters(views: Iterable[TargetView]) -> list[tuple[str, str]]:
    """(cluster id, display name or "") of every cluster, sorted."""
    return sorted({(v.target.cluster_id, v.target.display_name or "") for v in views})


class TargetCollector:
    """Per-target gauges, computed from a snapshot at scrape time.

    `collect()` gives them as metric families (for `get_sample_value` and any collector
    consumer); `render()` writes their text directly, as `generate_latest` would, without
    a Sample object per value: at 10,000 agents that is 80,000 samples a scrape.
    """

    def __init__(self, snapshot: Callable[[], Iterable[TargetView]]):
        self._snapshot = snapshot
        self._apart = threading.local()  # set while render() writes this collector's text itself

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if getattr(self._apart, "active", False):
            return iter(())
        labels = ["cluster", "agent"]
        families = {key: GaugeMetricFamily(name, documentation,
                                           labels=labels + [EXTRA_LABEL[key]] if key in EXTRA_LABEL else labels)
                    for key, name, documentation in TARGET_FAMILIES}
        clusters = GaugeMetricFamily(*CLUSTER_INFO, labels=["cluster", "display_name"])
        views = list(self._snapshot())
        for view in views:
            values = [view.target.cluster_id, view.target.url]
            for key, extra, value in _target_values(view):
                families[key].add_metric(values + [extra] if extra else values, value)
        for cluster, display_name in _clusters(views):
            clusters.add_metric([cluster, display_name], 1.0)
        return iter([*families.values(), clusters])

    @contextlib.contextmanager
    def rendered_apart(self) -> Iterator[None]:
        """While in this block, `collect()` on this thread yields nothing."""
        self._apart.active = True
        try:
            yield
        finally:
            self._apart.active = False

    def render(self) -> str:
        """The text exposition of the per-target families (labels sorted, as generate_latest)."""
        lines: dict[str, list[str]] = {key: [] for key, _, _ in TARGET_FAMILIES}
        names = {key: name for key, name, _ in TARGET_FAMILIES}
        views = list(self._snapshot())
        for view in views:
            labels = f'agent="{_label_value(view.target.url)}",cluster="{_label_value(view.target.cluster_id)}"'
            for key, extra, value in _target_values(view):
                third = f',{EXTRA_LABEL[key]}="{_label_value(extra)}"' if extra else ""
                lines[key].append(f"{names[key]}{{{labels}{third}}} {floatToGoString(value)}\n")
        out = []
        for key, name, documentation in TARGET_FAMILIES:
            out.append(f"# HELP {name} {_help(documentation)}\n")
            out.append(f"# TYPE {name} gauge\n")
            out.extend(lines[key])
        name, documentation = CLUSTER_INFO
        out.append(f"# HELP {name} {_help(documentation)}\n# TYPE {name} gauge\n")
        out.extend(f'{name}{{cluster="{_label_value(cluster)}",display_name="{_label_value(display)}"}} 1.0\n'
                   for cluster, display in _clusters(views))
        return "".join(out)


class PollerMetrics:
    """Every metric of the service, registered on the registry passed in."""

    def __init__(self, registry: CollectorRegistry, snapshot: Callable[[], Iterable[TargetView]]):
        self.registry = registry
        polls = Counter(PREFIX + "polls", "Polls by result.", ["result"], registry=registry)
        self._success, self._failure = polls.labels("success"), polls.labels("failure")
        failures = Counter(PREFIX + "poll_failures", "Failed polls by reason.", ["reason"], registry=registry)
        self._failures = {reason: failures.labels(reason.value) for reason in Reason}
        skipped = Counter(PREFIX + "polls_skipped", "Due polls not started, by reason.", ["reason"], registry=registry)
        self._skipped = {reason: skipped.labels(reason) for reason in SKIP_REASONS}
        self._duration = Histogram(PREFIX + "poll_duration_seconds", "Wall time of one poll.",
                                   buckets=DURATION_BUCKETS, registry=registry)
        self._lag = Histogram(PREFIX + "scheduler_lag_seconds", "Delay between a poll's slot and its start.",
                              buckets=LAG_BUCKETS, registry=registry)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Polls queued for a worker.", registry=registry)
        self.workers_busy = Gauge(PREFIX + "workers_busy", "Workers polling right now.", registry=registry)
        self.polls_stuck = Gauge(PREFIX + "polls_stuck", "Polls in flight for longer than twice their deadline.",
                                 registry=registry)
        self.targets = Gauge(PREFIX + "targets", "Agents currently known from configuration and discovery.", registry=registry)
        self._reload_ok = Gauge(PREFIX + "config_last_reload_successful", "1 if the last configuration load succeeded.", registry=registry)
        self._reload_ts = Gauge(PREFIX + "config_last_reload_success_timestamp_seconds",
                                "When the configuration was last loaded successfully.", registry=registry)
        actions = Counter(PREFIX + "actions", "Action outcomes: delivered, retry, rejected, abandoned, done, failed, lost.",
                          ["result"], registry=registry)
        self._actions = {r: actions.labels(r) for r in ACTION_RESULTS}
        self.actions_pending = Gauge(PREFIX + "actions_pending", "Actions journaled and not delivered yet.", registry=registry)
        self._dispatch = Histogram(PREFIX + "action_dispatch_seconds", "From submission to delivery of an action.",
                                   buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900), registry=registry)
        errors = Counter(PREFIX + "thread_errors", "Unexpected exceptions survived by a thread loop.", ["thread"], registry=registry)
        for thread in THREADS:
            errors.labels(thread)  # every thread's series exists from the start, at 0
        self._errors = errors
        self._state_save_errors = Counter(PREFIX + "state_save_errors", "Saves of the state file ([poller] state_dir) "
                                          "that failed; the service keeps running.", registry=registry)
        Gauge(PREFIX + "build_info", "1, labelled with the running version and Python.", ["version", "python"],
              registry=registry).labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        collector = TargetCollector(snapshot)
        registry.register(collector)
        _RENDERED_APART[registry] = collector

    def poll_finished(self, ok: bool, reason: "Reason | None", duration: float) -> None:
        """Count one poll's result and time."""
        (self._success if ok else self._failure).inc()
        if reason is not None:
            self._failures[reason].inc()
        self._duration.observe(duration)

    def poll_started(self, lag: float) -> None:
        """A worker took a poll `lag` seconds after its slot."""
        self._lag.observe(max(0.0, lag))

    def poll_skipped(self, reason: str, count: int = 1) -> None:
        """A due poll was not started (`in_flight`, `queue_full` or `behind`)."""
        self._skipped[reason].inc(count)

    def config_loaded(self, ok: bool, timestamp: float) -> None:
        """Record a configuration load or reload attempt."""
        self._reload_ok.set(1 if ok else 0)
        if ok:
            self._reload_ts.set(timestamp)

    def action_result(self, result: str) -> None:
        """Count an action outcome (one of ACTION_RESULTS)."""
        self._actions[result].inc()

    def action_delivered(self, latency: float) -> None:
        """An action reached its agent `latency` seconds after submission."""
        self._dispatch.observe(max(0.0, latency))

    def targets_changed(self, count: int) -> None:
        """The number of scheduled targets."""
        self.targets.set(count)

    def observe_pool(self, queued: Callable[[], float], busy: Callable[[], float], stuck: Callable[[], float]) -> None:
        """Read the worker pool's figures at scrape time (the pool knows nothing of metrics)."""
        self.queue_depth.set_function(queued)
        self.workers_busy.set_function(busy)
        self.polls_stuck.set_function(stuck)

    def observe_coordination(self, connected: Callable[[], float], members: Callable[[], float],
                             owned: Callable[[], float], leader: Optional[Callable[[], float]] = None) -> None:
        """`[coordination] backend = zookeeper`: the session, the live members, the clusters
        this instance holds and, with actions on (`leader`), whether it is the elected
        dispatcher, read at scrape time; the coordination (and election) threads'
        `thread_errors_total` series at 0. Without actions there is no `coordination_leader`
        series, so "no instance leads" is `max(coordination_leader) == 0` (an alert)."""
        gauges = [("coordination_connected", "1 while the ZooKeeper session is connected.", connected),
                  ("coordination_members", "Live poller instances registered in ZooKeeper.", members),
                  ("coordination_clusters_owned", "Clusters whose lock this instance holds (and polls).", owned)]
        if leader is not None:
            gauges.append(("coordination_leader", "1 on the instance elected to dispatch actions, 0 on the others "
                                                  "(only with actions enabled).", leader))
        for name, help_text, read in gauges:
            Gauge(PREFIX + name, help_text, registry=self.registry).set_function(read)
        for thread in ("coordination",) + (("election",) if leader is not None else ()):
            self._errors.labels(thread)  # their thread_errors_total series too exist from the start, at 0

    def state_save_failed(self) -> None:
        self._state_save_errors.inc()

    def thread_error(self, thread: str) -> None:
        """A thread loop caught an unexpected exception and went on."""
        self._errors.labels(thread).inc()


def new_registry() -> CollectorRegistry:
    """A fresh registry (no process-global one: each service and test owns its own)."""
    return CollectorRegistry(auto_describe=False)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its content type.

    A registry with a TargetCollector (registered last, by PollerMetrics) gets that
    collector's text written directly after the rest: the same bytes, several times cheaper.
    """
    targets = _RENDERED_APART.get(registry)
    if targets is None:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    with targets.rendered_apart():
        head = generate_latest(registry)
    return head + targets.render().encode("utf-8"), CONTENT_TYPE_LATEST


def sample(registry: CollectorRegistry, name: str, labels: "dict[str, str] | None" = None) -> "float | None":
    """One sample's value (for tests and the CLI)."""
    return registry.get_sample_value(name, labels or {})


class ListenerMetrics:
    """What a listener (web.server.CountingServer) refused, by reason: `PREFIX`listener_refusals_total."""

    def __init__(self, registry: CollectorRegistry, prefix: str = PREFIX):
        refusals = Counter(prefix + "listener_refusals",
                           "Connections the HTTP listener refused or dropped, by reason: capacity (listener full), "
                           "peer_share (the address holds its share), deadline (request or handshake not whole in "
                           "time), too_large (request head), tls_handshake (failed), fd_limit (out of file descriptors).",
                           ["reason"], registry=registry)
        self._refusals = {reason: refusals.labels(reason) for reason in REFUSAL_REASONS}

    def refused(self, reason: str) -> None:
        self._refusals[reason].inc()


GATEWAY_RESULTS = ("forwarded", "duplicate", "rejected", "refused", "upstream_error", "error")


class GatewayMetrics:
    """Metrics of the verifying gateway (`/gateway/metrics`)."""

    def __init__(self, registry: CollectorRegistry):
        requests = Counter("replicante_gateway_requests", "Requests by result.", ["result"], registry=registry)
        self._requests = {r: requests.labels(r) for r in GATEWAY_RESULTS}
        self._rejections = Counter("replicante_gateway_rejections", "Refused signed requests by internal reason.",
                                   ["reason"], registry=registry)
        self.listener = ListenerMetrics(registry, "replicante_gateway_")

    def request(self, result: str) -> None:
        self._requests[result].inc()

    def rejected(self, reason: str) -> None:
        """A request answered 401: counted under its precise reason."""
        self._requests["rejected"].inc()
        self._rejections.labels(reason).inc()
