"""Signer and verifier against an independent implementation of RFC 9421 and RFC 9530.

Our signer and our verifier agree with each other by construction: a mistake made the
same way on both sides (the digest over the wrong bytes, a signature base with a wrong
line) would pass every test that only pairs them. `http-message-signatures` (with
`http-sf` for RFC 8941 structured fields), an implementation written by others, is the
oracle here: it must verify what we sign, and we must accept what it signs.
"""
from __future__ import annotations

import base64
import datetime
import json
import os
import time

import http_sf
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import ContentDigest, HTTPMessageSigner, HTTPMessageVerifier, algorithms
from http_message_signatures.resolvers import MappingKeyResolver

from replicante_poller.actions.httpsig import COVERED, LABEL, MAX_TTL, TAG, content_digest, sign_action
from replicante_poller.agentside.replay import ReplayStore
from replicante_poller.actions.signing import signer_from_seed
from replicante_poller.agentside.verifier import Keyring, TrustedKey, Verifier

SEED = bytes(range(32))
KEY = signer_from_seed(SEED)
PATH = "/api/unstable/actions/schedule/agent.replicante.io/test.ping"
URL = "https://mongo1.test:37017" + PATH
AGENT = "https://mongo1.test:37017"  # the agent URL the poller dials, signed as Replicante-Agent


def oracle_keys() -> MappingKeyResolver:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(SEED)
    return MappingKeyResolver(public_keys={KEY.key_id: private.public_key()}, private_keys={KEY.key_id: private})


def body_of(action_id: str = "6f1c1f5e-0d7c-4b8e-9a51-2f7f9f0f4a01") -> bytes:
    return json.dumps({"action_id": action_id, "args": {"why": "check"}, "created_ts": "2026-11-30T12:00:00Z",
                       "requester": "CORE_API"}, separators=(",", ":")).encode()


def our_verifier() -> Verifier:
    return Verifier(Keyring((TrustedKey(KEY.public_key()),)), "orders", "mongo1:27017", ReplayStore(":memory:"),
                    agent_urls=[AGENT])


@pytest.mark.parametrize("body, expected", [
    (b'{"hello": "world"}', "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),  # RFC 9530 section 2
    (b"", "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"),  # SHA-256 of nothing (FIPS 180-2)
])
def test_content_digest_known_answers(body, expected):
    assert content_digest(body) == expected
    assert ContentDigest.create(body) == expected


def test_content_digest_matches_the_oracle_on_any_bytes():
    for size in (1, 17, 4096, 70_000):
        body = os.urandom(size)
        assert content_digest(body) == ContentDigest.create(body)


def test_what_we_sign_verifies_with_the_independent_implementation():
    now = int(time.time())
    body = body_of()
    headers = sign_action(method="POST", path=PATH, body=body, agent_url=AGENT, cluster_id="orders", node_id="mongo1:27017",
                          key_id=KEY.key_id, sign=KEY.sign, now=now, ttl=60, nonce=os.urandom(16))
    request = requests.Request("POST", URL, headers=headers, data=body).prepare()

    results = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=oracle_keys()).verify(
        request, expect_tag=TAG, require_components=COVERED, body=body)

    (result,) = results
    assert result.label == LABEL
    assert result.parameters["keyid"] == KEY.key_id
    assert result.parameters["expires"] - result.parameters["created"] == 60
    assert result.body == body  # the oracle checked Content-Digest against the bytes sent


def test_what_we_sign_is_made_of_valid_structured_fields():
    now = int(time.time())
    headers = sign_action(method="POST", path=PATH, body=body_of(), agent_url=AGENT, cluster_id="orders", node_id="mongo1:27017",
                          key_id=KEY.key_id, sign=KEY.sign, now=now, ttl=MAX_TTL, nonce=bytes(16))

    inputs = http_sf.parse(headers["Signature-Input"].encode(), tltype="dictionary")
    signatures = http_sf.parse(headers["Signature"].encode(), tltype="dictionary")
    digest = http_sf.parse(headers["Content-Digest"].encode(), tltype="dictionary")

    components, params = inputs[LABEL]
    assert [c[0] for c in components] == list(COVERED)
    assert params == {"created": now, "expires": now + MAX_TTL, "nonce": "AAAAAAAAAAAAAAAAAAAAAA",
                      "keyid": KEY.key_id, "tag": TAG}
    assert isinstance(signatures[LABEL][0], bytes) and len(signatures[LABEL][0]) == 64
    assert isinstance(digest["sha-256"][0], bytes) and len(digest["sha-256"][0]) == 32


def oracle_signed(body: bytes) -> requests.PreparedRequest:
    """A schedule request signed by the independent implementation with our profile: the
    covered components, tag, a 22-character nonce, no alg, 60 s validity."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    request = requests.Request("POST", URL, data=body, headers={
        "Content-Type": "application/json", "Replicante-Agent": AGENT, "Replicante-Cluster": "orders",
        "Replicante-Node": "mongo1:27017"}).prepare()  # the oracle adds Content-Digest from `body`
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=oracle_keys()).sign(
        request, key_id=KEY.key_id, created=now, expires=now + datetime.timedelta(seconds=60),
        nonce=base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode(), label=LABEL, tag=TAG,
        include_alg=False, covered_component_ids=COVERED, body=body)
    return request


def test_what_the_independent_implementation_signs_is_accepted_by_our_verifier():
    body = body_of()
    request = oracle_signed(body)

    verdict = our_verifier().verify("POST", PATH, dict(request.headers), body)

    assert verdict.accepted, verdict
    assert verdict.key_id == KEY.key_id


def test_a_body_changed_after_the_independent_signature_is_refused_by_our_verifier():
    body = body_of()
    request = oracle_signed(body)

    verdict = our_verifier().verify("POST", PATH, dict(request.headers), body.replace(b"check", b"chock"))

    assert not verdict.accepted and verdict.reason.value == "digest_mismatch", verdict
