"""RFC 9421 HTTP Message Signatures, the profile of DESIGN section 7 (pure functions).

The clock, the nonce and the signing function are passed in. Received headers are parsed
as a strict subset of RFC 8941: dictionaries of inner lists of strings with integer and
string parameters (Signature-Input) or of byte sequences (Signature), in canonical form,
so the `@signature-params` line a verifier rebuilds is the exact text that was signed.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping

from ..errors import SignatureFormatError
from ..limits import ACTION_TTL as DEFAULT_TTL
from ..limits import MAX_ACTION_TTL as MAX_TTL

LABEL = "replicante"
TAG = "replicante-action-v2"  # v2 adds the signed Replicante-Agent: the endpoint the action is for
COVERED = ("@method", "@path", "content-type", "content-digest", "replicante-agent", "replicante-cluster",
           "replicante-node")
NONCE_SIZE = 16
MAX_FIELD = 8192  # longest Signature-Input or Signature value parsed

PARAM_ORDER = ("created", "expires", "nonce", "keyid", "alg", "tag")
_INT_PARAMS = ("created", "expires")
_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_COMPONENT = re.compile(r"@?[a-z0-9!#$%&'*+.^_`|~-]+")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_OBS_FOLD = re.compile(r"\r?\n[ \t]+")
_DIGITS = re.compile(r"[0-9]{1,15}")
_B64 = re.compile(r"[A-Za-z0-9+/=]*")


def _is_visible(text: str) -> bool:
    """Printable ASCII and SP only (what an RFC 8941 string may hold)."""
    return all(" " <= ch <= "~" for ch in text)


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def content_digest(body: bytes) -> str:
    """The Content-Digest value of `body`: `sha-256=:<base64>:`."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


@dataclasses.dataclass(frozen=True)
class SignatureParams:
    """The covered components and parameters of one signature.

    `order` lists the parameters in the order they serialize; empty means the profile
    order (created, expires, nonce, keyid, alg, tag) of the ones that are set.
    """

    components: tuple[str, ...]
    created: int | None = None
    expires: int | None = None
    nonce: str | None = None
    keyid: str | None = None
    alg: str | None = None
    tag: str | None = None
    order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "components", tuple(self.components))
        object.__setattr__(self, "order", tuple(self.order))
        if len(set(self.components)) != len(self.components):
            raise SignatureFormatError("a component is covered twice")
        for name in self.components:
            if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or name == "@signature-params":
                raise SignatureFormatError(f"bad component name {name!r}")
        for name in PARAM_ORDER:
            value = getattr(self, name)
            if value is None:
                continue
            if name in _INT_PARAMS:
                if type(value) is not int or not 0 <= value <= 999_999_999_999_999:
                    raise SignatureFormatError(f"{name} must be a non-negative integer")
            elif not isinstance(value, str) or not _is_visible(value):
                raise SignatureFormatError(f"{name} must be a string of printable ASCII")
        present = [name for name in PARAM_ORDER if getattr(self, name) is not None]
        if self.order and (sorted(self.order) != sorted(present) or len(set(self.order)) != len(self.order)):
            raise SignatureFormatError(f"order {self.order!r} does not list the parameters set {present!r}")

    def serialize(self) -> str:
        """The RFC 8941 inner list with its parameters: the `@signature-params` value."""
        out = "(" + " ".join(_sf_string(c) for c in self.components) + ")"
        names = self.order or tuple(n for n in PARAM_ORDER if getattr(self, n) is not None)
        for name in names:
            value = getattr(self, name)
            out += f";{name}={value}" if name in _INT_PARAMS else f";{name}={_sf_string(value)}"
        return out


def _field_value(name: str, headers: Mapping[str, str]) -> str:
    found = [value for key, value in headers.items() if key.lower() == name]
    if not found:
        raise SignatureFormatError(f"covered header {name} is missing")
    if len(found) > 1:
        raise SignatureFormatError(f"header {name} given more than once; combine the values first")
    return _OBS_FOLD.sub(" ", found[0]).strip(" \t")


def signature_base(method: str, path: str, authority: str | None, headers: Mapping[str, str],
                   params: SignatureParams, raw_params: str | None = None) -> bytes:
    """The RFC 9421 section 2.5 signature base, ASCII, lines joined by LF, no final LF.

    `path` is the request target in origin form; `@path` is its part before `?` and
    `@query` the rest (`?` when none). `raw_params`, when given, is the received text of
    the signature's Signature-Input member and is used verbatim.
    """
    target_path, _, query = path.partition("?")
    lines = []
    for name in params.components:
        if name == "@method":
            value = method
        elif name == "@path":
            value = target_path or "/"
        elif name == "@query":
            value = "?" + query
        elif name == "@authority":
            if authority is None:
                raise SignatureFormatError("@authority is covered but the request has no authority")
            value = authority.lower()
        elif name.startswith("@"):
            raise SignatureFormatError(f"derived component {name} is not supported")
        else:
            value = _field_value(name, headers)
        lines.append(f'"{name}": {value}')
    lines.append('"@signature-params": ' + (params.serialize() if raw_params is None else raw_params))
    text = "\n".join(lines)
    if "\r" in text or text.count("\n") != len(lines) - 1:
        raise SignatureFormatError("a covered value contains a line break")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise SignatureFormatError("a covered value is not ASCII") from None


def _check_header_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} must not contain CR or LF")
    if not value or value != value.strip(" \t") or not _is_visible(value):
        raise ValueError(f"{name} must be printable ASCII without surrounding spaces, got {value!r}")


def sign_action(*, method: str, path: str, body: bytes, agent_url: str, cluster_id: str, node_id: str, key_id: str,
                sign: Callable[[bytes], bytes], now: int, ttl: int = DEFAULT_TTL, nonce: bytes) -> dict[str, str]:
    """The headers that sign one attempt of an action request (DESIGN section 7).

    `agent_url` is the URL the poller dials for this agent (as discovery lists it, the one
    whose TLS certificate it verifies); with cluster and node ids it is the audience."""
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be 1..{MAX_TTL} seconds, got {ttl!r}")
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
    if type(now) is not int or now < 0:
        raise ValueError(f"now must be a non-negative integer, got {now!r}")
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"bad method {method!r}")
    _check_header_value("path", path)
    if not path.startswith("/") or "?" in path or "#" in path or " " in path:
        raise ValueError(f"path must be an absolute path without query or fragment, got {path!r}")
    for name, value in (("agent_url", agent_url), ("cluster_id", cluster_id), ("node_id", node_id),
                        ("key_id", key_id)):
        _check_header_value(name, value)
    params = SignatureParams(
        components=COVERED, created=now, expires=now + ttl,
        nonce=base64.urlsafe_b64encode(bytes(nonce)).rstrip(b"=").decode("ascii"),
        keyid=key_id, tag=TAG)
    headers = {
        "Content-Type": "application/json",
        "Content-Digest": content_digest(body),
        "Replicante-Agent": agent_url,
        "Replicante-Cluster": cluster_id,
        "Replicante-Node": node_id,
    }
    signature = sign(signature_base(method, path, None, headers, params))
    if len(signature) != 64:
        raise ValueError("the signing function must return a 64-byte Ed25519 signature")
    headers["Signature-Input"] = f"{LABEL}={params.serialize()}"
    headers["Signature"] = f"{LABEL}=:{base64.b64encode(signature).decode('ascii')}:"
    return headers


class _Parser:
    """A cursor over one field value: the RFC 8941 subset the two headers use."""

    def __init__(self, text: str, field: str):
        if not isinstance(text, str) or len(text) > MAX_FIELD:
            raise SignatureFormatError(f"{field} is missing or longer than {MAX_FIELD} characters")
        if not all(" " <= ch <= "~" or ch == "\t" for ch in text):
            raise SignatureFormatError(f"{field} holds a character outside printable ASCII")
        self.text, self.pos, self.field = text, 0, field

    def fail(self, what: str) -> SignatureFormatError:
        return SignatureFormatError(f"{self.field}: {what} at offset {self.pos}")

    def peek(self) -> str:
        return self.text[self.pos:self.pos + 1]

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if not found or not found.group():
            raise self.fail(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def string(self) -> str:
        self.expect('"')
        out = []
        while True:
            char = self.peek()
            self.pos += 1
            if char == "":
                raise self.fail("unterminated string")
            if char == '"':
                return "".join(out)
            if char == "\\":
                char = self.peek()
                if char not in ('"', "\\") or char == "":
                    raise self.fail("bad escape in string")
                self.pos += 1
            elif char == "\t":
                raise self.fail("tab in string")
            out.append(char)

    def bare_item(self) -> int | str | bytes:
        char = self.peek()
        if char == '"':
            return self.string()
        if char.isdigit():
            digits = self.match(_DIGITS, "an integer")
            if self.peek().isdigit() or self.peek() == ".":
                raise self.fail("integer too long, or a decimal")
            return int(digits)
        if char == ":":
            self.pos += 1
            encoded = self.match(_B64, "base64")
            self.expect(":")
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise self.fail("bad base64") from None
        raise self.fail("expected a string, a non-negative integer or a byte sequence")

    def parameters(self) -> list[tuple[str, int | str | bytes]]:
        params: list[tuple[str, int | str | bytes]] = []
        while self.peek() == ";":
            self.pos += 1
            name = self.match(_KEY, "a parameter name")
            if name in (n for n, _ in params):
                raise self.fail(f"parameter {name} given twice")
            if self.peek() != "=":
                raise self.fail(f"parameter {name} has no value")
            self.pos += 1
            params.append((name, self.bare_item()))
        return params

    def dictionary(self, member: Callable[[], object]) -> dict[str, tuple[object, str]]:
        """label -> (member value, exact member text after `label=`)."""
        out: dict[str, tuple[object, str]] = {}
        self.pos = len(self.text) - len(self.text.lstrip(" "))
        while True:
            label = self.match(_KEY, "a label")
            if label in out:
                raise self.fail(f"label {label} given twice")
            self.expect("=")
            start = self.pos
            value = member()
            out[label] = (value, self.text[start:self.pos])
            self.skip_ows()
            if self.pos == len(self.text):
                return out
            self.expect(",")
            self.skip_ows()
            if self.pos == len(self.text):
                raise self.fail("trailing comma")


def parse_signature_input(value: str) -> dict[str, tuple[SignatureParams, str]]:
    """label -> (parameters, exact member text) of a Signature-Input value; strict."""
    parser = _Parser(value, "Signature-Input")

    def member() -> SignatureParams:
        parser.expect("(")
        components: list[str] = []
        while parser.peek() != ")":
            if components:
                parser.expect(" ")
            if parser.peek() != '"':
                raise parser.fail("expected a quoted component name")
            components.append(parser.string())
            if parser.peek() == ";":
                raise parser.fail("component parameters are not supported")
        parser.pos += 1
        found = dict(parser.parameters())
        for name, item in found.items():
            if name not in PARAM_ORDER:
                raise parser.fail(f"unknown parameter {name}")
            if type(item) is not (int if name in _INT_PARAMS else str):
                raise parser.fail(f"parameter {name} has the wrong type")
        try:
            return SignatureParams(tuple(components), order=tuple(found), **found)  # type: ignore[arg-type]
        except SignatureFormatError as exc:
            raise parser.fail(str(exc)) from None

    out = {}
    for label, (params, raw) in parser.dictionary(member).items():
        assert isinstance(params, SignatureParams)
        if params.serialize() != raw:
            raise SignatureFormatError(f"Signature-Input: member {label} is not in canonical form")
        out[label] = (params, raw)
    return out


def parse_signature(value: str) -> dict[str, bytes]:
    """label -> signature bytes of a Signature value (`label=:base64:`); strict."""
    parser = _Parser(value, "Signature")

    def member() -> bytes:
        if parser.peek() != ":":
            raise parser.fail("expected a byte sequence")
        item = parser.bare_item()
        if parser.peek() == ";":
            raise parser.fail("parameters are not allowed on a signature")
        return item  # type: ignore[return-value]

    out = {}
    for label, (item, raw) in parser.dictionary(member).items():
        assert isinstance(item, bytes)
        if f":{base64.b64encode(item).decode('ascii')}:" != raw:
            raise SignatureFormatError(f"Signature: member {label} is not canonical base64")
        out[label] = item
    return out
