"""Validated agent documents of both generations (DESIGN section 1), as frozen values.

One generation-neutral model: a replisdk agent's `info/node` and `info/store` fill the same
AgentInfo and DatastoreInfo as a legacy agent's `info/agent` and `info/datastore`; shard roles
are normalized (`primary`, `secondary`, `recovering`, `unknown` with its text). `to_json()`
gives each back in that neutral shape (the legacy wire shape, plus what only replisdk has),
for the status API and the state file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class AgentVersion:
    """`version` of `/info/agent`."""

    checkout: str
    number: str
    taint: str


@dataclasses.dataclass(frozen=True)
class AgentInfo:
    """The agent's version: legacy `info/agent`, replisdk `info/node`'s `agent_version`."""

    version: AgentVersion

    def to_json(self) -> dict[str, Any]:
        return {"version": dataclasses.asdict(self.version)}


@dataclasses.dataclass(frozen=True)
class DatastoreInfo:
    """The node as its agent reports it: legacy `info/datastore`; replisdk `info/node`
    (`node_id`, `store_id` as kind, `store_version.number` as version) and `info/store`
    (`cluster_id`; no display name)."""

    cluster_display_name: Optional[str]
    cluster_id: str
    kind: str
    node_id: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Offset:
    """A commit offset or lag: `seconds`, `milliseconds` (replisdk), or a custom unit such
    as `offset` or `zxid`."""

    unit: str
    value: int
    custom: bool = False

    def to_json(self) -> dict[str, Any]:
        unit: Any = {"unit": self.unit} if self.custom else self.unit
        return {"unit": unit, "value": self.value}


@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard the node holds; `role` is normalized, `role_detail` is the text of an
    `unknown` role (legacy `{"unknown": TEXT}`, replisdk `{"Other": TEXT}`)."""

    id: str
    role: str
    role_detail: Optional[str] = None
    commit_offset: Optional[Offset] = None
    lag: Optional[Offset] = None

    def to_json(self) -> dict[str, Any]:
        role: Any = {"unknown": self.role_detail} if self.role == "unknown" else self.role
        return {
            "id": self.id,
            "role": role,
            "commit_offset": self.commit_offset.to_json() if self.commit_offset else None,
            "lag": self.lag.to_json() if self.lag else None,
        }


NODE_STATUSES = ("UNAVAILABLE", "NOT_IN_CLUSTER", "JOINING_CLUSTER", "LEAVING_CLUSTER", "UNHEALTHY", "HEALTHY",
                 "UNKNOWN")


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """A replisdk agent's `node_status`: one of NODE_STATUSES; `detail` is the text of UNKNOWN."""

    status: str
    detail: Optional[str] = None

    def to_json(self) -> Any:
        return {"UNKNOWN": self.detail} if self.status == "UNKNOWN" else self.status
