"""Converters of INI values: each takes the text an operator wrote and returns the value,
or raises ValueError saying which forms are allowed (the caller names file, section, key).
Pure functions, shared by the service's and the gateway's configuration."""
from __future__ import annotations

import json
import os
import re
import stat
from typing import Optional
from urllib.parse import urlsplit

from .agentapi import AUTO, GENERATIONS
from .durations import parse_duration
from .errors import ConfigError, os_problem

_PIN = re.compile(r"sha256//[A-Za-z0-9+/]{43}=")
_CLUSTER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_ZK_HOST = re.compile(r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]+))?")


def to_positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def to_bool(text: str) -> bool:
    """`true/false`, `yes/no`, `on/off`, `1/0`."""
    value = text.lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


MAX_DURATION = 86400.0  # one day: no setting waits longer; more is a typo (or an overflow)


def to_duration(text: str) -> float:
    """A strictly positive duration of at most a day."""
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than a day, the longest allowed (use forms like 15s, 2m, 500ms, 1h, up to 24h)")
    return seconds


def to_size(text: str) -> int:
    """Bytes, with an optional KiB/MiB suffix: `65536`, `64KiB`, `1MiB`."""
    match = re.fullmatch(r"(\d+)\s*(KiB|MiB|B)?", text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (use forms like 65536, 64KiB, 1MiB)")
    value = int(match.group(1)) * {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}[match.group(2)]
    if value < 1:
        raise ValueError("must be at least one byte")
    return value


def to_min_version(text: str) -> str:
    """`1.2` or `1.3`."""
    if text not in ("1.2", "1.3"):
        raise ValueError(f"{text!r} is not a supported TLS version (use 1.2 or 1.3)")
    return text


def to_api(text: str) -> str:
    """The agents' API generation: `auto`, `legacy` or `replisdk`."""
    value = text.strip().lower()
    if value not in (AUTO,) + GENERATIONS:
        raise ValueError(f"{text!r} is not an agent API (use auto, legacy or replisdk)")
    return value


def to_pins(text: str) -> frozenset[str]:
    """Comma-separated SPKI SHA-256 pins in curl's form `sha256//BASE64=`."""
    pins = [p.strip() for p in text.split(",") if p.strip()]
    for pin in pins:
        if not _PIN.fullmatch(pin):
            raise ValueError(f"{pin!r} is not an SPKI pin (expected sha256//<44 base64 chars>)")
    return frozenset(pins)


def to_listen(text: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not a listen address (use host:port, e.g. 127.0.0.1:9102)")
    return host.strip("[]") or "0.0.0.0", int(port)


def file_problem(path: Optional[str]) -> Optional[str]:
    """Why `path` is not a file a key may name (absent, a folder, not a regular file), or
    None (also for no path)."""
    if path is None or os.path.isfile(path):
        return None
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    if os.path.exists(path):
        return f"{path} is not a regular file"
    return f"file {path} does not exist"


def read_secret(path: str, section: str, key: str) -> bytes:
    """A token from a file that group and others cannot read (ConfigError naming the key)."""
    try:
        mode = os.stat(path).st_mode
        token = open(path, "rb").read().strip()
    except OSError as exc:
        raise ConfigError(path, section, key, f"cannot read: {os_problem(exc)}") from None
    if mode & 0o077:
        raise ConfigError(path, section, key, f"readable by group or others; run: chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError(path, section, key, "token too short (use at least 16 characters)")
    return token


def private_key_problem(path: str) -> Optional[str]:
    """Why the private key file at `path` cannot be used, or None: a public key given instead
    (`.pub`), or a file group or others can read (the signing key's rule, for every key)."""
    try:
        mode = os.stat(path).st_mode
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if b"PUBLIC KEY-----" in head and b"PRIVATE KEY-----" not in head:
        return f"{path} is a public key; give the private key here (the .key file, not the .pub)"
    if mode & 0o077:
        return f"{path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
    return None


def to_http_url(text: str) -> str:
    """A server URL (http or https, a host, no credentials)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an http(s):// URL with a host and no credentials")
    return text.strip()


def to_json_object(text: str) -> str:
    """A JSON object, kept as its compact text."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{text!r} is not a JSON object (e.g. {{\"region\": \"eu-west-1\"}})")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def to_agent_url(text: str) -> str:
    """An agent URL: https only (verification is never off), host required, no query."""
    if not all("!" <= ch <= "~" for ch in text):
        raise ValueError(f"agent URL {text!r} must be printable ASCII without spaces (percent-encode the rest)")
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ValueError(f"agent URL {text!r} must use https://")
    if not parts.hostname:
        raise ValueError(f"agent URL {text!r} has no host")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"agent URL {text!r} has an invalid port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"agent URL {text!r} must not carry credentials, a query or a fragment")
    return text.rstrip("/")


def to_agents(text: str) -> tuple[str, ...]:
    """Comma- or newline-separated agent URLs, duplicates refused."""
    urls = [to_agent_url(u.strip()) for u in re.split(r"[,\s]+", text) if u.strip()]
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"agent {url} is listed twice")
        seen.add(url)
    return tuple(urls)


def to_zk_hosts(text: str) -> str:
    """ZooKeeper's `host:port,host:port` (port default 2181, `[v6]:port`, an optional
    `/chroot` after the last), normalized without spaces; "" when nothing is listed."""
    servers, slash, chroot = text.partition("/")
    hosts = [h.strip() for h in servers.split(",") if h.strip()]
    for host in hosts:
        match = _ZK_HOST.fullmatch(host)
        if match is None or (match["port"] is not None and not 1 <= int(match["port"]) <= 65535):
            raise ValueError(f"{host!r} is not a ZooKeeper server (use host:port, comma-separated, e.g. zk1:2181,zk2:2181)")
    if slash and (not hosts or not chroot.strip() or any(c.isspace() for c in chroot)):
        raise ValueError(f"{text!r} is not a ZooKeeper connection string (use host:port,host:port, optionally /chroot)")
    return ",".join(hosts) + (slash + chroot.strip() if slash else "")


def to_cluster_id(text: str) -> str:
    """Letters, digits and `._:-`, starting with a letter or digit."""
    if not _CLUSTER_ID.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid cluster id (letters, digits and ._:- only)")
    return text
