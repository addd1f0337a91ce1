"""The poller service: wires discovery, scheduling, workers, state, metrics and the API.

One scheduler thread is the single writer of fleet state. Its loop waits on one inbox
queue (poll results and commands such as reload) with a timeout until the next slot, so
it needs no sleeps: results, reloads and stop all wake it.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from .actions_api import ActionsApi, read_token
from .config import ActionsSettings, Config, load_config
from .discovery import Target, discover, discovery_stamp
from .dispatcher import Dispatcher
from .errors import ConfigError, PollerError
from .journal import Journal
from .metrics import PollerMetrics, new_registry, render
from .poll import PollResult
from .pool import WorkerPool
from .reasons import Reason
from .scheduler import Schedule
from .signing import load_signing_key
from .state import FleetState, TargetView
from .statefile import load_state, save_state
from .status_api import StatusServer
from .tls import TlsContexts
from .transport import Transport

log = logging.getLogger(__name__)
_WAKE, _RELOAD = object(), object()
UNTRUSTED_IDENTITY = (Reason.CLUSTER_MISMATCH, Reason.DUPLICATE_NODE)


def build_contexts(config: Config, targets: tuple[Target, ...], contexts: TlsContexts) -> None:
    """Build every target's TLS context; an error names the configuration file and section."""
    for target in targets:
        try:
            contexts.get(target.tls)
        except ConfigError as exc:
            section = "tls" if target.tls == config.tls else f"cluster:{target.cluster_id}"
            raise ConfigError(config.source, section, None, exc.message + f" ({exc.source})") from None


def check_resources(config: Config) -> tuple[Target, ...]:
    """Everything `run` loads before it starts, loaded once: discovery, TLS material,
    the signing key and the API token. Raises the error `run` would."""
    targets = discover(config)
    build_contexts(config, targets, TlsContexts())
    actions = config.actions
    if actions.enabled and actions.signing_key is not None:
        load_signing_key(actions.signing_key)
    if actions.enabled and actions.api_token_file is not None:
        read_token(actions.api_token_file)
    return targets


class Service:
    """A running poller: `start()`, then `stop()`; `request_reload()` from any thread."""

    def __init__(self, config: Config, config_path: Optional[str] = None,
                 clock: Callable[[], float] = time.time, registry: object = None):
        self.config = config
        self._config_path = config_path
        self._clock = clock
        self.registry = registry or new_registry()
        p = config.poller
        self.state = FleetState(p.fall, p.rise, p.flap_window, p.flap_threshold, p.max_retry_after)
        self.metrics = PollerMetrics(self.registry, self.state.snapshot)
        self.contexts = TlsContexts()
        self.stopping = threading.Event()
        self._inbox: "queue.Queue[object]" = queue.Queue()
        self._transport = Transport(self.contexts, dialer_threads=p.workers)
        self._pool = WorkerPool(p.workers, self._transport, self._inbox, self.metrics, clock)
        self._schedule = Schedule()
        self._in_flight: set[tuple[str, str]] = set()
        self._targets: tuple[Target, ...] = ()
        self._stamp: object = None
        self._unpolled: set[tuple[str, str]] = set()  # targets without a result yet, for the progress log
        self._by_url: dict[str, Target] = {}
        self._started = clock()
        self._api: Optional[StatusServer] = None
        self.journal: Optional[Journal] = None
        self._dispatcher: Optional[Dispatcher] = None
        self._actions_api: Optional[ActionsApi] = None
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Discover, build TLS contexts, restore saved state, listen and start polling.

        Raises ConfigError (bad discovery file or TLS material) and OSError (listen).
        """
        targets = self._discover(self.config)
        actions_api = self._open_actions() if self.config.actions.enabled else None
        self._api = StatusServer(self.config.http.host, self.config.http.port, self.state.snapshot,
                                 lambda: render(self.registry), self.metrics.thread_error, actions_api)
        self._apply_targets(targets)
        if self.config.poller.state_dir:
            restored = self.state.restore(load_state(self.config.poller.state_dir, targets))
            log.info("restored the state of %d of %d agents from %s", restored, len(targets), self.config.poller.state_dir)
        self.metrics.config_loaded(True, self._clock())
        self._transport.start()
        self._pool.start()
        self._api.start()
        self._thread.start()
        if self._dispatcher is not None:
            self._dispatcher.start()
        log.info("polling %d agents; status on http://%s:%d/", len(targets), *self.api_address)

    def _open_actions(self) -> ActionsApi:
        """Signing key, journal, dispatcher and API of signed actions (KeyFileError, ConfigError)."""
        settings = self.config.actions
        assert settings.signing_key is not None and settings.journal is not None
        signer = load_signing_key(settings.signing_key)
        token = read_token(settings.api_token_file) if settings.api_token_file else None
        self.journal = Journal(settings.journal, self._clock)
        self._dispatcher = Dispatcher(self.journal, settings, signer, self.find_target, self.identity,
                                      self._transport, self.metrics, self._clock)
        self.metrics.actions_pending.set_function(self.journal.pending)
        log.info("signed actions enabled with key %s, journal %s", signer.key_id, settings.journal)
        self._actions_api = ActionsApi(self.journal, self.find_target, token, self._dispatcher.wake)
        return self._actions_api

    def find_target(self, url: str) -> Optional[Target]:
        """The target polled at `url` (any thread)."""
        return self._by_url.get(url)

    def identity(self, target: Target) -> Optional[tuple[str, str]]:
        """(cluster id, node id) as a poll observed them, or None before any (any thread)."""
        view = self.state.view(target.key)
        result = view.result if view is not None else None
        if (result is None or result.datastore is None or result.reason in UNTRUSTED_IDENTITY
                or result.started < self._started):  # restored from disk: the node may have changed since
            return None
        return result.datastore.cluster_id, result.datastore.node_id

    @property
    def api_address(self) -> tuple[str, int]:
        assert self._api is not None, "service not started"
        return self._api.address

    def request_reload(self) -> None:
        """Ask the scheduler to re-read configuration and discovery (safe from a signal handler)."""
        self._inbox.put(_RELOAD)

    def stop(self) -> None:
        """Stop scheduling, let in-flight polls end by their deadline, save state, close."""
        self.stopping.set()
        self._inbox.put(_WAKE)
        if self._thread.is_alive():
            self._thread.join()
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self._pool.stop()
        self._drain()
        self._save()
        self._transport.stop()
        if self._api is not None:
            self._api.stop()
        if self.journal is not None:
            self.journal.close()

    def snapshot(self) -> list[TargetView]:
        return self.state.snapshot()

    # -- the scheduler loop (single writer) -----------------------------------

    def _loop(self) -> None:
        now = self._clock()
        next_check, next_save = now + self.config.discovery.refresh, now + self._save_period()
        while not self.stopping.is_set():
            try:
                now = self._clock()
                if now >= next_check:
                    next_check = now + self.config.discovery.refresh
                    self._check_files()
                if now >= next_save:
                    next_save = now + self._save_period()
                    self._save()
                self._dispatch(now)
                due = self._schedule.next_due()
                wake = min(t for t in (due, next_check, next_save) if t is not None)
                if self._receive(max(0.0, wake - self._clock())):
                    self._reload_from_file()
            except Exception:  # the top of the scheduler loop: log, count, keep going
                log.exception("scheduler loop error")
                self.metrics.thread_error("scheduler")
                self.stopping.wait(0.1)

    def _dispatch(self, now: float) -> None:
        for due in self._schedule.pop_due(now):
            if due.missed:
                self.metrics.poll_skipped("behind", due.missed)
            key = due.target.key
            view = self.state.view(key)
            if view is not None and view.deferred_until is not None and due.due < view.deferred_until:
                self.metrics.poll_skipped("deferred")
            elif key in self._in_flight:
                self.metrics.poll_skipped("in_flight")
            elif self._pool.submit(due):
                self._in_flight.add(key)
            else:
                self.metrics.poll_skipped("queue_full")

    def _receive(self, timeout: float) -> bool:
        """Wait up to `timeout` for the inbox, then take what else is there; True on reload."""
        reload = False
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        while True:
            if isinstance(item, PollResult):
                self._record(item)
            elif item is _RELOAD:
                reload = True
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return reload

    def _record(self, result: PollResult) -> None:
        self._in_flight.discard(result.target.key)
        view = self.state.record(result)
        if view is not None and view.result is not None:
            final = view.result
            self.metrics.poll_finished(final.ok, final.reason, final.duration)
            if self._unpolled:
                self._unpolled.discard(result.target.key)
                if not self._unpolled:
                    views = self.state.snapshot()
                    up = sum(1 for v in views if v.result is not None and v.result.ok)
                    log.info("all %d agents polled: %d UP, %d down", len(views), up, len(views) - up)

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PollResult):
                self._record(item)

    # -- configuration and discovery ------------------------------------------

    def _discover(self, config: Config) -> tuple[Target, ...]:
        """Targets of `config` with their TLS contexts built (ConfigError otherwise)."""
        self._stamp = discovery_stamp(config)  # a bad file is reported once, not at every check
        targets = discover(config)
        build_contexts(config, targets, self.contexts)
        return targets

    def _check_files(self) -> None:
        """Rebuild changed TLS contexts; re-read discovery when one of its files changed."""
        for problem in self.contexts.refresh():
            log.error("TLS material changed but cannot be loaded, keeping the previous: %s", problem)
        if discovery_stamp(self.config) != self._stamp:
            log.info("discovery files changed, re-reading them")
            self._reload(self.config)

    def _apply_targets(self, targets: tuple[Target, ...]) -> None:
        self._targets = targets
        by_url: dict[str, Target] = {}
        for target in targets:
            by_url.setdefault(target.url, target)
        self._by_url = by_url
        self._schedule.set_targets(targets, self._clock())
        self.state.set_targets(targets)
        self.metrics.targets.set(len(targets))
        self._unpolled = {v.target.key for v in self.state.snapshot() if v.result is None}

    def _reload_from_file(self) -> None:
        log.info("reloading configuration")
        self._check_files()
        if self._config_path is None:
            self._reload(self.config)
            return
        try:
            config = load_config(self._config_path)
        except ConfigError as exc:
            self._reload_failed(exc)
            return
        self._reload(config)

    def _reload(self, config: Config) -> None:
        """Adopt `config` and its discovery; on any error keep the last good ones."""
        try:
            targets = self._discover(config)
            self._reload_actions(config.actions)
        except PollerError as exc:
            self._reload_failed(exc)
            return
        for name, old, new in (("[http] listen", self.config.http, config.http),
                               ("[poller] workers", self.config.poller.workers, config.poller.workers),
                               ("[poller] state_dir", self.config.poller.state_dir, config.poller.state_dir)):
            if old != new:
                log.warning("%s changed: takes effect at the next restart", name)
        p = config.poller
        self.state.configure(p.fall, p.rise, p.flap_window, p.flap_threshold, p.max_retry_after)
        self.config = config
        if targets != self._targets:
            log.info("now polling %d agents (was %d)", len(targets), len(self._targets))
            self._apply_targets(targets)
        self.metrics.config_loaded(True, self._clock())
        log.info("configuration reloaded")

    def _reload_actions(self, new: ActionsSettings) -> None:
        """Apply a changed `[actions]` live: signing key (rotation), token, ttl, retries.

        Turning actions on or off, or moving the journal, needs a restart. Raises
        KeyFileError/ConfigError for unusable files, before anything changes."""
        old = self.config.actions
        if self._dispatcher is None or self._actions_api is None or not new.enabled:
            if new.enabled != old.enabled:
                log.warning("[actions] enabled changed: takes effect at the next restart")
            return
        if new.journal != old.journal:
            log.warning("[actions] journal changed: takes effect at the next restart")
        assert new.signing_key is not None
        signer = load_signing_key(new.signing_key)  # files are re-read: a key replaced in place counts
        token = read_token(new.api_token_file) if new.api_token_file else None
        previous = self._dispatcher.signer
        self._dispatcher.reconfigure(dataclasses.replace(new, journal=old.journal), signer)
        self._actions_api.token = token
        if signer.key_id != previous.key_id:
            log.info("[actions] reloaded: signing with key %s", signer.key_id)

    def _reload_failed(self, exc: PollerError) -> None:
        log.error("configuration reload failed, still running the last good one: %s", exc)
        self.metrics.config_loaded(False, self._clock())

    # -- persistence -----------------------------------------------------------

    def _save_period(self) -> float:
        return max(self.config.poller.poll.interval, 10.0)

    def _save(self) -> None:
        directory = self.config.poller.state_dir
        if directory:
            try:
                save_state(directory, self.state.snapshot(), self._clock)
            except OSError as exc:
                log.error("cannot save state to %s: %s", Path(directory), exc)
