"""What each legacy agent answers on its GET routes, by datastore kind and fault, serialised once."""
from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..agentapi import AGENT_INFO, DATASTORE_INFO, SHARDS
from . import hostile
from .api import dumps, error
from .faults import KINDS, Fault, NodeSpec
from .wire import Route, response

CHECKOUT = hashlib.sha1(b"replicante-agent-sim").hexdigest()  # the agents' git checkout
HUGE_PADDING = 1 << 20
_REDIRECT_TO = "https://example.invalid" + AGENT_INFO
_DATASTORE_DOWN = error(500, "datastore unreachable")


def routes(spec: NodeSpec, primary: bool) -> dict[str, Route]:
    """The GET routes of one legacy agent, fault applied, serialised once."""
    fault = spec.fault
    agent: dict[str, object] = {"version": {"checkout": CHECKOUT, "number": "0.7.0", "taint": "not tainted"}}
    datastore: dict[str, object] = {
        "cluster_display_name": spec.display_name, "cluster_id": spec.cluster_id,
        "kind": spec.kind, "node_id": spec.node_id, "version": KINDS[spec.kind][1]}
    shards = _shards(spec, primary)
    if fault is Fault.WRONG_CLUSTER:
        datastore["cluster_id"] = spec.cluster_id + "-impostor"
    elif fault is Fault.HUGE:
        agent["padding"] = "x" * HUGE_PADDING
    elif fault is Fault.BAD_SCHEMA:
        shards[0]["role"] = 42
    elif fault is Fault.WRONG_TYPES:
        datastore["node_id"] = 12
    table: dict[str, Route] = {AGENT_INFO: response(200, dumps(agent)),
                               DATASTORE_INFO: response(200, dumps(datastore)),
                               SHARDS: response(200, dumps({"shards": shards}))}
    if fault is Fault.NODE_DOWN:
        table[DATASTORE_INFO] = table[SHARDS] = _DATASTORE_DOWN
    elif fault is Fault.GARBAGE:
        table = {path: response(200, b'{"version": <<garbage') for path in table}
    elif fault is Fault.WRONG_CONTENT_TYPE:
        table[AGENT_INFO] = response(200, dumps(agent), "text/html; charset=utf-8")
    elif fault is Fault.AGENT_ERROR:
        table[AGENT_INFO] = error(500, "agent internal error")
    elif fault in _HOSTILE_AGENT_INFO:
        table[AGENT_INFO] = _HOSTILE_AGENT_INFO[fault]()
    return table


def _shards(spec: NodeSpec, primary: bool) -> list[dict[str, object]]:
    """Shards as the real agents shape them: a primary reports no lag (it is what others lag
    behind); Kafka counts its commit offset in `offset` and its lag in `messages`."""
    role = "primary" if primary else "secondary"

    def lag(unit: object, value: int) -> object:
        return None if primary else {"unit": unit, "value": value}

    if spec.kind == "MongoDB":
        return [{"id": "rs0", "role": role, "commit_offset": {"unit": "seconds", "value": 1700000000},
                 "lag": lag("seconds", 0)}]
    if spec.kind == "Kafka":
        offset, messages = {"unit": "offset"}, {"unit": "messages"}
        return [{"id": "events/0", "role": role, "commit_offset": {"unit": offset, "value": 1042},
                 "lag": lag(messages, 0)},
                {"id": "events/1", "role": role, "commit_offset": {"unit": offset, "value": 977},
                 "lag": lag(messages, 3)},
                {"id": "events/2", "role": {"unknown": "leaderless"},
                 "commit_offset": {"unit": offset, "value": 311}, "lag": None}]
    unit = {"unit": "zxid"}
    return [{"id": spec.cluster_id, "role": role, "commit_offset": {"unit": unit, "value": 0x100000042},
             "lag": lag(unit, 0)}]


# fault -> builder of its agent info route (the faults that only change agent info)
_HOSTILE_AGENT_INFO: dict[Fault, Callable[[], Route]] = {
    Fault.ENDLESS_CHUNKED: lambda: hostile.endless_chunked(b'{"version":'),
    Fault.DEEP_NESTING: hostile.deep_nesting,
    Fault.NAN: lambda: response(200, b'{"version":{"checkout":"x","number":NaN,"taint":"t"}}'),
    Fault.DUPLICATE_KEYS: lambda: response(
        200, b'{"version":{"checkout":"x","number":"0.7.0","taint":"t"},'
             b'"version":{"checkout":"y","number":"0.8.0","taint":"t"}}'),
    Fault.INVALID_UTF8: lambda: response(200, b'{"version":{"checkout":"bad\xff","number":"0.7.0","taint":"t"}}'),
    Fault.REDIRECT: lambda: hostile.redirect(_REDIRECT_TO),
    Fault.SERVICE_UNAVAILABLE: lambda: error(503, "agent overloaded", "ServiceUnavailable",
                                             "Retry-After: 30\r\n"),
    Fault.RESET_MID_BODY: lambda: hostile.reset_mid_body(b'{"version":'),
    Fault.GZIP_BOMB: lambda: hostile.gzip_bomb(b'{"version":'),
}
