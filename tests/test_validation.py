"""Validation of agent bodies over the fixture corpus in tests/corpus (see its README)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from replicante_poller.polling import validation
from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, Offset, Shard
from replicante_poller.reasons import Reason
from replicante_poller.polling.validation import Invalid, decode_json, parse

CORPUS = Path(__file__).parent / "corpus"


def build_agent_info(fields: dict[str, Any]) -> AgentInfo:
    return AgentInfo(AgentVersion(**fields))


def build_datastore_info(fields: dict[str, Any]) -> DatastoreInfo:
    return DatastoreInfo(**fields)


def build_offset(fields: dict[str, Any] | None) -> Offset | None:
    return None if fields is None else Offset(fields["unit"], fields["value"], fields["custom"])


def build_shards(items: list[dict[str, Any]]) -> tuple[Shard, ...]:
    return tuple(
        Shard(item["id"], item["role"], item["role_detail"], build_offset(item["commit_offset"]), build_offset(item["lag"]))
        for item in items
    )


def shards_to_json(shards: tuple[Shard, ...]) -> dict[str, Any]:
    return {"shards": [s.to_json() for s in shards]}


ENDPOINTS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], Callable[[Any], Any]]] = {
    # folder: (validator, builder of the expected model, model -> wire JSON)
    "agent_info": (validation.validate_agent_info, build_agent_info, lambda m: m.to_json()),
    "datastore_info": (validation.validate_datastore_info, build_datastore_info, lambda m: m.to_json()),
    "shards": (validation.validate_shards, build_shards, shards_to_json),
}


def expectations(kind: str) -> list[tuple[str, str, Any]]:
    cases = []
    for endpoint in ENDPOINTS:
        table = json.loads((CORPUS / endpoint / kind / "expected.json").read_text(encoding="utf-8"))
        cases.extend((endpoint, name, expected) for name, expected in sorted(table.items()))
    return cases


def body(endpoint: str, kind: str, name: str) -> bytes:
    return (CORPUS / endpoint / kind / name).read_bytes()


VALID = expectations("valid")
INVALID = expectations("invalid")


def ids(cases: list[tuple[str, str, Any]]) -> list[str]:
    return [f"{endpoint}/{name}" for endpoint, name, _ in cases]


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("kind", ["valid", "invalid"])
def test_every_corpus_file_has_an_expectation(endpoint: str, kind: str) -> None:
    folder = CORPUS / endpoint / kind
    table = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    files = {p.name for p in folder.iterdir() if p.name != "expected.json"}
    assert files == set(table)
    assert len(files) >= 5


def test_corpus_covers_what_it_claims() -> None:
    names = {(endpoint, name) for endpoint, name, _ in INVALID}
    reasons = {expected["reason"] for _, _, expected in INVALID}
    assert reasons == {"invalid_json", "schema"}
    for endpoint in ENDPOINTS:
        assert (endpoint, "empty.json") in names
        assert (endpoint, "deeply_nested_arrays.json") in names
        assert body(endpoint, "invalid", "deeply_nested_arrays.json").startswith(b"[" * 100000)
    with pytest.raises(UnicodeDecodeError):
        body("shards", "invalid", "invalid_utf8.json").decode("utf-8")


@pytest.mark.parametrize("endpoint, name, expected", VALID, ids=ids(VALID))
def test_valid_corpus(endpoint: str, name: str, expected: Any) -> None:
    validate, build, _ = ENDPOINTS[endpoint]
    assert parse(body(endpoint, "valid", name), validate) == build(expected)


@pytest.mark.parametrize("endpoint, name, expected", INVALID, ids=ids(INVALID))
def test_invalid_corpus(endpoint: str, name: str, expected: dict[str, str]) -> None:
    validate, _, _ = ENDPOINTS[endpoint]
    result = parse(body(endpoint, "invalid", name), validate)
    assert isinstance(result, Invalid), result
    assert (result.reason, result.path) == (Reason(expected["reason"]), expected["path"])
    assert result.message
    assert str(result) == f"{result.path}: {result.message}"


@pytest.mark.parametrize("endpoint, name, expected", VALID, ids=ids(VALID))
def test_to_json_round_trips(endpoint: str, name: str, expected: Any) -> None:
    validate, _, to_json = ENDPOINTS[endpoint]
    model = parse(body(endpoint, "valid", name), validate)
    assert not isinstance(model, Invalid)
    wire = to_json(model)
    assert validate(wire) == model
    assert parse(json.dumps(wire).encode(), validate) == model
    # and to_json is a fixed point: what the status API shows is stable
    assert to_json(validate(wire)) == wire


@pytest.mark.parametrize("endpoint, name, expected", VALID, ids=ids(VALID))
def test_valid_bodies_are_rejected_under_the_wrong_validator_without_raising(endpoint: str, name: str, expected: Any) -> None:
    for other, (validate, _, _) in ENDPOINTS.items():
        result = parse(body(endpoint, "valid", name), validate)
        if other != endpoint:
            assert isinstance(result, Invalid) and result.reason is Reason.SCHEMA


@pytest.mark.parametrize("endpoint, name, expected", INVALID, ids=ids(INVALID))
def test_invalid_bodies_never_raise_under_any_validator(endpoint: str, name: str, expected: Any) -> None:
    data = body(endpoint, "invalid", name)
    for validate, _, _ in ENDPOINTS.values():
        result = parse(data, validate)
        if expected["reason"] == "invalid_json":
            assert result == parse(data, validation.validate_shards)
            assert isinstance(result, Invalid) and result.reason is Reason.INVALID_JSON


# --- models' wire shapes ---------------------------------------------------------------


def test_offset_to_json_shapes() -> None:
    assert Offset("seconds", 5).to_json() == {"unit": "seconds", "value": 5}
    assert Offset("offset", 5, custom=True).to_json() == {"unit": {"unit": "offset"}, "value": 5}


def test_shard_to_json_shapes() -> None:
    assert Shard("a", "primary").to_json() == {"id": "a", "role": "primary", "commit_offset": None, "lag": None}
    assert Shard("a", "unknown", "x", Offset("zxid", 1, True), Offset("seconds", 0)).to_json() == {
        "id": "a", "role": {"unknown": "x"},
        "commit_offset": {"unit": {"unit": "zxid"}, "value": 1}, "lag": {"unit": "seconds", "value": 0},
    }


def test_datastore_and_agent_to_json_shapes() -> None:
    info = DatastoreInfo(None, "c", "MongoDB", "n", "4.0")
    assert info.to_json() == {"cluster_display_name": None, "cluster_id": "c", "kind": "MongoDB",
                               "node_id": "n", "version": "4.0"}
    agent = AgentInfo(AgentVersion("c", "1", "t"))
    assert agent.to_json() == {"version": {"checkout": "c", "number": "1", "taint": "t"}}


# --- the decoder alone -----------------------------------------------------------------


@pytest.mark.parametrize("data, value", [
    (b"{}", {}), (b"[]", []), (b"null", None), (b"0", 0), (b'"\\u00e9"', "\u00e9"),
    (b'{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]}),
    ("\u00e9".join(['"', '"']).encode(), "\u00e9"),
])
def test_decode_json_accepts(data: bytes, value: Any) -> None:
    assert decode_json(data) == value


@pytest.mark.parametrize("data", [
    b"", b"NaN", b"-Infinity", b"[Infinity]", b'{"a": 1, "a": 1}', b'[{"a": {"b": 1, "b": 2}}]',
    b"\xff", b'"\xed\xa0\x80"', b"[" * 5000 + b"]" * 5000, b"{", b"tru", b"01",
])
def test_decode_json_refuses(data: bytes) -> None:
    result = decode_json(data)
    assert isinstance(result, Invalid)
    assert (result.reason, result.path) == (Reason.INVALID_JSON, "$")


def test_decode_json_keeps_nesting_within_limits() -> None:
    expected: list = []
    for _ in range(99):
        expected = [expected]
    assert decode_json(b"[" * 100 + b"]" * 100) == expected


def test_path_names_the_first_bad_shard() -> None:
    shards = [{"id": str(i), "role": "primary"} for i in range(5)]
    shards[3]["lag"] = {"unit": "seconds", "value": "x"}
    shards[4]["role"] = 1
    result = validation.validate_shards({"shards": shards})
    assert result == Invalid(Reason.SCHEMA, "$.shards[3].lag.value", result.message)


# -- both generations' recorded answers (tests/data/agents/README.md) -----------------------

AGENTS = Path(__file__).parent / "data" / "agents"
RECORDED = {
    "legacy/info-agent.json": validation.validate_agent_info,
    "legacy/info-datastore.json": validation.validate_datastore_info,
    "legacy/shards.mongodb.json": validation.validate_shards,
    "legacy/shards.kafka.json": validation.validate_shards,
    "legacy/shards.zookeeper.json": validation.validate_shards,
    "replisdk/info-node.primary.json": validation.validate_node_info,
    "replisdk/info-node.old-sdk-no-address.json": validation.validate_node_info,
    "replisdk/info-node.unavailable.json": validation.validate_node_info,
    "replisdk/info-node.unknown-status.json": validation.validate_node_info,
    "replisdk/info-store.json": validation.validate_store_info,
    "replisdk/info-shards.primary.json": validation.validate_replisdk_shards,
    "replisdk/info-shards.secondary.json": validation.validate_replisdk_shards,
    "replisdk/info-shards.rollback.json": validation.validate_replisdk_shards,
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_every_recorded_answer_of_a_real_agent_validates(name):
    model = parse((AGENTS / name).read_bytes(), RECORDED[name])
    assert not isinstance(model, Invalid), f"{name}: {model}"


def test_replisdk_answers_map_onto_the_neutral_model():
    node = parse((AGENTS / "replisdk/info-node.primary.json").read_bytes(), validation.validate_node_info)
    cluster_id = parse((AGENTS / "replisdk/info-store.json").read_bytes(), validation.validate_store_info)
    shards = parse((AGENTS / "replisdk/info-shards.secondary.json").read_bytes(), validation.validate_replisdk_shards)

    assert node.datastore(cluster_id) == DatastoreInfo(None, "rs0", "mongo.replica", "mongo-0", "6.0.16")
    assert node.agent.to_json()["version"]["number"] == "0.1.0"
    assert [s.to_json() for s in shards] == [{"id": "mongo-1.rs:27017", "role": "secondary",
                                              "commit_offset": {"unit": "milliseconds", "value": 1728339631000},
                                              "lag": {"unit": "milliseconds", "value": 1000}}]


def test_the_neutral_shard_shape_reads_back_every_role_and_unit():
    shards = parse((AGENTS / "replisdk/info-shards.rollback.json").read_bytes(), validation.validate_replisdk_shards)
    written = json.dumps({"shards": [s.to_json() for s in shards]}).encode()

    assert parse(written, validation.validate_neutral_shards) == shards


def _mutated(name: str, change: Callable[[dict], None]) -> bytes:
    document = json.loads((AGENTS / name).read_bytes())
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize("name,change,validate,where", [
    ("replisdk/info-node.primary.json", lambda d: d.update(node_status="healthy"),
     validation.validate_node_info, "$.node_status"),
    ("replisdk/info-node.primary.json", lambda d: d.update(node_status={"UNKNOWN": 3}),
     validation.validate_node_info, "$.node_status.UNKNOWN"),
    ("replisdk/info-node.primary.json", lambda d: d.update(node_status={"Unknown": "x"}),
     validation.validate_node_info, "$.node_status"),
    ("replisdk/info-node.primary.json", lambda d: d["store_version"].pop("number"),
     validation.validate_node_info, "$.store_version.number"),
    ("replisdk/info-node.primary.json", lambda d: d["attributes"].update(bad=[1]),
     validation.validate_node_info, "$.attributes.bad"),
    ("replisdk/info-node.primary.json", lambda d: d["address"].update(client=5),
     validation.validate_node_info, "$.address.client"),
    ("replisdk/info-node.primary.json", lambda d: d.pop("agent_version"),
     validation.validate_node_info, "$.agent_version"),
    ("replisdk/info-store.json", lambda d: d.update(cluster_id=None),
     validation.validate_store_info, "$.cluster_id"),
    ("replisdk/info-shards.primary.json", lambda d: d["shards"][0].update(commit_offset=None),
     validation.validate_replisdk_shards, "$.shards[0].commit_offset"),
    ("replisdk/info-shards.primary.json", lambda d: d["shards"][0].update(role="primary"),
     validation.validate_replisdk_shards, "$.shards[0].role"),
    ("replisdk/info-shards.primary.json", lambda d: d["shards"][0]["commit_offset"].update(unit="ms"),
     validation.validate_replisdk_shards, "$.shards[0].commit_offset.unit"),
    ("legacy/shards.mongodb.json", lambda d: d["shards"][0].update(role="Primary"),
     validation.validate_shards, "$.shards[0].role"),
    ("legacy/shards.mongodb.json", lambda d: d["shards"][0]["commit_offset"].update(unit="milliseconds"),
     validation.validate_shards, "$.shards[0].commit_offset.unit"),
])
def test_each_generation_refuses_the_others_spelling_and_wrong_types(name, change, validate, where):
    result = parse(_mutated(name, change), validate)

    assert isinstance(result, Invalid) and result.reason is Reason.SCHEMA, result
    assert result.path == where, result
