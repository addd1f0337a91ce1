"""What each replisdk agent answers on its GET routes (info/node, info/store, info/shards,
/metrics), by datastore kind, node status and fault, serialised once.

Shapes follow `../shared/agent-api-replisdk.md` sections 3, 4 and 8: field order as serde
writes the structs, every Option present (null), enums externally tagged. MongoDB is shaped
as repliagent-mongodb reports a replica-set member (`store_id` "mongo.replica", shard id the
member's host:port, optime in milliseconds, lag in milliseconds on secondaries and null on
the primary); Kafka and Zookeeper as the legacy simulator shapes them, in replisdk form.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..agentapi import NODE_INFO, SHARDS_INFO, STORE_INFO
from . import hostile
from .api import dumps, sdk_error, sdk_error_document
from .bodies import CHECKOUT, HUGE_PADDING
from .faults import Fault, NodeSpec
from .wire import Route, compressible, response

METRICS = "/metrics"
AGENT_VERSION = "0.1.0"
_REDIRECT_TO = "https://example.invalid" + NODE_INFO
_MONGO_OPTIME_MS = 1728339632000  # the primary's optimeDate, in milliseconds
_MONGO_LAG_MS = 1000  # how far secondaries trail it
_METRICS_BODY = (b"# HELP repliagent_info Information about the agent process.\n"
                 b"# TYPE repliagent_info gauge\n"
                 b'repliagent_info{version="' + AGENT_VERSION.encode() + b'"} 1\n')


@dataclasses.dataclass(frozen=True)
class _Store:
    """How one datastore kind's replisdk agent describes its node."""

    store_id: str
    client_port: int
    member_port: int
    version: dict[str, object]  # store_version: checkout, number, extra
    node_attributes: dict[str, object]
    store_attributes: dict[str, object]
    down: tuple[str, str]  # error_msg, error_cause of info/store and info/shards with the store down
    not_in_cluster: tuple[str, str]  # the same, for a node that is in no cluster


_MONGO_DOWN_MSG = "get replica set status command failed"
_STORES = {
    "MongoDB": _Store(
        "mongo.replica", 27017, 27017,
        {"checkout": "b7ae12d0b2d4fa1ea2a9c7e0cd0d1b28f4caa3d1", "number": "6.0.16",
         "extra": '{"allocator":"tcmalloc"}'},
        {"mongodb.com/mode": "replica-set"},
        {"mongodb.com/feature-compatibility": "6.0", "mongodb.com/oplog.size": 536870912},
        (_MONGO_DOWN_MSG, "Kind: Server selection timeout: No available servers. Topology: "
                          "{ Type: Unknown, Servers: [ { Address: localhost:27017, Type: Unknown, Error: "
                          "Kind: I/O error: Connection refused (os error 111), labels: {} } ] }, labels: {}"),
        (_MONGO_DOWN_MSG, "Kind: Command failed: Error code 94 (NotYetInitialized): "
                          "no replset config has been received, labels: {}")),
    "Kafka": _Store(
        "kafka", 9092, 9093, {"checkout": None, "number": "3.7.1", "extra": None}, {}, {},
        ("unable to fetch cluster metadata", "Connection refused (os error 111)"),
        ("unable to fetch cluster metadata", "the broker is not registered in a cluster")),
    "Zookeeper": _Store(
        "zookeeper", 2181, 2888, {"checkout": None, "number": "3.8.4", "extra": None}, {}, {},
        ("unable to fetch the ensemble status", "Connection refused (os error 111)"),
        ("unable to fetch the ensemble status", "the server is not part of an ensemble")),
}


def routes(spec: NodeSpec, primary: bool) -> dict[str, Route]:
    """The GET routes of one replisdk agent, fault applied, serialised once.

    NODE_DOWN is what repliagent-mongodb does on a store connection error: info/node still
    answers (node_status UNAVAILABLE), info/store and info/shards answer a 500 JSON error.
    """
    fault, store = spec.fault, _STORES[spec.kind]
    status = "UNAVAILABLE" if fault is Fault.NODE_DOWN else spec.node_status
    node = _node(spec, store, "UNAVAILABLE" if fault is Fault.NODE_DOWN else spec.node_status_json)
    extras: dict[str, object] = {"cluster_id": spec.cluster_id, "attributes": dict(store.store_attributes)}
    shards = _shards(spec, primary, status)
    if fault is Fault.WRONG_CLUSTER:
        extras["cluster_id"] = spec.cluster_id + "-impostor"
    elif fault is Fault.HUGE:
        node["padding"] = "x" * HUGE_PADDING
    elif fault is Fault.BAD_SCHEMA:
        shards[0]["role"] = 42
    elif fault is Fault.WRONG_TYPES:
        node["node_id"] = 12
    table: dict[str, Route] = {NODE_INFO: compressible(200, dumps(node)),
                               STORE_INFO: compressible(200, dumps(extras)),
                               SHARDS_INFO: compressible(200, dumps({"shards": shards})),
                               METRICS: compressible(200, _METRICS_BODY, "text/plain; version=0.0.4; charset=utf-8")}
    if status in ("UNAVAILABLE", "NOT_IN_CLUSTER"):
        table[STORE_INFO] = table[SHARDS_INFO] = sdk_error(
            500, *(store.down if status == "UNAVAILABLE" else store.not_in_cluster))
    if fault is Fault.GARBAGE:
        for path in (NODE_INFO, STORE_INFO, SHARDS_INFO):
            table[path] = response(200, b'{"node_id": <<garbage')
    elif fault is Fault.WRONG_CONTENT_TYPE:
        table[NODE_INFO] = compressible(200, dumps(node), "text/html; charset=utf-8")
    elif fault is Fault.AGENT_ERROR:
        table[NODE_INFO] = sdk_error(500, "agent internal error")
    elif fault in _HOSTILE_NODE_INFO:
        table[NODE_INFO] = _HOSTILE_NODE_INFO[fault](node)
    return table


def _node(spec: NodeSpec, store: _Store, status: object) -> dict[str, object]:
    """The Node model, fields in declaration order."""
    return {"address": {"client": f"{spec.node_id}:{store.client_port}",
                        "member": f"{spec.node_id}:{store.member_port}"},
            "agent_version": {"checkout": CHECKOUT, "number": AGENT_VERSION, "taint": "not tainted"},
            "attributes": dict(store.node_attributes), "node_id": spec.node_id, "node_status": status,
            "store_id": store.store_id, "store_version": dict(store.version)}


def _role(primary: bool, status: str) -> object:
    """repliagent-mongodb's mapping: a member starting, recovering or joining is Recovering."""
    if status in ("UNHEALTHY", "JOINING_CLUSTER"):
        return "Recovering"
    return "Primary" if primary else "Secondary"


def _shards(spec: NodeSpec, primary: bool, status: str) -> list[dict[str, object]]:
    """Shards in replisdk form (commit_offset, lag, role, id): lag null on the primary."""
    role = _role(primary, status)

    def lag(unit: object, value: int) -> object:
        return None if primary else {"unit": unit, "value": value}

    if spec.kind == "MongoDB":
        optime = _MONGO_OPTIME_MS - (0 if primary else _MONGO_LAG_MS)
        return [{"commit_offset": {"unit": "milliseconds", "value": optime},
                 "lag": lag("milliseconds", _MONGO_LAG_MS), "role": role,
                 "id": f"{spec.node_id}:{_STORES['MongoDB'].member_port}"}]
    if spec.kind == "Kafka":
        offset, messages = {"unit": "offset"}, {"unit": "messages"}
        return [{"commit_offset": {"unit": offset, "value": 1042}, "lag": lag(messages, 0), "role": role,
                 "id": "events/0"},
                {"commit_offset": {"unit": offset, "value": 977}, "lag": lag(messages, 3), "role": role,
                 "id": "events/1"},
                {"commit_offset": {"unit": offset, "value": 311}, "lag": None, "role": {"Other": "leaderless"},
                 "id": "events/2"}]
    zxid = {"unit": "zxid"}
    return [{"commit_offset": {"unit": zxid, "value": 0x100000042}, "lag": lag(zxid, 0), "role": role,
             "id": spec.cluster_id}]


# --- hostile node info: the faults that only change info/node, as they change legacy agent info

def _with_raw(node: dict[str, object], key: str, raw: bytes) -> bytes:
    """The node's JSON with the value of `key` replaced by `raw` bytes (not JSON)."""
    marker = "\x00raw\x00"
    return dumps({**node, key: marker}).replace(dumps(marker), raw)


def _service_unavailable(_: dict[str, object]) -> Route:
    return response(503, dumps(sdk_error_document("agent overloaded")), extra="Retry-After: 30\r\n")


_PREFIX = b'{"address":'
_HOSTILE_NODE_INFO: dict[Fault, Callable[[dict[str, object]], Route]] = {
    Fault.ENDLESS_CHUNKED: lambda node: hostile.endless_chunked(_PREFIX),
    Fault.DEEP_NESTING: lambda node: hostile.deep_nesting(),
    Fault.NAN: lambda node: response(200, _with_raw(node, "attributes", b'{"sim.ratio":NaN}')),
    Fault.DUPLICATE_KEYS: lambda node: response(200, dumps(node)[:-1] + b',"node_id":"someone-else"}'),
    Fault.INVALID_UTF8: lambda node: response(200, _with_raw(node, "node_id", b'"bad\xff"')),
    Fault.REDIRECT: lambda node: hostile.redirect(_REDIRECT_TO),
    Fault.SERVICE_UNAVAILABLE: _service_unavailable,
    Fault.RESET_MID_BODY: lambda node: hostile.reset_mid_body(_PREFIX),
    Fault.GZIP_BOMB: lambda node: hostile.gzip_bomb(_PREFIX),
}
