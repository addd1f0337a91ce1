"""Fleet state saved across restarts: an atomically replaced JSON file under `state_dir`.

Health, last success, last result and deferral of every target are written with
write-to-temporary, fsync, rename, so a crash leaves the old file or the new one, never
half of one. A file that cannot be read is moved aside and the service starts fresh.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..agentapi import GENERATIONS
from ..reasons import Reason, Status
from .discovery import Target
from .health import Health, HealthState
from .poll import PollResult
from .state import TargetView
from .validation import (
    Invalid,
    validate_agent_info,
    validate_datastore_info,
    validate_neutral_shards,
    validate_node_status,
)

log = logging.getLogger(__name__)
FORMAT = 1
FILE_NAME = "state.json"


def _result_json(result: PollResult) -> dict[str, Any]:
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
        "shards": [s.to_json() for s in result.shards] if result.shards is not None else None,
        "api": result.api,
        "node_status": result.node_status.to_json() if result.node_status else None,
    }


def _view_json(view: TargetView) -> dict[str, Any]:
    return {
        "cluster": view.target.cluster_id,
        "url": view.target.url,
        "health": {"state": view.health.state.value, "streak": view.health.streak,
                   "transitions": list(view.health.transitions)},
        "last_success": view.last_success,
        "deferred_until": view.deferred_until,
        "api": view.api,
        "result": _result_json(view.result) if view.result else None,
    }


def save_state(directory: str, views: Iterable[TargetView], clock: Any = time.time) -> Path:
    """Write every target's state to `directory`/state.json, atomically."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "saved_at": clock(), "targets": [_view_json(v) for v in views]}
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


def _model(value: Any, validate: Any) -> Any:
    if value is None:
        return None
    model = validate(value)
    if isinstance(model, Invalid):
        raise ValueError(f"saved document invalid: {model}")
    return model


def _result(doc: Mapping[str, Any], target: Target) -> PollResult:
    shards = doc.get("shards")
    return PollResult(
        target=target,
        status=Status(doc["status"]),
        reason=Reason(doc["reason"]) if doc.get("reason") else None,
        message=str(doc["message"]),
        started=float(doc["started"]),
        duration=float(doc["duration"]),
        agent=_model(doc.get("agent"), validate_agent_info),
        datastore=_model(doc.get("datastore"), validate_datastore_info),
        shards=None if shards is None else _model({"shards": shards}, validate_neutral_shards),
        cert_not_after=doc.get("cert_not_after"),
        retry_after=doc.get("retry_after"),
        api=_api(doc.get("api")),
        node_status=_model(doc.get("node_status"), validate_node_status),
    )


def _api(value: Any) -> Optional[str]:
    if value is not None and value not in GENERATIONS:
        raise ValueError(f"unknown agent API {value!r}")
    return value


def _view(doc: Mapping[str, Any], target: Target) -> TargetView:
    health = doc["health"]
    return TargetView(
        target=target,
        result=_result(doc["result"], target) if doc.get("result") else None,
        health=Health(HealthState(health["state"]), int(health["streak"]),
                      tuple(float(t) for t in health.get("transitions", ()))),
        last_success=doc.get("last_success"),
        deferred_until=doc.get("deferred_until"),
        api=_api(doc.get("api")),
    )


def load_state(directory: str, targets: Iterable[Target]) -> list[TargetView]:
    """Saved views of the targets still known; [] when there is no usable file."""
    path = Path(directory) / FILE_NAME
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        _set_aside(path, exc)
        return []
    by_key = {t.key: t for t in targets}
    views = []
    try:
        if document.get("format") != FORMAT:
            raise ValueError(f"unknown format {document.get('format')!r}")
        for doc in document["targets"]:
            target: Optional[Target] = by_key.get((doc["cluster"], doc["url"]))
            if target is not None:
                views.append(_view(doc, target))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        _set_aside(path, exc)
        return []
    return views


def _set_aside(path: Path, problem: Exception) -> None:
    aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = path
    log.error("state file %s cannot be used (%s); kept as %s, starting with fresh state", path, problem, aside)
