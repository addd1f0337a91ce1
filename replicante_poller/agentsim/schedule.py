"""Schedule request bodies: strict validation of the JSON an agent accepts, and its timestamps."""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
import uuid
from typing import Any

from ..durations import rfc3339_seconds

_REQUESTERS = frozenset({"AGENT_API", "CORE_API"})
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
                      re.ASCII)
_SCHEDULE_FIELDS = ("action_id", "args", "created_ts", "requester")


class InvalidArgs(ValueError):
    """A schedule request body the agent refuses (400, kind InvalidArgs)."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A validated schedule request body."""

    action_id: str  # lower-case hyphenated UUID
    args: Any
    created_ts: str  # normalised to whole seconds, UTC
    requester: str


def parse_schedule(content_type: str, body: bytes) -> Schedule:
    """Validate a schedule request body strictly: a JSON object with the four fields."""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise InvalidArgs("Content-Type must be application/json")
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidArgs(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgs("request body must be a JSON object")
    missing = [name for name in _SCHEDULE_FIELDS if name not in doc]
    if missing:
        raise InvalidArgs("missing field(s): " + ", ".join(missing))
    action_id, requester = doc["action_id"], doc["requester"]
    if not isinstance(action_id, str) or not _UUID.fullmatch(action_id):
        raise InvalidArgs("action_id must be a UUID")
    if not isinstance(requester, str) or requester not in _REQUESTERS:
        raise InvalidArgs("requester must be one of " + ", ".join(sorted(_REQUESTERS)))
    return Schedule(str(uuid.UUID(action_id)), doc["args"], _parse_timestamp(doc["created_ts"]), requester)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in object")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_timestamp(value: object) -> str:
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is None:
            raise ValueError
        date, clock, zone = match.groups()
        parsed = datetime.datetime.fromisoformat(f"{date}T{clock}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        raise InvalidArgs("created_ts must be an RFC 3339 timestamp") from None
    return rfc3339_seconds(parsed.timestamp())
