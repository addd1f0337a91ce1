"""Submitting and reading actions: the `/api/v1/actions` endpoints and the CLI share this.

Submissions are validated here and written to the journal; the dispatcher does the rest.
Every request, GET (actions and their args) as POST, needs `Authorization: Bearer <token>`
with the token of `[actions] api_token_file`, compared in constant time. A submission is
acknowledged (202) only once the journal committed it; a journal that fails is a 503.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, Callable, Optional

from ..converters import read_secret
from ..errors import ActionNotFound, CancelRefused, StoreError, SubmissionError
from ..jsoncheck import duplicate_key
from ..limits import MAX_ARGS_DEPTH, MAX_BODY, MAX_SCHEDULE_BODY
from ..polling.discovery import Target
from .journal import Action, ActionStore

KIND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
# An external action's key is any key of the agent's `external_actions` map: any character
# a URL path takes as it is (RFC 3986 pchar), as the kind travels unencoded in the path.
EXTERNAL_KIND = re.compile(r"external\.agent\.replicante\.io/[A-Za-z0-9._~!$&'()*+,;=:@-]+")
# The schedule body around the args (DESIGN section 1), to size what the args may take.
_ENVELOPE = len(json.dumps({"action_id": "0" * 36, "args": None, "created_ts": "2026-01-01T00:00:00.000Z",
                            "requester": "CORE_API"}, separators=(",", ":"))) - len("null")
MAX_ARGS_BYTES = MAX_SCHEDULE_BODY - _ENVELOPE
MAX_SUBMISSION = MAX_BODY
Reply = tuple[int, dict[str, Any]]
SUBMISSION_KEYS = frozenset({"agent", "kind", "args"})
log = logging.getLogger(__name__)


def check_kind(kind: Any) -> str:
    """An action kind such as `agent.replicante.io/test.ping`: no spaces, `..`, or leading `/`."""
    if isinstance(kind, str) and EXTERNAL_KIND.fullmatch(kind):
        return kind
    if kind is None or kind == "":
        raise SubmissionError("kind is required (e.g. agent.replicante.io/test.ping)")
    if not isinstance(kind, str) or not KIND.fullmatch(kind) or ".." in kind:
        raise SubmissionError(f"{kind!r} is not a valid action kind (e.g. agent.replicante.io/test.ping, "
                              "or external.agent.replicante.io/KEY)")
    return kind


def check_args(args: Any) -> Any:
    """Action args that every agent accepts: plain JSON (no NaN or Infinity), nested at most
    MAX_ARGS_DEPTH deep, and small enough for the schedule body to fit MAX_SCHEDULE_BODY."""
    try:
        encoded = json.dumps(args, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise SubmissionError("args contain NaN or Infinity, which JSON does not have") from None
    except (TypeError, RecursionError) as exc:
        raise SubmissionError(f"args are not JSON: {exc}") from None
    if len(encoded) > MAX_ARGS_BYTES:
        raise SubmissionError(f"args are {len(encoded):,} bytes of JSON; at most {MAX_ARGS_BYTES:,} fit in an action "
                              f"({MAX_SCHEDULE_BODY // 1024} KiB schedule request: released agents refuse larger ones)")
    if _depth(args) > MAX_ARGS_DEPTH:
        raise SubmissionError(f"args are nested deeper than {MAX_ARGS_DEPTH} levels")
    return args


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    key = duplicate_key(pairs)
    if key is not None:
        raise SubmissionError(f"duplicate key {key!r} (JSON would keep only its last value)")
    return dict(pairs)


def decode_submission(text: str | bytes) -> Any:
    """JSON of a submission (the API body, `--args`): a key given twice is refused, where
    json.loads would keep the last value and drop the other without a word. ValueError
    (SubmissionError for a duplicate key) or RecursionError otherwise, as json.loads."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _depth(value: Any) -> int:
    """How deep JSON arrays and objects nest in `value` (0 for a scalar), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in children)
    return deepest


def submit(journal: ActionStore, find_target: Callable[[str], Optional[Target]], agent: Any, kind: Any, args: Any) -> Action:
    """Validate and durably queue one action."""
    if not isinstance(agent, str) or find_target(agent.rstrip("/")) is None:
        raise SubmissionError(f"{agent!r} is not an agent of the configuration or discovery")
    return journal.submit(agent.rstrip("/"), check_kind(kind), check_args(args))


def read_token(path: str) -> bytes:
    """The API bearer token; the file must not be readable by group or others."""
    return read_secret(path, "actions", "api_token_file")


def action_json(journal: ActionStore, action: Action) -> dict[str, Any]:
    """One action with its attempts, as the API and `action show` give it."""
    document = action.to_json()
    document["attempts_log"] = [vars(a) for a in journal.attempts(action.id)]
    return document


class ActionsApi:
    """HTTP handling of `/api/v1/actions` (list, show, submit, cancel), all behind the bearer token."""

    def __init__(self, journal: ActionStore, find_target: Callable[[str], Optional[Target]],
                 token: Optional[bytes], on_submit: Callable[[], None]):
        self._journal, self._find_target, self.token, self._on_submit = journal, find_target, token, on_submit

    def agent_actions(self, agent: str, limit: int = 20, scan: int = 500) -> list[dict[str, Any]]:
        """The newest actions of one agent (among the journal's newest `scan`) for its status
        page, which has no token: id, kind, state, attempts and times, never the args.
        StoreError when the journal cannot be read."""
        agent = agent.rstrip("/")
        found = [a for a in self._journal.list(scan) if a.agent == agent][:limit]
        return [{"id": a.id, "kind": a.kind, "state": a.state.value, "attempts": a.attempts,
                 "created_ts": a.created_ts, "updated_ts": a.updated_ts} for a in found]

    def refusal(self, authorization: Optional[str]) -> Optional[Reply]:
        """The answer to a request without the right bearer token, or None when it has it."""
        token = self.token  # one read: a reload may replace it
        if token is None:
            return 403, {"error": "the action API is disabled (no [actions] api_token_file)"}
        scheme, _, credentials = (authorization or "").partition(" ")
        presented = credentials.encode("utf-8", "replace")
        matches = hmac.compare_digest(presented, token)  # compared whatever the scheme: constant time
        if scheme.lower() != "bearer" or not matches:  # the scheme is case-insensitive (RFC 9110 11.1)
            return 401, {"error": "unauthorized"}
        return None

    def get(self, path: str, authorization: Optional[str] = None) -> Reply:
        refused = self.refusal(authorization)
        if refused is not None:
            return refused
        try:
            return self._read(path)
        except StoreError as exc:
            log.error("actions API: %s", exc)
            return 503, {"error": f"the action journal cannot be read: {exc}"}

    def _read(self, path: str) -> Reply:
        if path == "/api/v1/actions":
            return 200, {"actions": [a.to_json() for a in self._journal.list()]}
        action = self._journal.get(path.rsplit("/", 1)[1])
        if action is None:
            return 404, {"error": "no such action"}
        return 200, action_json(self._journal, action)

    def post(self, authorization: Optional[str], body: bytes) -> Reply:
        refused = self.refusal(authorization)
        if refused is not None:
            return refused
        try:
            document = decode_submission(body)
            if not isinstance(document, dict):
                raise SubmissionError("expected a JSON object {\"agent\": URL, \"kind\": KIND, \"args\": ...}")
            unknown = sorted(set(document) - SUBMISSION_KEYS)
            if unknown:  # a typo ("arg") must not queue an action with null args
                raise SubmissionError(f"unknown key {unknown[0]!r} (a submission has agent, kind and args)")
            action = submit(self._journal, self._find_target, document.get("agent"), document.get("kind"),
                            document.get("args"))
        except RecursionError:
            return 400, {"error": "the body is nested too deeply to be an action"}
        except (ValueError, SubmissionError) as exc:
            return 400, {"error": str(exc)}
        except StoreError as exc:  # not committed: never acknowledged
            log.error("actions API: action not stored: %s", exc)
            return 503, {"error": f"the action was not stored: {exc}"}
        self._on_submit()
        return 202, {"id": action.id, "state": action.state.value}

    def cancel(self, action_id: str, authorization: Optional[str]) -> Reply:
        """`POST /api/v1/actions/ID/cancel` (ID or a unique prefix of it, as `action cancel`):
        200 and the action, 404 no such action, 409 not cancellable, 503 journal failing."""
        refused = self.refusal(authorization)
        if refused is not None:
            return refused
        try:
            action = self._journal.cancel(self._journal.resolve(action_id))
        except ActionNotFound as exc:
            return 404, {"error": str(exc)}
        except CancelRefused as exc:
            return 409, {"error": str(exc)}
        except StoreError as exc:
            log.error("actions API: %s", exc)
            return 503, {"error": f"the action journal cannot be written: {exc}"}
        log.info("action %s cancelled through the API: %s", action.id, action.message)
        return 200, action_json(self._journal, action)
