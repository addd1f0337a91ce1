"""Validated agent documents (DESIGN section 1), as frozen values.

`to_json()` gives each back in the agent's own wire shape, for the status API.
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
    """`/api/unstable/info/agent`."""

    version: AgentVersion

    def to_json(self) -> dict[str, Any]:
        return {"version": dataclasses.asdict(self.version)}


@dataclasses.dataclass(frozen=True)
class DatastoreInfo:
    """`/api/unstable/info/datastore`."""

    cluster_display_name: Optional[str]
    cluster_id: str
    kind: str
    node_id: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Offset:
    """A commit offset or lag: `seconds`, or a custom unit such as `offset` or `zxid`."""

    unit: str
    value: int
    custom: bool = False

    def to_json(self) -> dict[str, Any]:
        unit: Any = {"unit": self.unit} if self.custom else self.unit
        return {"unit": unit, "value": self.value}


@dataclasses.dataclass(frozen=True)
class Shard:
    """One entry of `/api/unstable/shards`; `role_detail` is the text of an unknown role."""

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
