"""Discovery: which agents exist, from the configuration and discovery files.

Discovery files hold `[cluster:ID]` sections like the main file, or Replicante Core's
file-discovery records in JSON (`.json`, or text starting with `[{`) or YAML (`.yaml`,
`.yml`: Core's own discovery files): a list of `{"cluster_id": ..., "display_name": ...,
"nodes": [...]}` where a node is an agent URL (Core up to 0.7) or an object with its
`agent_address` (replisdk's platform discovery records). The result is a tuple of Targets:
the only thing the scheduler sees.
"""
from __future__ import annotations

import dataclasses
import glob
import json
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..config import ClusterConfig, Config, PollSettings, TlsSettings, read_cluster, sections
from ..converters import to_agents, to_cluster_id
from ..errors import ConfigError, os_problem
from ..filestamp import Stamp, file_stamp


@dataclasses.dataclass(frozen=True)
class Target:
    """One agent to poll, with the settings of its cluster."""

    cluster_id: str
    url: str
    display_name: Optional[str]
    poll: PollSettings
    tls: TlsSettings

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the target: the same cluster and URL is the same target."""
        return (self.cluster_id, self.url)


def discovery_files(config: Config) -> list[Path]:
    """The files the discovery globs match now, sorted for a stable order."""
    found: set[str] = set()
    for pattern in config.discovery.files:
        found.update(glob.glob(pattern))
    return [Path(p) for p in sorted(found)]


def check_globs(config: Config) -> None:
    """ConfigError naming `[discovery] files` when one of its globs matches no file: a typo
    must not start a service polling nothing (run and check-config; a file removed while
    running is read as no cluster)."""
    for pattern in config.discovery.files:
        if not glob.glob(pattern):
            raise ConfigError(config.source, "discovery", "files", f"{pattern} matches no file")


def discovery_stamp(config: Config) -> Stamp:
    """Names, mtimes and sizes of the discovery files: changes when any file does."""
    return file_stamp(discovery_files(config))


def parse_json_discovery(text: str, source: str, poll: PollSettings, tls: TlsSettings) -> list[ClusterConfig]:
    """Replicante's JSON file-discovery form."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(source, None, None, f"invalid JSON: {exc}") from None
    return discovery_records(document, source, poll, tls)


def parse_yaml_discovery(text: str, source: str, poll: PollSettings, tls: TlsSettings) -> list[ClusterConfig]:
    """Replicante Core's YAML discovery files (the same records; an empty file is no cluster)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, None, "invalid YAML: " + " ".join(str(exc).split())) from None
    return discovery_records([] if document is None else document, source, poll, tls)


def _node_url(node: Any) -> Optional[str]:
    """A node's agent URL: the string itself, or a platform record's `agent_address`."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and isinstance(node.get("agent_address"), str):
        return node["agent_address"]
    return None


RECORD_KEYS = frozenset({"cluster_id", "display_name", "nodes"})


def discovery_records(document: Any, source: str, poll: PollSettings, tls: TlsSettings) -> list[ClusterConfig]:
    """Clusters from decoded discovery records, each error naming the record and the key."""
    if not isinstance(document, list):
        raise ConfigError(source, None, None, "expected a list of clusters")
    clusters = []
    for index, entry in enumerate(document):
        where = f"entry {index}"  # shown as `[entry 0] nodes`: the record (from 0) and its key
        if not isinstance(entry, dict) or not isinstance(entry.get("cluster_id"), str):
            raise ConfigError(source, where, "cluster_id", "each entry needs a string cluster_id")
        try:
            to_cluster_id(entry["cluster_id"])
        except ValueError as exc:
            raise ConfigError(source, where, "cluster_id", str(exc)) from None
        unknown = sorted(set(entry) - RECORD_KEYS)
        if unknown:
            raise ConfigError(source, where, str(unknown[0]), "unknown key (a record has cluster_id, display_name and nodes)")
        nodes = [_node_url(n) for n in entry.get("nodes")] if isinstance(entry.get("nodes"), list) else None
        if nodes is None or None in nodes:
            raise ConfigError(source, where, "nodes", "expected a list of agent URLs (or of objects with an agent_address)")
        display = entry.get("display_name")
        if display is not None and not isinstance(display, str):
            raise ConfigError(source, where, "display_name", "expected a string or null")
        try:
            agents = to_agents(",".join(nodes))
        except ValueError as exc:
            raise ConfigError(source, where, "nodes", str(exc)) from None
        clusters.append(ClusterConfig(entry["cluster_id"], agents, display, poll, tls))
    return clusters


def looks_like_json_list(text: str) -> bool:
    """`[{...` or `[]`: JSON; `[cluster:...`: INI."""
    stripped = text.lstrip()
    return stripped.startswith("[") and stripped[1:].lstrip()[:1] in ("{", "]")


def read_discovery_file(path: Path, config: Config) -> list[ClusterConfig]:
    """The clusters one discovery file declares, in whichever form it uses."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), None, None, f"cannot read: {os_problem(exc)}") from None
    poll, tls = config.poller.poll, config.tls
    if path.suffix in (".yaml", ".yml"):
        return parse_yaml_discovery(text, str(path), poll, tls)
    if path.suffix == ".json" or looks_like_json_list(text):
        return parse_json_discovery(text, str(path), poll, tls)
    clusters = []
    for section in sections(text, str(path), path.resolve().parent):
        if not section.name.startswith("cluster:"):
            raise section.error(None, "discovery files hold only [cluster:ID] sections")
        clusters.append(read_cluster(section, poll, tls))
    return clusters


def merge(clusters: Iterable[ClusterConfig], configured: dict[str, ClusterConfig]) -> list[Target]:
    """Targets of all clusters; a cluster configured in the main file keeps its settings."""
    targets: dict[tuple[str, str], Target] = {}
    first: dict[str, ClusterConfig] = dict(configured)
    for cluster in clusters:
        own = first.setdefault(cluster.cluster_id, cluster)  # the first declaration sets a cluster's settings
        display = own.display_name or cluster.display_name
        for url in cluster.agents:
            target = Target(cluster.cluster_id, url, display, own.poll, own.tls)
            targets.setdefault(target.key, target)
    return list(targets.values())


def discover(config: Config, discovered: Iterable[ClusterConfig] = ()) -> tuple[Target, ...]:
    """All targets: the configuration's clusters, every discovery file's, then `discovered`
    (what the HTTP discovery last answered)."""
    clusters = [(config.source, c) for c in config.clusters]
    for path in discovery_files(config):
        clusters.extend((str(path), c) for c in read_discovery_file(path, config))
    clusters.extend(("HTTP discovery", c) for c in discovered)
    _one_cluster_per_agent(clusters)
    configured = {c.cluster_id: c for c in config.clusters}
    return tuple(merge((c for _, c in clusters), configured))


def _one_cluster_per_agent(clusters: Iterable[tuple[str, ClusterConfig]]) -> None:
    """ConfigError when one agent URL is declared in two clusters (an agent manages one
    node of one cluster: the second is a copy-paste mistake)."""
    first: dict[str, tuple[str, str]] = {}
    for source, cluster in clusters:
        for url in cluster.agents:
            cluster_id, where = first.setdefault(url, (cluster.cluster_id, source))
            if cluster_id != cluster.cluster_id:
                raise ConfigError(source, f"cluster:{cluster.cluster_id}", "agents",
                                  f"agent {url} is also in cluster {cluster_id} ({where}); an agent belongs to one cluster")
