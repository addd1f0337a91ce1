"""Ed25519 keys for signed actions (DESIGN section 7), the only importer of PyNaCl.

Key files are PEM: `PREFIX.key` is PKCS#8 (mode 0600, refused when group- or
world-readable), `PREFIX.pub` is SubjectPublicKeyInfo. Both are parsed strictly: the
exact label, strict base64 and the one DER layout an Ed25519 key has. Public keys are
checked to be valid, non-small-order curve points when loaded.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import stat
import sys
from pathlib import Path
from typing import Union

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from ..errors import KeyFileError

PathLike = Union[str, "os.PathLike[str]"]

PRIVATE_LABEL = "PRIVATE KEY"
PUBLIC_LABEL = "PUBLIC KEY"
# DER of PKCS#8 OneAsymmetricKey v0 with algorithm id-Ed25519 (1.3.101.112), then the seed.
PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
# DER of SubjectPublicKeyInfo with algorithm id-Ed25519, then the raw public key.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
KEY_SIZE = 32
SIGNATURE_SIZE = 64
_MAX_FILE = 16 * 1024


def key_id(public_raw: bytes) -> str:
    """`ed25519-` and the first 16 hex digits of SHA-256 of the raw public key."""
    if len(public_raw) != KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes, not {len(public_raw)}")
    return "ed25519-" + hashlib.sha256(public_raw).hexdigest()[:16]


class Signer:
    """An Ed25519 private key that makes detached signatures."""

    def __init__(self, signing_key: nacl.signing.SigningKey):
        self._key = signing_key
        self.public_raw: bytes = bytes(signing_key.verify_key)
        self.key_id: str = key_id(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached signature of `data`."""
        return self._key.sign(bytes(data)).signature

    def public_key(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(self.public_raw)

    def __repr__(self) -> str:
        return f"Signer({self.key_id})"


class PublicKey:
    """An Ed25519 public key, valid by construction (a non-small-order curve point)."""

    def __init__(self, raw: bytes):
        raw = bytes(raw)
        if len(raw) != KEY_SIZE:
            raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes, not {len(raw)}")
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
            raise ValueError("not a valid Ed25519 public key (not a curve point, or of small order)")
        self.raw = raw
        self.key_id = key_id(raw)
        self._key = nacl.signing.VerifyKey(raw)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's signature of `data`; never raises."""
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(bytes(data), bytes(signature))
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.key_id})"


def signer_from_seed(seed: bytes) -> Signer:
    """The signer of a 32-byte seed (the RFC 8032 private key)."""
    if len(seed) != KEY_SIZE:
        raise ValueError(f"an Ed25519 seed is {KEY_SIZE} bytes, not {len(seed)}")
    return Signer(nacl.signing.SigningKey(bytes(seed)))


def _pem_encode(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


def _pem_decode(text: str, label: str, prefix: bytes, source: str, what: str) -> bytes:
    """The key bytes after `prefix` in a one-block PEM, or KeyFileError."""
    wrong = KeyFileError(source, f"not an Ed25519 {what}")
    lines = text.strip().splitlines()
    if len(lines) < 3 or lines[0] != f"-----BEGIN {label}-----" or lines[-1] != f"-----END {label}-----":
        raise wrong
    try:
        der = base64.b64decode("".join(lines[1:-1]).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise wrong from None
    if len(der) != len(prefix) + KEY_SIZE or not der.startswith(prefix):
        raise wrong
    return der[len(prefix):]


def _read_key_file(path: PathLike, private: bool) -> str:
    source = os.fspath(path)
    try:
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(source, f"cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(source, "not a regular file")
        if private and info.st_mode & 0o077:
            raise KeyFileError(source, f"private key is accessible by group or others (mode "
                                       f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {source}`")
        data = handle.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise KeyFileError(source, "too large for a key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(source, "not a PEM file (non-ASCII bytes)") from None


def load_signing_key(path: PathLike) -> Signer:
    """The signer of a PKCS#8 PEM file that only its owner can read."""
    text = _read_key_file(path, private=True)
    seed = _pem_decode(text, PRIVATE_LABEL, PKCS8_PREFIX, os.fspath(path), "PKCS#8 private key")
    return signer_from_seed(seed)


def public_key_from_pem(text: str, source: str) -> PublicKey:
    """The public key of SubjectPublicKeyInfo PEM text; `source` names it in errors."""
    raw = _pem_decode(text, PUBLIC_LABEL, SPKI_PREFIX, source, "SubjectPublicKeyInfo public key")
    try:
        return PublicKey(raw)
    except ValueError as exc:
        raise KeyFileError(source, str(exc)) from None


def load_public_key(path: PathLike) -> PublicKey:
    """The public key of a SubjectPublicKeyInfo PEM file."""
    return public_key_from_pem(_read_key_file(path, private=False), os.fspath(path))


def public_key_pem(raw: bytes) -> str:
    """SubjectPublicKeyInfo PEM of a raw public key."""
    return _pem_encode(PUBLIC_LABEL, SPKI_PREFIX + bytes(raw))


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create `path` (never replacing a file) with `mode` from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask was
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def generate_keypair(prefix: PathLike, *, seed: bytes | None = None) -> str:
    """Write PREFIX.key (mode 0600) and PREFIX.pub (mode 0644); return the key id.

    `seed` is for tests; by default 32 bytes come from the operating system.
    """
    base = os.fspath(prefix)
    private_path, public_path = base + ".key", base + ".pub"
    for existing in (private_path, public_path):
        if os.path.lexists(existing):
            raise KeyFileError(existing, "already exists; refusing to overwrite a key (pick another --out)")
    signer = signer_from_seed(seed if seed is not None else nacl.utils.random(KEY_SIZE))
    private_pem = _pem_encode(PRIVATE_LABEL, PKCS8_PREFIX + bytes(signer._key)).encode("ascii")
    try:
        _write_new(private_path, private_pem, 0o600)
    except OSError as exc:
        raise KeyFileError(private_path, f"cannot create: {exc.strerror}") from None
    try:
        _write_new(public_path, public_key_pem(signer.public_raw).encode("ascii"), 0o644)
    except OSError as exc:
        Path(private_path).unlink()  # ours: created just above
        raise KeyFileError(public_path, f"cannot create: {exc.strerror}") from None
    return signer.key_id


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `keygen`."""
    parser.add_argument("--out", required=True, metavar="PREFIX",
                        help="write PREFIX.key (private, mode 0600) and PREFIX.pub (public)")


def keygen_command(args: argparse.Namespace) -> int:
    """`keygen --out PREFIX`: the key id on stdout (for scripts), the files written on stderr."""
    kid = generate_keypair(args.out)
    print(kid)
    print(f"private key: {args.out}.key (mode 0600, keep it on the poller)", file=sys.stderr)
    print(f"public key: {args.out}.pub (add it to each agent's gateway keys)", file=sys.stderr)
    return 0
