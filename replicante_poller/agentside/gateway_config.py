"""The `[gateway]` INI section: the verifying reverse proxy in front of an agent (DESIGN 7)."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

from ..config import Section, check_private_key, sections
from ..converters import file_problem, to_agent_url, to_agents, to_duration, to_listen, to_size
from ..errors import ConfigError, os_problem
from ..limits import MAX_BODY

KEY_ID = re.compile(r"ed25519-[0-9a-f]{16}")


@dataclasses.dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs, validated."""

    source: str
    listen: tuple[str, int]
    upstream: str
    agent_urls: tuple[str, ...]  # the URL(s) Core dials for this agent: signed actions must name one
    keys: tuple[str, ...]  # keyring entries: PATH[;kid=..][;not_before=..][;not_after=..]
    replay_store: str
    upstream_ca_file: Optional[str] = None
    upstream_client_cert: Optional[str] = None  # real agents with actions on demand a client certificate
    upstream_client_key: Optional[str] = None
    server_cert: Optional[str] = None
    server_key: Optional[str] = None
    revoked: frozenset[str] = frozenset()
    max_body: int = MAX_BODY
    cluster_id: Optional[str] = None
    node_id: Optional[str] = None
    timeout: float = 10.0
    metrics_listen: Optional[tuple[str, int]] = None  # /gateway/metrics, on its own (local) listener only


def _revoked(text: str) -> frozenset[str]:
    ids = [k.strip() for k in text.split(",") if k.strip()]
    for key_id in ids:
        if not KEY_ID.fullmatch(key_id):
            raise ValueError(f"{key_id!r} is not a key id (ed25519- and 16 hex digits)")
    return frozenset(ids)


def _keys(section: Section) -> tuple[str, ...]:
    entries = []
    for entry in section.get("keys", str, "").split(","):
        if entry.strip():
            path, sep, options = entry.strip().partition(";")
            resolved = str((section.base_dir / os.path.expanduser(path.strip())).resolve())
            problem = file_problem(resolved)
            if problem is not None:
                raise section.error("keys", problem)
            entries.append(resolved + sep + options)
    if not entries:
        raise section.error("keys", "at least one public key file is required")
    return tuple(entries)


def read_gateway(section: Section) -> GatewaySettings:
    """Validate a `[gateway]` section."""
    listen = section.get("listen", to_listen, None)
    upstream = section.get("upstream", to_agent_url, None)
    agent_urls = section.get("agent_urls", to_agents, ())
    replay_store = section.path("replay_store")
    for key, value in (("listen", listen), ("upstream", upstream), ("agent_urls", agent_urls or None),
                       ("replay_store", replay_store)):
        if value is None:
            raise section.error(key, "required" if key != "agent_urls" else
                                "required: the URL(s) Core polls this agent at, as in its discovery")
    settings = GatewaySettings(
        source=section.source, listen=listen, upstream=upstream, agent_urls=agent_urls, keys=_keys(section),
        replay_store=replay_store,
        upstream_ca_file=section.path("upstream_ca_file"), upstream_client_cert=section.path("upstream_client_cert"),
        upstream_client_key=section.path("upstream_client_key"), server_cert=section.path("server_cert"),
        server_key=section.path("server_key"), revoked=section.get("revoked", _revoked, frozenset()),
        max_body=section.get("max_body", to_size, MAX_BODY),
        cluster_id=section.get("cluster_id", str, None) or None, node_id=section.get("node_id", str, None) or None,
        timeout=section.get("timeout", to_duration, 10.0),
        metrics_listen=section.get("metrics_listen", to_listen, None),
    )
    section.finish()
    for key in ("upstream_ca_file", "upstream_client_cert", "upstream_client_key", "server_cert", "server_key"):
        problem = file_problem(getattr(settings, key))
        if problem is not None:
            raise section.error(key, problem)
    if (settings.upstream_client_cert is None) != (settings.upstream_client_key is None):
        raise section.error("upstream_client_cert", "upstream_client_cert and upstream_client_key go together")
    if (settings.server_cert is None) != (settings.server_key is None):
        raise section.error("server_cert", "server_cert and server_key go together")
    for key in ("upstream_client_key", "server_key"):
        check_private_key(section, key, getattr(settings, key))
    if settings.metrics_listen is not None and settings.metrics_listen[1] != 0 \
            and settings.metrics_listen[1] == settings.listen[1]:
        raise section.error("metrics_listen", "must be another port than listen (metrics are never served to the "
                                              "clients of listen)")
    if (settings.cluster_id is None) != (settings.node_id is None):
        raise section.error("cluster_id", "cluster_id and node_id go together (or neither: read from the upstream)")
    return settings


def parse_gateway_config(text: str, source: str = "<string>", base_dir: Optional[Path] = None) -> GatewaySettings:
    """A gateway configuration file: one `[gateway]` section."""
    found = None
    for section in sections(text, source, base_dir or Path.cwd()):
        if section.name != "gateway":
            raise section.error(None, "unknown section (a gateway configuration has only [gateway])")
        found = section
    if found is None:
        raise ConfigError(source, "gateway", None, "missing section")
    return read_gateway(found)


def load_gateway_config(path: str) -> GatewaySettings:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), None, None, f"cannot read: {os_problem(exc)}") from None
    return parse_gateway_config(text, str(file), file.resolve().parent)
