"""How each agent generation takes and reports actions (DESIGN sections 1 and 7): the paths,
the exact request bytes (these are signed), what a duplicate looks like, how an agent
reports an action, and how it forgets finished ones. The dispatcher speaks through these,
so one journal and one delivery loop serve a mixed fleet.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Protocol

from ..agentapi import ACTION_INFO_PREFIX, ACTION, ACTION_PREFIX, LEGACY, REPLISDK, SCHEDULE_PREFIX
from ..durations import rfc3339
from ..polling.transport import Reply, agent_error
from .journal import Action

# Legacy agents list at most their 100 newest finished actions and prune all older ones
# (replicante-io/agents, libs/rust/sdk store: `LIMIT 100`, `prune_keep` 100 every hour).
FINISHED_LIST_LIMIT = 100
# replisdk agents delete finished actions older than `actions.clean_age` (default 14 days;
# replisdk-rust src/agent/framework/store/cleaner.rs); their lists hold at most 50, oldest first.
CLEAN_AGE = 14 * 86400.0


@dataclasses.dataclass(frozen=True)
class Report:
    """An agent's account of one action: its phase, and what to keep of its details."""

    phase: str  # NEW, RUNNING, DONE or FAILED
    history: Optional[list]  # legacy: the agent's history; replisdk: its state (error, payload)
    detail: str = ""


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class ActionProtocol(Protocol):
    """One generation's action API."""

    api: str

    def schedule(self, action: Action) -> tuple[str, bytes]:
        """The path and exact body of the schedule request."""

    def request(self, action_id: str, kind: str, args: Any, created_ts: float,
                requester: str = "CORE_API") -> tuple[str, bytes]:
        """The same for an action given by its fields."""

    def info_path(self, action_id: str) -> str:
        """Where the agent reports one action."""

    def already_exists(self, reply: Reply) -> bool:
        """A refusal that means the action was delivered before (a retry's answer)."""

    def report(self, reply: Reply) -> Optional[Report]:
        """The agent's report in a 200 answer of `info_path`; None if not understood."""

    def listed_ids(self, body: bytes) -> list[str]:
        """The action ids of one of the agent's lists (queue or finished)."""

    def pruned(self, action: Action, finished: list[str], now: float) -> Optional[str]:
        """Why an action the agent no longer knows was pruned (it finished), or None if lost."""


class _Shared:
    """What both generations do alike: a journaled action's request, a list's ids."""

    def request(self, action_id: str, kind: str, args: Any, created_ts: float,
                requester: str = "CORE_API") -> tuple[str, bytes]:
        raise NotImplementedError

    def schedule(self, action: Action) -> tuple[str, bytes]:
        return self.request(action.id, action.kind, action.args, action.created_ts, action.requester)

    @staticmethod
    def _entries(document: Any) -> Any:
        """The list of entries inside a decoded list answer."""
        raise NotImplementedError

    def listed_ids(self, body: bytes) -> list[str]:
        entries = self._entries(_json(body))
        if not isinstance(entries, list):
            return []
        return [e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]


class LegacyActions(_Shared):
    """replicante-io/agents: `/actions/schedule/{kind}`, `/actions/info/{id}`, bare lists."""

    api = LEGACY

    def request(self, action_id: str, kind: str, args: Any, created_ts: float,
                requester: str = "CORE_API") -> tuple[str, bytes]:
        document = {"action_id": action_id, "args": args, "created_ts": rfc3339(created_ts), "requester": requester}
        return SCHEDULE_PREFIX + kind, _compact(document)

    def info_path(self, action_id: str) -> str:
        return ACTION_INFO_PREFIX + action_id

    def already_exists(self, reply: Reply) -> bool:
        error = _json(reply.body)
        return reply.status == 409 and isinstance(error, dict) and error.get("variant") == "ActionAlreadyExists"

    def report(self, reply: Reply) -> Optional[Report]:
        document = _json(reply.body)
        info = document.get("action") if isinstance(document, dict) else None
        phase = info.get("state") if isinstance(info, dict) else None
        if not isinstance(phase, str):
            return None
        history = document.get("history")
        return Report(phase, history if isinstance(history, list) else None)

    @staticmethod
    def _entries(document: Any) -> Any:
        return document

    def pruned(self, action: Action, finished: list[str], now: float) -> Optional[str]:
        if len(finished) < FINISHED_LIST_LIMIT:
            return None
        # With a full finished list, an action gone from the info endpoint and from the queue
        # finished and was pruned: agents keep only their newest finished actions.
        return f"its finished list holds its limit of {FINISHED_LIST_LIMIT}"


class ReplisdkActions(_Shared):
    """replisdk agents: `POST /action`, `GET /action/{id}`, `{"actions": [...]}` lists."""

    api = REPLISDK

    def request(self, action_id: str, kind: str, args: Any, created_ts: float,
                requester: str = "CORE_API") -> tuple[str, bytes]:
        document = {"args": args, "created_time": rfc3339(created_ts), "id": action_id, "kind": kind,
                    "metadata": {"requester": requester}}
        return ACTION, _compact(document)

    def info_path(self, action_id: str) -> str:
        return ACTION_PREFIX + action_id

    def already_exists(self, reply: Reply) -> bool:
        # 409 is the agent's "ID already used" (its own JSON error): core treats it as delivered.
        return reply.status == 409 and agent_error(reply.body) is not None

    def report(self, reply: Reply) -> Optional[Report]:
        document = _json(reply.body)
        state = document.get("state") if isinstance(document, dict) else None
        phase = state.get("phase") if isinstance(state, dict) else None
        if not isinstance(phase, str):
            return None
        error = state.get("error")
        detail = ""
        if error is not None:
            said = agent_error(_compact({"error": True, **error}) if isinstance(error, dict) else b"")
            detail = said or json.dumps(error)[:200]
        return Report(phase, [{"phase": phase, "error": error, "payload": state.get("payload"),
                               "finished_time": document.get("finished_time")}], detail)

    @staticmethod
    def _entries(document: Any) -> Any:
        return document.get("actions") if isinstance(document, dict) else None

    def pruned(self, action: Action, finished: list[str], now: float) -> Optional[str]:
        delivered = action.delivered_ts or action.created_ts
        if now - delivered < CLEAN_AGE:
            return None
        return f"delivered {(now - delivered) / 86400:.0f} days ago; agents delete finished actions after 14 days"


PROTOCOLS: dict[str, ActionProtocol] = {LEGACY: LegacyActions(), REPLISDK: ReplisdkActions()}
