"""Strict decoding and validation of agent bodies into models.

Every function here returns a model or an `Invalid` value naming the reason and the JSON
path of the first problem (`$.shards[2].role`); nothing else escapes, whatever the bytes.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NoReturn, Optional, TypeVar, Union

from ..jsoncheck import Problem, duplicate_key, expect_object, expect_string, fail, kind, optional
from ..models import NODE_STATUSES, AgentInfo, AgentVersion, DatastoreInfo, NodeStatus, Offset, Shard
from ..reasons import Reason

T = TypeVar("T")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Invalid:
    """A body that could not be used: `invalid_json` or `schema`, where, and why."""

    reason: Reason
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclasses.dataclass(frozen=True)
class NodeReport:
    """What a replisdk agent's `info/node` says, before `info/store` adds the cluster id."""

    agent: AgentInfo
    node_id: str
    store_id: str
    store_version: str
    status: NodeStatus

    def datastore(self, cluster_id: str) -> DatastoreInfo:
        """The neutral datastore model, once the cluster id is known."""
        return DatastoreInfo(None, cluster_id, self.store_id, self.node_id, self.store_version)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    key = duplicate_key(pairs)
    if key is not None:
        fail("$", f"duplicate key {key!r}")
    return dict(pairs)


def _no_constants(name: str) -> NoReturn:
    fail("$", f"{name} is not valid JSON")


def decode_json(body: bytes) -> Union[Any, Invalid]:
    """Parse strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys, bounded nesting."""
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except Problem as problem:
        return Invalid(Reason.INVALID_JSON, problem.path, problem.message)
    except UnicodeDecodeError as exc:
        return Invalid(Reason.INVALID_JSON, "$", f"body is not UTF-8 ({exc.reason} at byte {exc.start})")
    except RecursionError:
        return Invalid(Reason.INVALID_JSON, "$", "body is nested too deeply")
    except ValueError as exc:
        return Invalid(Reason.INVALID_JSON, "$", f"body is not JSON: {exc}")


def _int64(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected an integer, got {kind(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        fail(path, "integer out of int64 range")
    return value


# The shard validators run once per shard (20,000 on a large Kafka broker): they format the
# JSON path of a field only when it fails, never on the way through.

@dataclasses.dataclass(frozen=True)
class ShardDialect:
    """How one generation spells shard roles and offset units, and their normalized names."""

    roles: dict[str, str]  # wire role -> normalized role
    other_role: str  # key of the object role carrying free text
    units: frozenset[str]  # plain-string units (anything else is {"unit": NAME})
    expected_role: str  # for the error message
    commit_required: bool = False  # replisdk: `commit_offset` is not an Option

    def role(self, value: Any, i: int) -> tuple[str, Optional[str]]:
        role = self.roles.get(value) if isinstance(value, str) else None
        if role is not None:
            return role, None
        if isinstance(value, dict) and len(value) == 1 and self.other_role in value:
            return "unknown", expect_string(value[self.other_role], f"$.shards[{i}].role.{self.other_role}")
        fail(f"$.shards[{i}].role", f"expected {self.expected_role}")

    def offset(self, value: Any, i: int, field: str) -> Offset:
        if not isinstance(value, dict):
            expect_object(value, f"$.shards[{i}].{field}")
        unit = value.get("unit")
        if isinstance(unit, str) and unit in self.units:
            name, custom = unit, False
        elif isinstance(unit, dict):
            name, custom = unit.get("unit"), True
            if not isinstance(name, str):
                expect_string(name, f"$.shards[{i}].{field}.unit.unit")
        else:
            plain = " or ".join(f'"{u}"' for u in sorted(self.units))
            fail(f"$.shards[{i}].{field}.unit", f'expected {plain} or {{"unit": NAME}}')
        number = value.get("value")
        if type(number) is not int or not INT64_MIN <= number <= INT64_MAX:
            _int64(number, f"$.shards[{i}].{field}.value")
        return Offset(name, number, custom)

    def shard(self, value: Any, i: int) -> Shard:
        if not isinstance(value, dict):
            expect_object(value, f"$.shards[{i}]")
        role, detail = self.role(value.get("role"), i)
        ident = value.get("id")
        if not isinstance(ident, str):
            expect_string(ident, f"$.shards[{i}].id")
        commit, lag = value.get("commit_offset"), value.get("lag")
        if commit is None and self.commit_required:
            expect_object(commit, f"$.shards[{i}].commit_offset")
        return Shard(
            id=ident,
            role=role,
            role_detail=detail,
            commit_offset=None if commit is None else self.offset(commit, i, "commit_offset"),
            lag=None if lag is None else self.offset(lag, i, "lag"),
        )

    def shards(self, value: Any) -> tuple[Shard, ...]:
        shards = expect_object(value, "$").get("shards")
        if not isinstance(shards, list):
            fail("$.shards", f"expected a list, got {kind(shards)}")
        shard = self.shard
        return tuple(shard(item, i) for i, item in enumerate(shards))


LEGACY_SHARDS = ShardDialect({"primary": "primary", "secondary": "secondary"}, "unknown", frozenset({"seconds"}),
                             '"primary", "secondary" or {"unknown": TEXT}')
REPLISDK_SHARDS = ShardDialect({"Primary": "primary", "Secondary": "secondary", "Recovering": "recovering"}, "Other",
                               frozenset({"seconds", "milliseconds"}),
                               '"Primary", "Secondary", "Recovering" or {"Other": TEXT}', commit_required=True)
# The neutral shape the models write back (status API, state file).
NEUTRAL_SHARDS = ShardDialect({"primary": "primary", "secondary": "secondary", "recovering": "recovering"},
                              "unknown", frozenset({"seconds", "milliseconds"}),
                              '"primary", "secondary", "recovering" or {"unknown": TEXT}')


def _agent_info(value: Any) -> AgentInfo:
    return AgentInfo(_version(expect_object(value, "$").get("version"), "$.version"))


def _datastore_info(value: Any) -> DatastoreInfo:
    document = expect_object(value, "$")
    return DatastoreInfo(
        cluster_display_name=optional(document.get("cluster_display_name"), "$.cluster_display_name", expect_string),
        cluster_id=expect_string(document.get("cluster_id"), "$.cluster_id"),
        kind=expect_string(document.get("kind"), "$.kind"),
        node_id=expect_string(document.get("node_id"), "$.node_id"),
        version=expect_string(document.get("version"), "$.version"),
    )


def _version(value: Any, path: str) -> AgentVersion:
    version = expect_object(value, path)
    return AgentVersion(
        checkout=expect_string(version.get("checkout"), path + ".checkout"),
        number=expect_string(version.get("number"), path + ".number"),
        taint=expect_string(version.get("taint"), path + ".taint"),
    )


def _node_status(value: Any) -> NodeStatus:
    if isinstance(value, str) and value in NODE_STATUSES and value != "UNKNOWN":
        return NodeStatus(value)
    if isinstance(value, dict) and len(value) == 1 and "UNKNOWN" in value:
        return NodeStatus("UNKNOWN", expect_string(value["UNKNOWN"], "$.node_status.UNKNOWN"))
    fail("$.node_status", "expected one of " + ", ".join(NODE_STATUSES[:-1]) + ' or {"UNKNOWN": TEXT}')


def _attributes(value: Any, path: str) -> None:
    for key, item in expect_object(value, path).items():
        if item is not None and not isinstance(item, (bool, int, float, str)):
            fail(f"{path}.{key}", f"expected a boolean, number, string or null, got {kind(item)}")


def _node_info(value: Any) -> NodeReport:
    """replisdk `info/node` (`address` is absent on agents before SDK 53acdf2). Address and
    attributes are checked, not kept: the neutral model has no place for them."""
    document = expect_object(value, "$")
    address = document.get("address")
    if address is not None:
        for key, item in expect_object(address, "$.address").items():
            optional(item, f"$.address.{key}", expect_string)
    if "attributes" in document:
        _attributes(document["attributes"], "$.attributes")
    store_version = expect_object(document.get("store_version"), "$.store_version")
    optional(store_version.get("checkout"), "$.store_version.checkout", expect_string)
    optional(store_version.get("extra"), "$.store_version.extra", expect_string)
    return NodeReport(
        agent=AgentInfo(_version(document.get("agent_version"), "$.agent_version")),
        node_id=expect_string(document.get("node_id"), "$.node_id"),
        store_id=expect_string(document.get("store_id"), "$.store_id"),
        store_version=expect_string(store_version.get("number"), "$.store_version.number"),
        status=_node_status(document.get("node_status")),
    )


def _store_info(value: Any) -> str:
    """replisdk `info/store`: its cluster id."""
    document = expect_object(value, "$")
    if "attributes" in document:
        _attributes(document["attributes"], "$.attributes")
    return expect_string(document.get("cluster_id"), "$.cluster_id")


def _validator(build: Callable[[Any], T]) -> Callable[[Any], Union[T, Invalid]]:
    def validate(document: Any) -> Union[T, Invalid]:
        try:
            return build(document)
        except Problem as problem:
            return Invalid(Reason.SCHEMA, problem.path, problem.message)

    validate.__doc__ = f"Validate a decoded document with {getattr(build, '__qualname__', build)}; a model or Invalid."
    return validate


validate_agent_info = _validator(_agent_info)
validate_datastore_info = _validator(_datastore_info)
validate_shards = _validator(LEGACY_SHARDS.shards)
validate_node_info = _validator(_node_info)
validate_store_info = _validator(_store_info)
validate_replisdk_shards = _validator(REPLISDK_SHARDS.shards)
validate_neutral_shards = _validator(NEUTRAL_SHARDS.shards)
validate_node_status = _validator(_node_status)


def parse(body: bytes, validate: Callable[[Any], Union[T, Invalid]]) -> Union[T, Invalid]:
    """Decode `body` and validate it: the one call the poll makes per document."""
    document = decode_json(body)
    if isinstance(document, Invalid):
        return document
    return validate(document)
