"""One poll of one agent: three GETs on one connection, validated, turned into a status.

The order and the status rules are DESIGN section 2: agent info decides AGENT_DOWN;
datastore info, shards and the cluster id check decide NODE_DOWN. Duplicate node ids are
a fleet-wide fact and are decided by the state, not here.

Both agent generations (DESIGN section 1) end in the same neutral PollResult. With
`api = auto` the poll starts with the generation the agent answered last time (legacy when
unknown) and, when that generation's first path answers 404, asks the other one's on the
same connection: an agent upgraded in place is learned again within one poll.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Union

from ..agentapi import (
    AGENT_INFO,
    AUTO,
    DATASTORE_INFO,
    LEGACY,
    NODE_INFO,
    REPLISDK,
    SHARDS,
    SHARDS_INFO,
    STORE_INFO,
)
from ..models import AgentInfo, DatastoreInfo, NodeStatus, Shard
from ..reasons import Reason, Status
from .discovery import Target
from .transport import AgentClient, AgentConnection, Failure
from .validation import (
    Invalid,
    NodeReport,
    parse,
    validate_agent_info,
    validate_datastore_info,
    validate_node_info,
    validate_replisdk_shards,
    validate_shards,
    validate_store_info,
)


@dataclasses.dataclass(frozen=True)
class PollResult:
    """The outcome of one poll, as a value; failures carry a reason and a message."""

    target: Target
    status: Status
    reason: Optional[Reason]
    message: str
    started: float  # unix seconds
    duration: float  # seconds
    agent: Optional[AgentInfo] = None
    datastore: Optional[DatastoreInfo] = None
    shards: Optional[tuple[Shard, ...]] = None
    cert_not_after: Optional[float] = None
    retry_after: Optional[float] = None
    api: Optional[str] = None  # the generation whose first path answered (None: the poll did not learn it)
    node_status: Optional[NodeStatus] = None  # replisdk agents only

    @property
    def ok(self) -> bool:
        return self.status is Status.UP


Value = Union[Any, Failure, Invalid]
FIRST_PATH = {LEGACY: AGENT_INFO, REPLISDK: NODE_INFO}  # what tells the generations apart


def generations(setting: str, known: Optional[str]) -> tuple[str, ...]:
    """The generations to try, in order: the configured one, or (auto) the known one first."""
    if setting != AUTO:
        return (setting,)
    first = known if known in FIRST_PATH else LEGACY
    return (first, REPLISDK if first == LEGACY else LEGACY)


def _fetch(conn: AgentConnection, path: str, validate: Callable[[Any], Any], max_body: int) -> Value:
    body = conn.get(path, max_body)
    if isinstance(body, Failure):
        return body
    return parse(body, validate)


def _failed(value: Value) -> bool:
    return isinstance(value, (Failure, Invalid))


def _not_found(value: Value) -> bool:
    return isinstance(value, Failure) and value.status == 404


# Failures of a first GET that still prove the path exists: the agent answered it over HTTP.
_ANSWERED = (Reason.HTTP_STATUS, Reason.TOO_LARGE, Reason.CONTENT_TYPE)


def _answered(value: Value) -> bool:
    """Whether the agent answered this path (so it speaks that path's generation)."""
    return not isinstance(value, Failure) or (value.reason in _ANSWERED and value.status != 404)


def _describe(path: str, failure: Union[Failure, Invalid]) -> str:
    if isinstance(failure, Invalid):
        return f"GET {path}: invalid body at {failure.path}: {failure.message}"
    return failure.message if failure.message.startswith("GET ") else f"GET {path}: {failure.message}"


class _Poll:
    """The state of one poll while it runs: the fields found so far, and how to end it."""

    def __init__(self, conn: AgentConnection, target: Target, started: float, t0: float):
        self.conn, self.target = conn, target
        self.started, self._t0 = started, t0  # taken before the connection: the deadline covers dialing
        self.fields: dict[str, Any] = {}

    def result(self, status: Status, reason: Optional[Reason], message: str, **extra: Any) -> PollResult:
        return PollResult(self.target, status, reason, message, self.started, time.monotonic() - self._t0,
                          **self.fields, **extra)

    def get(self, path: str, validate: Callable[[Any], Any], shards: bool = False) -> Value:
        limits = self.target.poll
        value = _fetch(self.conn, path, validate, limits.max_shards_body if shards else limits.max_body)
        self.fields["cert_not_after"] = self.conn.peer.not_after if self.conn.peer else None
        return value

    def failed(self, status: Status, path: str, value: Union[Failure, Invalid]) -> PollResult:
        retry_after = value.retry_after if isinstance(value, Failure) else None
        return self.result(status, value.reason, _describe(path, value), retry_after=retry_after)


def _finish(poll: _Poll, datastore: DatastoreInfo, shards_path: str,
            validate: Callable[[Any], Any]) -> PollResult:
    """The common end of a poll, once the datastore is known: the cluster check, the shards."""
    poll.fields["datastore"] = datastore
    if datastore.cluster_id != poll.target.cluster_id:
        return poll.result(Status.NODE_DOWN, Reason.CLUSTER_MISMATCH,
                           f"agent reports cluster {datastore.cluster_id!r}, discovery says {poll.target.cluster_id!r}")
    shards = poll.get(shards_path, validate, shards=True)
    if _failed(shards):
        return poll.failed(Status.NODE_DOWN, shards_path, shards)
    poll.fields["shards"] = shards
    return poll.result(Status.UP, None, "all checks passed")


def _legacy(poll: _Poll, agent: AgentInfo) -> PollResult:
    """The rest of a legacy poll, after `info/agent` answered."""
    poll.fields["agent"] = agent
    datastore = poll.get(DATASTORE_INFO, validate_datastore_info)
    if _failed(datastore):
        return poll.failed(Status.NODE_DOWN, DATASTORE_INFO, datastore)
    return _finish(poll, datastore, SHARDS, validate_shards)


def _replisdk(poll: _Poll, node: NodeReport) -> PollResult:
    """The rest of a replisdk poll, after `info/node` answered."""
    poll.fields.update(agent=node.agent, node_status=node.status)
    if node.status.status == "UNAVAILABLE":
        return poll.result(Status.NODE_DOWN, Reason.NODE_UNAVAILABLE,
                           f"agent reports node_status UNAVAILABLE: its datastore ({node.store_id}) cannot be reached")
    cluster_id = poll.get(STORE_INFO, validate_store_info)
    if _failed(cluster_id):
        return poll.failed(Status.NODE_DOWN, STORE_INFO, cluster_id)
    return _finish(poll, node.datastore(cluster_id), SHARDS_INFO, validate_replisdk_shards)


_FIRST = {LEGACY: (validate_agent_info, _legacy), REPLISDK: (validate_node_info, _replisdk)}


def _first_failed(poll: _Poll, api: str, value: Union[Failure, Invalid], tried: list[str]) -> PollResult:
    """The first GET failed: AGENT_DOWN, unless a replisdk agent answered with its own error
    (`info/node` collects from the datastore: a 5xx JSON error is the node failing)."""
    path = FIRST_PATH[api]
    if _not_found(value):  # the whole URLs: a path prefix in the agent URL shows (often the mistake)
        said = " and ".join(f"GET {poll.target.url}{p}" for p in tried) + " answered HTTP 404: "
        return poll.result(Status.AGENT_DOWN, Reason.HTTP_STATUS, said + (
            "not a Replicante agent of either API generation" if len(tried) > 1 else
            f"not a Replicante agent ({api} API)"))
    if (api == REPLISDK and isinstance(value, Failure) and value.agent_error is not None
            and value.status is not None and value.status >= 500):
        return poll.failed(Status.NODE_DOWN, path, value)
    return poll.failed(Status.AGENT_DOWN, path, value)


def poll_target(client: AgentClient, target: Target, clock: Callable[[], float] = time.time,
                known: Optional[str] = None) -> PollResult:
    """Poll `target` once and decide its status (never raises for agent misbehaviour).

    `known` is the generation the agent answered last time (auto-detection starts there)."""
    started, t0 = clock(), time.monotonic()
    with client.connect(target) as conn:
        poll = _Poll(conn, target, started, t0)
        tried: list[str] = []
        for api in generations(target.poll.api, known):
            validate, rest = _FIRST[api]
            tried.append(FIRST_PATH[api])
            first = poll.get(FIRST_PATH[api], validate)
            if not _not_found(first):
                break
        poll.fields["api"] = api if _answered(first) else None
        if _failed(first):
            return _first_failed(poll, api, first, tried)
        return rest(poll, first)
