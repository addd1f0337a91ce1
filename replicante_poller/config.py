"""INI configuration parsed once into frozen, validated settings (DESIGN section 5).

`parse_config(text)` is the entry for tests, `load_config(path)` for the service.
Nothing downstream sees a ConfigParser or a raw string.
"""
from __future__ import annotations

import configparser
import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, TypeVar

from .agentapi import AUTO
from .converters import (
    file_problem,
    private_key_problem,
    to_agents,
    to_api,
    to_bool,
    to_cluster_id,
    to_duration,
    to_http_url,
    to_json_object,
    to_listen,
    to_min_version,
    to_pins,
    to_positive_int,
    to_size,
    to_zk_hosts,
)
from .errors import ConfigError, os_problem
from .limits import ACTION_TTL, FLAP_THRESHOLD, FLAP_WINDOW, MAX_ACTION_TTL, MAX_BODY, MAX_RETRY_AFTER, MAX_SHARDS_BODY

T = TypeVar("T")

DEFAULT_LISTEN = ("127.0.0.1", 9102)
MAX_DISPATCH_WORKERS = 8  # each holds one connection at a time (the service budgets DISPATCH_FDS for them)


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """How agents are verified: CA, optional client certificate, minimum version, pins."""

    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    min_version: str = "1.2"
    pins: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class PollSettings:
    """Timing and limits of one target's polls."""

    interval: float = 15.0
    timeout: float = 5.0
    max_body: int = MAX_BODY  # agent and datastore info, and any other answer
    max_shards_body: int = MAX_SHARDS_BODY  # the shards answer: one entry per shard, thousands on big brokers
    api: str = AUTO  # the agents' generation: auto (learned per agent), legacy or replisdk


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A `[cluster:ID]` section: its agents and the settings they are polled with."""

    cluster_id: str
    agents: tuple[str, ...]
    display_name: Optional[str]
    poll: PollSettings
    tls: TlsSettings


@dataclasses.dataclass(frozen=True)
class PollerSettings:
    """The `[poller]` section."""

    poll: PollSettings = PollSettings()
    workers: int = 16
    fall: int = 3
    rise: int = 2
    state_dir: Optional[str] = None
    flap_window: float = FLAP_WINDOW
    flap_threshold: int = FLAP_THRESHOLD
    max_retry_after: float = MAX_RETRY_AFTER


@dataclasses.dataclass(frozen=True)
class DiscoverySettings:
    """The `[discovery]` section: discovery files, Core's HTTP discovery, and how often both
    are read again."""

    files: tuple[str, ...] = ()
    refresh: float = 5.0  # how often the files (and TLS files) are checked and the HTTP discovery asked
    http: Optional[str] = None  # a server speaking Core's HTTP discovery protocol
    http_ca_file: Optional[str] = None  # its CA (default: the system's)
    http_token_file: Optional[str] = None  # a bearer token for it
    http_body: str = "{}"  # the JSON object POSTed with each page's cursor
    http_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """The `[http]` section: where /metrics, the status API and page listen."""

    host: str = DEFAULT_LISTEN[0]
    port: int = DEFAULT_LISTEN[1]
    tls_cert_file: Optional[str] = None  # with tls_key_file: HTTPS (the bearer token never crosses in clear)
    tls_key_file: Optional[str] = None
    tls_client_ca_file: Optional[str] = None  # clients must present a certificate this CA signed

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


@dataclasses.dataclass(frozen=True)
class ActionsSettings:
    """The `[actions]` section: signed actions sent to agents."""

    enabled: bool = False
    signing_key: Optional[str] = None
    ttl: float = float(ACTION_TTL)
    journal: Optional[str] = None
    max_attempts: int = 5
    backoff: float = 1.0  # first retry delay, doubled per attempt, capped at 60s
    track_interval: float = 2.0  # how often scheduled actions are followed on the agent
    api_token_file: Optional[str] = None
    dispatch_workers: int = 4  # agents served at once; one agent is served by one worker at a time


@dataclasses.dataclass(frozen=True)
class CoordinationSettings:
    """The `[coordination]` section: several instances sharing the fleet (DESIGN section 9)."""

    backend: str = "none"  # none: this instance polls everything; zookeeper
    hosts: str = ""  # ZooKeeper's host:port,host:port
    path: str = "/replicante-poller"
    session_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    source: str
    poller: PollerSettings
    tls: TlsSettings
    discovery: DiscoverySettings
    http: HttpSettings
    clusters: tuple[ClusterConfig, ...]
    actions: ActionsSettings = ActionsSettings()
    coordination: CoordinationSettings = CoordinationSettings()


class Section:
    """One INI section read key by key; every error names file, section and key."""

    def __init__(self, source: str, name: str, items: Mapping[str, str], base_dir: Path):
        self.source, self.name, self.base_dir = source, name, base_dir
        self._items = dict(items)
        self._used: set[str] = set()

    def error(self, key: Optional[str], message: str) -> ConfigError:
        """A ConfigError located at `key` of this section."""
        return ConfigError(self.source, self.name, key, message)

    def get(self, key: str, convert: Callable[[str], T], default: T) -> T:
        """The converted value of `key`, or `default` when the key is absent."""
        self._used.add(key)
        raw = self._items.get(key)
        if raw is None:
            return default
        try:
            return convert(raw.strip())
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def has(self, key: str) -> bool:
        """Whether `key` is present."""
        return key in self._items

    def path(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """A file path, resolved against the configuration file's folder."""
        value = self.get(key, str, default)
        if value is None or value == "":
            return None
        return str((self.base_dir / os.path.expanduser(value)).resolve())

    def finish(self) -> None:
        """Refuse keys nobody asked for: a typo must not become a silent default."""
        unknown = sorted(set(self._items) - self._used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def read_poll(section: Section, base: PollSettings) -> PollSettings:
    """Poll settings of a section, each key defaulting to `base`."""
    poll = PollSettings(
        interval=section.get("interval", to_duration, base.interval),
        timeout=section.get("timeout", to_duration, base.timeout),
        max_body=section.get("max_body", to_size, base.max_body),
        max_shards_body=section.get("max_shards_body", to_size, base.max_shards_body),
        api=section.get("api", to_api, base.api),
    )
    if poll.timeout >= poll.interval:
        key = "timeout" if section.has("timeout") else "interval"
        raise section.error(key, f"timeout ({poll.timeout:g}s) must be shorter than interval ({poll.interval:g}s)")
    return poll


def read_tls(section: Section, base: TlsSettings) -> TlsSettings:
    """TLS settings of a section, each key defaulting to `base`; files must exist."""
    tls = TlsSettings(
        ca_file=section.path("ca_file", base.ca_file),
        client_cert=section.path("client_cert", base.client_cert),
        client_key=section.path("client_key", base.client_key),
        min_version=section.get("min_version", to_min_version, base.min_version),
        pins=section.get("pins", to_pins, base.pins),
    )
    for key in ("ca_file", "client_cert", "client_key"):
        problem = file_problem(getattr(tls, key))
        if problem is not None:
            raise section.error(key, problem)
    if (tls.client_cert is None) != (tls.client_key is None):
        raise section.error("client_cert", "client_cert and client_key go together")
    check_private_key(section, "client_key", tls.client_key if section.has("client_key") else None)
    return tls


def check_private_key(section: "Section", key: str, path: Optional[str]) -> None:
    """ConfigError at `key` when its private key file is a public key or readable by others."""
    problem = private_key_problem(path) if path is not None else None
    if problem is not None:
        raise section.error(key, problem)


def read_cluster(section: Section, poll: PollSettings, tls: TlsSettings) -> ClusterConfig:
    """A `[cluster:ID]` section, overriding the global poll and TLS settings."""
    try:
        cluster_id = to_cluster_id(section.name.partition(":")[2])
    except ValueError as exc:
        raise section.error(None, str(exc)) from None
    cluster = ClusterConfig(
        cluster_id=cluster_id,
        agents=section.get("agents", to_agents, ()),
        display_name=section.get("display_name", str, None) or None,
        poll=read_poll(section, poll),
        tls=read_tls(section, tls),
    )
    if section.has("agents") and not cluster.agents:
        raise section.error("agents", "is empty (list agent URLs, or remove the key to only set this cluster's settings)")
    section.finish()
    return cluster


def sections(text: str, source: str, base_dir: Path) -> Iterator[Section]:
    """The sections of INI `text`, with parser errors located in `source`."""
    # Inline comments as operators write them: ` ; why` or ` # why` after a value (a space
    # before the mark; no value the configuration takes contains one).
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00defaults",
                                       inline_comment_prefixes=(";", "#"))
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(source, None, None, " ".join(str(exc).split())) from None
    for name in parser.sections():
        yield Section(source, name, parser[name], base_dir)


KNOWN_SECTIONS = ("poller", "tls", "discovery", "http", "actions", "coordination")


def read_http(section: Section) -> HttpSettings:
    """The `[http]` section: where the listener binds, and its optional TLS."""
    host, port = section.get("listen", to_listen, DEFAULT_LISTEN)
    http = HttpSettings(host, port, tls_cert_file=section.path("tls_cert_file"),
                        tls_key_file=section.path("tls_key_file"), tls_client_ca_file=section.path("tls_client_ca_file"))
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        problem = file_problem(getattr(http, key))
        if problem is not None:
            raise section.error(key, problem)
    if (http.tls_cert_file is None) != (http.tls_key_file is None):
        raise section.error("tls_cert_file", "tls_cert_file and tls_key_file go together")
    if http.tls_client_ca_file is not None and http.tls_cert_file is None:
        raise section.error("tls_client_ca_file", "needs tls_cert_file and tls_key_file (client certificates need HTTPS)")
    check_private_key(section, "tls_key_file", http.tls_key_file)
    return http


def read_actions(section: Section, state_dir: Optional[str], coordinated: bool = False) -> ActionsSettings:
    """The `[actions]` section; when enabled a signing key and a journal are required (the
    journal is ZooKeeper's when `coordinated`: then `journal` must not be set)."""
    if coordinated and section.has("journal"):
        raise section.error("journal", "with [coordination] backend = zookeeper the action journal lives in ZooKeeper "
                                       "(under [coordination] path): remove journal")
    default_journal = str(Path(state_dir) / "actions.db") if state_dir and not coordinated else None
    default = ActionsSettings()
    actions = ActionsSettings(
        enabled=section.get("enabled", to_bool, default.enabled),
        signing_key=section.path("signing_key"),
        ttl=section.get("ttl", to_duration, default.ttl),
        journal=section.path("journal", default_journal),
        max_attempts=section.get("max_attempts", to_positive_int, default.max_attempts),
        backoff=section.get("backoff", to_duration, default.backoff),
        track_interval=section.get("track_interval", to_duration, default.track_interval),
        api_token_file=section.path("api_token_file"),
        dispatch_workers=section.get("dispatch_workers", to_positive_int, default.dispatch_workers),
    )
    if actions.dispatch_workers > MAX_DISPATCH_WORKERS:
        raise section.error("dispatch_workers", f"must be at most {MAX_DISPATCH_WORKERS}, got {actions.dispatch_workers}")
    if not 1 <= actions.ttl <= MAX_ACTION_TTL:
        raise section.error("ttl", f"must be between 1s and {MAX_ACTION_TTL:g}s, got {actions.ttl:g}s")
    if not actions.enabled and actions.signing_key is not None:
        raise section.error("signing_key", "set while actions are disabled (set enabled = true, or remove signing_key)")
    if actions.enabled and actions.signing_key is None:
        raise section.error("signing_key", "required when actions are enabled (make one with `replicante-poller keygen`)")
    if actions.enabled and actions.journal is None and not coordinated:
        raise section.error("journal", "required when actions are enabled (or set [poller] state_dir)")
    for key in ("signing_key", "api_token_file"):
        problem = file_problem(getattr(actions, key))
        if problem is not None:
            raise section.error(key, problem)
    check_private_key(section, "signing_key", actions.signing_key)
    return actions


def read_coordination(section: Section) -> CoordinationSettings:
    """The `[coordination]` section; zookeeper needs hosts."""
    default = CoordinationSettings()

    def backend(value: str) -> str:
        if value not in ("none", "zookeeper"):
            raise ValueError(f"expected none or zookeeper, got {value!r}")
        return value

    coordination = CoordinationSettings(
        backend=section.get("backend", backend, default.backend),
        hosts=section.get("hosts", to_zk_hosts, default.hosts),
        path=section.get("path", str, default.path),
        session_timeout=section.get("session_timeout", to_duration, default.session_timeout),
    )
    if coordination.backend == "none":
        for key in ("hosts", "path", "session_timeout"):
            if section.has(key):  # a forgotten backend line: every instance would poll every cluster
                raise section.error(key, f"set while backend is none, where every instance polls every cluster alone "
                                         f"(set backend = zookeeper, or remove {key})")
        return coordination
    if not coordination.hosts:
        raise section.error("hosts", "required with backend = zookeeper (host:port, comma-separated)")
    if not coordination.path.startswith("/") or coordination.path.rstrip("/") == "" or "//" in coordination.path:
        raise section.error("path", f"must be an absolute ZooKeeper path such as /replicante-poller, got {coordination.path!r}")
    if not 1 <= coordination.session_timeout <= 60:
        raise section.error("session_timeout", f"must be between 1s and 60s, got {coordination.session_timeout:g}s")
    return coordination


def parse_config(text: str, source: str = "<string>", base_dir: Optional[Path] = None) -> Config:
    """Parse and validate a whole configuration file's text."""
    base = base_dir or Path.cwd()
    by_name = {}
    clusters = []
    for section in sections(text, source, base):
        if section.name.startswith("cluster:"):
            clusters.append(section)
        elif section.name in KNOWN_SECTIONS:
            by_name[section.name] = section
        else:
            raise section.error(None, "unknown section (expected poller, tls, discovery, http, actions, coordination or cluster:ID)")
    empty = {name: Section(source, name, {}, base) for name in KNOWN_SECTIONS}
    p, t, d, h, a, c = (by_name.get(name, empty[name]) for name in KNOWN_SECTIONS)

    poll = read_poll(p, PollSettings())
    default = PollerSettings()
    poller = PollerSettings(
        poll=poll,
        workers=p.get("workers", to_positive_int, default.workers),
        fall=p.get("fall", to_positive_int, default.fall),
        rise=p.get("rise", to_positive_int, default.rise),
        state_dir=p.path("state_dir"),
        flap_window=p.get("flap_window", to_duration, default.flap_window),
        flap_threshold=p.get("flap_threshold", to_positive_int, default.flap_threshold),
        max_retry_after=p.get("max_retry_after", to_duration, default.max_retry_after),
    )
    tls = read_tls(t, TlsSettings())
    globs = d.get("files", lambda v: tuple(g.strip() for g in v.split(",") if g.strip()), ())
    discovery = DiscoverySettings(
        files=tuple(str(base / os.path.expanduser(g)) for g in globs),
        refresh=d.get("refresh", to_duration, DiscoverySettings.refresh),
        http=d.get("http", to_http_url, None),
        http_ca_file=d.path("http_ca_file"),
        http_token_file=d.path("http_token_file"),
        http_body=d.get("http_body", to_json_object, DiscoverySettings.http_body),
        http_timeout=d.get("http_timeout", to_duration, DiscoverySettings.http_timeout),
    )
    for key in ("http_ca_file", "http_token_file"):
        problem = file_problem(getattr(discovery, key))
        if problem is not None:
            raise d.error(key, problem)
    if discovery.http is None and (discovery.http_ca_file or discovery.http_token_file):
        raise d.error("http", "required by http_ca_file and http_token_file")
    http = read_http(h)
    coordination = read_coordination(c)
    actions = read_actions(a, poller.state_dir, coordination.backend == "zookeeper")
    for section in (p, t, d, h, a, c):
        section.finish()
    return Config(
        source=source,
        poller=poller,
        tls=tls,
        discovery=discovery,
        http=http,
        clusters=tuple(read_cluster(s, poll, tls) for s in clusters),
        actions=actions,
        coordination=coordination,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse the configuration file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), None, None, f"cannot read: {os_problem(exc)}") from None
    return parse_config(text, source=str(file), base_dir=file.resolve().parent)
