"""replisdk action requests as the agent's actix-web and serde read them: the JSON body
(`ActionExecutionRequest`), UUIDs (the `uuid` crate's forms) and RFC 3339 times (the `time` crate).

Extractor failures are actix-web's own plain-text answers (400 for the body, 404 for the path);
what the handler refuses (unknown kind, a created_time not in UTC) are replisdk JSON errors.
"""
from __future__ import annotations

import calendar
import dataclasses
import json
import re
import time
import uuid
from typing import Any

MAX_JSON_BODY = 2 * 1024 * 1024  # actix-web's JsonConfig default limit

_HYPHENATED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID = re.compile(rf"(?:urn:uuid:)?({_HYPHENATED})|([0-9a-fA-F]{{32}})|\{{({_HYPHENATED})\}}", re.ASCII)
_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))", re.ASCII)


class ExtractError(ValueError):
    """A request actix-web's extractors refuse before the handler runs: plain-text answer."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Timestamp:
    """An instant (nanoseconds since the epoch) and its UTC offset in seconds."""

    ns: int
    offset: int = 0

    def rfc3339(self) -> str:
        """RFC 3339 in UTC with `Z`, the fraction only when non-zero (trailing zeros dropped)."""
        seconds, nanos = divmod(self.ns, 1_000_000_000)
        text = "%04d-%02d-%02dT%02d:%02d:%02d" % time.gmtime(seconds)[:6]
        if nanos:
            text += "." + f"{nanos:09d}".rstrip("0")
        return text + "Z"


@dataclasses.dataclass(frozen=True)
class ExecutionRequest:
    """A decoded ActionExecutionRequest: only `kind` is required."""

    kind: str
    args: Any = None
    created_time: Timestamp | None = None
    id: str | None = None  # lower-case hyphenated
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def parse_uuid(text: str) -> str | None:
    """The canonical (lower-case hyphenated) form of a UUID in any form the `uuid` crate
    parses (hyphenated, simple, urn, braced; any case); None otherwise."""
    match = _UUID.fullmatch(text)
    if match is None:
        return None
    return str(uuid.UUID("".join(group for group in match.groups() if group)))


def parse_time(text: str) -> Timestamp | None:
    """An RFC 3339 timestamp as the `time` crate reads it; None when it is not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, _, sign, off_hours, off_minutes = match.groups()[6:]
    try:
        if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour < 24
                and minute < 60 and second < 60):
            raise ValueError
        offset = 0 if sign is None else (1 if sign == "+" else -1) * (int(off_hours) * 3600 + int(off_minutes) * 60)
        if sign is not None and (int(off_hours) > 23 or int(off_minutes) > 59):
            raise ValueError
    except ValueError:
        return None
    epoch = calendar.timegm((year, month, day, hour, minute, second)) - offset
    nanos = int((fraction or "0").ljust(9, "0"))
    return Timestamp(epoch * 1_000_000_000 + nanos, offset)


def parse_request(content_type: str, body: bytes) -> ExecutionRequest:
    """Decode an ActionExecutionRequest body as `web::Json` does: a JSON content type, then
    serde (unknown fields ignored, missing optional ones defaulted, nothing else coerced)."""
    mime = content_type.split(";", 1)[0].strip().lower()
    if not (mime.endswith("/json") or mime.endswith("+json")):
        raise ExtractError(400, "Content type error")
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise _deserialize(f"{exc}") from None
    if not isinstance(doc, dict):
        raise _deserialize(f"invalid type: {_json_type(doc)}, expected struct ActionExecutionRequest")
    if "kind" not in doc:
        raise _deserialize("missing field `kind`")
    kind, args, created, action_id = doc["kind"], doc.get("args"), doc.get("created_time"), doc.get("id")
    metadata = doc.get("metadata", {})
    if not isinstance(kind, str):
        raise _deserialize(f"invalid type: {_json_type(kind)}, expected a string")
    created_time = None
    if created is not None:
        created_time = parse_time(created) if isinstance(created, str) else None
        if created_time is None:
            raise _deserialize(f"invalid value for created_time: {json.dumps(created)}, "
                               "expected an RFC3339-formatted `OffsetDateTime`")
    canonical = None
    if action_id is not None:
        canonical = parse_uuid(action_id) if isinstance(action_id, str) else None
        if canonical is None:
            raise _deserialize(f"invalid value for id: {json.dumps(action_id)}, expected a UUID")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _deserialize("invalid type for metadata, expected a map of strings to strings")
    return ExecutionRequest(kind, args, created_time, canonical, dict(metadata))


def _deserialize(detail: str) -> ExtractError:
    return ExtractError(400, f"Json deserialize error: {detail}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return f"number `{value}`"
    return f"string {json.dumps(value)}"
