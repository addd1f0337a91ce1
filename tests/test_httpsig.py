"""RFC 9421 signatures: the Appendix B.2.6 known answer, round trips, tampering, strict parsing."""
from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from replicante_poller.actions.httpsig import (
    COVERED,
    LABEL,
    MAX_TTL,
    TAG,
    SignatureFormatError,
    SignatureParams,
    content_digest,
    parse_signature,
    parse_signature_input,
    sign_action,
    signature_base,
)
from replicante_poller.actions.signing import (
    PublicKey,
    Signer,
    load_public_key,
    load_signing_key,
    signer_from_seed,
)

VECTOR = Path(__file__).resolve().parent / "vectors" / "rfc9421-b26-ed25519.json"  # copied from shared/vectors
PATH = "/api/unstable/actions/schedule/agent.replicante.io/test.ping"
BODY = b'{"action_id":"0b3c1c7e-6f1e-4a55-9d0e-5f1b9e0a8d11","args":{},"created_ts":"2024-05-01T00:00:00Z","requester":"CORE_API"}'
NOW = 1_714_521_600


@pytest.fixture(scope="module")
def vector() -> dict:
    if not VECTOR.is_file():
        pytest.fail(f"known-answer vector {VECTOR} is missing: the RFC 9421 B.2.6 test cannot run")
    return json.loads(VECTOR.read_text())


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return signer_from_seed(bytes(range(32)))


def _signed(signer: Signer, **overrides: object) -> dict[str, str]:
    args: dict = dict(method="POST", path=PATH, body=BODY, agent_url="https://mongo1.example:37017",
                      cluster_id="mongo-rs0", node_id="mongo1:27017",
                      key_id=signer.key_id, sign=signer.sign, now=NOW, nonce=bytes(range(16)))
    args.update(overrides)
    return sign_action(**args)


def _verify(method: str, path: str, body: bytes, headers: dict[str, str], key: PublicKey) -> bool:
    """What a verifier does with the signature itself (keyring, window and replay aside)."""
    params, raw = parse_signature_input(headers["Signature-Input"])[LABEL]
    signature = parse_signature(headers["Signature"])[LABEL]
    if content_digest(body) != headers["Content-Digest"]:
        return False
    return key.verify(signature_base(method, path, None, headers, params, raw), signature)


# --- RFC 9421 Appendix B.2.6 known answer ---------------------------------------------------

def test_rfc9421_b26_known_answer(vector: dict, tmp_path: Path) -> None:
    request = vector["request"]
    (label, (params, raw)), = parse_signature_input(vector["signature_input"]).items()
    assert label == "sig-b26" and vector["signature_input"] == f"{label}={raw}"
    assert params.components == ("date", "@method", "@path", "@authority", "content-type", "content-length")
    assert (params.created, params.keyid, params.expires) == (1618884473, "test-key-ed25519", None)
    assert params.serialize() == raw
    headers = dict(request["headers"])
    expected = vector["signature_base"].encode("ascii")
    for path in ("/foo", request["target"]):
        assert signature_base(request["method"], path, "example.com", headers, params, raw) == expected
        assert signature_base(request["method"], path, "example.com", headers, params) == expected

    signature = parse_signature(vector["signature"])["sig-b26"]
    signer = signer_from_seed(_b64url(vector["seed_base64url"]))
    assert signer.sign(expected) == signature
    assert signer.public_raw == _b64url(vector["public_key_base64url"])

    (tmp_path / "test.key").write_text(vector["private_key_pem"])
    (tmp_path / "test.key").chmod(0o600)
    (tmp_path / "test.pub").write_text(vector["public_key_pem"])
    loaded, public = load_signing_key(tmp_path / "test.key"), load_public_key(tmp_path / "test.pub")
    assert loaded.public_raw == public.raw == _b64url(vector["public_key_base64url"])
    assert loaded.sign(expected) == signature
    assert public.verify(expected, signature)
    assert not public.verify(expected + b" ", signature)
    assert re.fullmatch(r"ed25519-[0-9a-f]{16}", public.key_id) and public.key_id == signer.key_id


# --- the profile: round trip and tampering --------------------------------------------------

def test_sign_action_headers(signer: Signer) -> None:
    headers = _signed(signer)
    assert list(headers) == ["Content-Type", "Content-Digest", "Replicante-Agent", "Replicante-Cluster",
                             "Replicante-Node", "Signature-Input", "Signature"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Digest"] == content_digest(BODY)
    assert re.fullmatch(r"sha-256=:[A-Za-z0-9+/]{43}=:", headers["Content-Digest"])
    nonce = base64.urlsafe_b64encode(bytes(range(16))).decode().rstrip("=")
    assert headers["Signature-Input"] == (
        'replicante=("@method" "@path" "content-type" "content-digest" "replicante-agent" "replicante-cluster"'
        ' "replicante-node")'
        f';created={NOW};expires={NOW + 60};nonce="{nonce}";keyid="{signer.key_id}";tag="{TAG}"')
    assert re.fullmatch(r'.*;nonce="[A-Za-z0-9_-]{22}";.*', headers["Signature-Input"])
    assert re.fullmatch(r"replicante=:[A-Za-z0-9+/]{86}==:", headers["Signature"])


def test_round_trip(signer: Signer) -> None:
    headers = _signed(signer, ttl=MAX_TTL)
    params, raw = parse_signature_input(headers["Signature-Input"])[LABEL]
    assert params.components == COVERED and params.tag == TAG and params.keyid == signer.key_id
    assert (params.created, params.expires) == (NOW, NOW + MAX_TTL)
    assert params.serialize() == raw
    assert _verify("POST", PATH, BODY, headers, signer.public_key())
    lowered = {k.lower(): v for k, v in headers.items()}  # header names are case-insensitive
    signature = parse_signature(lowered["signature"])[LABEL]
    assert signer.public_key().verify(signature_base("POST", PATH, None, lowered, params, raw), signature)


def test_signature_base_of_action(signer: Signer) -> None:
    headers = _signed(signer)
    params, raw = parse_signature_input(headers["Signature-Input"])[LABEL]
    base = signature_base("POST", PATH, None, headers, params, raw).decode()
    assert base.split("\n") == [
        '"@method": POST', f'"@path": {PATH}', '"content-type": application/json',
        f'"content-digest": {content_digest(BODY)}', '"replicante-agent": https://mongo1.example:37017',
        '"replicante-cluster": mongo-rs0',
        '"replicante-node": mongo1:27017', f'"@signature-params": {raw}']


def _set(name: str, value: str) -> Callable[[dict], None]:
    def change(request: dict) -> None:
        request["headers"][name] = value
    return change


def _edit(name: str, old: str, new: str) -> Callable[[dict], None]:
    def change(request: dict) -> None:
        assert old in request["headers"][name]
        request["headers"][name] = request["headers"][name].replace(old, new)
    return change


def _signature(mangle: Callable[[bytes], bytes]) -> Callable[[dict], None]:
    def change(request: dict) -> None:
        raw = parse_signature(request["headers"]["Signature"])[LABEL]
        request["headers"]["Signature"] = f"{LABEL}=:{base64.b64encode(mangle(raw)).decode()}:"
    return change


TAMPERINGS: dict[str, Callable[[dict], None]] = {
    "body+digest": lambda r: (r.update(body=BODY.replace(b"{}", b'{"a":1}')),
                              r["headers"].update({"Content-Digest": content_digest(r["body"])})),
    "path": lambda r: r.update(path=PATH.replace("test.ping", "node.restart")),
    "method": lambda r: r.update(method="PUT"),
    "node": _set("Replicante-Node", "mongo2:27017"),
    "cluster": _set("Replicante-Cluster", "mongo-rs1"),
    "content-type": _set("Content-Type", "text/plain"),
    "created": _edit("Signature-Input", f"created={NOW}", f"created={NOW + 1}"),
    "expires": _edit("Signature-Input", f"expires={NOW + 60}", f"expires={NOW + 300}"),
    "nonce": _edit("Signature-Input", 'nonce="AA', 'nonce="AB'),
    "keyid": _edit("Signature-Input", 'keyid="ed25519-', 'keyid="ed25519-0'),
    "tag": _edit("Signature-Input", TAG, "replicante-action-v1"),
    "components": _edit("Signature-Input", ' "replicante-node"', ""),
    "flipped-bit": _signature(lambda s: s[:10] + bytes([s[10] ^ 0x01]) + s[11:]),
    "truncated": _signature(lambda s: s[:63]),
    "extended": _signature(lambda s: s + b"\0"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_tampering_fails_verification(signer: Signer, name: str) -> None:
    request = {"method": "POST", "path": PATH, "body": BODY, "headers": _signed(signer)}
    assert _verify(request["method"], request["path"], request["body"], request["headers"], signer.public_key())
    TAMPERINGS[name](request)
    assert not _verify(request["method"], request["path"], request["body"], request["headers"], signer.public_key())


def test_tampered_body_is_caught_by_the_digest(signer: Signer) -> None:
    headers = _signed(signer)
    tampered = BODY.replace(b"CORE_API", b"CORE_APX")
    assert content_digest(tampered) != headers["Content-Digest"]
    assert not _verify("POST", PATH, tampered, headers, signer.public_key())


def test_other_key_fails(signer: Signer) -> None:
    other = signer_from_seed(bytes(32))
    assert not _verify("POST", PATH, BODY, _signed(signer), other.public_key())


def test_fresh_nonce_fresh_signature(signer: Signer) -> None:
    first, second = _signed(signer), _signed(signer, nonce=bytes(16), now=NOW + 5)
    assert first["Signature"] != second["Signature"]
    assert _verify("POST", PATH, BODY, second, signer.public_key())


@pytest.mark.parametrize("overrides", [
    {"ttl": 0}, {"ttl": MAX_TTL + 1}, {"ttl": -1}, {"ttl": 1.5}, {"ttl": True},
    {"nonce": bytes(15)}, {"nonce": bytes(17)}, {"nonce": "x" * 16},
    {"node_id": "n1\r\nX-Evil: 1"}, {"node_id": "n1\n"}, {"cluster_id": "c\rx"}, {"cluster_id": ""},
    {"node_id": " n1"}, {"node_id": "nöde"}, {"key_id": 'k"\n'},
    {"path": "/a?b=1"}, {"path": "relative"}, {"path": "/a\r\nb"}, {"method": "PO ST"}, {"now": -1},
    {"sign": lambda data: b"short"},
])
def test_sign_action_rejects(signer: Signer, overrides: dict) -> None:
    with pytest.raises(ValueError):
        _signed(signer, **overrides)


# --- signature_base -------------------------------------------------------------------------

def test_signature_base_rules() -> None:
    params = SignatureParams(("@method", "@path", "@query", "@authority", "x-a", "x-b"), created=1)
    headers = {"X-A": " \t spaced value\t ", "x-b": "one\r\n  two"}
    base = signature_base("GET", "", "Example.COM", headers, params)
    assert base == (b'"@method": GET\n"@path": /\n"@query": ?\n"@authority": example.com\n'
                    b'"x-a": spaced value\n"x-b": one two\n'
                    b'"@signature-params": ("@method" "@path" "@query" "@authority" "x-a" "x-b");created=1')
    assert signature_base("GET", "/p?q=1", "h", headers, params).split(b"\n")[1:3] == [b'"@path": /p', b'"@query": ?q=1']
    assert not base.endswith(b"\n")
    assert signature_base("GET", "/", "h", headers, params, raw_params="VERBATIM").endswith(b'"@signature-params": VERBATIM')


@pytest.mark.parametrize("components, headers, authority", [
    (("content-type",), {}, None),                          # missing header
    (("x-a",), {"X-A": "1", "x-a": "2"}, None),             # ambiguous
    (("x-a",), {"X-A": "a\nb"}, None),                     # bare LF
    (("x-a",), {"X-A": "a\rb"}, None),
    (("x-a",), {"X-A": "caf\u00e9"}, None),                # not ASCII
    (("@authority",), {}, None),
    (("@target-uri",), {}, "h"),
    (("@scheme",), {}, "h"),
    (("@request-target",), {}, "h"),
    (("@status",), {}, "h"),
])
def test_signature_base_refuses(components: tuple, headers: dict, authority: str | None) -> None:
    with pytest.raises(SignatureFormatError):
        signature_base("POST", "/", authority, headers, SignatureParams(components))


def test_signature_params_order_and_checks() -> None:
    params = SignatureParams(COVERED[:2], created=5, expires=6, nonce="n", keyid='a"b\\c', tag="t")
    assert params.serialize() == '("@method" "@path");created=5;expires=6;nonce="n";keyid="a\\"b\\\\c";tag="t"'
    ordered = SignatureParams(("@path",), created=5, keyid="k", order=("keyid", "created"))
    assert ordered.serialize() == '("@path");keyid="k";created=5'
    for bad in [dict(components=("@path",), created=-1), dict(components=("@path",), keyid="\u00e9"),
                dict(components=("@path", "@path")), dict(components=("Host",)),
                dict(components=("@path",), created=1, order=("keyid",)),
                dict(components=("@path",), created=True)]:
        with pytest.raises(SignatureFormatError):
            SignatureParams(**bad)  # type: ignore[arg-type]


# --- strict parsing -------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ('sig1=("@method")', {"sig1": '("@method")'}),
    ('a=("x"), b=("y");created=1', {"a": '("x")', "b": '("y");created=1'}),
    ('  a=("x"),b=()\t', {"a": '("x")', "b": "()"}),
    ('a=("x");keyid="q\\"b\\\\";created=0', {"a": '("x");keyid="q\\"b\\\\";created=0'}),
    ('*a.b-c_1=("x")', {"*a.b-c_1": '("x")'}),
])
def test_parse_signature_input_accepts(value: str, expected: dict) -> None:
    parsed = parse_signature_input(value)
    assert {label: raw for label, (_, raw) in parsed.items()} == expected
    assert all(params.serialize() == raw for params, raw in parsed.values())


@pytest.mark.parametrize("value", [
    "", " ", 'sig1=("@method"), sig1=("@path")', 'sig1=("@method" "@path"', 'sig1=("@method)', 'sig1=("@method"',
    "sig1=(@method)", 'sig1=("@Method")', 'sig1=("@method"  "@path")', 'sig1=( "@method")',
    'sig1=("@method" )', 'sig1=("@method" "@method")', 'sig1=("@method";bs)', 'sig1=("@method";sf=?1)',
    'sig1=("")', 'sig1=("a b")', 'sig1=("@signature-params")',
    'sig1=("@method");created=-1', 'sig1=("@method");created=1.5', 'sig1=("@method");created="1"',
    'sig1=("@method");keyid=1', "sig1=(\"@method\");keyid=tok", 'sig1=("@method");keyid=:YQ==:',
    'sig1=("@method");created', 'sig1=("@method");created=?1', 'sig1=("@method");foo="x"',
    'sig1=("@method");created=1;created=2', 'sig1=("@method");created=0001',
    'sig1=("@method");created=1234567890123456', 'sig1=("@method");keyid="a\\b"',
    'sig1=("@method");keyid="\u00e9"', 'sig1=("@method");keyid="a\tb"', 'sig1=("@method");keyid="open',
    'Sig1=("@method")', '1sig=("@method")', 'sig1="@method"', "sig1", "sig1=", 'sig1=("@method"),',
    'sig1=("@method") x', 'sig1=("@method");;created=1', 'sig1=("@method") ;created=1',
    'sig1=("@method"); created=1', 'sig1=("@method");created=1\r\n', 'sig1=("@method")\x00',
    'sig1=("@method");created =1', 'sig1 =("@method")', 'sig1=("@method"),,b=("x")',
    'sig1=("' + "a" * 9000 + '")', 'sig1=("@method")\u00a0',
])
def test_parse_signature_input_rejects(value: str) -> None:
    with pytest.raises(SignatureFormatError):
        parse_signature_input(value)


def test_parse_signature_accepts() -> None:
    assert parse_signature("sig=:YQ==:, other=:AAEC:") == {"sig": b"a", "other": b"\x00\x01\x02"}


@pytest.mark.parametrize("value", [
    "", "sig=:abc:", "sig=:YQ:", "sig=:YR==:", "sig=YQ==", 'sig="YQ=="', "sig=:YQ==:;p=1",
    "sig=:YQ==:, sig=:Yg==:", "sig=:Y Q==:", "sig=:YQ==", "sig=:-_8=:", "sig=:YQ==:,", "sig=(:YQ==:)",
    "sig=:YQ=Q=:", "sig=::", "sig", "sig=1", "SIG=:YQ==:", "sig=:YQ==:\n", "sig=:" + "A" * 9000 + ":",
])
def test_parse_signature_rejects(value: str) -> None:
    with pytest.raises(SignatureFormatError):
        parse_signature(value)


def test_format_error_is_a_value_error() -> None:
    assert issubclass(SignatureFormatError, ValueError)
