"""The simulated fleet: datastore kinds, agent generations, agent faults and the nodes that carry them."""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from ..agentapi import GENERATIONS, LEGACY, REPLISDK


class Fault(str, enum.Enum):
    """How a simulated agent misbehaves."""

    HEALTHY = "healthy"
    NODE_DOWN = "node_down"
    WRONG_CLUSTER = "wrong_cluster"
    SLOW = "slow"
    GARBAGE = "garbage"
    HUGE = "huge"
    HANGING = "hanging"
    BAD_SCHEMA = "bad_schema"
    WRONG_CONTENT_TYPE = "wrong_content_type"
    AGENT_ERROR = "agent_error"
    # Hostile agents: each applies to agent info unless said otherwise.
    TLS_STALL = "tls_stall"  # accepts TCP, never sends a byte (no ServerHello; plain HTTP: no answer)
    ENDLESS_CHUNKED = "endless_chunked"  # 200 chunked JSON that never ends: `{"version":` then spaces
    DEEP_NESTING = "deep_nesting"  # 30,000 nested lists
    NAN = "nan"  # NaN where a string belongs (not JSON)
    DUPLICATE_KEYS = "duplicate_keys"  # "version" twice
    INVALID_UTF8 = "invalid_utf8"  # byte 0xff inside a string
    WRONG_TYPES = "wrong_types"  # datastore info with an integer node_id
    REDIRECT = "redirect"  # 302 to https://example.invalid
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503 with Retry-After: 30
    RESET_MID_BODY = "reset_mid_body"  # Content-Length 5000, 100 bytes, then a TCP RST
    GZIP_BOMB = "gzip_bomb"  # about 50 KB of gzip that inflates to 50 MB


# kind -> (cluster id prefix, datastore version)
KINDS = {"MongoDB": ("mongo", "4.0.1"), "Kafka": ("kafka", "2.8.0"), "Zookeeper": ("zk", "3.8.4")}

MIXED = "mixed"  # fleet(): clusters alternate legacy, replisdk, legacy, ...
# replisdk NodeStatus unit variants; {"UNKNOWN": text} is spelt "UNKNOWN:<text>"
NODE_STATUSES = ("UNAVAILABLE", "NOT_IN_CLUSTER", "JOINING_CLUSTER", "LEAVING_CLUSTER", "UNHEALTHY", "HEALTHY")
UNKNOWN_PREFIX = "UNKNOWN:"


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One simulated datastore node and its agent's behaviour."""

    cluster_id: str
    node_id: str
    kind: str = "MongoDB"
    fault: Fault = Fault.HEALTHY
    display_name: str | None = None  # legacy agents report it; the replisdk API has no such field
    generation: str = LEGACY  # which agent API the node's agent serves: "legacy" or "replisdk"
    node_status: str = "HEALTHY"  # replisdk only: a NodeStatus, "UNKNOWN:<text>" for {"UNKNOWN": text}

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown datastore kind {self.kind!r}; expected one of {sorted(KINDS)}")
        object.__setattr__(self, "fault", Fault(self.fault))
        if self.generation not in GENERATIONS:
            raise ValueError(f"unknown agent generation {self.generation!r}; expected one of {list(GENERATIONS)}")
        if self.node_status not in NODE_STATUSES and not self.node_status.startswith(UNKNOWN_PREFIX):
            raise ValueError(f"unknown node_status {self.node_status!r}; expected one of "
                             f"{list(NODE_STATUSES)} or {UNKNOWN_PREFIX}<text>")
        if self.generation == LEGACY and self.node_status != "HEALTHY":
            raise ValueError("node_status is a replisdk field: legacy agents report none")

    @property
    def node_status_json(self) -> object:
        """node_status as the replisdk API serialises it (serde, externally tagged)."""
        if self.node_status.startswith(UNKNOWN_PREFIX):
            return {"UNKNOWN": self.node_status[len(UNKNOWN_PREFIX):]}
        return self.node_status


def fleet(clusters: int, nodes_per_cluster: int, faults: Mapping[Fault, int] = {},
          generation: str = LEGACY) -> list[NodeSpec]:
    """Deterministic fleet; faults go to the first nodes of a round-robin spread over clusters.

    `generation` "legacy" or "replisdk" gives every agent that API; "mixed" alternates by
    cluster: cluster 1 legacy, cluster 2 replisdk, cluster 3 legacy, ...
    """
    if generation not in GENERATIONS and generation != MIXED:
        raise ValueError(f"unknown generation {generation!r}; expected one of {[*GENERATIONS, MIXED]}")
    if clusters < 0 or nodes_per_cluster < 0:
        raise ValueError("clusters and nodes_per_cluster must not be negative")
    counts = {Fault(fault): count for fault, count in faults.items()}
    if any(count < 0 for count in counts.values()):
        raise ValueError("fault counts must not be negative")
    wanted = sum(count for fault, count in counts.items() if fault is not Fault.HEALTHY)
    if wanted > clusters * nodes_per_cluster:
        raise ValueError(f"{wanted} faulty nodes requested but the fleet has only "
                         f"{clusters * nodes_per_cluster} nodes")
    spread = iter([(c, n) for n in range(nodes_per_cluster) for c in range(clusters)])
    assigned = {next(spread): fault for fault in Fault if fault is not Fault.HEALTHY
                for _ in range(counts.get(fault, 0))}
    kinds = list(KINDS)
    nodes = []
    for c in range(clusters):
        kind = kinds[c % len(kinds)]
        cluster_id = f"{KINDS[kind][0]}-{c + 1}"
        api = (LEGACY, REPLISDK)[c % 2] if generation == MIXED else generation
        for n in range(nodes_per_cluster):
            nodes.append(NodeSpec(cluster_id, f"{cluster_id}-node-{n + 1}", kind,
                                  assigned.get((c, n), Fault.HEALTHY), generation=api))
    return nodes
