"""The ZooKeeper coordinator (kazoo): members, per-cluster locks, and which clusters this
instance polls (DESIGN section 9).

Layout under `path`: `members/ID` (ephemeral, JSON {"id", "listen"}), `locks/CLUSTER`
(ephemeral, data the holder's id) and `handover/CLUSTER` (when its last owner stopped polling
it, written before the lock is deleted and deleted by the next owner, who then polls at once
the slots that passed meanwhile). Each instance computes the rendezvous assignment over the
live members and takes, without blocking, the lock of each cluster assigned to it; it polls a
cluster only while it holds the lock. A cluster no longer assigned is announced as not held
and its lock deleted once its last poll ended (`released`); a lock held by another is retried
when its deletion watch fires. Session SUSPENDED: held clusters are kept until
`session_timeout` passed without contact (the server expires the session then), LOST: all
dropped; a new connection joins again. Every kazoo callback only queues an event: one
thread of this class does all the work.

`health/CLUSTER` (persistent) holds the health its owner last published
(`coordination.health`): written for clusters held only (`publish`, and at handover before
the lock goes), read by the next owner when it takes the lock (`on_held`'s third argument).
Every instance keeps the latest data of every health znode (`published()`) for its status
API: a children watch on `health` and one data watch per znode of a cluster held by
another instance; a znode is re-read only after its watch fired, in one pipelined batch at
most every PEER_READ_EVERY. So each publication is read once by each other instance (n - 1
reads a write with n instances) and each instance reads a document at most once per
PEER_READ_EVERY; the publications of a cluster are bounded by `publisher.Publisher` (on
change, else at most once per max(interval, 10s)). The status API is that stale at most.
`handover/CLUSTER` and `health/CLUSTER` of clusters absent from this instance's
configuration are deleted once unmodified for CLEANUP_GRACE, checked every CLEANUP_EVERY.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Callable, Mapping, Optional
from urllib.parse import quote, unquote

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.retry import KazooRetry

from ..config import CoordinationSettings
from .health import Stored
from .rendezvous import assigned

log = logging.getLogger(__name__)
_STOP = ("stop", None)
CLEANUP_GRACE = 600.0  # seconds a znode of a cluster no longer configured is kept (others may still know it)
CLEANUP_EVERY = 60.0  # seconds between two looks for such znodes
PEER_READ_EVERY = 2.0  # seconds between two reads of the health znodes that changed


_PLAIN = {ConnectionLoss: "the connection to ZooKeeper was lost", SessionExpiredError: "the ZooKeeper session expired",
          ConnectionClosedError: "not connected to ZooKeeper"}


def plain(exc: BaseException) -> str:
    """A kazoo exception as words (their str() is often empty)."""
    for kind, words in _PLAIN.items():
        if isinstance(exc, kind):
            return words
    return str(exc) or type(exc).__name__


def new_client(settings: CoordinationSettings) -> KazooClient:
    """A kazoo client for `[coordination]`, retrying its connection forever (not started)."""
    return KazooClient(hosts=settings.hosts, timeout=settings.session_timeout,
                       connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0))


class ZkCoordinator:
    """Owns the kazoo client; `on_held(held, since, health)` is called (on this class's
    thread) with the clusters this instance may poll, each time they change, for clusters
    just handed over by another instance when it stopped polling them (wall clock), and for
    clusters just taken the health znode their last owner published."""

    def __init__(self, settings: CoordinationSettings, member_id: str, listen: str,
                 on_held: Callable[[frozenset[str], Mapping[str, float], Mapping[str, Stored]], None],
                 on_error: Callable[[str], None] = lambda name: None,
                 cleanup_grace: float = CLEANUP_GRACE, cleanup_every: float = CLEANUP_EVERY,
                 client: Optional[KazooClient] = None):
        """`client`: a client the journal and the election share (`new_client`); this class
        starts and closes it."""
        self.id = member_id
        self._settings, self._listen, self._on_held, self._on_error = settings, listen, on_held, on_error
        self._events: "queue.Queue[tuple[str, object]]" = queue.Queue()
        self._client = client or new_client(settings)
        self._client.add_listener(lambda state: self._events.put(("state", state)))
        root = settings.path.rstrip("/")
        self._members_path, self._locks_path, self._handover_path = f"{root}/members", f"{root}/locks", f"{root}/handover"
        self._health_path = f"{root}/health"
        self._clusters: frozenset[str] = frozenset()
        self._members: tuple[str, ...] = ()
        self._held: set[str] = set()
        self._releasing: set[str] = set()  # lock still ours, polling being stopped
        self._waiting: set[str] = set()  # lock held by another, deletion watch set
        self._unlock: dict[str, float] = {}  # polling stopped (when), lock to delete
        self._since: dict[str, float] = {}  # taken from another instance: when it stopped
        self._taken: dict[str, Stored] = {}  # taken: the health its last owner published
        self._final: dict[str, bytes] = {}  # released: the health to publish at handover
        self._unpublished: dict[str, bytes] = {}  # health to publish (`_sync`, while connected)
        self._health: dict[str, Stored] = {}  # every health znode as last read (replaced, never changed)
        self._stale: set[str] = set()  # health znodes whose data watch fired
        self._read_at = 0.0  # monotonic: the stale health znodes are read from then on
        self._cleanup_grace, self._cleanup_every = cleanup_grace, cleanup_every
        self._clean_at = time.monotonic() + cleanup_every
        self._announced: frozenset[str] = frozenset()
        self.settled = threading.Event()  # joined once, and the clusters to hold were announced (`/-/ready`)
        self._owners: dict[str, str] = {}  # cluster -> holder, from the locks (other instances')
        self._joined = False
        self._connected = False
        self._suspended_at: Optional[float] = None
        self._connect_by: Optional[float] = None  # monotonic: never connected by then is worth a warning
        self._dirty = {"members": True, "locks": True, "health": True}
        self._watchers: dict[str, Callable[[object], None]] = {}
        self._thread = threading.Thread(target=self._run, name="coordination", daemon=True)

    # -- any thread ------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background: clusters are held once the session is up."""
        self._connect_by = time.monotonic() + self._settings.session_timeout
        self._thread.start()
        self._client.start_async()
        self._events.put(("check", None))

    def stop(self) -> None:
        """Close the session: the member znode and every lock vanish at once."""
        if self._thread.ident is not None:  # started
            self._events.put(_STOP)
            self._thread.join()
        try:
            self._client.stop()
        finally:
            self._client.close()

    def set_clusters(self, clusters: frozenset[str]) -> None:
        """Every cluster known from configuration and discovery."""
        self._events.put(("clusters", frozenset(clusters)))

    def released(self, clusters: frozenset[str], stopped_at: float, health: Mapping[str, bytes] = {}) -> None:
        """The last polls of `clusters` ended (they left the schedule at `stopped_at`, wall
        clock): their locks may go, after their `health` documents are published."""
        self._events.put(("released", (frozenset(clusters), stopped_at, dict(health))))

    def publish(self, health: Mapping[str, bytes]) -> None:
        """Publish these health documents (cluster -> document) of clusters held."""
        self._events.put(("publish", dict(health)))

    def published(self) -> Mapping[str, Stored]:
        """Every cluster's health znode as last read (any thread; do not change it)."""
        return self._health

    def owner(self, cluster_id: str) -> Optional[str]:
        """Who polls the cluster: this instance, or the lock's holder as last seen."""
        return self.id if cluster_id in self._announced else self._owners.get(cluster_id)

    def connected(self) -> float:
        return 1.0 if self._connected else 0.0

    def members(self) -> float:
        return float(len(self._members)) if self._joined else 0.0

    def announced(self) -> frozenset[str]:
        """The clusters last handed to `on_held` (any thread)."""
        return self._announced

    def owned(self) -> float:
        return float(len(self._announced))

    # -- the coordination thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            expiry = None if self._suspended_at is None else self._suspended_at + self._settings.session_timeout
            timers = (self._clean_at, self._read_at if self._stale else None) if self._connected and self._joined else ()
            wake = min((t for t in (expiry, self._connect_by, *timers) if t is not None), default=None)
            try:
                event = self._events.get(timeout=None if wake is None else max(0.0, wake - time.monotonic()))
            except queue.Empty:
                event = ("tick", None)
            if expiry is not None and time.monotonic() >= expiry:
                self._drop(f"no contact with ZooKeeper for {self._settings.session_timeout:g}s: "
                           "the session is expired, dropping every cluster until it reconnects")
                self._suspended_at = None
            if self._connect_by is not None and time.monotonic() >= self._connect_by:
                self._connect_by = None
                if not self._connected:
                    log.warning("coordination: no ZooKeeper answered at %s ([coordination] hosts) within %gs: "
                                "polling no cluster until one does", self._settings.hosts, self._settings.session_timeout)
            if event == _STOP:
                return
            try:
                self._handle(*event)
                self._sync()
            except KazooException as exc:  # connection trouble: the next state event resumes
                log.warning("coordination: ZooKeeper operation failed (%s), waiting for the connection", plain(exc))
                retry = time.monotonic() + PEER_READ_EVERY  # timers past due must not spin meanwhile
                self._read_at, self._clean_at = max(self._read_at, retry), max(self._clean_at, retry)
            except Exception:
                log.exception("coordination loop error")
                self._on_error("coordination")

    def _handle(self, kind: str, arg: object) -> None:
        if kind == "state" or kind == "check":
            self._state(self._client.state if kind == "check" else arg)
        elif kind in self._dirty:
            self._dirty[kind] = True
        elif kind == "clusters":
            assert isinstance(arg, frozenset)
            self._clusters = arg
        elif kind == "lock_gone":
            self._waiting.discard(str(arg))
        elif kind == "released":
            assert isinstance(arg, tuple)
            self._release(*arg)
        elif kind == "publish":
            assert isinstance(arg, dict)
            self._unpublished.update(arg)
        elif kind == "health_data":
            self._stale.add(str(arg))

    def _state(self, state: object) -> None:
        if state == KazooState.CONNECTED:
            was, self._connected, self._suspended_at = self._connected, True, None  # before the line: the metric agrees
            self._connect_by = None
            if not was:
                log.info("coordination: connected to ZooKeeper (%s)", self._settings.hosts)
            if not self._joined:
                self._join()
            self._dirty = {"members": True, "locks": True, "health": True}
        elif state == KazooState.SUSPENDED:
            was, self._connected = self._connected, False  # before the line: the metric agrees
            if was:
                self._suspended_at = time.monotonic()
                log.warning("coordination: ZooKeeper connection suspended: polling the %d held clusters "
                            "until the session expires (%gs)", len(self._held), self._settings.session_timeout)
        elif state == KazooState.LOST:
            self._connected, self._suspended_at = False, None
            self._drop("ZooKeeper session lost: dropping every cluster until a new session joins")

    def _join(self) -> None:
        """Register this instance's member znode (ours already if the session survived)."""
        data = json.dumps({"id": self.id, "listen": self._listen}).encode()
        try:
            self._client.create(f"{self._members_path}/{quote(self.id, safe='')}", data, ephemeral=True, makepath=True)
        except NodeExistsError:
            pass
        self._client.ensure_path(self._locks_path)
        self._client.ensure_path(self._health_path)
        self._give_up_locks()
        self._joined, self._waiting, self._stale = True, set(), set(self._health)  # a new session: watches gone
        log.info("coordination: joined as %s", self.id)

    def _give_up_locks(self) -> None:
        """Delete the locks still ours from before a drop: a session that outlived the drop (a
        ZooKeeper restart restores sessions) keeps them, and the clusters now assigned to
        others would be polled by nobody. Those assigned here are taken again by `_sync`."""
        names = self._client.get_children(self._locks_path)
        pending = [(n, self._client.get_async(f"{self._locks_path}/{n}")) for n in names]
        given_up = 0
        for name, result in pending:
            try:
                data, stat = result.get()
                if data.decode(errors="replace") == self.id:
                    self._client.delete(f"{self._locks_path}/{name}", version=stat.version)
                    given_up += 1
            except (NoNodeError, BadVersionError):
                continue
        if given_up:
            log.info("coordination: gave up %d cluster locks kept from before the clusters were dropped", given_up)

    def _drop(self, why: str) -> None:
        """Stop polling everything at once (the locks are gone or going with the session)."""
        if self._joined or self._held or self._releasing:
            log.warning("coordination: %s", why)
        self._joined = False
        self._held, self._releasing, self._waiting, self._unlock, self._final = set(), set(), set(), {}, {}
        self._unpublished = {}
        self._owners = {}
        self._announce()

    def _sync(self) -> None:
        """Read what changed, then hold exactly the clusters assigned to this instance."""
        if not (self._connected and self._joined):
            return
        if self._dirty["members"]:
            self._dirty["members"] = False
            names = self._client.get_children(self._members_path, watch=self._watch("members"))
            members = tuple(sorted(unquote(n) for n in names))
            previous, self._members = self._members, members  # before the line: coordination_members agrees
            if members != previous:
                log.info("coordination: %d members: %s", len(members), ", ".join(members))
        if self._dirty["locks"]:
            self._dirty["locks"] = False
            self._read_owners()
        self._read_health()
        self._unpublished = {c: d for c, d in self._unpublished.items() if c in self._held or c in self._releasing}
        self._write_health(self._unpublished)  # kept for the next try if the connection fails
        self._unpublished = {}
        for cluster, stopped_at in sorted(self._unlock.items()):
            self._hand_over(cluster, stopped_at)
            del self._unlock[cluster]
        mine = assigned(self.id, self._clusters, self._members)
        for cluster in self._held - mine:
            self._held.discard(cluster)
            self._releasing.add(cluster)
        for cluster in sorted(mine - self._held - self._releasing - self._waiting):
            self._acquire(cluster)
        self._announce()
        self.settled.set()
        if time.monotonic() >= self._clean_at:
            self._clean_at = time.monotonic() + self._cleanup_every
            self._clean()

    def _acquire(self, cluster: str) -> None:
        """Take the cluster's lock if free (or ours); else watch it for its deletion."""
        path = f"{self._locks_path}/{quote(cluster, safe='')}"
        try:
            self._client.create(path, self.id.encode(), ephemeral=True)
            self._held.add(cluster)
            self._take_over(cluster)
            return
        except NodeExistsError:
            pass
        try:
            data, _ = self._client.get(path, watch=self._watch_lock(cluster))
        except NoNodeError:
            self._events.put(("lock_gone", cluster))  # deleted meanwhile: try again
            return
        if data.decode(errors="replace") == self.id:
            self._held.add(cluster)
        else:
            self._waiting.add(cluster)

    def _hand_over(self, cluster: str, stopped_at: float) -> None:
        """Publish the cluster's last health, say when this instance stopped polling it, then
        delete its lock."""
        name = quote(cluster, safe='')
        health = self._final.pop(cluster, None)
        if health is not None:
            self._write_health({cluster: health})
        self._put(f"{self._handover_path}/{name}", json.dumps({"stopped_at": stopped_at, "by": self.id}).encode())
        try:
            self._client.delete(f"{self._locks_path}/{name}")
        except NoNodeError:
            pass

    def _take_over(self, cluster: str) -> None:
        """After taking a lock: the health its last owner published, and when it stopped
        polling, if it handed it over."""
        health = f"{self._health_path}/{quote(cluster, safe='')}"
        try:
            data, stat = self._client.get(health)
            self._taken[cluster] = Stored(health, data, stat.mzxid)
        except NoNodeError:
            pass
        path = f"{self._handover_path}/{quote(cluster, safe='')}"
        try:
            data, _ = self._client.get(path)
            self._client.delete(path)
        except NoNodeError:
            return
        try:
            self._since[cluster] = float(json.loads(data)["stopped_at"])
        except (ValueError, KeyError, TypeError):
            log.warning("coordination: unreadable handover of cluster %s, ignored", cluster)

    def _release(self, clusters: frozenset[str], stopped_at: float, health: Mapping[str, bytes]) -> None:
        """Queue the locks of released clusters for deletion (`_sync`), after their health,
        unless assigned here again meanwhile."""
        mine = assigned(self.id, self._clusters, self._members) if self._joined else frozenset()
        for cluster in clusters & self._releasing:
            self._releasing.discard(cluster)
            if cluster in mine:
                self._held.add(cluster)
            else:
                self._unlock[cluster] = stopped_at
                if cluster in health:
                    self._final[cluster] = health[cluster]

    def _put(self, path: str, data: bytes) -> None:
        try:
            self._client.set(path, data)
        except NoNodeError:
            self._client.create(path, data, makepath=True)

    def _write_health(self, documents: Mapping[str, bytes]) -> None:
        """Write health documents, pipelined; a znode not there yet is created."""
        pending = [(c, d, self._client.set_async(f"{self._health_path}/{quote(c, safe='')}", d))
                   for c, d in documents.items()]
        for cluster, data, result in pending:
            try:
                result.get()
            except NoNodeError:
                try:
                    self._client.create(f"{self._health_path}/{quote(cluster, safe='')}", data, makepath=True)
                except NodeExistsError:  # created meanwhile (it is ours: we hold the lock)
                    self._client.set(f"{self._health_path}/{quote(cluster, safe='')}", data)

    def _read_health(self) -> None:
        """Read the health znodes listed anew or whose data watch fired (pipelined); each
        read sets its data watch again."""
        if self._dirty["health"]:
            self._dirty["health"] = False
            names = self._client.get_children(self._health_path, watch=self._watch("health"))
            listed = {unquote(n) for n in names}
            self._stale |= listed - set(self._health)
            self._stale |= set(self._health) - listed  # gone: confirmed by the read below
        if not self._stale or time.monotonic() < self._read_at:
            return
        self._read_at = time.monotonic() + PEER_READ_EVERY
        stale, self._stale = sorted(self._stale - self._held), set()  # held: marked again when released
        if not stale:
            return
        pending = [(c, self._client.get_async(f"{self._health_path}/{quote(c, safe='')}", watch=self._watch_health(c)))
                   for c in stale]
        health = dict(self._health)
        for cluster, result in pending:
            try:
                data, stat = result.get()
                health[cluster] = Stored(f"{self._health_path}/{quote(cluster, safe='')}", data, stat.mzxid)
            except NoNodeError:
                health.pop(cluster, None)
        self._health = health

    def _clean(self) -> None:
        """Delete the handover and health znodes of clusters absent from the configuration
        and unmodified for the cleanup grace (pipelined; a znode written meanwhile is kept)."""
        pending = []
        for folder in (self._handover_path, self._health_path):
            try:
                names = self._client.get_children(folder)
            except NoNodeError:
                continue
            for name in names:
                if unquote(name) not in self._clusters:
                    pending.append((f"{folder}/{name}", self._client.exists_async(f"{folder}/{name}")))
        deletions = []
        for path, result in pending:
            stat = result.get()
            if stat is not None and time.time() - stat.mtime / 1000.0 > self._cleanup_grace:
                deletions.append((path, self._client.delete_async(path, version=stat.version)))
        deleted = 0
        for path, result in deletions:
            try:
                result.get()
                deleted += 1
            except (NoNodeError, BadVersionError):
                pass
        if deleted:
            log.info("coordination: deleted %d handover and health znodes of clusters no longer configured", deleted)

    def _read_owners(self) -> None:
        """Every lock's holder (pipelined reads), with a watch on the locks' list."""
        names = self._client.get_children(self._locks_path, watch=self._watch("locks"))
        pending = [(unquote(n), self._client.get_async(f"{self._locks_path}/{n}")) for n in names]
        owners: dict[str, str] = {}
        for cluster, result in pending:
            try:
                owners[cluster] = result.get()[0].decode(errors="replace")
            except NoNodeError:
                continue
        self._owners = owners

    def _announce(self) -> None:
        held = frozenset(self._held)
        if held != self._announced:
            left, self._announced = self._announced - held, held  # before the line: coordination_clusters_owned agrees
            if left:  # others' now: their health shown again once read (not read while held here)
                self._health = {c: h for c, h in self._health.items() if c not in left}
                self._stale |= left
            since, self._since = {c: t for c, t in self._since.items() if c in held}, {}
            taken, self._taken = {c: h for c, h in self._taken.items() if c in held}, {}
            self._on_held(held, since, taken)
            log.info("coordination: holding %d clusters (%d members)", len(held), len(self._members))

    def _watch(self, kind: str) -> Callable[[object], None]:
        if kind not in self._watchers:
            self._watchers[kind] = lambda event: self._events.put((kind, None))
        return self._watchers[kind]

    def _watch_health(self, cluster: str) -> Callable[[object], None]:
        key = "health:" + cluster
        if key not in self._watchers:
            self._watchers[key] = lambda event: self._events.put(("health_data", cluster))
        return self._watchers[key]

    def _watch_lock(self, cluster: str) -> Callable[[object], None]:
        key = "lock:" + cluster
        if key not in self._watchers:
            self._watchers[key] = lambda event: self._events.put(("lock_gone", cluster))
        return self._watchers[key]
