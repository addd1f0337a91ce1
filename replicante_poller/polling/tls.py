"""TLS material: client SSLContexts built once and shared, and facts about peer certificates.

One context per distinct TLS setting, built at start and rebuilt only when one of its
files changes, so no CA bundle is re-read per connection.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import logging
import ssl
import threading
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import TlsSettings
from ..errors import ConfigError, os_problem
from ..filestamp import Stamp, file_stamp

log = logging.getLogger(__name__)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclasses.dataclass(frozen=True)
class PeerCertificate:
    """What the poller needs from an agent's leaf certificate."""

    spki_pin: str  # sha256//BASE64 of the SubjectPublicKeyInfo
    not_after: float  # unix seconds


@functools.lru_cache(maxsize=4096)
def peer_certificate(der: bytes) -> PeerCertificate:
    """Pin and expiry of a DER certificate (cached: agents present the same one each poll)."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
    return PeerCertificate(pin, cert.not_valid_after_utc.timestamp())


class TlsFileError(ValueError):
    """One `[tls]` key whose file cannot be used; the message names the file."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def build_context(tls: TlsSettings) -> ssl.SSLContext:
    """A verifying client context: CA (or the system store), optional client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = _VERSIONS[tls.min_version]
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError as exc:  # OpenSSL's reason, without _ssl.c
            raise TlsFileError("ca_file", f"{tls.ca_file}: no CA certificate in the file ({exc.reason or exc})") from None
        except OSError as exc:
            raise TlsFileError("ca_file", f"{tls.ca_file}: cannot read: {os_problem(exc)}") from None
    else:
        context.load_default_certs()
    if tls.client_cert:
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key)
        except ssl.SSLError as exc:  # which files, and OpenSSL's reason without _ssl.c
            raise ValueError(f"client_key {tls.client_key} cannot be used with client_cert {tls.client_cert}: "
                             f"{exc.reason or exc}") from None
    return context


def _files(tls: TlsSettings) -> tuple[str, ...]:
    return tuple(p for p in (tls.ca_file, tls.client_cert, tls.client_key) if p)


def _stamp(tls: TlsSettings) -> Stamp:
    return file_stamp(_files(tls))


def _key(tls: TlsSettings) -> TlsSettings:
    return dataclasses.replace(tls, pins=frozenset())


class TlsContexts:
    """Shared client contexts keyed by TLS settings; thread-safe reads, rebuilt on change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._contexts: dict[TlsSettings, tuple[ssl.SSLContext, tuple]] = {}

    def get(self, tls: TlsSettings) -> ssl.SSLContext:
        """The context for `tls`, building it the first time (ConfigError if it cannot be)."""
        key = _key(tls)
        entry = self._contexts.get(key)
        if entry is not None:
            return entry[0]
        with self._lock:
            entry = self._contexts.get(key)
            if entry is None:
                entry = (self._build(key), _stamp(key))
                self._contexts[key] = entry
        return entry[0]

    def refresh(self) -> list[str]:
        """Rebuild contexts whose files changed; returns the problems (old context kept)."""
        problems = []
        with self._lock:
            for key, (_, stamp) in list(self._contexts.items()):
                now = _stamp(key)
                if now == stamp:
                    continue
                try:
                    self._contexts[key] = (self._build(key), now)
                    log.info("TLS files changed, context rebuilt: %s", ", ".join(_files(key)))
                except ConfigError as exc:
                    problems.append(str(exc))
        return problems

    @staticmethod
    def _build(tls: TlsSettings) -> ssl.SSLContext:
        try:
            return build_context(tls)
        except TlsFileError as exc:
            raise ConfigError(", ".join(_files(tls)), "tls", exc.key, f"cannot load TLS material: {exc}") from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            files = ", ".join(_files(tls)) or "system trust store"
            raise ConfigError(files, "tls", None, f"cannot load TLS material: {exc}") from None


def pin_matches(cert: Optional[PeerCertificate], pins: frozenset[str]) -> bool:
    """No pins configured, or the certificate's SPKI pin is one of them."""
    return not pins or (cert is not None and cert.spki_pin in pins)
