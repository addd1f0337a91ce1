"""One poll of one agent: three GETs on one connection, validated, turned into a status.

The order and the status rules are DESIGN section 2: agent info decides AGENT_DOWN;
datastore info, shards and the cluster id check decide NODE_DOWN. Duplicate node ids are
a fleet-wide fact and are decided by the state, not here.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Union

from ..agentapi import AGENT_INFO, DATASTORE_INFO, SHARDS
from ..models import AgentInfo, DatastoreInfo, Shard
from ..reasons import Reason, Status
from .discovery import Target
from .transport import AgentClient, Failure
from .validation import Invalid, parse, validate_agent_info, validate_datastore_info, validate_shards


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

    @property
    def ok(self) -> bool:
        return self.status is Status.UP


def _fetch(conn: Any, path: str, validate: Callable[[Any], Any], max_body: int) -> Union[Any, Failure, Invalid]:
    body = conn.get(path, max_body)
    if isinstance(body, Failure):
        return body
    return parse(body, validate)


def _failed(value: Any) -> bool:
    return isinstance(value, (Failure, Invalid))


def _describe(path: str, failure: Union[Failure, Invalid]) -> str:
    if isinstance(failure, Invalid):
        return f"GET {path}: invalid body at {failure.path}: {failure.message}"
    return failure.message if failure.message.startswith("GET ") else f"GET {path}: {failure.message}"


def poll_target(client: AgentClient, target: Target, clock: Callable[[], float] = time.time) -> PollResult:
    """Poll `target` once and decide its status (never raises for agent misbehaviour)."""
    started, t0 = clock(), time.monotonic()
    fields: dict[str, Any] = {}

    def result(status: Status, reason: Optional[Reason], message: str, **extra: Any) -> PollResult:
        return PollResult(target, status, reason, message, started, time.monotonic() - t0, **fields, **extra)

    with client.connect(target) as conn:
        limits = target.poll
        for path, validate, key, down, max_body in (
            (AGENT_INFO, validate_agent_info, "agent", Status.AGENT_DOWN, limits.max_body),
            (DATASTORE_INFO, validate_datastore_info, "datastore", Status.NODE_DOWN, limits.max_body),
            (SHARDS, validate_shards, "shards", Status.NODE_DOWN, limits.max_shards_body),
        ):
            value = _fetch(conn, path, validate, max_body)
            fields["cert_not_after"] = conn.peer.not_after if conn.peer else None
            if _failed(value):
                retry_after = value.retry_after if isinstance(value, Failure) else None
                return result(down, value.reason, _describe(path, value), retry_after=retry_after)
            fields[key] = value
            if key == "datastore" and value.cluster_id != target.cluster_id:
                return result(Status.NODE_DOWN, Reason.CLUSTER_MISMATCH,
                              f"agent reports cluster {value.cluster_id!r}, discovery says {target.cluster_id!r}")
    return result(Status.UP, None, "all checks passed")
