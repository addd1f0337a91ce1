"""The verifier library, pure and precise: every rejection reason, the order of checks,
key validity windows, and the replay store's atomicity and persistence."""
from __future__ import annotations

import base64
import json
import os
import stat
import threading

import pytest

from replicante_poller.actions.httpsig import COVERED, LABEL, MAX_TTL, TAG, SignatureParams, content_digest, sign_action, signature_base
from replicante_poller.agentside.replay import ReplayStore
from replicante_poller.errors import KeyFileError
from replicante_poller.actions.signing import generate_keypair, load_signing_key, signer_from_seed
from replicante_poller.agentside.verifier import Keyring, Rejection, TrustedKey, Verifier, parse_key_entry

NOW = 1_800_000_000
PATH = "/api/unstable/actions/schedule/agent.replicante.io/test.ping"
AGENT = "https://mongo1.example:37017"
KEY = signer_from_seed(bytes(range(32)))
OTHER = signer_from_seed(bytes(range(1, 33)))


def verifier(store=None, keys=(TrustedKey(KEY.public_key()),), revoked=(), now=NOW) -> Verifier:
    return Verifier(Keyring(keys, revoked), "rs", "node-1", store or ReplayStore(":memory:"), agent_urls=[AGENT],
                    clock=lambda: now)


def request(signer=KEY, body=None, cluster="rs", node="node-1", created=NOW, ttl=60, nonce=b"n" * 16, path=PATH,
            agent=AGENT):
    body = body if body is not None else json.dumps({"action_id": "a-1", "args": None}).encode()
    headers = sign_action(method="POST", path=path, body=body, agent_url=agent, cluster_id=cluster, node_id=node,
                          key_id=signer.key_id, sign=signer.sign, now=created, ttl=ttl, nonce=nonce)
    return "POST", path, headers, body


def test_a_valid_request_is_accepted_with_its_key_and_action():
    verdict = verifier().verify(*request())
    assert (verdict.accepted, verdict.key_id, verdict.action_id, verdict.duplicate) == (True, KEY.key_id, "a-1", False)


@pytest.mark.parametrize("case, reason", [
    ("oversize", Rejection.TOO_LARGE), ("no headers", Rejection.MALFORMED), ("unknown key", Rejection.UNKNOWN_KEY),
    ("revoked", Rejection.REVOKED_KEY), ("digest", Rejection.DIGEST_MISMATCH), ("method", Rejection.BAD_SIGNATURE),
    ("path", Rejection.BAD_SIGNATURE), ("node", Rejection.WRONG_AUDIENCE), ("cluster", Rejection.WRONG_AUDIENCE),
    ("expired", Rejection.EXPIRED), ("future", Rejection.NOT_YET_VALID), ("header tampered", Rejection.BAD_SIGNATURE),
])
def test_each_failure_has_its_precise_reason(case, reason):
    method, path, headers, body = request(body=b"x" * 70_000 if case == "oversize" else None,
                                          signer=OTHER if case == "unknown key" else KEY,
                                          node="node-2" if case == "node" else "node-1",
                                          cluster="other" if case == "cluster" else "rs",
                                          created=NOW - 200 if case == "expired" else NOW + 100 if case == "future" else NOW)
    if case == "no headers":
        headers = {"Content-Type": "application/json"}
    if case == "digest":
        body = body.replace(b"a-1", b"a-2")
    if case == "method":
        method = "PUT"
    if case == "path":
        path = PATH.replace("ping", "stop")
    if case == "header tampered":
        headers = {**headers, "Signature-Input": headers["Signature-Input"].replace(f"created={NOW}", f"created={NOW + 1}")}
    revoked = (KEY.key_id,) if case == "revoked" else ()
    verdict = verifier(revoked=revoked).verify(method, path, headers, body)
    assert (verdict.accepted, verdict.reason) == (False, reason), verdict.detail


def test_checks_run_in_the_design_order():
    # Revoked and wrongly addressed and expired: the key decision comes first.
    assert verifier(revoked=(KEY.key_id,)).verify(*request(node="x", created=NOW - 500)).reason is Rejection.REVOKED_KEY
    # Bad digest and wrong audience: the digest is checked before the signature and audience.
    method, path, headers, body = request(node="x")
    assert verifier().verify(method, path, headers, body + b" ").reason is Rejection.DIGEST_MISMATCH
    # Wrong audience and expired: the audience before the time window.
    assert verifier().verify(*request(node="x", created=NOW - 500)).reason is Rejection.WRONG_AUDIENCE
    # Expired and replayed: the window before the replay cache, which is left untouched.
    store = ReplayStore(":memory:")
    assert verifier(store).verify(*request(created=NOW - 500)).reason is Rejection.EXPIRED
    assert store.remember_nonce(KEY.key_id, "bm5ubm5ubm5ubm5ubm5ubg", NOW + 90)


def test_clock_skew_of_30_seconds_is_allowed_each_way():
    assert verifier().verify(*request(created=NOW + 30)).accepted
    assert verifier().verify(*request(created=NOW - 90, ttl=60)).accepted  # expired 30 s ago
    assert not verifier().verify(*request(created=NOW - 91, ttl=60)).accepted


def test_replays_are_refused_and_retries_of_an_action_are_duplicates():
    store = ReplayStore(":memory:")
    check = verifier(store)
    assert check.verify(*request()).accepted
    assert check.verify(*request()).reason is Rejection.REPLAY
    retry = check.verify(*request(nonce=b"m" * 16))
    assert retry.accepted and retry.duplicate and retry.previous is None
    store.record_outcome("a-1", 200, "application/json", b'{"id":"a-1"}')
    again = check.verify(*request(nonce=b"o" * 16))
    assert again.duplicate and again.previous.status == 200 and again.previous.body == b'{"id":"a-1"}'
    other = json.dumps({"action_id": "a-1", "args": {"different": True}}).encode()
    assert check.verify(*request(body=other, nonce=b"p" * 16)).reason is Rejection.CONFLICT


def test_replay_store_check_and_insert_is_atomic_across_threads_and_persisted(tmp_path):
    path = str(tmp_path / "replay.db")
    store = ReplayStore(path)
    start = threading.Barrier(16)
    wins: list[bool] = []
    lock = threading.Lock()

    def racer() -> None:
        start.wait()
        won = store.remember_nonce("kid", "same-nonce", NOW + 60)
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=racer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 15 + [True]
    store.close()
    assert ReplayStore(path).remember_nonce("kid", "same-nonce", NOW + 60) is False


def test_keys_not_valid_yet_or_any_more_are_refused():
    early = TrustedKey(KEY.public_key(), not_before=NOW + 10)
    late = TrustedKey(KEY.public_key(), not_after=NOW - 10)
    assert verifier(keys=(early,)).verify(*request()).reason is Rejection.KEY_NOT_VALID
    assert verifier(keys=(late,)).verify(*request()).reason is Rejection.KEY_NOT_VALID
    both = verifier(keys=(TrustedKey(KEY.public_key()), TrustedKey(OTHER.public_key())))
    assert both.verify(*request()).accepted and both.verify(*request(signer=OTHER, nonce=b"q" * 16)).accepted


def test_keyring_entries_check_the_stated_key_id_and_times(tmp_path):
    kid = generate_keypair(str(tmp_path / "k"))
    pub = tmp_path / "k.pub"
    entry = parse_key_entry(f"{pub};kid={kid};not_before=2026-01-01T00:00:00Z;not_after=2027-01-01T00:00:00Z")
    assert entry.key.key_id == kid and entry.not_before < entry.not_after
    with pytest.raises(KeyFileError, match="is not this key's id"):
        parse_key_entry(f"{pub};kid=ed25519-0000000000000000")
    with pytest.raises(KeyFileError, match="time zone"):
        parse_key_entry(f"{pub};not_after=2027-01-01T00:00:00")
    with pytest.raises(KeyFileError, match="bad key option"):
        parse_key_entry(f"{pub};colour=blue")
    assert load_signing_key(tmp_path / "k.key").key_id == kid
    assert os.stat(tmp_path / "k.key").st_mode & 0o777 == 0o600


def test_an_unanswered_claim_goes_stale_so_a_dead_forwarder_blocks_nothing():
    now = [NOW]
    store = ReplayStore(":memory:", clock=lambda: now[0])
    assert store.claim_action("a-1", "fp", stale_after=20) == (True, "fp", None)
    assert store.claim_action("a-1", "fp", stale_after=20) == (False, "fp", None)  # in flight
    now[0] += 21
    assert store.claim_action("a-1", "fp", stale_after=20)[0] is True  # its forwarder never answered
    store.record_outcome("a-1", 200, "application/json", b"{}")
    now[0] += 100
    claimed, known, previous = store.claim_action("a-1", "fp", stale_after=20)
    assert not claimed and previous.status == 200  # answered claims never go stale
    assert store.claim_action("a-1", "other", stale_after=20) == (False, "fp", previous)


def forged(params: SignatureParams, signer=KEY, body=None, path=PATH) -> tuple:
    """A request signed correctly over `params`, whatever they say (sign_action would refuse
    such parameters): what only the verifier's own checks can stop."""
    body = body if body is not None else json.dumps({"action_id": "a-1", "args": None}).encode()
    headers = {"Content-Type": "application/json", "Content-Digest": content_digest(body),
               "Replicante-Agent": AGENT, "Replicante-Cluster": "rs", "Replicante-Node": "node-1"}
    signature = signer.sign(signature_base("POST", path, None, headers, params))
    headers["Signature-Input"] = f"{LABEL}={params.serialize()}"
    headers["Signature"] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"
    return "POST", path, headers, body


def params(ttl: int = 60, nonce: str = "bm5ubm5ubm5ubm5ubm5ubg") -> SignatureParams:
    return SignatureParams(components=COVERED, created=NOW, expires=NOW + ttl, nonce=nonce, keyid=KEY.key_id, tag=TAG)


def test_the_forged_helper_makes_requests_the_verifier_accepts():
    assert verifier().verify(*forged(params())).accepted


@pytest.mark.parametrize("ttl", [MAX_TTL + 1, 3600, 10**9])
def test_a_validity_window_over_300_seconds_is_refused(ttl):
    verdict = verifier().verify(*forged(params(ttl=ttl)))

    assert (verdict.accepted, verdict.reason) == (False, Rejection.BAD_WINDOW), verdict


def test_a_validity_window_of_exactly_300_seconds_is_accepted():
    assert verifier().verify(*forged(params(ttl=MAX_TTL))).accepted


@pytest.mark.parametrize("nonce", ["short", "bm5ubm5ubm5ubm5ubm5ubgA", "bm5ubm5ubm5ubm5ubm5ub", "bm5ubm5ubm5ubm5ubm5u+g",
                                   "bm5ubm5ubm5ubm5ubm5u/g", "bm5ubm5ubm5ubm5ubm5ub=", "bm5ubm5ubm5ubm5ubm5u g"])
def test_a_nonce_that_is_not_22_base64url_characters_is_refused(nonce):
    verdict = verifier().verify(*forged(params(nonce=nonce)))

    assert (verdict.accepted, verdict.reason) == (False, Rejection.MALFORMED), verdict
    assert "nonce" in verdict.detail


def test_the_replay_store_and_its_journal_files_are_private(tmp_path):
    old = os.umask(0o022)  # a usual umask: the store must not rely on a strict one
    try:
        store = ReplayStore(str(tmp_path / "gateway" / "replay.db"))
        assert store.remember_nonce(KEY.key_id, "bm5ubm5ubm5ubm5ubm5ubg", NOW + 60)
    finally:
        os.umask(old)
    files = sorted(tmp_path.joinpath("gateway").iterdir())
    assert [f.name for f in files][:1] == ["replay.db"]
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, f"{file.name} is {oct(file.stat().st_mode)}"
    store.close()
