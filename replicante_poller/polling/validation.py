"""Strict decoding and validation of agent bodies into models.

Every function here returns a model or an `Invalid` value naming the reason and the JSON
path of the first problem (`$.shards[2].role`); nothing else escapes, whatever the bytes.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, NoReturn, Optional, TypeVar, Union

from ..models import AgentInfo, AgentVersion, DatastoreInfo, Offset, Shard
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


class _Problem(Exception):
    """Internal: unwinds validation to the public boundary, which makes it a value."""

    def __init__(self, path: str, message: str):
        super().__init__(path, message)
        self.path, self.message = path, message


def _fail(path: str, message: str) -> NoReturn:
    raise _Problem(path, message)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _fail("$", f"duplicate key {key!r}")
            seen.add(key)
    return document


def _no_constants(name: str) -> NoReturn:
    _fail("$", f"{name} is not valid JSON")


def decode_json(body: bytes) -> Union[Any, Invalid]:
    """Parse strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys, bounded nesting."""
    try:
        text = body.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Problem as problem:
        return Invalid(Reason.INVALID_JSON, problem.path, problem.message)
    except UnicodeDecodeError as exc:
        return Invalid(Reason.INVALID_JSON, "$", f"body is not UTF-8 ({exc.reason} at byte {exc.start})")
    except RecursionError:
        return Invalid(Reason.INVALID_JSON, "$", "body is nested too deeply")
    except ValueError as exc:
        return Invalid(Reason.INVALID_JSON, "$", f"body is not JSON: {exc}")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, f"expected an object, got {_kind(value)}")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_kind(value)}")
    return value


def _optional(value: Any, path: str, convert: Callable[[Any, str], T]) -> Optional[T]:
    return None if value is None else convert(value, path)


def _int64(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected an integer, got {_kind(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        _fail(path, "integer out of int64 range")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# The shard validators run once per shard (20,000 on a large Kafka broker): they format the
# JSON path of a field only when it fails, never on the way through.

def _offset(value: Any, i: int, field: str) -> Offset:
    if not isinstance(value, dict):
        _object(value, f"$.shards[{i}].{field}")
    unit = value.get("unit")
    if unit == "seconds":
        name, custom = "seconds", False
    elif isinstance(unit, dict):
        name, custom = unit.get("unit"), True
        if not isinstance(name, str):
            _string(name, f"$.shards[{i}].{field}.unit.unit")
    else:
        _fail(f"$.shards[{i}].{field}.unit", 'expected "seconds" or {"unit": NAME}')
    number = value.get("value")
    if type(number) is not int or not INT64_MIN <= number <= INT64_MAX:
        _int64(number, f"$.shards[{i}].{field}.value")
    return Offset(name, number, custom)


def _role(value: Any, i: int) -> tuple[str, Optional[str]]:
    if value == "primary" or value == "secondary":
        return value, None
    if isinstance(value, dict) and len(value) == 1 and "unknown" in value:
        return "unknown", _string(value["unknown"], f"$.shards[{i}].role.unknown")
    _fail(f"$.shards[{i}].role", 'expected "primary", "secondary" or {"unknown": TEXT}')


def _shard(value: Any, i: int) -> Shard:
    if not isinstance(value, dict):
        _object(value, f"$.shards[{i}]")
    role, detail = _role(value.get("role"), i)
    ident = value.get("id")
    if not isinstance(ident, str):
        _string(ident, f"$.shards[{i}].id")
    commit, lag = value.get("commit_offset"), value.get("lag")
    return Shard(
        id=ident,
        role=role,
        role_detail=detail,
        commit_offset=None if commit is None else _offset(commit, i, "commit_offset"),
        lag=None if lag is None else _offset(lag, i, "lag"),
    )


def _agent_info(value: Any) -> AgentInfo:
    version = _object(_object(value, "$").get("version"), "$.version")
    return AgentInfo(AgentVersion(
        checkout=_string(version.get("checkout"), "$.version.checkout"),
        number=_string(version.get("number"), "$.version.number"),
        taint=_string(version.get("taint"), "$.version.taint"),
    ))


def _datastore_info(value: Any) -> DatastoreInfo:
    document = _object(value, "$")
    return DatastoreInfo(
        cluster_display_name=_optional(document.get("cluster_display_name"), "$.cluster_display_name", _string),
        cluster_id=_string(document.get("cluster_id"), "$.cluster_id"),
        kind=_string(document.get("kind"), "$.kind"),
        node_id=_string(document.get("node_id"), "$.node_id"),
        version=_string(document.get("version"), "$.version"),
    )


def _shards(value: Any) -> tuple[Shard, ...]:
    shards = _object(value, "$").get("shards")
    if not isinstance(shards, list):
        _fail("$.shards", f"expected a list, got {_kind(shards)}")
    return tuple(_shard(item, i) for i, item in enumerate(shards))


def _validator(build: Callable[[Any], T]) -> Callable[[Any], Union[T, Invalid]]:
    def validate(document: Any) -> Union[T, Invalid]:
        try:
            return build(document)
        except _Problem as problem:
            return Invalid(Reason.SCHEMA, problem.path, problem.message)

    validate.__doc__ = f"Validate a decoded document with {build.__name__}; a model or Invalid."
    return validate


validate_agent_info = _validator(_agent_info)
validate_datastore_info = _validator(_datastore_info)
validate_shards = _validator(_shards)


def parse(body: bytes, validate: Callable[[Any], Union[T, Invalid]]) -> Union[T, Invalid]:
    """Decode `body` and validate it: the one call the poll makes per document."""
    document = decode_json(body)
    if isinstance(document, Invalid):
        return document
    return validate(document)
