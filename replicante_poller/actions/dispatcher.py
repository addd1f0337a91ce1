"""The action dispatcher: threads, separate from the poll workers, that deliver journaled
actions to agents, signed right before each attempt, and follow them to a final state.

Fairness: a scheduler thread groups the due actions by agent and hands each agent (a round:
its due actions, oldest first) to a small pool of workers (`dispatch_workers`, each with its
own AgentClient); an agent is in one round at a time, so its requests never overlap. A round
ends after the agent failed to answer (a stalled agent costs one worker one timeout per
round, then its other actions wait for their next turn) or after ROUND_SECONDS (agents take
turns). Ready agents are served first come, first served. Actions of different agents never
wait on each other beyond that.
Per-agent order: an agent's actions are delivered in submission order. While its oldest
undelivered action (its head) is not delivered (retrying, waiting for an identity), the
others wait behind it: they are deferred to just after the head's next attempt, in the
journal ("queued behind action ..."), so they neither fill the due list nor go first.

Delivery: sign (new nonce and times, same action_id), POST the schedule request in the
agent's generation (`protocols`), and read the answer: 200 or the generation's "already
exists" 409 is delivered; 401, 408, 425, 429, 5xx and transport failures are retried with
backoff up to `max_attempts` (`retryable_status`); other 4xx are final rejections.
Tracking: the agent's report of the action until DONE or FAILED; an action the agent no
longer reports (404 there and absent from its queue and finished lists) is PRUNED when the
agent's pruning explains it, else LOST.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from typing import Callable, Iterable, NamedTuple, Optional, Union
from urllib.parse import urlsplit

from ..agentapi import ACTIONS_FINISHED, ACTIONS_QUEUE
from ..config import ActionsSettings
from ..errors import StoreError
from ..limits import MAX_BACKOFF, backoff
from ..polling.discovery import Target
from ..polling.transport import AgentClient, Failure, Reply, Transport, agent_error
from ..reasons import Reason, transient_status
from ..web.metrics import PollerMetrics
from .httpsig import sign_action
from .journal import Action, ActionState, ActionStore
from .protocols import PROTOCOLS, ActionProtocol
from .signing import Signer

log = logging.getLogger(__name__)
IDLE_WAIT = 1.0  # actions submitted by another process (the CLI) are noticed within this
DUE_LIMIT = 1000  # due actions read per scheduling pass
ROUND_SECONDS = 1.0  # an agent that keeps answering slowly yields its worker after this long
BEHIND = 0.001  # seconds after its head's next step that an action waiting behind it is due
AGENT_STATES = {"NEW": ActionState.SCHEDULED, "RUNNING": ActionState.RUNNING,
                "DONE": ActionState.DONE, "FAILED": ActionState.FAILED}


class AgentIdentity(NamedTuple):
    """Who an agent is, as a poll observed it: the ids to sign for and its API generation."""

    cluster_id: str
    node_id: str
    api: str


def retryable_status(status: int) -> bool:
    """Worth another signed attempt: overload, server errors, and 401 (a gateway's answer to an
    identity or clock that may be right on the next attempt); other 4xx are final."""
    return status == 401 or transient_status(status)


def _ambiguous(reply: Union[Reply, Failure]) -> bool:
    """A failure after which the request may have reached the agent anyway."""
    if isinstance(reply, Failure):
        return reply.reason in (Reason.TIMEOUT, Reason.CONNECT)
    return reply.status in (502, 503, 504)


def _order(action: Action) -> tuple[float, str]:
    """Submission order."""
    return (action.created_ts, action.id)


def _header_safe(value: str) -> bool:
    """Printable ASCII without surrounding spaces: what a signed header can carry."""
    return bool(value) and value == value.strip() and all(" " <= ch <= "~" for ch in value)


class Dispatcher:
    """Delivers and tracks actions; `wake()` after a submission, `stop()` at shutdown."""

    def __init__(self, journal: ActionStore, settings: ActionsSettings, signer: Signer,
                 find_target: Callable[[str], Optional[Target]],
                 identity: Callable[[Target], Optional[AgentIdentity]],
                 transport: Transport, metrics: PollerMetrics,
                 clock: Callable[[], float] = time.time, randbytes: Callable[[int], bytes] = os.urandom,
                 generation: Optional[Callable[[Target], Optional[str]]] = None):
        """`identity` is what to sign for and the agent's generation, from a poll of this run;
        `generation` the generation alone, as last known (tracking needs no fresh identity)."""
        self._journal = journal
        self._config = (settings, signer)  # replaced whole by reconfigure(): never read half-old
        self._errors: dict[str, int] = {}  # unexpected errors per action (written by its agent's worker only)
        self._find_target, self._identity = find_target, identity
        self._generation = generation or (lambda target: (identity(target) or (None, None, None))[2])
        self._transport, self._metrics = transport, metrics
        self._clock, self._randbytes = clock, randbytes
        self._wake = threading.Event()  # the scheduler looks at the journal again
        self._stopping = threading.Event()
        # Under _lock: agents handed out (queued in _ready or in a worker's round), agents whose
        # round ended since the scheduler's last read of the journal (that read may predate the
        # round's writes), and each agent's head (its oldest undelivered action, as last read).
        self._lock = threading.Condition()
        self._ready: collections.deque[tuple[str, list[Action]]] = collections.deque()
        self._busy: set[str] = set()
        self._ended: set[str] = set()
        self._heads: dict[str, Action] = {}
        self._workers = settings.dispatch_workers
        self._threads = [threading.Thread(target=self._run, name="action-dispatcher", daemon=True)] + [
            threading.Thread(target=self._work, name=f"action-dispatcher-{n + 1}", daemon=True)
            for n in range(self._workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def reconfigure(self, settings: ActionsSettings, signer: Signer) -> None:
        """New settings and key (a reload): the next attempt uses them."""
        if settings.dispatch_workers != self._workers:
            log.warning("[actions] dispatch_workers changed: takes effect at the next restart")
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
        """Stop handing out work; returns once every worker ended its current step (an
        attempt in flight ends within its agent's timeout, and its outcome is journaled)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            self._ready.clear()
            self._lock.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    # -- scheduling ------------------------------------------------------------

    def _run(self) -> None:
        """The scheduler: hands each agent with due actions to the workers, one round at a time."""
        seeded = False
        while not self._stopping.is_set():
            try:
                if not seeded:
                    self._seed_heads()
                    seeded = True
                wait = self._hand_out()
            except StoreError as exc:  # locked or failing journal: one line, and again later
                log.error("action dispatcher: %s; trying again in %gs", exc, IDLE_WAIT)
                wait = IDLE_WAIT
            except Exception:  # the top of the scheduler loop: log, count, keep going
                log.exception("action dispatcher error")
                self._metrics.thread_error("dispatcher")
                wait = IDLE_WAIT
            self._wake.wait(wait)
            self._wake.clear()

    def _seed_heads(self) -> None:
        """Each agent's oldest undelivered action, from the journal as a previous run left it
        (an action submitted while the service was down must not overtake a retried one)."""
        heads: dict[str, Action] = {}
        for action in self._journal.due(float("inf"), DUE_LIMIT):
            head = heads.get(action.agent)
            if action.state is ActionState.PENDING and (head is None or _order(action) < _order(head)):
                heads[action.agent] = action
        with self._lock:
            for agent, head in heads.items():
                self._heads.setdefault(agent, head)

    def _hand_out(self) -> float:
        """Queue a round for every idle agent with due actions; the seconds until the next
        action is due (at most IDLE_WAIT: other processes submit too). Rounds wake the
        scheduler when they end, so actions due while their agent is in one are not waited for."""
        with self._lock:
            self._ended.clear()
        now = self._clock()
        rounds: dict[str, list[Action]] = {}
        due = self._journal.due(now, DUE_LIMIT)
        with self._lock:
            for action in due:
                if action.agent not in self._busy and action.agent not in self._ended:  # else: in a round, or
                    rounds.setdefault(action.agent, []).append(action)  # read before its round's last writes
            for agent, actions in rounds.items():
                actions.sort(key=_order)
                self._busy.add(agent)
                self._ready.append((agent, actions))
            if rounds:
                self._lock.notify_all()
        next_due = self._journal.next_due()
        return IDLE_WAIT if next_due is None or next_due <= now else min(IDLE_WAIT, next_due - now)

    # -- workers ---------------------------------------------------------------

    def _work(self) -> None:
        """A worker: one agent's round at a time, with its own AgentClient."""
        client = self._transport.client()
        try:
            while True:
                with self._lock:
                    self._lock.wait_for(lambda: self._ready or self._stopping.is_set())
                    if self._stopping.is_set():
                        return
                    agent, actions = self._ready.popleft()
                try:
                    self._round(client, agent, actions)
                except StoreError as exc:  # locked or failing journal: one line, the agent's turn comes again
                    log.error("action dispatcher (agent %s): %s", agent, exc)
                    self._stopping.wait(IDLE_WAIT)
                except Exception:  # a worker's top: log, count, rest this agent a moment, keep going
                    log.exception("action dispatcher error (agent %s)", agent)
                    self._metrics.thread_error("dispatcher")
                    self._stopping.wait(IDLE_WAIT)
                finally:
                    with self._lock:
                        self._busy.discard(agent)
                        self._ended.add(agent)
                    self._wake.set()
        finally:
            client.close()

    def _round(self, client: AgentClient, agent: str, actions: list[Action]) -> None:
        """Step `agent`'s due actions in submission order, the ones behind an undelivered
        head deferred; stop early when the agent did not answer or the round took its time."""
        with self._lock:
            head = self._heads.get(agent)
        if head is not None and all(a.id != head.id for a in actions):
            head = self._journal.get(head.id)  # not due when the round was made: as it is now
            if head is None or head.state is not ActionState.PENDING:
                head = None
            elif head.next_ts <= self._clock():
                actions = [head, *actions]  # due since: it goes first
        started = time.monotonic()
        for index, action in enumerate(actions):
            if self._stopping.is_set():
                break
            if action.state is ActionState.PENDING and head is not None and _order(head) < _order(action):
                self._defer(action, head)
                continue
            answered = self._isolated_step(client, action)
            if action.state is ActionState.PENDING:
                current = self._journal.get(action.id)
                if current is not None and current.state is ActionState.PENDING:
                    head = current  # not delivered: the agent's head (anything older was delivered or final)
                elif head is not None and head.id == action.id:
                    head = None
            if not answered:
                self._after_silence(actions[index + 1:], head)
                break
            if time.monotonic() - started >= ROUND_SECONDS:
                break  # the rest of the round is still due: the agent queues again, behind others
        with self._lock:
            if head is None:
                self._heads.pop(agent, None)
            else:
                self._heads[agent] = head

    def _defer(self, action: Action, head: Action) -> None:
        """`action` waits behind its agent's undelivered head: due just after the head's next step."""
        due = max(head.next_ts, self._clock()) + BEHIND
        self._journal.update(action, ActionState.PENDING, due, f"queued behind action {head.id}: {head.message}")

    def _after_silence(self, rest: Iterable[Action], head: Optional[Action]) -> None:
        """The agent did not answer: the round's other tracked actions are looked at after
        `track_interval`, the ones behind the head after it; an undelivered action that is
        itself the head stays due (its own attempt decides)."""
        later = self._clock() + self._settings.track_interval
        for action in rest:
            if action.state is not ActionState.PENDING:
                self._journal.update(action, action.state, later, action.message)
            elif head is not None and _order(head) < _order(action):
                self._defer(action, head)

    def _isolated_step(self, client: AgentClient, action: Action) -> bool:
        """One action's step; a bug it triggers delays that action only, never the others.
        False when the agent did not answer."""
        try:
            return self.step(client, action)
        except StoreError:
            raise  # the journal itself: every action of the round waits for it
        except Exception as exc:
            log.exception("action %s: unexpected error, retrying it later", action.id)
            self._metrics.thread_error("dispatcher")
            errors = self._errors[action.id] = self._errors.get(action.id, 0) + 1
            current = self._journal.get(action.id) or action
            if current.state is ActionState.PENDING and current.attempts + errors > self._settings.max_attempts:
                self._journal.update(current, ActionState.ABANDONED, self._clock(),
                                     f"not delivered: {errors} internal errors ({exc!r})")
                self._metrics.action_result("abandoned")
                self._errors.pop(action.id, None)
                return True
            delay = backoff(self._settings.backoff, current.attempts + errors + 1)
            self._journal.update(current, current.state, self._clock() + delay, f"internal error, will retry: {exc!r}")
            return True

    def step(self, client: AgentClient, action: Action) -> bool:
        """Deliver a PENDING action, or follow a delivered one. False when the agent did not
        answer (a transport failure: connect, TLS, deadline); True otherwise."""
        now = self._clock()
        target = self._find_target(action.agent)
        if target is None:
            self._journal.update(action, action.state, now + IDLE_WAIT * 5,
                                 "the agent is not in the configuration or discovery (waiting)")
            return True
        if action.state is ActionState.PENDING:
            return self._deliver(client, action, target)
        return self._track(client, action, target)

    # -- delivery --------------------------------------------------------------

    def _deliver(self, client: AgentClient, action: Action, target: Target) -> bool:
        identity = self._identity(target)
        if identity is None:
            self._journal.update(action, ActionState.PENDING, self._clock() + IDLE_WAIT,
                                 "waiting for a successful poll to learn the agent's cluster and node ids")
            return True
        cluster_id, node_id, api = identity
        if not all(_header_safe(v) for v in (cluster_id, node_id)):
            self._journal.update(action, ActionState.PENDING, self._clock() + self._settings.track_interval * 5,
                                 f"the agent reports ids that cannot be signed: {(cluster_id, node_id)!r} (waiting)")
            return True
        protocol = PROTOCOLS[api]
        n = self._journal.begin_attempt(action, cluster_id, node_id)
        if n is None:  # cancelled since it was read: never sent
            log.info("action %s was cancelled before its attempt", action.id)
            return True
        if self._stopping.is_set():  # deposed (or stopping) meanwhile: the next dispatcher sends attempt n + 1
            with contextlib.suppress(StoreError):  # a deposed leader cannot write: its successor sends n + 1
                self._journal.end_attempt(action.id, n, "not sent", "the dispatcher stopped before sending it",
                                          ActionState.PENDING, self._clock(), f"attempt {n} not sent: the dispatcher stopped")
            return True
        path, body = protocol.schedule(action)
        settings, signer = self._config
        headers = sign_action(
            method="POST", path=urlsplit(target.url).path + path, body=body, agent_url=target.url, cluster_id=cluster_id,
            node_id=node_id, key_id=signer.key_id, sign=signer.sign, now=int(self._clock()),
            ttl=int(settings.ttl), nonce=self._randbytes(16),
        )
        with client.connect(target) as conn:
            reply = conn.request("POST", path, body, headers)
        if n >= settings.max_attempts and _ambiguous(reply) and self._agent_knows(client, target, action, protocol):
            reply = Reply(200, "OK", "application/json", b"{}")  # it arrived: the answer was what got lost
        self._delivered(action, n, reply, protocol)
        return not isinstance(reply, Failure)

    def _agent_knows(self, client: AgentClient, target: Target, action: Action, protocol: ActionProtocol) -> bool:
        """Whether the agent has the action (before a last, ambiguous failure becomes ABANDONED)."""
        with client.connect(target) as conn:
            reply = conn.request("GET", protocol.info_path(action.id))
        return isinstance(reply, Reply) and reply.status == 200

    def _delivered(self, action: Action, n: int, reply: Union[Reply, Failure], protocol: ActionProtocol) -> None:
        now = self._clock()
        if isinstance(reply, Reply) and (reply.status == 200 or protocol.already_exists(reply)):
            outcome = "accepted" if reply.status == 200 else "already exists"
            if not self._journal.end_attempt(action.id, n, outcome, f"HTTP {reply.status}", ActionState.SCHEDULED,
                                             now + self._settings.track_interval, f"delivered ({outcome})"):
                return self._no_longer_pending(action, n, outcome)
            self._metrics.action_result("delivered")
            self._metrics.action_delivered(now - action.created_ts)
            log.info("action %s (%s) delivered to %s", action.id, action.kind, action.agent)
            return
        if isinstance(reply, Reply) and not retryable_status(reply.status):
            detail = agent_error(reply.body) or reply.body[:200].decode("utf-8", "replace")
            if reply.status == 404 and not reply.body.strip():  # DESIGN section 1: how agents say "no actions"
                detail = "the agent has actions disabled (404 with no body on the schedule path)"
            if not self._journal.end_attempt(action.id, n, "rejected", f"HTTP {reply.status}: {detail}",
                                             ActionState.REJECTED, now, f"the agent refused it: HTTP {reply.status} {detail}"):
                return self._no_longer_pending(action, n, "rejected")
            self._metrics.action_result("rejected")
            log.warning("action %s refused by %s: HTTP %d %s", action.id, action.agent, reply.status, detail)
            return
        detail = reply.message if isinstance(reply, Failure) else f"HTTP {reply.status}"
        if n >= self._settings.max_attempts:
            if not self._journal.end_attempt(action.id, n, "failed", detail, ActionState.ABANDONED, now,
                                             f"not delivered after {n} attempts: {detail}"):
                return self._no_longer_pending(action, n, "failed")
            self._metrics.action_result("abandoned")
            log.error("action %s abandoned after %d attempts: %s", action.id, n, detail)
            return
        delay = backoff(self._settings.backoff, n)
        if reply.retry_after is not None:
            delay = min(max(delay, reply.retry_after), MAX_BACKOFF)
        if not self._journal.end_attempt(action.id, n, "failed", detail, ActionState.PENDING, now + delay,
                                         f"attempt {n} failed ({detail}); retrying in {delay:g}s"):
            return self._no_longer_pending(action, n, "failed")
        self._metrics.action_result("retry")
        log.info("action %s: attempt %d to %s failed (%s); retrying in %gs", action.id, n, action.agent, detail, delay)

    def _no_longer_pending(self, action: Action, n: int, outcome: str) -> None:
        """Attempt n ended after the action left PENDING (cancelled): its state stays as it is."""
        log.warning("action %s: attempt %d ended (%s) after the action was cancelled; it stays cancelled",
                    action.id, n, outcome)

    # -- tracking --------------------------------------------------------------

    def _track(self, client: AgentClient, action: Action, target: Target) -> bool:
        api = self._generation(target)
        if api is None:
            self._journal.update(action, action.state, self._clock() + IDLE_WAIT,
                                 "waiting for a poll to learn the agent's API generation")
            return True
        protocol = PROTOCOLS[api]
        with client.connect(target) as conn:
            reply = conn.request("GET", protocol.info_path(action.id))
            lists = None
            if isinstance(reply, Reply) and reply.status == 404:
                lists = [conn.get(ACTIONS_QUEUE), conn.get(ACTIONS_FINISHED)]
        now = self._clock()
        later = now + self._settings.track_interval
        if isinstance(reply, Failure) or reply.status not in (200, 404):
            detail = reply.message if isinstance(reply, Failure) else f"HTTP {reply.status}"
            self._journal.update(action, action.state, later, f"tracking failed, will retry: {detail}")
            return not isinstance(reply, Failure)
        if reply.status == 200:
            self._follow(action, protocol, reply, later)
            return True
        queue, finished = lists or (b"", b"")
        if isinstance(queue, Failure) or isinstance(finished, Failure):
            self._journal.update(action, action.state, later, "unknown to the agent's info; lists unreadable, will retry")
            return True  # its info answered
        finished_ids = protocol.listed_ids(finished)
        if action.id in protocol.listed_ids(queue) or action.id in finished_ids:
            self._journal.update(action, action.state, later, "listed by the agent")
            return True
        why = protocol.pruned(action, finished_ids, now)
        if why is not None:
            self._journal.update(action, ActionState.PRUNED, now,
                                 f"finished on the agent, which pruned it before its outcome was seen ({why})")
            self._metrics.action_result("pruned")
            log.warning("action %s finished on %s but was pruned before its outcome was seen", action.id, action.agent)
            return True
        self._journal.update(action, ActionState.LOST, now, "the agent no longer knows this action")
        self._metrics.action_result("lost")
        log.error("action %s was lost by %s", action.id, action.agent)
        return True

    def _follow(self, action: Action, protocol: ActionProtocol, reply: Reply, later: float) -> None:
        report = protocol.report(reply)
        state = AGENT_STATES.get(report.phase) if report is not None else None
        if report is None or state is None:
            self._journal.update(action, action.state, later, "the agent's action info is not understood, will retry")
            return
        note = f"agent reports {report.phase}" + (f": {report.detail}" if report.detail else "")
        self._journal.update(action, state, later, note, report.history)
        if state.final:
            self._metrics.action_result(state.value.lower())
            log.info("action %s finished on %s: %s", action.id, action.agent, state.value)
