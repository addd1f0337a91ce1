"""Helpers shared by the end-to-end tests."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from typing import Optional

from replicante_poller.agentsim import Fault
from replicante_poller.reasons import Reason, Status
from replicante_poller.service import Service

# What a poll of each simulated fault gives: status, reason, requests the agent sees.
EXPECTED: dict[Fault, tuple[Status, Optional[Reason], int]] = {
    Fault.HEALTHY: (Status.UP, None, 3),
    Fault.NODE_DOWN: (Status.NODE_DOWN, Reason.HTTP_STATUS, 2),
    Fault.WRONG_CLUSTER: (Status.NODE_DOWN, Reason.CLUSTER_MISMATCH, 2),
    Fault.SLOW: (Status.AGENT_DOWN, Reason.TIMEOUT, 1),
    Fault.GARBAGE: (Status.AGENT_DOWN, Reason.INVALID_JSON, 1),
    Fault.HUGE: (Status.AGENT_DOWN, Reason.TOO_LARGE, 1),
    Fault.HANGING: (Status.AGENT_DOWN, Reason.TIMEOUT, 1),
    Fault.BAD_SCHEMA: (Status.NODE_DOWN, Reason.SCHEMA, 3),
    Fault.WRONG_CONTENT_TYPE: (Status.AGENT_DOWN, Reason.CONTENT_TYPE, 1),
    Fault.AGENT_ERROR: (Status.AGENT_DOWN, Reason.HTTP_STATUS, 1),
    Fault.TLS_STALL: (Status.AGENT_DOWN, Reason.TIMEOUT, 0),
    Fault.ENDLESS_CHUNKED: (Status.AGENT_DOWN, Reason.TOO_LARGE, 1),
    Fault.DEEP_NESTING: (Status.AGENT_DOWN, Reason.INVALID_JSON, 1),
    Fault.NAN: (Status.AGENT_DOWN, Reason.INVALID_JSON, 1),
    Fault.DUPLICATE_KEYS: (Status.AGENT_DOWN, Reason.INVALID_JSON, 1),
    Fault.INVALID_UTF8: (Status.AGENT_DOWN, Reason.INVALID_JSON, 1),
    Fault.WRONG_TYPES: (Status.NODE_DOWN, Reason.SCHEMA, 2),
    Fault.REDIRECT: (Status.AGENT_DOWN, Reason.HTTP_STATUS, 1),
    Fault.SERVICE_UNAVAILABLE: (Status.AGENT_DOWN, Reason.HTTP_STATUS, 1),
    Fault.RESET_MID_BODY: (Status.AGENT_DOWN, Reason.CONNECT, 1),
    Fault.GZIP_BOMB: (Status.AGENT_DOWN, Reason.TOO_LARGE, 1),
}



def config_text(agents: Sequence[tuple[str, str]], ca_file: Path, interval: str = "2s", timeout: str = "800ms",
                extra: str = "") -> str:
    """A service configuration polling `agents` ((cluster, url) pairs), API on an ephemeral port."""
    clusters: dict[str, list[str]] = {}
    for cluster, url in agents:
        clusters.setdefault(cluster, []).append(url)
    text = (f"[poller]\ninterval = {interval}\ntimeout = {timeout}\nworkers = 8\nfall = 2\nrise = 1\n"
            f"[tls]\nca_file = {ca_file}\n[http]\nlisten = 127.0.0.1:0\n{extra}")
    for cluster, urls in clusters.items():
        text += f"[cluster:{cluster}]\nagents = {', '.join(urls)}\n"
    return text


ACTIONS_TOKEN = "s3cret-token-for-tests-0123456789"


def action_files(folder: Path) -> dict:
    """A signing key pair, an API token file (mode 0600) and a journal path in `folder`."""
    import os

    from replicante_poller.actions.signing import generate_keypair

    kid = generate_keypair(str(folder / "core"))
    token = folder / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, ACTIONS_TOKEN.encode())
    os.close(fd)
    return {"kid": kid, "key": folder / "core.key", "pub": folder / "core.pub", "token": token,
            "journal": folder / "actions.db"}


def actions_config(agents: Sequence[tuple[str, str]], pki: dict, keys: dict, **extra: str) -> str:
    """A service configuration with signed actions on (fast tracking and backoff)."""
    settings = {"enabled": "true", "signing_key": str(keys["key"]), "journal": str(keys["journal"]),
                "api_token_file": str(keys["token"]), "track_interval": "200ms", "backoff": "100ms", **extra}
    section = "[actions]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    return config_text(agents, pki["ca"], interval="1s", timeout="500ms", extra=section)


def all_polled(service: Service, timeout: float = 15.0) -> list:
    """Wait (on the state's condition, no sleeps) until every target has a result."""
    assert service.state.wait_for(lambda views: all(v.result for v in views), timeout), "not every agent was polled"
    return service.snapshot()


NGINX_CONF = """
daemon on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


