"""Ed25519 key files: modes, strict PEM parsing, curve-point checks, key ids."""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from replicante_poller.errors import PollerError
from replicante_poller.actions.signing import (
    KeyFileError,
    PublicKey,
    add_keygen_arguments,
    generate_keypair,
    key_id,
    keygen_command,
    load_public_key,
    load_signing_key,
    public_key_from_pem,
    public_key_pem,
    signer_from_seed,
)

SEED = bytes(range(32))
P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P


def _pem(label: str, der: bytes) -> str:
    return f"-----BEGIN {label}-----\n{base64.b64encode(der).decode()}\n-----END {label}-----\n"


def _private_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "k.key") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def _not_on_curve() -> bytes:
    """A 32-byte encoding whose y has no x on edwards25519: (y^2-1)/(d*y^2+1) is not a square."""
    for y in range(2, 1000):
        u = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
        if u and pow(u, (P - 1) // 2, P) == P - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("no off-curve y below 1000")


def _pkcs8(key: object) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             serialization.NoEncryption()).decode()


def test_key_id_format_and_value() -> None:
    raw = signer_from_seed(SEED).public_raw
    kid = key_id(raw)
    assert re.fullmatch(r"ed25519-[0-9a-f]{16}", kid)
    assert kid == "ed25519-" + hashlib.sha256(raw).hexdigest()[:16]
    with pytest.raises(ValueError):
        key_id(raw[:31])


def test_signer_and_public_key() -> None:
    signer = signer_from_seed(SEED)
    public = signer.public_key()
    assert public.key_id == signer.key_id and public.raw == signer.public_raw
    signature = signer.sign(b"data")
    assert len(signature) == 64 and public.verify(b"data", signature)
    assert not public.verify(b"datA", signature)
    for bad in (signature[:63], signature + b"\0", b"", bytes(64), "text", None):
        assert public.verify(b"data", bad) is False  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signer_from_seed(SEED[:31])


def test_generate_keypair_modes_even_with_umask_zero(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        kid = generate_keypair(str(tmp_path / "poller"))
    finally:
        os.umask(old)
    key, pub = tmp_path / "poller.key", tmp_path / "poller.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    signer, public = load_signing_key(key), load_public_key(pub)
    assert signer.key_id == public.key_id == kid
    assert public.verify(b"x", signer.sign(b"x"))


def test_generate_keypair_mode_with_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        generate_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644


def test_generated_files_are_standard_pem(tmp_path: Path) -> None:
    """Another implementation (cryptography/OpenSSL) reads the same keys."""
    kid = generate_keypair(tmp_path / "k", seed=SEED)
    private = serialization.load_pem_private_key((tmp_path / "k.key").read_bytes(), None)
    public = serialization.load_pem_public_key((tmp_path / "k.pub").read_bytes())
    assert isinstance(private, ed25519.Ed25519PrivateKey) and isinstance(public, ed25519.Ed25519PublicKey)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(raw) == kid == signer_from_seed(SEED).key_id
    public.verify(load_signing_key(tmp_path / "k.key").sign(b"m"), b"m")


@pytest.mark.parametrize("existing", ["k.key", "k.pub"])
def test_generate_keypair_refuses_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("keep me")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert (tmp_path / existing).read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_generate_keypair_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        generate_keypair(tmp_path / "absent" / "k")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601])
def test_load_signing_key_refuses_readable_by_others(tmp_path: Path, mode: int) -> None:
    generate_keypair(tmp_path / "k")
    path = tmp_path / "k.key"
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_signing_key(path)
    assert f"chmod 600 {path}" in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, PollerError) and isinstance(info.value, ValueError)


def test_load_signing_key_accepts_0400(tmp_path: Path) -> None:
    path = _private_file(tmp_path, _pem("PRIVATE KEY", bytes.fromhex("302e020100300506032b657004220420") + SEED), 0o400)
    assert load_signing_key(path).key_id == signer_from_seed(SEED).key_id


def test_load_signing_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="absent.key: cannot read"):
        load_signing_key(tmp_path / "absent.key")


PKCS8 = bytes.fromhex("302e020100300506032b657004220420") + SEED


@pytest.mark.parametrize("text", [
    "garbage\n",
    "",
    _pem("PRIVATE KEY", PKCS8[:-1]),                       # truncated DER
    _pem("PRIVATE KEY", PKCS8 + b"\0"),                    # trailing byte
    _pem("PRIVATE KEY", PKCS8[:-33] + b"\x21" + PKCS8[-32:] + b"\0"),  # wrong inner length
    _pem("PUBLIC KEY", PKCS8),                             # wrong label
    _pem("ENCRYPTED PRIVATE KEY", PKCS8),
    _pem("PRIVATE KEY", PKCS8).replace("\n-----END", "!\n-----END"),  # not base64
    "junk before\n" + _pem("PRIVATE KEY", PKCS8),
    _pem("PRIVATE KEY", PKCS8) + _pem("PRIVATE KEY", PKCS8),
    _pkcs8(x25519.X25519PrivateKey.from_private_bytes(SEED)),
    _pkcs8(ec.generate_private_key(ec.SECP256R1())),
    _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
], ids=["garbage", "empty", "truncated", "trailing", "bad-length", "public-label", "encrypted-label",
        "bad-base64", "junk-before", "two-blocks", "x25519", "ec-p256", "rsa"])
def test_load_signing_key_refuses_non_ed25519(tmp_path: Path, text: str) -> None:
    path = _private_file(tmp_path, text)
    with pytest.raises(KeyFileError, match="not an Ed25519 PKCS#8 private key") as info:
        load_signing_key(path)
    assert str(path) in str(info.value)


def test_load_signing_key_refuses_binary(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_bytes(b"\xff\xfe" + PKCS8)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM file"):
        load_signing_key(path)


SPKI = bytes.fromhex("302a300506032b6570032100")


@pytest.mark.parametrize("raw", [
    bytes(32),                                             # all zero: small order
    b"\x01" + bytes(31),                                   # identity
    bytes.fromhex("ec" + "ff" * 30 + "7f"),                # y = p-1: order 2
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
    _not_on_curve(),
    b"\xff" * 32,                                          # non-canonical y
], ids=["zero", "identity", "order-2", "order-8", "off-curve", "non-canonical"])
def test_load_public_key_refuses_invalid_points(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "k.pub"
    path.write_text(_pem("PUBLIC KEY", SPKI + raw))
    with pytest.raises(KeyFileError, match="not a valid Ed25519 public key") as info:
        load_public_key(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError):
        PublicKey(raw)


@pytest.mark.parametrize("text", [
    "nope",
    _pem("PUBLIC KEY", SPKI + bytes(31)),
    _pem("PUBLIC KEY", SPKI + bytes(33)),
    _pem("PRIVATE KEY", SPKI + signer_from_seed(SEED).public_raw),
    _pem("PRIVATE KEY", PKCS8),
    ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
])
def test_public_key_from_pem_refuses_other_keys(text: str) -> None:
    with pytest.raises(KeyFileError, match="^keyring.pem: not an Ed25519 SubjectPublicKeyInfo public key$"):
        public_key_from_pem(text, "keyring.pem")


def test_public_key_pem_round_trip() -> None:
    signer = signer_from_seed(SEED)
    public = public_key_from_pem(public_key_pem(signer.public_raw), "mem")
    assert public == signer.public_key() and public.key_id == signer.key_id


def test_keygen_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_keygen_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    args = parser.parse_args(["--out", str(tmp_path / "poller")])
    assert keygen_command(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"ed25519-[0-9a-f]{16}", lines[0])  # kid=$(keygen ...) works
    assert lines[0] == load_public_key(tmp_path / "poller.pub").key_id
    assert str(tmp_path / "poller.key") in captured.err and str(tmp_path / "poller.pub") in captured.err
    with pytest.raises(KeyFileError):
        keygen_command(args)
