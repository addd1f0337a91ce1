"""Agent side: verify a signed action request (DESIGN section 7), importable by any agent.

`Verifier.verify(method, path, headers, body)` follows the verifier order of the design,
fail closed, and returns a Verdict: accepted, or the precise internal reason (for logs
and metrics only; the caller answers every rejection with one generic 401).
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
import re
import secrets
import time
from typing import Callable, Iterable, Mapping, Optional

from ..actions.httpsig import (
    COVERED,
    LABEL,
    MAX_TTL,
    TAG,
    SignatureFormatError,
    content_digest,
    parse_signature,
    parse_signature_input,
    signature_base,
)
from ..actions.signing import PublicKey, load_public_key
from ..agentapi import ACTION
from ..errors import KeyFileError
from ..limits import CLOCK_SKEW, MAX_BODY
from .replay import Outcome, ReplayStore

NONCE = re.compile(r"[A-Za-z0-9_-]{22}")


class Rejection(str, enum.Enum):
    """Why a request was refused (the label of the gateway's rejection counter)."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_LABEL = "bad_label"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    KEY_NOT_VALID = "key_not_valid"
    BAD_TAG = "bad_tag"
    BAD_ALG = "bad_alg"
    DIGEST_MISMATCH = "digest_mismatch"
    MISSING_COMPONENT = "missing_component"
    BAD_SIGNATURE = "bad_signature"
    WRONG_AUDIENCE = "wrong_audience"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    BAD_WINDOW = "bad_window"
    REPLAY = "replay"
    CONFLICT = "conflict"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of verification. `duplicate` with `previous`: a retry of an action
    already forwarded (answer with the first outcome, do not forward again). `claim`: the
    owner token of the claim an accepted, not duplicate, verdict holds on its action (pass
    it to the store's record_outcome and release_action)."""

    accepted: bool
    reason: Optional[Rejection] = None
    detail: str = ""
    key_id: Optional[str] = None
    action_id: Optional[str] = None
    duplicate: bool = False
    previous: Optional[Outcome] = None
    claim: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """A public key of the keyring, optionally valid only between two times."""

    key: PublicKey
    not_before: Optional[float] = None
    not_after: Optional[float] = None

    def valid_at(self, now: float) -> bool:
        return (self.not_before is None or now >= self.not_before) and (self.not_after is None or now <= self.not_after)


class Keyring:
    """The public keys an agent trusts (several at once, for rotation) and revoked key ids."""

    def __init__(self, keys: Iterable[TrustedKey], revoked: Iterable[str] = ()):
        self._keys = {k.key.key_id: k for k in keys}
        self.revoked = frozenset(revoked)

    def get(self, key_id: str) -> Optional[TrustedKey]:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_entries(cls, entries: Iterable[str], revoked: Iterable[str] = ()) -> "Keyring":
        """Keys from entries `PATH[;kid=KEY_ID][;not_before=RFC3339][;not_after=RFC3339]`.

        A stated `kid` that is not the key's own id is refused (KeyFileError)."""
        return cls([parse_key_entry(e) for e in entries], revoked)


def _timestamp(text: str, source: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KeyFileError(source, f"{text!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise KeyFileError(source, f"{text!r} needs a time zone (e.g. Z)")
    return moment.timestamp()


def parse_key_entry(entry: str) -> TrustedKey:
    """One keyring entry: a public key file and its optional kid and validity."""
    path, *options = [part.strip() for part in entry.split(";")]
    key = load_public_key(path)
    fields: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name not in ("kid", "not_before", "not_after") or name in fields:
            raise KeyFileError(path, f"bad key option {option!r} (use kid=, not_before=, not_after=)")
        fields[name] = value
    if "kid" in fields and fields["kid"] != key.key_id:
        raise KeyFileError(path, f"stated key id {fields['kid']} is not this key's id {key.key_id}")
    not_before = _timestamp(fields["not_before"], path) if "not_before" in fields else None
    not_after = _timestamp(fields["not_after"], path) if "not_after" in fields else None
    return TrustedKey(key, not_before, not_after)


def new_claim_token() -> str:
    """A claim owner's token: 128 random bits."""
    return secrets.token_urlsafe(16)


def fingerprint(path: str, body: bytes) -> str:
    """What makes two schedule requests the same action: its path (kind) and body."""
    return hashlib.sha256(path.encode() + b"\n" + body).hexdigest()


class Verifier:
    """Verifies schedule requests addressed to one agent: the URLs Core dials for it
    (`agent_urls`, compared with the signed Replicante-Agent) and its cluster and node ids."""

    def __init__(self, keyring: Keyring, cluster_id: str, node_id: str, store: ReplayStore,
                 agent_urls: Iterable[str], clock: Callable[[], float] = time.time, max_body: int = MAX_BODY,
                 skew: int = CLOCK_SKEW, claim_stale_after: float = 60.0,
                 claim_token: Callable[[], str] = new_claim_token):
        self.keyring, self.cluster_id, self.node_id, self.store = keyring, cluster_id, node_id, store
        self.agent_urls = frozenset(url.rstrip("/") for url in agent_urls)
        if not self.agent_urls:
            raise ValueError("a verifier needs the agent URL(s) it answers for")
        self._clock, self.max_body, self._skew = clock, max_body, skew
        self._stale_after, self._claim_token = claim_stale_after, claim_token

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Verdict:
        """Check one request; header names may be in any case."""
        try:
            return self._verify(method, path, {k.lower(): v for k, v in headers.items()}, body)
        except SignatureFormatError as exc:
            return Verdict(False, Rejection.MALFORMED, str(exc))

    def _verify(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Verdict:
        def reject(reason: Rejection, detail: str, key_id: Optional[str] = None) -> Verdict:
            return Verdict(False, reason, detail, key_id)

        if len(body) > self.max_body:
            return reject(Rejection.TOO_LARGE, f"body of {len(body)} bytes over {self.max_body}")
        if "?" in path or "#" in path:
            return reject(Rejection.MALFORMED, "a schedule request carries no query (it would not be signed)")
        if "signature-input" not in headers or "signature" not in headers:
            return reject(Rejection.MALFORMED, "Signature-Input or Signature missing")
        inputs = parse_signature_input(headers["signature-input"])
        signatures = parse_signature(headers["signature"])
        if LABEL not in inputs or LABEL not in signatures:
            return reject(Rejection.BAD_LABEL, f"no signature labelled {LABEL!r}")
        params, raw = inputs[LABEL]
        key_id = params.keyid
        if key_id is None:
            return reject(Rejection.MALFORMED, "no keyid")
        keyring = self.keyring  # one read: a reload may replace it
        if key_id in keyring.revoked:
            return reject(Rejection.REVOKED_KEY, f"key {key_id} is revoked", key_id)
        trusted = keyring.get(key_id)
        if trusted is None:
            return reject(Rejection.UNKNOWN_KEY, f"key {key_id} is not in the keyring", key_id)
        now = self._clock()
        if not trusted.valid_at(now):
            return reject(Rejection.KEY_NOT_VALID, f"key {key_id} is not valid now", key_id)
        if params.tag != TAG:
            return reject(Rejection.BAD_TAG, f"tag {params.tag!r}", key_id)
        if params.alg not in (None, "ed25519"):
            return reject(Rejection.BAD_ALG, f"alg {params.alg!r}", key_id)
        if headers.get("content-digest") != content_digest(body):
            return reject(Rejection.DIGEST_MISMATCH, "Content-Digest does not match the body", key_id)
        try:
            base = signature_base(method, path, None, headers, params, raw)
        except SignatureFormatError as exc:
            return reject(Rejection.MISSING_COMPONENT, str(exc), key_id)
        if not trusted.key.verify(base, signatures[LABEL]):
            return reject(Rejection.BAD_SIGNATURE, "signature does not verify", key_id)
        missing = [c for c in COVERED if c not in params.components]
        if missing:
            return reject(Rejection.MISSING_COMPONENT, f"not covered: {', '.join(missing)}", key_id)
        audience = (headers.get("replicante-cluster"), headers.get("replicante-node"))
        if audience != (self.cluster_id, self.node_id):
            return reject(Rejection.WRONG_AUDIENCE, f"signed for {audience}, this is {(self.cluster_id, self.node_id)}", key_id)
        if headers.get("replicante-agent") not in self.agent_urls:
            # Another endpoint's action relayed here (an agent claiming this node's identity).
            return reject(Rejection.WRONG_AUDIENCE,
                          f"signed for agent {headers.get('replicante-agent')!r}, this is {sorted(self.agent_urls)}", key_id)
        if params.created is None or params.expires is None or params.nonce is None:
            return reject(Rejection.MALFORMED, "created, expires and nonce are required", key_id)
        if params.expires <= params.created or params.expires - params.created > MAX_TTL:
            return reject(Rejection.BAD_WINDOW, f"validity {params.created}..{params.expires}", key_id)
        if params.created > now + self._skew:
            return reject(Rejection.NOT_YET_VALID, f"created {params.created} is in the future", key_id)
        if params.expires < now - self._skew:
            return reject(Rejection.EXPIRED, f"expired at {params.expires}", key_id)
        if not NONCE.fullmatch(params.nonce):
            return reject(Rejection.MALFORMED, "nonce is not 22 base64url characters", key_id)
        if not self.store.remember_nonce(key_id, params.nonce, params.expires + self._skew):
            return reject(Rejection.REPLAY, f"nonce {params.nonce} already seen", key_id)
        return self._idempotency(path, body, key_id)

    def _idempotency(self, path: str, body: bytes, key_id: str) -> Verdict:
        field = "id" if path.endswith(ACTION) else "action_id"  # replisdk `POST /action`, else legacy
        try:
            action_id = json.loads(body).get(field)
        except (ValueError, AttributeError):
            action_id = None
        if not isinstance(action_id, str) or not action_id:
            return Verdict(False, Rejection.MALFORMED, f"body has no {field}", key_id)
        owner = self._claim_token()
        claimed, known, previous = self.store.claim_action(action_id, fingerprint(path, body), self._stale_after, owner)
        if claimed:
            return Verdict(True, key_id=key_id, action_id=action_id, claim=owner)
        if known != fingerprint(path, body):
            return Verdict(False, Rejection.CONFLICT, f"action {action_id} already exists with other content",
                           key_id, action_id)
        return Verdict(True, key_id=key_id, action_id=action_id, duplicate=True, previous=previous)
