"""Shared fixtures: a throw-away CA, simulated agents, a running service, a real nginx."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest
import trustme

from replicante_poller.agentsim import AgentSim, NodeSpec, server_contexts
from replicante_poller.config import parse_config
from replicante_poller.polling.deadlines import DeadlineReaper
from replicante_poller.polling.tls import TlsContexts
from replicante_poller.polling.transport import AgentClient, Transport
from replicante_poller.service import Service

from harness import NGINX_CONF


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CA file, server certificate (localhost, 127.0.0.1) and key, as files."""
    folder = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    (folder / "server.key").chmod(0o600)  # private keys only their owner reads (the service refuses others)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key", "server": server}


@pytest.fixture
def reaper() -> Iterator[DeadlineReaper]:
    """A running deadline reaper."""
    running = DeadlineReaper().start()
    yield running
    running.stop()


@pytest.fixture
def client(reaper: DeadlineReaper) -> Iterator[AgentClient]:
    """The real transport client, with fresh TLS contexts."""
    agent_client = Transport(TlsContexts(), reaper=reaper).client()
    yield agent_client
    agent_client.close()


@pytest.fixture
def start_sim(ca: trustme.CA, pki: dict) -> Iterator[Callable[..., AgentSim]]:
    """Start an AgentSim over TLS (or plain HTTP with tls=False); stopped at teardown.

    Agents speak TLS as real ones do: legacy 1.2 only, replisdk 1.3 only; given `client_ca`
    (a PEM file), they require a client certificate it signed."""
    sims: list[AgentSim] = []

    def start(nodes: Sequence[NodeSpec], tls: bool = True, drip_seconds: float = 0.2,
              client_ca: Path | None = None, **options: object) -> AgentSim:
        contexts = server_contexts(pki["server"].configure_cert, client_ca) if tls else None
        sim = AgentSim(nodes, contexts, drip_seconds=drip_seconds, **options).start()
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.stop()


@pytest.fixture
def start_service() -> Iterator[Callable[[str], Service]]:
    """Start an in-process Service from configuration text; stopped at teardown."""
    services: list[Service] = []

    def start(text: str) -> Service:
        service = Service(parse_config(text))
        service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop()


@pytest.fixture
def start_nginx(pki: dict, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A real nginx terminating TLS in front of `upstream`; returns its https URL.

    nginx daemonises only after it bound its port, so when the start command returns
    the listener is ready: no readiness polling.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.fail("nginx is not installed: .ci/run installs nginx-light (apt-get install -y nginx-light)")
    folders: list[Path] = []

    def start(upstream: str, port: int | None = None) -> str:
        folder = tmp_path / f"nginx{len(folders)}"
        folder.mkdir()
        port = port or free_port()
        (folder / "nginx.conf").write_text(NGINX_CONF.format(
            dir=folder, port=port, cert=pki["cert"], key=pki["key"], upstream=upstream))
        done = subprocess.run([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.fail(f"nginx did not start: {done.stderr.strip()}")
        folders.append(folder)
        return f"https://localhost:{port}"

    yield start
    for folder in folders:
        pid = int((folder / "nginx.pid").read_text())
        os.kill(pid, signal.SIGTERM)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
