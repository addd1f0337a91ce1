"""Fleet state saved across restarts: an atomically replaced JSON file under `state_dir`.

Health, last success, last result and deferral of every target are written with
write-to-temporary, fsync, rename, so a crash leaves the old file or the new one, never
half of one. It is read back as strictly as an agent's answer: strict JSON (UTF-8, no
NaN, no duplicate keys, bounded nesting) and every field of every known target checked
for type and range (times finite, between 1970 and 9999, and those of the past not in
the future; known status, reason, health and API values; counts non-negative), the
agent's models by the poll's own validators. A file that cannot be used is moved aside
with one log line naming the field, and the service starts fresh. Restored deferrals end
at most `max_retry_after` from the start, as a fresh Retry-After would.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..agentapi import GENERATIONS
from ..limits import MAX_RETRY_AFTER
from ..jsoncheck import Problem, expect_list, expect_object, expect_string, fail, kind, optional
from ..reasons import Reason, Status
from .discovery import Target
from .health import Health, HealthState
from .poll import PollResult
from .state import TargetView
from .validation import (
    Invalid,
    decode_json,
    validate_agent_info,
    validate_datastore_info,
    validate_neutral_shards,
    validate_node_status,
)

log = logging.getLogger(__name__)
FORMAT = 1
FILE_NAME = "state.json"
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last second RFC 3339 (and the status page) shows
MAX_DURATION = 86400.0  # seconds: a poll lasts at most its timeout
MAX_COUNT = 2**31 - 1  # health streaks


def _result_json(result: PollResult, shards: bool = True) -> dict[str, Any]:
    return {
        "status": result.status.value,
        "reason": result.reason.value if result.reason else None,
        "message": result.message,
        "started": result.started,
        "duration": result.duration,
        "cert_not_after": result.cert_not_after,
        "retry_after": result.retry_after,
        "agent": result.agent.to_json() if result.agent else None,
        "datastore": result.datastore.to_json() if result.datastore else None,
        "shards": [s.to_json() for s in result.shards] if shards and result.shards is not None else None,
        "api": result.api,
        "node_status": result.node_status.to_json() if result.node_status else None,
    }


def encode_view(view: TargetView, shards: bool = True) -> dict[str, Any]:
    """One target's saved state as JSON (without its shards unless `shards`)."""
    return {
        "cluster": view.target.cluster_id,
        "url": view.target.url,
        "health": {"state": view.health.state.value, "streak": view.health.streak,
                   "transitions": list(view.health.transitions)},
        "last_success": view.last_success,
        "deferred_until": view.deferred_until,
        "api": view.api,
        "result": _result_json(view.result, shards) if view.result else None,
    }


def save_state(directory: str, views: Iterable[TargetView], clock: Any = time.time) -> Path:
    """Write every target's state to `directory`/state.json, atomically."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "saved_at": clock(), "targets": [encode_view(v) for v in views]}
    path = folder / FILE_NAME
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _number(value: Any, path: str, low: float, high: float, what: str = "a number") -> float:
    """A finite JSON number within [low, high] (never a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(path, f"expected {what}, got {kind(value)}")
    if not low <= value <= high:  # also false for NaN
        fail(path, f"{value!r} is out of range for {what}")
    return float(value)


def _choice(value: Any, path: str, choices: Iterable[str]) -> str:
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        fail(path, "expected one of " + ", ".join(allowed))
    return value


def _values(kind: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(member.value for member in kind)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What the times of a saved document are checked against."""

    now: float
    max_retry_after: float

    def past(self, value: Any, path: str) -> float:
        """A moment already past when the file is read (a later one: the clock went back, or
        the file was made up; a poll of this run must never be taken for a restored one)."""
        moment = _time(value, path)
        if moment > self.now:
            fail(path, f"{value!r} is in the future")
        return moment

    def deferral(self, value: Any, path: str) -> float:
        """`deferred_until`, any time, capped by `max_retry_after` from now as a fresh
        Retry-After is: however far the file defers an agent, it is polled again soon."""
        deferred = _number(value, path, 0.0, sys.float_info.max, "a time (unix seconds)")
        return min(deferred, self.now + self.max_retry_after)


def _time(value: Any, path: str) -> float:
    """Unix seconds between 1970 and 9999 (what RFC 3339 and the status page can show)."""
    return _number(value, path, 0.0, MAX_TIME, "a time (unix seconds, 1970 to 9999)")


def _model(value: Any, path: str, validate: Callable[[Any], Any]) -> Any:
    if value is None:
        return None
    model = validate(value)
    if isinstance(model, Invalid):
        fail(path + model.path[1:], model.message)  # the validator's `$.x` path, under this field
    return model


def _result(doc: Any, path: str, target: Target, reading: Reading) -> PollResult:
    doc = expect_object(doc, path)
    shards = doc.get("shards")
    return PollResult(
        target=target,
        status=Status(_choice(doc.get("status"), path + ".status", _values(Status))),
        reason=optional(doc.get("reason"), path + ".reason", lambda v, p: Reason(_choice(v, p, _values(Reason)))),
        message=expect_string(doc.get("message"), path + ".message"),
        started=reading.past(doc.get("started"), path + ".started"),
        duration=_number(doc.get("duration"), path + ".duration", 0.0, MAX_DURATION, "a poll's duration (0 to 1 day)"),
        agent=_model(doc.get("agent"), path + ".agent", validate_agent_info),
        datastore=_model(doc.get("datastore"), path + ".datastore", validate_datastore_info),
        shards=None if shards is None else _model({"shards": shards}, path, validate_neutral_shards),
        cert_not_after=optional(doc.get("cert_not_after"), path + ".cert_not_after", _time),
        retry_after=optional(doc.get("retry_after"), path + ".retry_after",
                              lambda v, p: _number(v, p, 0.0, MAX_TIME, "a Retry-After (non-negative seconds)")),
        api=optional(doc.get("api"), path + ".api", lambda v, p: _choice(v, p, GENERATIONS)),
        node_status=_model(doc.get("node_status"), path + ".node_status", validate_node_status),
    )


def _count(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected a whole number, got {kind(value)}")
    if not 0 <= value <= MAX_COUNT:
        fail(path, f"{value} is out of range (0 to {MAX_COUNT})")
    return value


def _health(doc: Any, path: str, reading: Reading) -> Health:
    doc = expect_object(doc, path)
    transitions = expect_list(doc.get("transitions", []), path + ".transitions")
    return Health(
        HealthState(_choice(doc.get("state"), path + ".state", _values(HealthState))),
        _count(doc.get("streak"), path + ".streak"),
        tuple(reading.past(t, f"{path}.transitions[{i}]") for i, t in enumerate(transitions)),
    )


def _view(doc: Mapping[str, Any], path: str, target: Target, reading: Reading) -> TargetView:
    result = doc.get("result")
    return TargetView(
        target=target,
        result=optional(result, path + ".result", lambda v, p: _result(v, p, target, reading)),
        health=_health(doc.get("health"), path + ".health", reading),
        last_success=optional(doc.get("last_success"), path + ".last_success", reading.past),
        deferred_until=optional(doc.get("deferred_until"), path + ".deferred_until", reading.deferral),
        api=optional(doc.get("api"), path + ".api", lambda v, p: _choice(v, p, GENERATIONS)),
    )


def _views(document: Any, targets: Iterable[Target], reading: Reading) -> list[TargetView]:
    """The saved views of the targets still known; the others are dropped unread."""
    document = expect_object(document, "$")
    if type(document.get("format")) is not int or document["format"] != FORMAT:
        fail("$.format", f"unknown format {document.get('format')!r} (this version writes {FORMAT})")
    optional(document.get("saved_at"), "$.saved_at", reading.past)
    return decode_views(document.get("targets"), "$.targets", targets, reading)


def decode_views(items: Any, where: str, targets: Iterable[Target], reading: Reading) -> list[TargetView]:
    """The views listed at `where` (a list of `encode_view` objects) of the targets still
    known; the others are dropped unread. Raises Problem naming the first bad field."""
    by_key = {t.key: t for t in targets}
    views = []
    for i, item in enumerate(expect_list(items, where)):
        path = f"{where}[{i}]"
        doc = expect_object(item, path)
        target = by_key.get((expect_string(doc.get("cluster"), path + ".cluster"), expect_string(doc.get("url"), path + ".url")))
        if target is not None:
            views.append(_view(doc, path, target, reading))
    return views


def load_state(directory: str, targets: Iterable[Target], max_retry_after: float = MAX_RETRY_AFTER,
               clock: Callable[[], float] = time.time) -> list[TargetView]:
    """Saved views of the targets still known; [] when there is no usable file (set aside
    with one log line). Deferrals end at most `max_retry_after` from now."""
    path = Path(directory) / FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        _set_aside(path, f"cannot be read: {exc.strerror or exc}")
        return []
    document = decode_json(raw)
    if isinstance(document, Invalid):
        _set_aside(path, "not strict JSON: " + document.message.replace("body", "the file", 1))
        return []
    try:
        return _views(document, targets, Reading(clock(), max_retry_after))
    except Problem as problem:
        _set_aside(path, str(problem))
        return []


def _set_aside(path: Path, problem: str) -> None:
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = path
    log.error("state file %s cannot be used (%s); kept as %s, starting with fresh state", path, problem, aside)
