"""Properties of strict validation: whatever the document or the bytes, a model or an
`Invalid` comes back (never an exception), and valid documents survive a round trip."""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, Offset, Shard
from replicante_poller.reasons import Reason
from replicante_poller.polling.validation import (INT64_MAX, INT64_MIN, Invalid, parse, validate_agent_info,
                                          validate_datastore_info, validate_shards)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALIDATORS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool]]] = {
    "agent_info": (validate_agent_info, lambda model: isinstance(model, AgentInfo)),
    "datastore_info": (validate_datastore_info, lambda model: isinstance(model, DatastoreInfo)),
    "shards": (validate_shards, lambda model: isinstance(model, tuple) and all(isinstance(s, Shard) for s in model)),
}
validator_names = st.sampled_from(sorted(VALIDATORS))


# --- arbitrary documents and bytes -------------------------------------------------------------

KEYS = ["version", "checkout", "number", "taint", "cluster_display_name", "cluster_id", "kind", "node_id",
        "shards", "id", "role", "commit_offset", "lag", "unit", "value", "unknown"]
WORDS = ["primary", "secondary", "seconds", "offset", "zxid", "MongoDB", ""]

scalars = (st.none() | st.booleans()
           | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
           | st.sampled_from([INT64_MIN - 1, INT64_MIN, INT64_MAX, INT64_MAX + 1])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text() | st.sampled_from(WORDS))
keys = st.sampled_from(KEYS) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def encodings(value: Any) -> st.SearchStrategy[bytes]:
    """How a document may reach the poller: escaped or raw UTF-8 (NaN tokens and all), whole or cut."""
    escaped = json.dumps(value).encode()
    raw = json.dumps(value, ensure_ascii=False, indent=1).encode("utf-8", "surrogatepass")
    return st.sampled_from([escaped, raw, escaped[: len(escaped) // 2], escaped + b"}"])


AWKWARD = [  # bodies a strategy rarely reaches: deep nesting, a BOM, 5000-digit numbers, bare constants
    b"[" * 5000, b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000, b"\xef\xbb\xbf{}", b"1" * 5000, b"-" + b"9" * 5000,
    b'{"shards":[{"id":"a","role":"primary","lag":{"unit":"seconds","value":' + b"9" * 5000 + b"}}]}",
    b'{"a":1,"a":2}', b"NaN", b"-Infinity", b"1e999", b"\xff", b'"\\ud800"', b"", b" ", b"\x00",
]
bodies = (st.binary(max_size=300)
          | json_values.flatmap(encodings)
          | st.sampled_from(AWKWARD))


def assert_model_or_invalid(name: str, result: Any) -> None:
    _, is_model = VALIDATORS[name]
    if isinstance(result, Invalid):
        assert result.reason in (Reason.SCHEMA, Reason.INVALID_JSON), result
        assert isinstance(result.path, str) and result.path.startswith("$"), result
        assert isinstance(result.message, str) and result.message
    else:
        assert is_model(result), result


@PROPERTY
@given(name=validator_names, document=json_values)
def test_validators_return_a_model_or_a_schema_invalid_for_any_document(name, document):
    validate, _ = VALIDATORS[name]
    result = validate(document)
    assert_model_or_invalid(name, result)
    if isinstance(result, Invalid):
        assert result.reason is Reason.SCHEMA  # the document was already decoded


@PROPERTY
@given(name=validator_names, body=bodies)
def test_parse_returns_a_model_or_an_invalid_for_any_bytes(name, body):
    validate, _ = VALIDATORS[name]
    assert_model_or_invalid(name, parse(body, validate))


@PROPERTY
@given(name=validator_names, body=st.binary(min_size=1, max_size=200))
def test_bytes_that_are_not_utf8_are_invalid_json(name, body):
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        result = parse(body, VALIDATORS[name][0])
        assert isinstance(result, Invalid) and result.reason is Reason.INVALID_JSON and result.path == "$"


@pytest.mark.parametrize("name", sorted(VALIDATORS))
@pytest.mark.parametrize("body", AWKWARD, ids=range(len(AWKWARD)))
def test_awkward_bodies_are_invalid_values(name, body):
    result = parse(body, VALIDATORS[name][0])
    assert isinstance(result, Invalid) and result.path.startswith("$"), result
    assert result.reason in (Reason.SCHEMA, Reason.INVALID_JSON)


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_integers_beyond_any_range_are_schema_problems(name):
    huge = 10**4400  # more digits than int() will print: a naive str() of it raises
    for document in (huge, {"version": {"checkout": huge}}, {"cluster_id": huge},
                     {"shards": [{"id": "a", "role": "primary", "lag": {"unit": "seconds", "value": -huge}}]}):
        result = VALIDATORS[name][0](document)
        assert isinstance(result, Invalid) and result.reason is Reason.SCHEMA, result


# --- valid documents round-trip --------------------------------------------------------------

int64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
offsets = st.builds(
    dict,
    unit=st.just("seconds") | st.builds(lambda name: {"unit": name}, st.text()),
    value=int64,
)
roles = st.sampled_from(["primary", "secondary"]) | st.builds(lambda text: {"unknown": text}, st.text())
strict_json = st.recursive(  # what a well-behaved agent may put in fields the poller ignores
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
extra = st.dictionaries(st.sampled_from(["x-extra", "note", "_links"]), strict_json, max_size=2)


@st.composite
def shard_documents(draw: st.DrawFn) -> dict[str, Any]:
    shard: dict[str, Any] = {"id": draw(st.text()), "role": draw(roles)}
    for optional in ("commit_offset", "lag"):  # missing optional fields mean null
        choice = draw(st.sampled_from(["offset", "null", "missing"]))
        if choice != "missing":
            shard[optional] = draw(offsets) if choice == "offset" else None
    shard.update(draw(extra))  # unknown fields are ignored
    return shard


shards_documents = st.builds(lambda shards, more: {"shards": shards, **more},
                             st.lists(shard_documents(), max_size=6), extra)
agent_documents = st.builds(
    lambda version, more: {"version": version, **more},
    st.fixed_dictionaries({"checkout": st.text(), "number": st.text(), "taint": st.text()}), extra)


@st.composite
def datastore_documents(draw: st.DrawFn) -> dict[str, Any]:
    document = {"cluster_id": draw(st.text()), "kind": draw(st.text()), "node_id": draw(st.text()),
                "version": draw(st.text())}
    display = draw(st.sampled_from(["text", "null", "missing"]))
    if display != "missing":
        document["cluster_display_name"] = draw(st.text()) if display == "text" else None
    return {**document, **draw(extra)}


def to_body(model: Any) -> bytes:
    if isinstance(model, tuple):
        return json.dumps({"shards": [shard.to_json() for shard in model]}).encode()
    return json.dumps(model.to_json()).encode()


def expected_shard(document: dict[str, Any]) -> Shard:
    def offset(value: Any) -> Any:
        if value is None:
            return None
        unit = value["unit"]
        return Offset(unit["unit"], value["value"], True) if isinstance(unit, dict) else Offset(unit, value["value"])

    role = document["role"]
    return Shard(document["id"], "unknown" if isinstance(role, dict) else role,
                 role["unknown"] if isinstance(role, dict) else None,
                 offset(document.get("commit_offset")), offset(document.get("lag")))


@PROPERTY
@given(document=shards_documents, ensure_ascii=st.booleans())
def test_valid_shards_documents_parse_to_what_they_say_and_round_trip(document, ensure_ascii):
    try:
        body = json.dumps(document, ensure_ascii=ensure_ascii).encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: it only travels escaped
        body = json.dumps(document).encode()
    shards = parse(body, validate_shards)
    assert not isinstance(shards, Invalid), shards
    assert shards == tuple(expected_shard(item) for item in document["shards"])
    assert parse(to_body(shards), validate_shards) == shards


@PROPERTY
@given(document=agent_documents)
def test_valid_agent_info_round_trips(document):
    agent = parse(json.dumps(document).encode(), validate_agent_info)
    assert agent == AgentInfo(AgentVersion(**document["version"]))
    assert parse(to_body(agent), validate_agent_info) == agent


@PROPERTY
@given(document=datastore_documents())
def test_valid_datastore_info_round_trips(document):
    datastore = parse(json.dumps(document).encode(), validate_datastore_info)
    assert isinstance(datastore, DatastoreInfo), datastore
    assert datastore.node_id == document["node_id"]
    assert datastore.cluster_display_name == document.get("cluster_display_name")
    assert parse(to_body(datastore), validate_datastore_info) == datastore


# --- near-valid documents: one place replaced by anything ------------------------------------

VALID = {"agent_info": agent_documents, "datastore_info": datastore_documents(), "shards": shards_documents}


def places(document: Any, path: tuple = ()) -> list[tuple]:
    """Every location in a document, as key/index steps from the root."""
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += places(value, path + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += places(value, path + (index,))
    return found


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, Any, tuple]:
    name = draw(validator_names)
    document = draw(VALID[name])
    place = draw(st.sampled_from(places(document)))
    replacement = draw(json_values | st.just(None))
    if not place:
        return name, replacement, place
    parent = document
    for step in place[:-1]:
        parent = parent[step]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[place[-1]]
    else:
        parent[place[-1]] = replacement
    return name, document, place


def steps(path: str) -> list:
    """`$.shards[2].role` -> ["shards", 2, "role"] (the validator's paths use plain keys)."""
    parsed: list = []
    for part in path[1:].replace("[", ".[").split("."):
        if part:
            parsed.append(int(part[1:-1]) if part.startswith("[") else part)
    return parsed


@PROPERTY
@given(case=near_valid())
def test_near_valid_documents_give_a_model_or_a_path_to_a_real_place(case):
    name, document, _ = case
    result = parse(json.dumps(document).encode(), VALIDATORS[name][0])
    assert_model_or_invalid(name, result)
    if isinstance(result, Invalid):
        if result.reason is Reason.INVALID_JSON:  # the replacement brought NaN or Infinity
            return
        node = document
        for step in steps(result.path)[:-1]:  # all but the last step exist (the last may be missing)
            node = node[step]
