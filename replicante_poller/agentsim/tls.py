"""Server TLS as real agents have it: legacy agents speak TLS 1.2 only, replisdk agents TLS 1.3
only (OpenSSL's mozilla_modern_v5); given a client CA, both require a client certificate
signed by it (agents with actions on are deployed that way). Also the throw-away CA files of
the `agent-sim` verb and the demo."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import ssl
from collections.abc import Callable
from typing import Any

from ..agentapi import LEGACY, REPLISDK

VERSIONS = {LEGACY: ssl.TLSVersion.TLSv1_2, REPLISDK: ssl.TLSVersion.TLSv1_3}


def server_contexts(configure: Callable[[ssl.SSLContext], None],
                    client_ca: str | os.PathLike[str] | None = None) -> dict[str, ssl.SSLContext]:
    """One server context per agent generation, for `AgentSim(nodes, contexts)`.

    `configure(context)` loads the certificate chain (e.g. trustme's `cert.configure_cert`).
    `client_ca` (a PEM file) makes the agents require a client certificate it signed; they
    trust nothing else (no system store).
    """
    contexts = {}
    for generation, version in VERSIONS.items():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = context.maximum_version = version
        configure(context)
        if client_ca is not None:
            context.load_verify_locations(cafile=os.fspath(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        contexts[generation] = context
    return contexts


CLIENT_NAME = "replicante-poller"  # the identity in the poller's client certificate


def throwaway_ca(directory: pathlib.Path) -> tuple[pathlib.Path, ssl.SSLContext]:
    """A fresh trustme CA: writes directory/ca.pem, returns it and a server context for loopback
    (any TLS version, no client certificate: one context for every node)."""
    ca, ca_pem = _new_ca(pathlib.Path(directory))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return ca_pem, context


@dataclasses.dataclass(frozen=True)
class SimPki:
    """What `throwaway_pki` made: the CA file, a server context per generation, and the
    poller's client certificate and key (None when the agents require none)."""

    ca_file: pathlib.Path
    contexts: dict[str, ssl.SSLContext]
    client_cert: pathlib.Path | None = None
    client_key: pathlib.Path | None = None

    def tls_section(self) -> str:
        """The poller's [tls] settings to reach these agents."""
        lines = ["[tls]", f"ca_file = {self.ca_file}"]
        if self.client_cert is not None and self.client_key is not None:
            lines += [f"client_cert = {self.client_cert}", f"client_key = {self.client_key}"]
        return "\n".join(lines) + "\n"


def throwaway_pki(directory: pathlib.Path, client_auth: bool) -> SimPki:
    """A fresh trustme CA (directory/ca.pem) and server contexts per generation as real agents
    have them (`server_contexts`). `client_auth`: the agents require a client certificate, and
    one is issued for the poller with the same CA: directory/client.pem and client.key (0600)."""
    directory = pathlib.Path(directory)
    ca, ca_pem = _new_ca(directory)
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    if not client_auth:
        return SimPki(ca_pem, server_contexts(server.configure_cert))
    client = ca.issue_cert(CLIENT_NAME)
    cert, key = directory / "client.pem", directory / "client.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    _write_private(key, client.private_key_pem.bytes())
    return SimPki(ca_pem, server_contexts(server.configure_cert, client_ca=ca_pem), cert, key)


def _new_ca(directory: pathlib.Path) -> tuple[Any, pathlib.Path]:
    directory.mkdir(parents=True, exist_ok=True)
    import trustme  # a test-certificate tool: only the simulator and the demo need it

    ca = trustme.CA()
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca, ca_pem


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Write a private key readable by its owner only (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)
