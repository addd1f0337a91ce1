"""The poller service: wires discovery, the scheduler, workers, state, metrics and the API.

The `Scheduler` thread is the single writer of fleet state; the service gives it the
targets, its periodic tasks (discovery and TLS file checks, state saves) and reloads as
commands, all run on that thread.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional

from .actions.api import ActionsApi, read_token
from .actions.dispatcher import AgentIdentity, Dispatcher
from .actions.journal import Journal, check_journal, open_journal
from .actions.probe import UNTRUSTED_IDENTITY, IdentityProbe
from .actions.signing import Signer, load_signing_key
from .config import ActionsSettings, ClusterConfig, Config, TlsSettings, load_config
from .errors import ConfigError, KeyFileError, PollerError
from .fdlimit import FILES_RESERVE, ensure_fd_limit
from .filestamp import Stamp, file_stamp
from .folders import make_writable_folder, writable_folder
from .polling.deadlines import DeadlineReaper
from .polling.discovery import Target, check_globs, discover, discovery_stamp
from .polling.httpdiscovery import HttpDiscovery, HttpDiscoveryThread
from .polling.pool import WorkerPool
from .polling.scheduler import Scheduler
from .polling.state import FleetState, Reported, TargetView
from .polling.statefile import load_state, save_state
from .polling.tls import TlsContexts, TlsFileError, build_context
from .polling.transport import Transport
from .web.metrics import PollerMetrics, new_registry, render
from .web.server import MAX_CONNECTIONS
from .web.status import StatusServer

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from .actions.elected import ElectedDispatcher
    from .coordination.election import Election
    from .coordination.health import Stored
    from .coordination.journal import ZkJournal
    from .coordination.share import Share

log = logging.getLogger(__name__)
ELECTION_STOP_WAIT = 2.0  # seconds stop() waits for the election thread before closing the session
RELOAD_WAIT = 30.0  # seconds POST /-/reload waits for the scheduler to run the reload
JOURNAL_FDS = 8  # the action journal (SQLite: database, WAL, shared memory, readers)


def build_contexts(config: Config, targets: tuple[Target, ...], contexts: TlsContexts) -> None:
    """Build every target's TLS context; an error names the configuration file and section."""
    for target in targets:
        try:
            contexts.get(target.tls)
        except ConfigError as exc:
            section = "tls" if target.tls == config.tls else f"cluster:{target.cluster_id}"
            suffix = "" if exc.key is not None else f" ({exc.source})"  # a key's message names its file
            raise ConfigError(config.source, section, exc.key, exc.message + suffix) from None


def listener_context(config: Config) -> Optional[tuple[ssl.SSLContext, Stamp]]:
    """The listener's server TLS context from `[http] tls_*` (and the files' stamp), or None
    for plain HTTP. ConfigError names the key whose file cannot be used."""
    http = config.http
    if not http.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_listener_files(context, config)
    return context, _listener_stamp(config)


def _listener_stamp(config: Config) -> Stamp:
    http = config.http
    return file_stamp(p for p in (http.tls_cert_file, http.tls_key_file, http.tls_client_ca_file) if p)


def _load_listener_files(context: ssl.SSLContext, config: Config) -> None:
    http = config.http
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(config.source, "http", "tls_cert_file",
                          f"cannot use {http.tls_cert_file} with {http.tls_key_file}: {getattr(exc, 'reason', None) or exc}") from None
    if http.tls_client_ca_file:
        try:
            context.load_verify_locations(cafile=http.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(config.source, "http", "tls_client_ca_file",
                              f"cannot load {http.tls_client_ca_file}: {getattr(exc, 'reason', None) or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED


def http_discovery(config: Config) -> HttpDiscovery:
    """Core's HTTP discovery as `[discovery]` configures it (ConfigError: unusable token or
    CA file; a CA file without a certificate is the configuration's error, not the server's)."""
    ca_file = config.discovery.http_ca_file
    if ca_file is not None:
        try:
            build_context(TlsSettings(ca_file=ca_file))
        except TlsFileError as exc:
            raise ConfigError(config.source, "discovery", "http_ca_file", f"cannot load TLS material: {exc}") from None
    try:
        return HttpDiscovery(config.discovery, config.poller.poll, config.tls)
    except ConfigError as exc:  # the token file's error, located in the configuration
        raise _in_configuration(config.source, exc) from None


def _in_configuration(source: str, exc: ConfigError) -> ConfigError:
    """A secret file's error (named by that file) as the configuration's: file, section, key, then the file."""
    return ConfigError(source, exc.section, exc.key, f"{exc.source}: {exc.message}")


def api_token(source: str, path: str) -> bytes:
    """The `[actions] api_token_file` token; its errors name the configuration file `source`."""
    try:
        return read_token(path)
    except ConfigError as exc:
        raise _in_configuration(source, exc) from None


def discover_all(config: Config) -> tuple[Target, ...]:
    """Every agent `run` would poll now: the configuration, the discovery files and, when
    configured, one answer of Core's HTTP discovery (ConfigError when it cannot be asked)."""
    discovered = http_discovery(config).fetch() if config.discovery.http else ()
    return discover(config, discovered)


def check_state_dir(config: Config, create: bool) -> None:
    """ConfigError naming `[poller] state_dir` when the service could not write in it;
    `create` makes it (as `run` does), else nothing is created (`check-config`)."""
    directory = config.poller.state_dir
    problem = (make_writable_folder if create else writable_folder)(directory) if directory else None
    if problem is not None:
        raise ConfigError(config.source, "poller", "state_dir", problem)


def configured_signer(source: str, path: str) -> Signer:
    """The `[actions] signing_key` at `path`; a file that is not a usable key is a
    ConfigError naming the configuration file `source`, the key and the file."""
    try:
        return load_signing_key(path)
    except KeyFileError as exc:
        raise ConfigError(source, "actions", "signing_key", str(exc)) from None


def check_fd_limit(config: Config, change: bool = True) -> None:
    """Enough file descriptors for every worker, listener connection and file (the soft
    limit raised when the hard one allows, unless `change` is False: check-config), or a
    clear refusal now: not hundreds of agents failing with `connect` later. Checked
    before anything is sized by `workers`."""
    workers = config.poller.workers
    dispatch = config.actions.dispatch_workers + JOURNAL_FDS if config.actions.enabled else 0
    needed = workers + MAX_CONNECTIONS + dispatch + FILES_RESERVE
    try:
        before, after = ensure_fd_limit(needed, change)
    except ValueError as exc:
        raise ConfigError(config.source, "poller", "workers",
                          f"{exc} by {workers} workers, {MAX_CONNECTIONS} listener connections and files: "
                          "raise it (ulimit -n, LimitNOFILE= in a systemd unit) or lower workers") from None
    if change and after != before:
        log.info("raised the open-file limit from %d to %d (%d workers, %d listener connections)",
                 before, after, workers, MAX_CONNECTIONS)


def check_resources(config: Config) -> tuple[Target, ...]:
    """Everything `run` loads before it starts, loaded once (creating nothing): the state
    folder, discovery, TLS material, the signing key, the API token and the action
    journal. Raises the error `run` would."""
    check_fd_limit(config, change=False)
    check_state_dir(config, create=False)
    targets = discover_all(config)
    build_contexts(config, targets, TlsContexts())
    actions = config.actions
    if actions.enabled and actions.signing_key is not None:
        configured_signer(config.source, actions.signing_key)
    if actions.enabled and actions.api_token_file is not None:
        api_token(config.source, actions.api_token_file)
    if actions.enabled and actions.journal is not None:
        check_journal(config.source, actions.journal)
    return targets


class Service:
    """A running poller: `start()`, then `stop()`; `request_reload()` from any thread."""

    def __init__(self, config: Config, config_path: Optional[str] = None,
                 clock: Callable[[], float] = time.time, registry: object = None,
                 adjust: Callable[[Config], Config] = lambda config: config):
        """`adjust` is applied to every configuration loaded, the first and each reload's
        (command-line overrides such as `run --listen`)."""
        self._adjust = adjust
        config = adjust(config)
        self.config = config
        self._config_path = config_path
        self._clock = clock
        self.registry = registry or new_registry()
        p = config.poller
        self.state = FleetState(p.fall, p.rise, p.flap_window, p.flap_threshold, p.max_retry_after)
        self.metrics = PollerMetrics(self.registry, self.state.snapshot)
        self.contexts = TlsContexts()
        self.stopping = threading.Event()
        inbox: "queue.Queue[object]" = queue.Queue()  # poll results and commands, for the scheduler
        self._transport = Transport(self.contexts, dialer_threads=p.workers,
                                    reaper=DeadlineReaper(on_error=lambda: self.metrics.thread_error("reaper")))
        self._pool = WorkerPool(p.workers, self._transport, inbox, self.metrics, clock)
        self._scheduler = Scheduler(self.state, self.metrics, self._pool.submit, inbox, clock)
        self.metrics.observe_pool(self._pool.queued, self._pool.busy, self._pool.stuck)
        self._targets: tuple[Target, ...] = ()
        self._discovered: tuple[ClusterConfig, ...] = ()  # the HTTP discovery's last good answer
        self._http_thread: Optional[HttpDiscoveryThread] = None
        self._stamp: object = None
        self._by_url: dict[str, Target] = {}
        self._started = clock()
        self._api: Optional[StatusServer] = None
        self.journal: Optional[Journal | ZkJournal] = None
        self._dispatcher: Optional[Dispatcher | ElectedDispatcher] = None
        self._actions_api: Optional[ActionsApi] = None
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._share: Optional["Share"] = None  # [coordination] backend = zookeeper: the clusters held here
        self._joined_ready = False  # coordinated: the clusters held at the first join were all polled once
        self._zk: Optional["KazooClient"] = None  # its client, shared with the journal and the election
        self._election: Optional["Election"] = None  # with actions: who dispatches
        self._probe: Optional[IdentityProbe] = None  # the leader's identities of agents it does not poll

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Discover, build TLS contexts, restore saved state, listen and start polling.

        Raises ConfigError (bad discovery file or TLS material) and OSError (listen).
        """
        check_fd_limit(self.config)
        if self.config.coordination.backend == "zookeeper":
            from .coordination.zookeeper import new_client

            self._zk = new_client(self.config.coordination)
        check_state_dir(self.config, create=True)  # refused now, not logged at every save
        http = self._first_http_discovery()
        targets = self._discover(self.config)
        actions_api = self._open_actions() if self.config.actions.enabled else None
        self._listener_tls = listener_context(self.config)
        self._api = StatusServer(self.config.http.host, self.config.http.port, self.state.snapshot,
                                 lambda: render(self.registry), self.metrics.thread_error, actions_api,
                                 lifecycle=self, registry=self.registry,
                                 ssl_context=self._listener_tls[0] if self._listener_tls else None)
        self._open_coordination()
        self._apply_targets(targets)
        if self.config.poller.state_dir:
            saved = load_state(self.config.poller.state_dir, targets, self.config.poller.max_retry_after, self._clock)
            restored = self.state.restore(saved)
            if self._share is not None:  # coordinated: restored as clusters are taken
                self._share.restore_later(saved)
            log.info("restored the state of %d of %d agents from %s", restored, len(targets), self.config.poller.state_dir)
        self.metrics.config_loaded(True, self._clock())
        self._transport.start()
        self._pool.start()
        self._api.start()
        self._scheduler.every(lambda: self.config.discovery.refresh, self._check_files)
        self._scheduler.every(self._save_period, self._save)
        if self._share is not None:
            from .coordination.publisher import CHECK_PERIOD
            share = self._share
            self._scheduler.every(lambda: CHECK_PERIOD, lambda: share.publish(self.state.snapshot()))
        self._scheduler.start()
        if http is not None:
            self._http_thread = HttpDiscoveryThread(
                http, lambda: self.config.discovery.refresh,
                lambda clusters: self._scheduler.call(lambda: self._discovered_changed(clusters)),
                last=self._discovered)
            self._http_thread.start()
        if self._dispatcher is not None:
            self._dispatcher.start()
        if self._share is not None:
            self._share.coordinator.start()
        if self._election is not None:
            self._election.start()
        host, port = self.api_address
        scheme = "https" if self.config.http.tls else "http"
        log.info("%s; status on %s://%s:%d/", self._polling(len(targets)), scheme,
                 f"[{host}]" if ":" in host else host, port)  # an IPv6 address in brackets, as in a URL

    def _polling(self, agents: int) -> str:
        """What the instance polls, for the log: coordinated, only its share of the agents."""
        return f"polling {agents} agents" if self._share is None else f"sharing {agents} agents among the instances"

    def _open_coordination(self) -> None:
        """With `[coordination] backend = zookeeper`: poll only the clusters held (none until
        the session is up). kazoo is imported only then."""
        settings = self.config.coordination
        if settings.backend != "zookeeper":
            return
        from .coordination.share import Share

        assert self._zk is not None
        share = self._share = Share(
            settings, self.instance_id, "%s:%d" % self.api_address, self._zk,
            lambda held, since, health: self._scheduler.call(lambda: self._held_changed(share, held, since, health)),
            self.metrics.thread_error, self._clock, self._save_period, lambda: self.config.poller.max_retry_after)
        self.metrics.observe_coordination(share.coordinator.connected, share.coordinator.members,
                                          share.coordinator.owned,
                                          self._election.leader if self._election is not None else None)
        log.info("coordination through ZooKeeper %s%s as %s", settings.hosts, settings.path, self.instance_id)

    def _held_changed(self, share: "Share", held: frozenset[str], since: Mapping[str, float],
                      health: Mapping[str, "Stored"]) -> None:
        """The coordinator's new set of held clusters (on the scheduler thread): poll exactly
        those (`since`: when their previous owner stopped, for those handed over), each agent
        taken starting from the newer of the health its last owner published and this
        instance's state file; a released cluster's health is published and its lock goes
        once its last poll ended, with when it left the schedule."""
        taken = share.take(held, health, self.state.snapshot(), self._targets)
        self._apply_targets(self._targets, since, taken.restored)
        stopped = self._clock()
        if taken.restored:  # logged once applied: whoever reads it finds the state restored
            log.info("restored the state of %d agents of the clusters taken (%d from the health published in ZooKeeper)",
                     len(taken.restored), taken.from_zookeeper)
        if taken.released:
            self._scheduler.when_idle(
                taken.released, lambda: share.coordinator.released(taken.released, stopped, taken.final))

    def reported(self) -> list[Reported]:
        """Agents of clusters this instance does not hold (`/api/v1/targets`, any thread),
        with the health their instance last published, or unknown."""
        return self._share.reported(self._targets) if self._share is not None else []

    def owner(self, cluster_id: str) -> Optional[str]:
        """The instance polling the cluster (`/api/v1/targets`): this one without coordination."""
        return self._share.coordinator.owner(cluster_id) if self._share is not None else self.instance_id

    def _open_actions(self) -> ActionsApi:
        """Signing key, journal, dispatcher and API of signed actions (KeyFileError, ConfigError)."""
        settings = self.config.actions
        assert settings.signing_key is not None
        signer = configured_signer(self.config.source, settings.signing_key)
        token = api_token(self.config.source, settings.api_token_file) if settings.api_token_file else None
        journal: Journal | ZkJournal
        if self._zk is not None:
            journal = self._open_elected(settings, signer)
        else:
            assert settings.journal is not None
            journal = open_journal(self.config.source, settings.journal, self._clock)
            self._dispatcher = self._new_dispatcher(journal, settings, signer)
        self.journal = journal
        self.metrics.actions_pending.set_function(journal.pending)
        log.info("signed actions enabled with key %s, journal %s", signer.key_id, journal)
        self._actions_api = ActionsApi(journal, self.find_target, token, self.wake_dispatcher)
        return self._actions_api

    def _new_dispatcher(self, journal: Journal | ZkJournal, settings: ActionsSettings, signer: Signer) -> Dispatcher:
        return Dispatcher(journal, settings, signer, self.find_target, self.identity, self._transport, self.metrics,
                          self._clock, generation=self.generation)

    def _open_elected(self, settings: ActionsSettings, signer: Signer) -> ZkJournal:
        """Coordinated: the journal in ZooKeeper, and a dispatcher only while elected."""
        from .actions.elected import ElectedDispatcher
        from .coordination.election import Election
        from .coordination.journal import ZkJournal

        assert self._zk is not None
        self._probe = IdentityProbe(self._transport, self._clock)
        journal = ZkJournal(self._zk, self.config.coordination, self._clock, on_submit=self.wake_dispatcher)
        dispatcher = ElectedDispatcher(journal, lambda s, k: self._new_dispatcher(journal, s, k), settings, signer)
        self._dispatcher = dispatcher
        self._election = Election(self._zk, self.config.coordination, self.instance_id, dispatcher.elected,
                                  dispatcher.deposed, self.metrics.thread_error)
        return journal

    def wake_dispatcher(self) -> None:
        """A new action was submitted: the dispatcher (if this instance runs one) looks now."""
        if self._dispatcher is not None:
            self._dispatcher.wake()

    def find_target(self, url: str) -> Optional[Target]:
        """The target polled at `url` (any thread)."""
        return self._by_url.get(url)

    def identity(self, target: Target) -> Optional[AgentIdentity]:
        """Cluster id, node id and API generation as a poll of this run observed them, or
        None before any (any thread). Agents of clusters another instance polls: from a poll
        of the leader's own (`IdentityProbe`)."""
        if self._probe is not None and self._share is not None and not self._share.polls(target):
            return self._probed_identity(self._probe, self._share, target)
        view = self.state.view(target.key)
        result = view.result if view is not None else None
        # a restored result (the state file's, or the health another instance published): the node may have changed
        restored = result is not None and (result.started < self._started or not view.recent)
        if result is None or result.datastore is None or result.reason in UNTRUSTED_IDENTITY or view.api is None or restored:
            return None
        return AgentIdentity(result.datastore.cluster_id, result.datastore.node_id, view.api)

    def _probed_identity(self, probe: IdentityProbe, share: "Share", target: Target) -> Optional[AgentIdentity]:
        """The leader's own poll of an agent of another instance's cluster, once the health
        its owner published agrees: with none yet, a duplicate node id or a node of another
        cluster there (the owner's cluster-wide checks), or another node seen at that URL,
        nothing is signed for it."""
        identity = probe.identity(target)
        view = share.published_view(target, self._targets)
        result = view.result if view is not None else None
        if identity is None or result is None:  # nothing published yet: its owner's checks have not run
            return None
        if result.reason in UNTRUSTED_IDENTITY:
            return None
        if result.datastore is not None and (result.datastore.cluster_id, result.datastore.node_id) != identity[:2]:
            return None
        return identity

    def generation(self, target: Target) -> Optional[str]:
        """The agent's API generation as last learned (restored state included), or None."""
        if self._probe is not None and self._share is not None and not self._share.polls(target):
            return self._probe.generation(target)
        view = self.state.view(target.key)
        return view.api if view is not None else None

    @property
    def api_address(self) -> tuple[str, int]:
        assert self._api is not None, "service not started"
        return self._api.address

    def request_reload(self) -> None:
        """Ask the scheduler to re-read configuration and discovery (from any thread)."""
        self._scheduler.call(self._reload_from_file)

    def reload(self, timeout: float = RELOAD_WAIT) -> tuple[bool, str]:
        """Reload now and wait for the outcome (`POST /-/reload`): (ok, what happened)."""
        outcome: list[tuple[bool, str]] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(self._reload_from_file())
            finally:
                done.set()
        self._scheduler.call(run)
        if not done.wait(timeout):
            return False, f"the reload did not finish within {timeout:g}s"
        return outcome[0] if outcome else (False, "the reload failed unexpectedly")

    def ready(self) -> tuple[bool, str]:
        """Whether every agent was polled once since start (`/-/ready`), and how far it is."""
        polled, known = self._scheduler.progress()
        share = self._share
        if share is not None:  # coordinated: ready once the share taken at the first join was polled
            if not self._joined_ready and not share.coordinator.settled.is_set():
                return False, "not ready: not joined through ZooKeeper yet ([coordination] hosts)"
            if not self._joined_ready and (share.held != share.coordinator.announced() or polled < known):
                return False, f"not ready: {polled} of {known} agents of the clusters held polled since joining"
            self._joined_ready = True
            return True, f"ready: {known} agents of the clusters held polled since joining"
        if self._scheduler.ready.is_set():
            return True, f"ready: {known} agents polled since start"
        return False, f"not ready: {polled} of {known} agents polled since start"

    def stop(self) -> None:
        """Stop scheduling, let in-flight polls end by their deadline, save state, close."""
        self.stopping.set()
        if self._http_thread is not None:
            self._http_thread.stop()
        self._scheduler.stop()
        if self._election is not None:  # deposes this instance: its dispatcher stops, a successor is elected
            self._election.stop(ELECTION_STOP_WAIT)  # a contender stuck while ZooKeeper is away: ends below
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self._pool.stop()
        self._scheduler.drain()
        if self._share is not None:  # after the last poll: the health of held clusters, then the locks go
            self._share.stop(self.state.snapshot())
        if self._election is not None and not self._election.join(ELECTION_STOP_WAIT):
            log.warning("election thread still blocked in ZooKeeper after the session closed")
        self._save()
        self._transport.stop()
        if self._api is not None:
            self._api.stop()
        if self.journal is not None:
            self.journal.close()

    def snapshot(self) -> list[TargetView]:
        return self.state.snapshot()

    # -- configuration and discovery ------------------------------------------

    def _discover(self, config: Config) -> tuple[Target, ...]:
        """Targets of `config` with their TLS contexts built (ConfigError otherwise)."""
        self._stamp = discovery_stamp(config)  # a bad file is reported once, not at every check
        targets = discover(config, self._discovered)
        build_contexts(config, targets, self.contexts)
        return targets

    def _first_http_discovery(self) -> Optional[HttpDiscovery]:
        """Ask the HTTP discovery once before polling starts; an unreachable server is logged
        and asked again every refresh (its agents join when it answers)."""
        if self.config.discovery.http is None:
            return None
        http = http_discovery(self.config)
        try:
            self._discovered = http.fetch()
        except ConfigError as exc:
            log.error("HTTP discovery failed at start, asking again every %gs: %s", self.config.discovery.refresh, exc)
        return http

    def _discovered_changed(self, clusters: tuple[ClusterConfig, ...]) -> None:
        """A new answer of the HTTP discovery (on the scheduler thread)."""
        log.info("HTTP discovery now lists %d clusters", len(clusters))
        self._discovered = clusters
        self._reload(self.config)

    def _check_files(self) -> None:
        """Rebuild changed TLS contexts; re-read discovery when one of its files changed."""
        for problem in self.contexts.refresh():
            log.error("TLS material changed but cannot be loaded, keeping the previous: %s", problem)
        self._refresh_listener_tls()
        if discovery_stamp(self.config) != self._stamp:
            log.info("discovery files changed, re-reading them")
            self._reload(self.config)

    def _refresh_listener_tls(self) -> None:
        """Load the listener's certificate (and client CA) again when their files changed;
        new connections get them, a file that cannot be used keeps the previous."""
        if self._listener_tls is None:
            return
        context, stamp = self._listener_tls
        now = _listener_stamp(self.config)
        if now == stamp:
            return
        try:
            _load_listener_files(context, self.config)
        except ConfigError as exc:
            log.error("listener TLS files changed but cannot be loaded, keeping the previous: %s", exc)
        else:
            log.info("listener TLS certificate reloaded")
        self._listener_tls = (context, now)

    def _apply_targets(self, targets: tuple[Target, ...], since: Mapping[str, float] = {},
                       restored: Iterable[TargetView] = ()) -> None:
        self._targets = targets
        by_url: dict[str, Target] = {}
        for target in targets:
            by_url.setdefault(target.url, target)
        self._by_url = by_url
        share = self._share
        self._scheduler.set_targets(targets if share is None else tuple(t for t in targets if share.polls(t)),
                                    since, restored)
        if share is not None:
            share.coordinator.set_clusters(frozenset(t.cluster_id for t in targets))

    def _reload_from_file(self) -> tuple[bool, str]:
        log.info("reloading configuration")
        self._check_files()
        if self._config_path is None:
            return self._reload(self.config)
        try:
            config = self._adjust(load_config(self._config_path))
            check_globs(config)  # as at start: a glob that matches no file is a typo, not "no clusters"
        except ConfigError as exc:
            return self._reload_failed(exc)
        return self._reload(config)

    def _reload(self, config: Config) -> tuple[bool, str]:
        """Adopt `config` and its discovery; on any error keep the last good ones."""
        try:
            targets = self._discover(config)
            self._reload_actions(config.actions)
        except PollerError as exc:
            return self._reload_failed(exc)
        for name, old, new in (("[http] listen", (self.config.http.host, self.config.http.port), (config.http.host, config.http.port)),
                               ("[poller] workers", self.config.poller.workers, config.poller.workers),
                               ("[poller] state_dir", self.config.poller.state_dir, config.poller.state_dir),
                               ("[coordination]", self.config.coordination, config.coordination),
                               ("[discovery] http settings", dataclasses.replace(self.config.discovery, files=(), refresh=0),
                                dataclasses.replace(config.discovery, files=(), refresh=0))):
            if old != new:
                log.warning("%s changed: takes effect at the next restart", name)
        running = self.config  # what takes effect at the next restart keeps its running value until then
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, host=running.http.host, port=running.http.port),
                                     coordination=running.coordination,
                                     poller=dataclasses.replace(config.poller, workers=running.poller.workers,
                                                                state_dir=running.poller.state_dir))
        p = config.poller
        self.state.configure(p.fall, p.rise, p.flap_window, p.flap_threshold, p.max_retry_after)
        self.config = config
        previous = self._targets
        self._apply_targets(targets)  # unchanged targets keep slot and state; progress is logged anew
        if targets != previous:  # after: whoever reads the line finds /api/v1/targets listing them
            log.info("now %s (was %d)", self._polling(len(targets)), len(previous))
        self.metrics.config_loaded(True, self._clock())
        log.info("configuration reloaded")
        return True, f"configuration reloaded: {len(targets)} agents"

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
        signer = configured_signer(self.config.source, new.signing_key)  # files are re-read: a key replaced in place counts
        token = api_token(self.config.source, new.api_token_file) if new.api_token_file else None
        previous = self._dispatcher.signer
        self._dispatcher.reconfigure(dataclasses.replace(new, journal=old.journal), signer)
        self._actions_api.token = token
        if signer.key_id != previous.key_id:
            log.info("[actions] reloaded: signing with key %s", signer.key_id)

    def _reload_failed(self, exc: PollerError) -> tuple[bool, str]:
        self.metrics.config_loaded(False, self._clock())  # before the line: whoever reads it finds the metric agreeing
        log.error("configuration reload failed, still running the last good one: %s", exc)
        return False, f"reload failed, still running the last good configuration: {exc}"

    # -- persistence -----------------------------------------------------------

    def _save_period(self) -> float:
        return max(self.config.poller.poll.interval, 10.0)

    def _save(self) -> None:
        directory = self.config.poller.state_dir
        if directory:
            try:
                save_state(directory, self.state.snapshot(), self._clock)
            except OSError as exc:  # counted, and the service keeps polling: the state is a convenience
                self.metrics.state_save_failed()  # counted before the line that says so
                log.error("cannot save state to %s: %s", Path(directory), exc.strerror or exc)
