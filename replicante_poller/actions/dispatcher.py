"""The action dispatcher: a thread, separate from the poll workers, that delivers journaled
actions to agents, signed right before each attempt, and follows them to a final state.

Delivery: sign (new nonce and times, same action_id), POST the schedule request, and read
the answer: 200 or 409 ActionAlreadyExists is delivered; 429, 5xx and transport failures
are retried with backoff up to `max_attempts`; other 4xx are final rejections.
Tracking: `/actions/info/{id}` until DONE or FAILED; an agent that forgets an action it
accepted (404 there and absent from its queue and finished lists) makes it LOST.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

from ..agentapi import ACTION_INFO_PREFIX, ACTIONS_FINISHED, ACTIONS_QUEUE, SCHEDULE_PREFIX
from ..config import ActionsSettings
from ..durations import rfc3339
from ..limits import MAX_BACKOFF, backoff
from ..polling.discovery import Target
from ..polling.transport import AgentClient, Failure, Reply, Transport
from ..reasons import Reason, transient_status
from ..web.metrics import PollerMetrics
from .httpsig import sign_action
from .journal import Action, ActionState, Journal
from .signing import Signer

log = logging.getLogger(__name__)
IDLE_WAIT = 1.0  # actions submitted by another process (the CLI) are noticed within this
AGENT_STATES = {"NEW": ActionState.SCHEDULED, "RUNNING": ActionState.RUNNING,
                "DONE": ActionState.DONE, "FAILED": ActionState.FAILED}


def schedule_body(action: Action) -> bytes:
    """The exact bytes of the schedule request (DESIGN section 1); these bytes are signed."""
    document = {"action_id": action.id, "args": action.args,
                "created_ts": rfc3339(action.created_ts), "requester": action.requester}
    return json.dumps(document, separators=(",", ":")).encode()


def _json(reply: Reply) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def retryable_status(status: int) -> bool:
    """Worth another signed attempt: overload, server errors, and 401 (a gateway's answer to an
    identity or clock that may be right on the next attempt); other 4xx are final."""
    return status == 401 or transient_status(status)


def _ambiguous(reply: Union[Reply, Failure]) -> bool:
    """A failure after which the request may have reached the agent anyway."""
    if isinstance(reply, Failure):
        return reply.reason in (Reason.TIMEOUT, Reason.CONNECT)
    return reply.status in (502, 503, 504)


def _header_safe(value: str) -> bool:
    """Printable ASCII without surrounding spaces: what a signed header can carry."""
    return bool(value) and value == value.strip() and all(" " <= ch <= "~" for ch in value)


# Legacy agents list at most their 100 newest finished actions and prune all older ones
# (replicante-io/agents, libs/rust/sdk store: `LIMIT 100`, `prune_keep` 100 every hour).
FINISHED_LIST_LIMIT = 100


def _entries(body: Any) -> list[dict]:
    """The objects of an agent's action list (anything unreadable counts as none)."""
    try:
        document = json.loads(body)
    except (TypeError, ValueError):
        return []
    return [e for e in document if isinstance(e, dict)] if isinstance(document, list) else []


class Dispatcher:
    """Delivers and tracks actions; `wake()` after a submission, `stop()` at shutdown."""

    def __init__(self, journal: Journal, settings: ActionsSettings, signer: Signer,
                 find_target: Callable[[str], Optional[Target]],
                 identity: Callable[[Target], Optional[tuple[str, str]]],
                 transport: Transport, metrics: PollerMetrics,
                 clock: Callable[[], float] = time.time, randbytes: Callable[[int], bytes] = os.urandom):
        self._journal = journal
        self._config = (settings, signer)  # replaced whole by reconfigure(): never read half-old
        self._errors: dict[str, int] = {}  # unexpected errors per action (dispatcher thread only)
        self._find_target, self._identity = find_target, identity
        self._transport, self._metrics = transport, metrics
        self._clock, self._randbytes = clock, randbytes
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="action-dispatcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def reconfigure(self, settings: ActionsSettings, signer: Signer) -> None:
        """New settings and key (a reload): the next attempt uses them."""
        self._config = (settings, signer)

    @property
    def signer(self) -> Signer:
        return self._config[1]

    @property
    def _settings(self) -> ActionsSettings:
        return self._config[0]

    def wake(self) -> None:
        """Look at the journal now (a new action was submitted)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        client = self._transport.client()
        try:
            while not self._stopping.is_set():
                try:
                    for action in self._journal.due(self._clock()):
                        if self._stopping.is_set():
                            break
                        self._isolated_step(client, action)
                    next_due = self._journal.next_due()
                    wait = IDLE_WAIT if next_due is None else min(IDLE_WAIT, max(0.0, next_due - self._clock()))
                except Exception:  # the top of the dispatcher loop: log, count, keep going
                    log.exception("action dispatcher error")
                    self._metrics.thread_error("dispatcher")
                    wait = IDLE_WAIT
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            client.close()

    def _isolated_step(self, client: AgentClient, action: Action) -> None:
        """One action's step; a bug it triggers delays that action only, never the others."""
        try:
            self.step(client, action)
        except Exception as exc:
            log.exception("action %s: unexpected error, retrying it later", action.id)
            self._metrics.thread_error("dispatcher")
            errors = self._errors[action.id] = self._errors.get(action.id, 0) + 1
            current = self._journal.get(action.id) or action
            if current.state is ActionState.PENDING and current.attempts + errors > self._settings.max_attempts:
                self._journal.update(action.id, ActionState.ABANDONED, self._clock(),
                                     f"not delivered: {errors} internal errors ({exc!r})")
                self._metrics.action_result("abandoned")
                self._errors.pop(action.id, None)
                return
            delay = backoff(self._settings.backoff, current.attempts + errors + 1)
            self._journal.update(action.id, current.state, self._clock() + delay, f"internal error, will retry: {exc!r}")

    def step(self, client: AgentClient, action: Action) -> None:
        """Deliver a PENDING action, or follow a delivered one."""
        now = self._clock()
        target = self._find_target(action.agent)
        if target is None:
            self._journal.update(action.id, action.state, now + IDLE_WAIT * 5,
                                 "the agent is not in the configuration or discovery (waiting)")
        elif action.state is ActionState.PENDING:
            self._deliver(client, action, target)
        else:
            self._track(client, action, target)

    # -- delivery --------------------------------------------------------------

    def _deliver(self, client: AgentClient, action: Action, target: Target) -> None:
        identity = self._identity(target)
        if identity is None:
            self._journal.update(action.id, ActionState.PENDING, self._clock() + IDLE_WAIT,
                                 "waiting for a successful poll to learn the agent's cluster and node ids")
            return
        cluster_id, node_id = identity
        if not all(_header_safe(v) for v in identity):
            self._journal.update(action.id, ActionState.PENDING, self._clock() + self._settings.track_interval * 5,
                                 f"the agent reports ids that cannot be signed: {identity!r} (waiting)")
            return
        n = self._journal.begin_attempt(action, cluster_id, node_id)
        body = schedule_body(action)
        path = SCHEDULE_PREFIX + action.kind
        settings, signer = self._config
        headers = sign_action(
            method="POST", path=urlsplit(target.url).path + path, body=body, cluster_id=cluster_id,
            node_id=node_id, key_id=signer.key_id, sign=signer.sign, now=int(self._clock()),
            ttl=int(settings.ttl), nonce=self._randbytes(16),
        )
        with client.connect(target) as conn:
            reply = conn.request("POST", path, body, headers)
        if n >= settings.max_attempts and _ambiguous(reply) and self._agent_knows(client, target, action):
            reply = Reply(200, "OK", "application/json", b"{}")  # it arrived: the answer was what got lost
        self._delivered(action, n, reply)

    def _agent_knows(self, client: AgentClient, target: Target, action: Action) -> bool:
        """Whether the agent has the action (before a last, ambiguous failure becomes ABANDONED)."""
        with client.connect(target) as conn:
            reply = conn.request("GET", ACTION_INFO_PREFIX + action.id)
        return isinstance(reply, Reply) and reply.status == 200

    def _delivered(self, action: Action, n: int, reply: Union[Reply, Failure]) -> None:
        now = self._clock()
        if isinstance(reply, Reply) and (reply.status == 200 or self._already_exists(reply)):
            outcome = "accepted" if reply.status == 200 else "already exists"
            self._journal.end_attempt(action.id, n, outcome, f"HTTP {reply.status}", ActionState.SCHEDULED,
                                      now + self._settings.track_interval, f"delivered ({outcome})")
            self._metrics.action_result("delivered")
            self._metrics.action_delivered(now - action.created_ts)
            log.info("action %s (%s) delivered to %s", action.id, action.kind, action.agent)
            return
        if isinstance(reply, Reply) and not retryable_status(reply.status):
            error = _json(reply)
            detail = error.get("error") if isinstance(error, dict) else reply.body[:200].decode("utf-8", "replace")
            if reply.status == 404 and not reply.body.strip():  # DESIGN section 1: how agents say "no actions"
                detail = "the agent has actions disabled (404 with no body on the schedule path)"
            self._journal.end_attempt(action.id, n, "rejected", f"HTTP {reply.status}: {detail}", ActionState.REJECTED,
                                      now, f"the agent refused it: HTTP {reply.status} {detail}")
            self._metrics.action_result("rejected")
            log.warning("action %s refused by %s: HTTP %d %s", action.id, action.agent, reply.status, detail)
            return
        detail = reply.message if isinstance(reply, Failure) else f"HTTP {reply.status}"
        if n >= self._settings.max_attempts:
            self._journal.end_attempt(action.id, n, "failed", detail, ActionState.ABANDONED, now,
                                      f"not delivered after {n} attempts: {detail}")
            self._metrics.action_result("abandoned")
            log.error("action %s abandoned after %d attempts: %s", action.id, n, detail)
            return
        delay = backoff(self._settings.backoff, n)
        if reply.retry_after is not None:
            delay = min(max(delay, reply.retry_after), MAX_BACKOFF)
        self._journal.end_attempt(action.id, n, "failed", detail, ActionState.PENDING, now + delay,
                                  f"attempt {n} failed ({detail}); retrying in {delay:g}s")
        self._metrics.action_result("retry")

    @staticmethod
    def _already_exists(reply: Reply) -> bool:
        error = _json(reply)
        return reply.status == 409 and isinstance(error, dict) and error.get("variant") == "ActionAlreadyExists"

    # -- tracking --------------------------------------------------------------

    def _track(self, client: AgentClient, action: Action, target: Target) -> None:
        with client.connect(target) as conn:
            reply = conn.request("GET", ACTION_INFO_PREFIX + action.id)
            lists = None
            if isinstance(reply, Reply) and reply.status == 404:
                lists = [conn.get(ACTIONS_QUEUE), conn.get(ACTIONS_FINISHED)]
        now = self._clock()
        later = now + self._settings.track_interval
        if isinstance(reply, Failure) or reply.status not in (200, 404):
            detail = reply.message if isinstance(reply, Failure) else f"HTTP {reply.status}"
            self._journal.update(action.id, action.state, later, f"tracking failed, will retry: {detail}")
            return
        if reply.status == 200:
            self._follow(action, _json(reply), later)
            return
        if any(isinstance(item, Failure) for item in lists or ()):
            self._journal.update(action.id, action.state, later, "unknown to the agent's info; lists unreadable, will retry")
            return
        queued, finished = (_entries(item) for item in lists or ((), ()))
        listed = {entry.get("id") for entry in queued + finished if isinstance(entry.get("id"), str)}
        if action.id in listed:
            self._journal.update(action.id, action.state, later, "listed by the agent")
            return
        if len(finished) >= FINISHED_LIST_LIMIT:
            # Agents keep (and list) only the newest finished actions: with a full list, an
            # action gone from the info endpoint and from the queue finished and was pruned.
            self._journal.update(action.id, ActionState.PRUNED, now,
                                 "finished on the agent, which pruned it before its outcome was seen "
                                 f"(its finished list holds its limit of {FINISHED_LIST_LIMIT})")
            self._metrics.action_result("pruned")
            log.warning("action %s finished on %s but was pruned before its outcome was seen", action.id, action.agent)
            return
        self._journal.update(action.id, ActionState.LOST, now, "the agent no longer knows this action")
        self._metrics.action_result("lost")
        log.error("action %s was lost by %s", action.id, action.agent)

    def _follow(self, action: Action, document: Any, later: float) -> None:
        info = document.get("action") if isinstance(document, dict) else None
        agent_state = info.get("state") if isinstance(info, dict) else None
        state = AGENT_STATES.get(agent_state) if isinstance(agent_state, str) else None
        if state is None:
            self._journal.update(action.id, action.state, later, "the agent's action info is not understood, will retry")
            return
        history = document.get("history") if isinstance(document.get("history"), list) else None
        self._journal.update(action.id, state, later, f"agent reports {agent_state}", history)
        if state.final:
            self._metrics.action_result(state.value.lower())
            log.info("action %s finished on %s: %s", action.id, action.agent, state.value)
