"""Real-socket, real-TLS tests of the simulator's replisdk agents (the replisdk agent API as its source defines it),
the generations side by side, TLS as real agents speak it, and retention of both generations."""
from __future__ import annotations

import configparser
import gzip
import http.client
import json
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
import requests

from replicante_poller import agentsim
from replicante_poller.agentapi import (ACTION, ACTIONS_FINISHED, ACTIONS_QUEUE, AGENT_INFO, DATASTORE_INFO,
                                        NODE_INFO, SCHEDULE_PREFIX, SHARDS, SHARDS_INFO, STORE_INFO)
from replicante_poller.agentsim import AgentSim, Fault, NodeSpec

SUCCESS = "agent.replicante.io/test.success"
FAIL = "agent.replicante.io/test.fail"
LOOP = "agent.replicante.io/test.loop"
INIT = "agent.replicante.io/cluster.init"
ADD = "agent.replicante.io/cluster.add"
LEGACY_PING = "agent.replicante.io/test.ping"
NODE_KEYS = ["address", "agent_version", "attributes", "node_id", "node_status", "store_id", "store_version"]
SHARD_KEYS = ["commit_offset", "lag", "role", "id"]
EXECUTION_KEYS = ["args", "created_time", "finished_time", "id", "kind", "metadata", "scheduled_time", "state"]
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{0,8}[1-9])?Z")
WAIT = 5.0  # upper bound of every wait: a failing test fails within it
FROZEN = 3600.0  # action_seconds of simulators whose actions must not move
TWO_MIB = 2 * 1024 * 1024


def sdk(cluster: str, node: str, kind: str = "MongoDB", **options: object) -> NodeSpec:
    return NodeSpec(cluster, node, kind, generation="replisdk", **options)


@pytest.fixture
def session(pki: dict) -> Iterator[requests.Session]:
    with requests.Session() as s:  # one per test: a Session is not shared between threads
        s.trust_env = False
        s.verify = str(pki["ca"])
        yield s


@pytest.fixture
def client_ctx(pki: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def url_of(sim: AgentSim, node_id: str) -> str:
    return next(url for spec, url in sim.agents if spec.node_id == node_id)


def raw(url: str, ctx: ssl.SSLContext, path: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPResponse, bytes]:
    """One request on its own connection, bytes as received (no decompression)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response, response.read()
    finally:
        conn.close()


def post(session: requests.Session, url: str, kind: str = SUCCESS, **fields: object) -> requests.Response:
    return session.post(url + ACTION, json={"kind": kind, **fields}, timeout=5)


def execution(session: requests.Session, url: str, action_id: str) -> dict:
    response = session.get(f"{url}{ACTION}/{action_id}", timeout=5)
    assert response.status_code == 200, response.content
    return response.json()


def listed(session: requests.Session, url: str, path: str) -> list[dict]:
    doc = session.get(url + path, timeout=5).json()
    assert list(doc) == ["actions"] and all(list(item) == ["id", "kind", "phase"] for item in doc["actions"])
    return doc["actions"]


def assert_sdk_error(response: requests.Response, status: int, message: str) -> None:
    assert (response.status_code, response.headers["Content-Type"]) == (status, "application/json")
    doc = response.json()
    assert doc["error"] is True and doc["error_msg"] == message
    assert set(doc) <= {"error", "error_msg", "error_cause", "error_trail"}


# --- bodies ------------------------------------------------------------------------------------

@pytest.fixture
def bodies_sim(start_sim) -> AgentSim:
    return start_sim([sdk("rs0", f"mongo-{n}") for n in range(2)]
                     + [sdk("kafka-2", f"kafka-{n}", "Kafka") for n in range(2)]
                     + [sdk("zk-3", f"zk-{n}", "Zookeeper") for n in range(2)])


def test_mongodb_node_store_and_shards_are_shaped_as_repliagent_mongodb(bodies_sim, session):
    primary, secondary = url_of(bodies_sim, "mongo-0"), url_of(bodies_sim, "mongo-1")
    node = session.get(primary + NODE_INFO, timeout=5).json()
    assert list(node) == NODE_KEYS  # serde's field order, every Option present
    assert node["address"] == {"client": "mongo-0:27017", "member": "mongo-0:27017"}
    assert list(node["agent_version"]) == ["checkout", "number", "taint"]
    assert (node["node_id"], node["node_status"], node["store_id"]) == ("mongo-0", "HEALTHY", "mongo.replica")
    assert list(node["store_version"]) == ["checkout", "number", "extra"]
    int(node["agent_version"]["checkout"], 16)
    store = session.get(primary + STORE_INFO, timeout=5).json()
    assert list(store) == ["cluster_id", "attributes"] and store["cluster_id"] == "rs0"
    (lead,) = session.get(primary + SHARDS_INFO, timeout=5).json()["shards"]
    (follower,) = session.get(secondary + SHARDS_INFO, timeout=5).json()["shards"]
    assert list(lead) == SHARD_KEYS and list(follower) == SHARD_KEYS
    assert (lead["role"], lead["lag"], lead["id"]) == ("Primary", None, "mongo-0:27017")
    assert lead["commit_offset"]["unit"] == "milliseconds"
    assert (follower["role"], follower["id"]) == ("Secondary", "mongo-1:27017")
    assert follower["lag"] == {"unit": "milliseconds", "value": 1000}
    assert follower["commit_offset"]["value"] == lead["commit_offset"]["value"] - 1000


@pytest.mark.parametrize("kind,cluster,unit,lag_unit,store_id", [
    ("Kafka", "kafka-2", {"unit": "offset"}, {"unit": "messages"}, "kafka"),
    ("Zookeeper", "zk-3", {"unit": "zxid"}, {"unit": "zxid"}, "zookeeper"),
])
def test_kafka_and_zookeeper_in_replisdk_form(bodies_sim, session, kind, cluster, unit, lag_unit, store_id):
    prefix = cluster.split("-")[0]
    primary, secondary = url_of(bodies_sim, f"{prefix}-0"), url_of(bodies_sim, f"{prefix}-1")
    node = session.get(primary + NODE_INFO, timeout=5).json()
    assert list(node) == NODE_KEYS and node["store_id"] == store_id
    assert list(node["address"]) == ["client", "member"]
    assert list(node["store_version"]) == ["checkout", "number", "extra"]
    assert node["store_version"]["checkout"] is None and node["store_version"]["extra"] is None
    assert session.get(primary + STORE_INFO, timeout=5).json() == {"cluster_id": cluster, "attributes": {}}
    leads = session.get(primary + SHARDS_INFO, timeout=5).json()["shards"]
    follows = session.get(secondary + SHARDS_INFO, timeout=5).json()["shards"]
    for shard in leads + follows:
        assert list(shard) == SHARD_KEYS and shard["commit_offset"]["unit"] == unit
    assert {s["role"] for s in leads if s["role"] != {"Other": "leaderless"}} == {"Primary"}
    assert all(s["lag"] is None for s in leads)
    assert follows[0]["role"] == "Secondary" and follows[0]["lag"] == {"unit": lag_unit, "value": 0}


@pytest.mark.parametrize("status,wire,role", [
    ("JOINING_CLUSTER", "JOINING_CLUSTER", "Recovering"),
    ("UNHEALTHY", "UNHEALTHY", "Recovering"),
    ("LEAVING_CLUSTER", "LEAVING_CLUSTER", "Secondary"),
    ("UNKNOWN:state 9 of the replica set", {"UNKNOWN": "state 9 of the replica set"}, "Secondary"),
])
def test_node_status_is_chosen_per_node(start_sim, session, status, wire, role):
    sim = start_sim([sdk("rs0", "a"), sdk("rs0", "b", node_status=status)])
    url = url_of(sim, "b")
    assert session.get(url + NODE_INFO, timeout=5).json()["node_status"] == wire
    assert session.get(url + SHARDS_INFO, timeout=5).json()["shards"][0]["role"] == role
    assert session.get(url + STORE_INFO, timeout=5).status_code == 200


def test_a_node_in_no_cluster_answers_store_and_shards_with_a_500_json_error(start_sim, session):
    url = start_sim([sdk("rs0", "a", node_status="NOT_IN_CLUSTER")]).agents[0][1]
    assert session.get(url + NODE_INFO, timeout=5).json()["node_status"] == "NOT_IN_CLUSTER"
    for path in (STORE_INFO, SHARDS_INFO):
        response = session.get(url + path, timeout=5)
        assert_sdk_error(response, 500, "get replica set status command failed")
        assert "NotYetInitialized" in response.json()["error_cause"]


def test_nodespec_checks_generation_and_node_status():
    with pytest.raises(ValueError, match="generation"):
        NodeSpec("c", "n", generation="v2")
    with pytest.raises(ValueError, match="node_status"):
        sdk("c", "n", node_status="SLEEPY")
    with pytest.raises(ValueError, match="legacy"):
        NodeSpec("c", "n", node_status="UNHEALTHY")
    assert sdk("c", "n", node_status="UNKNOWN:").node_status_json == {"UNKNOWN": ""}


# --- faults ------------------------------------------------------------------------------------

@pytest.fixture
def faulty(start_sim) -> AgentSim:
    return start_sim([sdk("rs0", f"faulty-{f.value}", fault=f) for f in Fault if f is not Fault.HEALTHY])


def test_node_down_is_unavailable_and_store_and_shards_fail(faulty, session):
    url = url_of(faulty, "faulty-node_down")
    node = session.get(url + NODE_INFO, timeout=5)
    assert node.status_code == 200 and node.json()["node_status"] == "UNAVAILABLE"
    for path in (STORE_INFO, SHARDS_INFO):
        response = session.get(url + path, timeout=5)
        assert_sdk_error(response, 500, "get replica set status command failed")
        assert "Connection refused" in response.json()["error_cause"]


def test_agent_error_wrong_cluster_and_schema_faults(faulty, session):
    assert_sdk_error(session.get(url_of(faulty, "faulty-agent_error") + NODE_INFO, timeout=5), 500,
                     "agent internal error")
    impostor = session.get(url_of(faulty, "faulty-wrong_cluster") + STORE_INFO, timeout=5).json()
    assert impostor["cluster_id"] not in ("rs0", "") and list(impostor) == ["cluster_id", "attributes"]
    bad_role = session.get(url_of(faulty, "faulty-bad_schema") + SHARDS_INFO, timeout=5).json()
    assert bad_role["shards"][0]["role"] == 42
    assert session.get(url_of(faulty, "faulty-wrong_types") + NODE_INFO, timeout=5).json()["node_id"] == 12
    huge = session.get(url_of(faulty, "faulty-huge") + NODE_INFO, timeout=5)
    assert len(huge.content) > 1 << 20 and list(huge.json())[:len(NODE_KEYS)] == NODE_KEYS


@pytest.mark.parametrize("fault", ["garbage", "nan", "duplicate_keys", "invalid_utf8"])
def test_body_faults_break_node_info_json(faulty, client_ctx, fault):
    status, response, body = raw(url_of(faulty, f"faulty-{fault}"), client_ctx, NODE_INFO)
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    with pytest.raises(ValueError):
        strict_json(body)
    store = raw(url_of(faulty, f"faulty-{fault}"), client_ctx, STORE_INFO)[2]
    if fault == "garbage":  # every info path, as on legacy agents
        with pytest.raises(ValueError):
            strict_json(store)
    else:  # info/node only
        assert strict_json(store) == {"cluster_id": "rs0", "attributes": {
            "mongodb.com/feature-compatibility": "6.0", "mongodb.com/oplog.size": 536870912}}


def strict_json(body: bytes) -> object:
    """JSON as the poller reads it: UTF-8, no NaN, no duplicate keys."""
    def unique(pairs: list) -> dict:
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constant(name: str) -> object:
        raise ValueError(name)

    return json.loads(body.decode("utf-8"), parse_constant=no_constant, object_pairs_hook=unique)


def test_protocol_faults_on_node_info(faulty, client_ctx):
    status, response, _ = raw(url_of(faulty, "faulty-wrong_content_type"), client_ctx, NODE_INFO)
    assert (status, response.getheader("Content-Type")) == (200, "text/html; charset=utf-8")
    status, response, body = raw(url_of(faulty, "faulty-service_unavailable"), client_ctx, NODE_INFO)
    assert (status, response.getheader("Retry-After")) == (503, "30") and json.loads(body)["error"] is True
    status, response, _ = raw(url_of(faulty, "faulty-redirect"), client_ctx, NODE_INFO)
    assert status == 302 and response.getheader("Location").endswith(NODE_INFO)
    status, response, body = raw(url_of(faulty, "faulty-gzip_bomb"), client_ctx, NODE_INFO)
    assert response.getheader("Content-Encoding") == "gzip" and len(gzip.decompress(body)) > 50 * 10**6
    for fault in ("wrong_content_type", "service_unavailable", "redirect", "gzip_bomb"):
        # only info/node changes, as agent info on legacy agents
        assert raw(url_of(faulty, f"faulty-{fault}"), client_ctx, STORE_INFO)[0] == 200


# --- one API per generation ---------------------------------------------------------------------

@pytest.fixture
def pair(start_sim) -> AgentSim:
    return start_sim([NodeSpec("old", "legacy-1"), sdk("new", "sdk-1")])


def test_each_generation_serves_only_its_own_api(pair, client_ctx):
    old, new = url_of(pair, "legacy-1"), url_of(pair, "sdk-1")
    legacy_only = [("GET", AGENT_INFO), ("GET", DATASTORE_INFO), ("GET", SHARDS),
                   ("GET", "/api/unstable/actions/info/" + str(uuid.uuid4())),
                   ("POST", SCHEDULE_PREFIX + SUCCESS)]
    sdk_only = [("GET", NODE_INFO), ("GET", STORE_INFO), ("GET", SHARDS_INFO), ("POST", ACTION),
                ("GET", f"{ACTION}/{uuid.uuid4()}"), ("GET", "/metrics")]
    for url, paths in ((new, legacy_only), (old, sdk_only)):
        for method, path in paths:
            status, response, body = raw(url, client_ctx, path, method, b"{}" if method == "POST" else None,
                                         {"Content-Type": "application/json"})
            assert (status, body, response.getheader("Content-Length")) == (404, b"", "0"), (url, path)
    for method, path in legacy_only[:3]:
        assert raw(old, client_ctx, path)[0] == 200
    for method, path in sdk_only[:3]:
        assert raw(new, client_ctx, path)[0] == 200
    # the shared list paths answer in each generation's shape
    assert json.loads(raw(old, client_ctx, ACTIONS_QUEUE)[2]) == []
    assert json.loads(raw(new, client_ctx, ACTIONS_QUEUE)[2]) == {"actions": []}


def test_replisdk_routes_answer_an_empty_404_to_another_method_or_a_trailing_slash(pair, client_ctx):
    new = url_of(pair, "sdk-1")
    for method, path in (("POST", NODE_INFO), ("HEAD", STORE_INFO), ("GET", ACTION), ("POST", ACTION + "/"),
                         ("DELETE", f"{ACTION}/{uuid.uuid4()}"), ("POST", ACTIONS_QUEUE)):
        status, _, body = raw(new, client_ctx, path, method)
        assert (status, body) == (404, b""), (method, path)


def test_replisdk_answers_are_gzipped_when_the_client_accepts_it(pair, client_ctx):
    new = url_of(pair, "sdk-1")
    _, plain, plain_body = raw(new, client_ctx, NODE_INFO)
    assert plain.getheader("Content-Encoding") is None
    _, packed, packed_body = raw(new, client_ctx, NODE_INFO, headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.getheader("Content-Encoding") == "gzip" and packed.getheader("Vary") == "accept-encoding"
    assert gzip.decompress(packed_body) == plain_body
    _, refused, _ = raw(new, client_ctx, NODE_INFO, headers={"Accept-Encoding": "gzip;q=0, deflate"})
    assert refused.getheader("Content-Encoding") is None


def test_fleet_generations():
    assert {n.generation for n in agentsim.fleet(2, 2)} == {"legacy"}
    assert {n.generation for n in agentsim.fleet(2, 2, generation="replisdk")} == {"replisdk"}
    mixed = agentsim.fleet(4, 1, {Fault.NODE_DOWN: 2}, generation="mixed")
    assert [n.generation for n in mixed] == ["legacy", "replisdk", "legacy", "replisdk"]
    assert [n.fault for n in mixed[:2]] == [Fault.NODE_DOWN, Fault.NODE_DOWN]
    with pytest.raises(ValueError):
        agentsim.fleet(1, 1, generation="newest")


# --- TLS as the real agents --------------------------------------------------------------------

def forced(pki: dict, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.minimum_version = context.maximum_version = version
    return context


def test_legacy_speaks_tls_1_2_only_and_replisdk_tls_1_3_only(pair, pki, client_ctx):
    old, new = url_of(pair, "legacy-1"), url_of(pair, "sdk-1")
    for url, version in ((old, "TLSv1.2"), (new, "TLSv1.3")):
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=client_ctx, timeout=5)
        conn.connect()
        assert conn.sock.version() == version
        conn.close()
    with pytest.raises(ssl.SSLError):
        raw(old, forced(pki, ssl.TLSVersion.TLSv1_3), AGENT_INFO)
    with pytest.raises(ssl.SSLError):
        raw(new, forced(pki, ssl.TLSVersion.TLSv1_2), NODE_INFO)
    assert raw(old, forced(pki, ssl.TLSVersion.TLSv1_2), AGENT_INFO)[0] == 200
    assert raw(new, forced(pki, ssl.TLSVersion.TLSv1_3), NODE_INFO)[0] == 200


def test_server_contexts_per_generation(pki):
    contexts = agentsim.server_contexts(pki["server"].configure_cert)
    assert {g: (c.minimum_version, c.maximum_version, c.verify_mode) for g, c in contexts.items()} == {
        "legacy": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ssl.CERT_NONE),
        "replisdk": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3, ssl.CERT_NONE)}
    required = agentsim.server_contexts(pki["server"].configure_cert, client_ca=pki["ca"])
    assert {c.verify_mode for c in required.values()} == {ssl.CERT_REQUIRED}
    with pytest.raises(ValueError, match="replisdk"):
        AgentSim([sdk("c", "n")], {"legacy": contexts["legacy"]})


@pytest.mark.parametrize("generation,path", [("legacy", AGENT_INFO), ("replisdk", NODE_INFO)])
def test_a_client_certificate_is_required_given_a_client_ca(start_sim, pki, ca, client_ctx, generation, path):
    import trustme

    sim = start_sim([NodeSpec("c", "n", generation=generation)], client_ca=pki["ca"])
    url = sim.agents[0][1]
    # TLS 1.2 fails the handshake; TLS 1.3 finishes it client-side and fails the first read
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        raw(url, client_ctx, path)
    stranger = ssl.create_default_context(cafile=str(pki["ca"]))
    trustme.CA().issue_cert("replicante-poller").configure_cert(stranger)
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        raw(url, stranger, path)
    ca.issue_cert("replicante-poller").configure_cert(client_ctx)
    assert raw(url, client_ctx, path)[0] == 200


# --- actions: scheduling -----------------------------------------------------------------------

@pytest.fixture
def frozen(start_sim) -> AgentSim:
    """Actions stay NEW: what POST stored is what GET shows."""
    return start_sim([sdk("rs0", "primary"), sdk("rs0", "secondary")], action_seconds=FROZEN)


@pytest.fixture
def fast(start_sim) -> AgentSim:
    return start_sim([sdk("rs0", "primary"), sdk("rs0", "secondary"), sdk("rs1", "fresh", node_status="NOT_IN_CLUSTER")],
                     action_seconds=0.01)


def test_post_stores_the_action_and_get_shows_it(frozen, session):
    url = url_of(frozen, "primary")
    action_id = str(uuid.uuid4())
    response = post(session, url, LOOP, id=action_id, args={"target": 3}, metadata={"by": "test"},
                    created_time="2026-11-25T19:00:00.120Z", unknown_field=1)
    assert (response.status_code, response.json()) == (200, {"id": action_id})
    doc = execution(session, url, action_id)
    assert list(doc) == EXECUTION_KEYS
    assert (doc["args"], doc["id"], doc["kind"], doc["metadata"]) == ({"target": 3}, action_id, LOOP, {"by": "test"})
    assert doc["created_time"] == "2026-11-25T19:00:00.12Z"  # UTC with Z, fraction without trailing zeros
    assert RFC3339_UTC.fullmatch(doc["scheduled_time"]) and doc["finished_time"] is None
    assert doc["state"] == {"error": None, "payload": None, "phase": "NEW"}
    assert frozen.actions(url)[0]["state"] == "NEW" and frozen.schedule_posts(url) == 1


def test_only_kind_is_required_and_the_agent_generates_a_v4_id(frozen, session):
    url = url_of(frozen, "primary")
    response = post(session, url)
    assert response.status_code == 200
    action_id = response.json()["id"]
    assert uuid.UUID(action_id).version == 4 and str(uuid.UUID(action_id)) == action_id
    doc = execution(session, url, action_id)
    assert (doc["args"], doc["metadata"]) == (None, {})
    assert doc["created_time"] == doc["scheduled_time"]


def test_an_offset_of_zero_is_utc_and_any_other_offset_is_refused(frozen, session):
    url = url_of(frozen, "primary")
    action_id = post(session, url, created_time="2026-11-25T19:00:00+00:00").json()["id"]
    assert execution(session, url, action_id)["created_time"] == "2026-11-25T19:00:00Z"
    refused = post(session, url, id=str(uuid.uuid4()), created_time="2026-11-25T21:00:00+02:00")
    assert_sdk_error(refused, 400, "The provided created_time MUST be in UTC")


def test_an_unknown_kind_is_refused(frozen, session):
    url = url_of(frozen, "primary")
    before = len(frozen.actions(url))
    assert_sdk_error(post(session, url, "agent.replicante.io/test.ping"), 400,
                     "metadata for action agent.replicante.io/test.ping not found")
    assert len(frozen.actions(url)) == before


def test_an_id_in_use_is_409_in_any_spelling_and_runs_once(fast, session):
    url = url_of(fast, "primary")
    action_id = str(uuid.uuid4())
    assert post(session, url, id=action_id).status_code == 200
    assert_sdk_error(post(session, url, id=action_id.upper()), 409, "The action ID is already used by another action")
    assert fast.wait_for_state(url, action_id, "DONE", WAIT)
    assert_sdk_error(post(session, url, LOOP, id=action_id), 409, "The action ID is already used by another action")
    assert fast.executions(url) == {action_id: 1} and fast.schedule_posts(url) == 3


@pytest.mark.parametrize("data,content_type", [
    (b'{"kind": ', "application/json"), (b'["x"]', "application/json"), (b'{"args": 1}', "application/json"),
    (b'{"kind": 7}', "application/json"), (b'{"kind": "k", "id": "not-a-uuid"}', "application/json"),
    (b'{"kind": "k", "created_time": "yesterday"}', "application/json"),
    (b'{"kind": "k", "metadata": {"a": 1}}', "application/json"),
    (b'{"kind": "agent.replicante.io/test.success"}', "text/plain"),
    (b'{"kind": "agent.replicante.io/test.success"}', None),
])
def test_bodies_the_extractor_refuses_are_a_plain_text_400(frozen, session, data, content_type):
    url = url_of(frozen, "secondary")
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = session.post(url + ACTION, data=data, headers=headers, timeout=5)
    assert (response.status_code, response.headers["Content-Type"]) == (400, "text/plain; charset=utf-8")
    assert response.text and frozen.actions(url) == []


def test_a_body_of_2_mib_is_accepted_and_one_byte_more_is_a_plain_text_413(frozen, session):
    url = url_of(frozen, "secondary")
    skeleton = json.dumps({"kind": SUCCESS, "args": ""}).encode()
    exact = json.dumps({"kind": SUCCESS, "args": "x" * (TWO_MIB - len(skeleton))}).encode()
    assert len(exact) == TWO_MIB
    headers = {"Content-Type": "application/json"}
    assert session.post(url + ACTION, data=exact, headers=headers, timeout=10).status_code == 200
    over = session.post(url + ACTION, data=exact + b" ", headers=headers, timeout=10)
    assert (over.status_code, over.headers["Content-Type"]) == (413, "text/plain; charset=utf-8")
    assert str(TWO_MIB) in over.text and len(frozen.actions(url)) == 1


def test_get_action_unknown_uuid_is_an_empty_404_and_not_a_uuid_a_plain_text_404(frozen, session):
    url = url_of(frozen, "primary")
    unknown = session.get(f"{url}{ACTION}/{uuid.uuid4()}", timeout=5)
    assert (unknown.status_code, unknown.content) == (404, b"")
    garbage = session.get(f"{url}{ACTION}/not-a-uuid", timeout=5)
    assert (garbage.status_code, garbage.headers["Content-Type"]) == (404, "text/plain; charset=utf-8")
    assert garbage.content
    action_id = post(session, url).json()["id"]
    for spelling in (action_id.upper(), action_id.replace("-", ""), "{" + action_id + "}"):
        assert execution(session, url, spelling)["id"] == action_id  # the uuid crate parses them all


# --- actions: execution ------------------------------------------------------------------------

def test_a_loop_action_goes_new_running_done_through_get(fast, session):
    url = url_of(fast, "primary")
    action_id = post(session, url, LOOP, args={"target": 3}).json()["id"]
    assert fast.wait_for_state(url, action_id, "DONE", WAIT)
    doc = execution(session, url, action_id)
    assert doc["state"] == {"error": None, "payload": {"count": 3, "target": 3}, "phase": "DONE"}
    assert RFC3339_UTC.fullmatch(doc["finished_time"]) and doc["finished_time"] >= doc["scheduled_time"]
    assert fast.executions(url)[action_id] == 1


def test_running_is_visible_between_loop_steps(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], action_seconds=0.3)
    url = sim.agents[0][1]
    action_id = post(session, url, LOOP, args={"target": 2}).json()["id"]
    assert execution(session, url, action_id)["state"]["phase"] == "NEW"
    assert sim.wait_for_state(url, action_id, "RUNNING", WAIT)
    doc = execution(session, url, action_id)
    if doc["state"]["phase"] == "RUNNING":  # a slow machine may have moved on already
        assert doc["state"]["payload"] == {"count": 1, "target": 2} and doc["finished_time"] is None
        assert [a["phase"] for a in listed(session, url, ACTIONS_QUEUE)] == ["RUNNING"]
    assert sim.wait_for_state(url, action_id, "DONE", WAIT)


def test_success_and_fail_finish_in_one_step_as_the_sdk_executor(fast, session):
    url = url_of(fast, "primary")
    done = post(session, url, SUCCESS).json()["id"]
    failed = post(session, url, FAIL).json()["id"]
    assert fast.wait_for_state(url, failed, "FAILED", WAIT)
    assert fast.wait_for_state(url, done, "DONE", 0)
    assert not fast.wait_for_state(url, done, "RUNNING", 0)  # NEW -> DONE: the handler finished it
    doc = execution(session, url, failed)
    assert doc["state"] == {"error": {"error_msg": "Test action failed as expected"}, "payload": None,
                            "phase": "FAILED"}
    assert doc["finished_time"] is not None


def test_cluster_actions_behave_as_repliagent_mongodb(fast, session):
    primary, secondary, fresh = (url_of(fast, n) for n in ("primary", "secondary", "fresh"))
    ids = {"init-fresh": post(session, fresh, INIT).json()["id"],
           "init-member": post(session, primary, INIT).json()["id"],
           "add-primary": post(session, primary, ADD, args={"host": "mongo-9:27017"}).json()["id"],
           "add-secondary": post(session, secondary, ADD, args={"host": "mongo-9:27017"}).json()["id"],
           "add-no-args": post(session, fresh, ADD).json()["id"]}
    urls = {"init-fresh": fresh, "init-member": primary, "add-primary": primary, "add-secondary": secondary,
            "add-no-args": fresh}
    for name, action_id in ids.items():
        assert fast.wait_for_state(urls[name], action_id, "DONE" if name in ("init-fresh", "add-primary") else "FAILED",
                                   WAIT), name
    errors = {name: execution(session, urls[name], action_id)["state"]["error"] for name, action_id in ids.items()}
    assert errors["init-fresh"] is None and errors["add-primary"] is None
    assert errors["init-member"] == {"error_msg": "the replica set is already initialised"}
    assert errors["add-secondary"]["error_msg"] == "unable to add node to replica set"
    assert "PRIMARY" in errors["add-secondary"]["error_cause"]
    assert errors["add-no-args"]["error_msg"] == "arguments provided to the add action are not valid"


def test_one_action_per_tick_running_first_then_oldest_new(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], action_seconds=0.05)
    url = sim.agents[0][1]
    loop = post(session, url, LOOP, args={"target": 3}).json()["id"]
    later = post(session, url, SUCCESS).json()["id"]
    assert sim.wait_for_state(url, later, "DONE", WAIT)
    assert sim.wait_for_state(url, loop, "DONE", 0)  # the RUNNING loop went first, to its end
    finished = [a["id"] for a in listed(session, url, ACTIONS_FINISHED)]
    assert finished == [loop, later]  # oldest scheduled first


# --- actions: lists ----------------------------------------------------------------------------

def test_the_queue_lists_at_most_50_oldest_scheduled_first(frozen, session):
    url = url_of(frozen, "secondary")
    posted = [post(session, url, SUCCESS, id=str(uuid.uuid4())).json()["id"] for _ in range(55)]
    queue = listed(session, url, ACTIONS_QUEUE)
    assert [a["id"] for a in queue] == posted[:50]
    assert {(a["kind"], a["phase"]) for a in queue} == {(SUCCESS, "NEW")}
    assert listed(session, url, ACTIONS_FINISHED) == [] and len(frozen.actions(url)) == 55


def test_the_finished_list_lists_at_most_50_oldest_first_hiding_recent_ones(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], action_seconds=0)
    url = sim.agents[0][1]
    posted = [post(session, url, FAIL if n % 2 else SUCCESS).json()["id"] for n in range(55)]
    assert sim.wait_for_state(url, posted[-1], "DONE", WAIT)
    finished = listed(session, url, ACTIONS_FINISHED)
    assert [a["id"] for a in finished] == posted[:50]  # the 5 newest are hidden (interop risk)
    assert [a["phase"] for a in finished[:2]] == ["DONE", "FAILED"]
    assert listed(session, url, ACTIONS_QUEUE) == []
    assert execution(session, url, posted[-1])["state"]["phase"] == "DONE"  # hidden, still stored


# --- retention and test hooks ------------------------------------------------------------------

def test_replisdk_deletes_finished_actions_after_clean_age(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], action_seconds=0.2, clean_age=2.0)
    url = sim.agents[0][1]
    first = post(session, url, SUCCESS).json()["id"]  # DONE at the first tick
    second = post(session, url, LOOP, args={"target": 6}).json()["id"]  # DONE six ticks (1.2 s) later
    assert sim.wait_for_state(url, first, "DONE", WAIT)
    assert execution(session, url, first)["state"]["phase"] == "DONE"  # not before clean_age
    assert sim.wait_for_state(url, first, agentsim.PRUNED, WAIT)
    assert [a["id"] for a in sim.actions(url)] == [second]  # finished later: younger than clean_age
    gone = session.get(f"{url}{ACTION}/{first}", timeout=5)
    assert (gone.status_code, gone.content) == (404, b"")
    assert [a["id"] for a in listed(session, url, ACTIONS_FINISHED)] == [second]
    assert sim.wait_for_state(url, second, agentsim.PRUNED, WAIT)
    assert listed(session, url, ACTIONS_FINISHED) == [] and sim.actions(url) == []


def test_clean_age_never_deletes_unfinished_actions(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], action_seconds=0.05, clean_age=0)
    url = sim.agents[0][1]
    loop = post(session, url, LOOP, args={"target": 2}).json()["id"]
    waiting = post(session, url, SUCCESS).json()["id"]  # NEW until the loop (RUNNING first) is DONE
    assert sim.wait_for_state(url, loop, agentsim.PRUNED, WAIT)  # a cleaner pass ran while it was NEW
    assert sim.wait_for_state(url, waiting, "DONE", WAIT)  # it survived to run
    assert sim.wait_for_state(url, waiting, agentsim.PRUNED, WAIT)
    assert sim.executions(url) == {loop: 1, waiting: 1}


def test_legacy_agents_keep_their_newest_100_finished_actions(start_sim, session):
    sim = start_sim([NodeSpec("c", "n")], action_seconds=0, prune_interval=0.2)
    url = sim.agents[0][1]
    posted = []
    for _ in range(105):
        doc = {"action_id": str(uuid.uuid4()), "args": None, "created_ts": "2026-11-25T19:00:00Z",
               "requester": "CORE_API"}
        assert session.post(url + SCHEDULE_PREFIX + LEGACY_PING, json=doc, timeout=5).status_code == 200
        posted.append(doc["action_id"])
    assert sim.wait_for_state(url, posted[-1], "DONE", WAIT)
    for oldest in posted[:5]:
        assert sim.wait_for_state(url, oldest, agentsim.PRUNED, WAIT)
    assert not sim.wait_for_state(url, posted[5], agentsim.PRUNED, 0)
    finished = session.get(url + ACTIONS_FINISHED, timeout=5).json()
    assert [item["id"] for item in finished] == posted[:4:-1]  # 100, newest first
    gone = session.get(url + "/api/unstable/actions/info/" + posted[0], timeout=5)
    assert (gone.status_code, gone.content) == (404, b"")
    assert session.get(url + "/api/unstable/actions/info/" + posted[5], timeout=5).status_code == 200


def test_legacy_lists_show_at_most_100(start_sim, session):
    sim = start_sim([NodeSpec("c", "n")], action_seconds=FROZEN)
    url = sim.agents[0][1]
    posted = []
    for _ in range(103):
        doc = {"action_id": str(uuid.uuid4()), "args": None, "created_ts": "2026-11-25T19:00:00Z",
               "requester": "CORE_API"}
        assert session.post(url + SCHEDULE_PREFIX + LEGACY_PING, json=doc, timeout=5).status_code == 200
        posted.append(doc["action_id"])
    assert [item["id"] for item in session.get(url + ACTIONS_QUEUE, timeout=5).json()] == posted[:100]
    assert len(sim.actions(url)) == 103


@pytest.mark.parametrize("generation", ["legacy", "replisdk"])
def test_forget_drops_one_action_as_a_wiped_agent_db(start_sim, session, generation):
    sim = start_sim([NodeSpec("c", "n", generation=generation)], action_seconds=0)
    url = sim.agents[0][1]
    if generation == "legacy":
        kept, dropped = (str(uuid.uuid4()) for _ in range(2))
        for action_id in (kept, dropped):
            doc = {"action_id": action_id, "args": None, "created_ts": "2026-11-25T19:00:00Z", "requester": "CORE_API"}
            assert session.post(url + SCHEDULE_PREFIX + LEGACY_PING, json=doc, timeout=5).status_code == 200
        lookup = url + "/api/unstable/actions/info/"
    else:
        kept, dropped = (post(session, url).json()["id"] for _ in range(2))
        lookup = url + ACTION + "/"
    assert sim.wait_for_state(url, dropped, "DONE", WAIT) and sim.wait_for_state(url, kept, "DONE", WAIT)
    assert sim.forget(url, dropped.upper()) is True
    assert sim.wait_for_state(url, dropped, agentsim.FORGOTTEN, 0)
    gone = session.get(lookup + dropped, timeout=5)
    assert (gone.status_code, gone.content) == (404, b"")
    assert session.get(lookup + kept, timeout=5).status_code == 200
    finished = session.get(url + ACTIONS_FINISHED, timeout=5).json()
    assert [item["id"] for item in (finished if generation == "legacy" else finished["actions"])] == [kept]
    assert [a["id"] for a in sim.actions(url)] == [kept]
    assert sim.forget(url, dropped) is False


def test_actions_disabled_answer_an_empty_404(start_sim, session):
    sim = start_sim([sdk("rs0", "a")], actions=False)
    url = sim.agents[0][1]
    for response in (post(session, url), session.get(url + ACTIONS_QUEUE, timeout=5),
                     session.get(f"{url}{ACTION}/{uuid.uuid4()}", timeout=5)):
        assert (response.status_code, response.content) == (404, b"")
    assert session.get(url + NODE_INFO, timeout=5).status_code == 200
    assert sim.schedule_posts(url) == 1


# --- signature hooks ---------------------------------------------------------------------------

def test_the_verifier_sees_replisdk_posts_as_received_and_can_refuse_them(start_sim, session):
    seen = []

    def verifier(method, path, headers, body):
        seen.append((method, path, headers, body))
        return headers.get("x-allow") == "yes" or "missing x-allow"

    sim = start_sim([sdk("rs0", "a")], action_seconds=FROZEN, verifier=verifier)
    url = sim.agents[0][1]
    data = b'{"kind":"agent.replicante.io/test.success",  "args":[1]}'
    refused = session.post(url + ACTION, data=data, headers={"Content-Type": "application/json"}, timeout=5)
    assert_sdk_error(refused, 401, "unauthorized")
    assert sim.actions(url) == [] and sim.schedule_posts(url) == 1
    accepted = session.post(url + ACTION, data=data, timeout=5,
                            headers={"Content-Type": "application/json", "X-Allow": "yes"})
    assert accepted.status_code == 200
    method, path, headers, body = seen[-1]
    assert (method, path, body, headers["x-allow"]) == ("POST", ACTION, data, "yes")
    assert [(a["id"], a["headers"]["x-allow"]) for a in sim.actions(url)] == [(accepted.json()["id"], "yes")]


def test_the_enforcing_keyring_checks_replisdk_posts(start_sim, session, tmp_path):
    from replicante_poller.actions.httpsig import sign_action
    from replicante_poller.actions.signing import generate_keypair, load_signing_key
    from replicante_poller.agentside.verifier import Keyring

    generate_keypair(str(tmp_path / "core"))
    signer = load_signing_key(tmp_path / "core.key")
    sim = start_sim([sdk("rs0", "node-1")], action_seconds=FROZEN,
                    keyring=Keyring.from_entries([str(tmp_path / "core.pub")]))
    url = sim.agents[0][1]
    body = json.dumps({"kind": SUCCESS, "id": str(uuid.uuid4())}).encode()
    headers = sign_action(method="POST", path=ACTION, body=body, agent_url=url, cluster_id="rs0", node_id="node-1",
                          key_id=signer.key_id, sign=signer.sign, now=int(time.time()), nonce=os.urandom(16))
    unsigned = session.post(url + ACTION, data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert unsigned.status_code == 401
    signed = session.post(url + ACTION, data=body, headers=headers, timeout=5)
    assert signed.status_code == 200 and len(sim.actions(url)) == 1
    replayed = session.post(url + ACTION, data=body, headers=headers, timeout=5)
    assert replayed.status_code == 401  # the nonce was seen: refused before the 409


# --- the agent-sim verb ------------------------------------------------------------------------

def test_throwaway_pki_without_client_auth_writes_no_client_files(tmp_path):
    pki = agentsim.throwaway_pki(tmp_path, client_auth=False)
    assert pki.client_cert is None and not (tmp_path / "client.key").exists()
    assert pki.tls_section() == f"[tls]\nca_file = {tmp_path / 'ca.pem'}\n"
    assert {c.verify_mode for c in pki.contexts.values()} == {ssl.CERT_NONE}


def test_cli_mixed_fleet_requires_the_client_certificate_it_wrote(tmp_path):
    script = ("import argparse, sys\n"
              "from replicante_poller import agentsim\n"
              "p = argparse.ArgumentParser(); agentsim.add_arguments(p)\n"
              "sys.exit(agentsim.main(p.parse_args(sys.argv[1:])))\n")
    argv = [sys.executable, "-X", "dev", "-c", script, "--out", str(tmp_path), "--clusters", "2",
            "--nodes-per-cluster", "1", "--generation", "mixed"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            lines = []
            while not (line := proc.stdout.readline()).startswith("poller [tls] settings:"):
                assert line, proc.stderr.read()
                lines.append(line)
            assert lines[0].rstrip().endswith("api=legacy") and lines[1].rstrip().endswith("api=replisdk")
            assert f"client certificate: {tmp_path / 'client.pem'}\n" in lines
            assert f"client key: {tmp_path / 'client.key'}\n" in lines
            assert stat.S_IMODE((tmp_path / "client.key").stat().st_mode) == 0o600
            tls = configparser.ConfigParser()
            tls.read(tmp_path / "tls.ini")
            settings = dict(tls["tls"])
            assert settings == {"ca_file": str(tmp_path / "ca.pem"), "client_cert": str(tmp_path / "client.pem"),
                                "client_key": str(tmp_path / "client.key")}
            anonymous = ssl.create_default_context(cafile=settings["ca_file"])
            client = ssl.create_default_context(cafile=settings["ca_file"])
            client.load_cert_chain(settings["client_cert"], settings["client_key"])
            for line, path, version in ((lines[0], AGENT_INFO, "0.7.0"), (lines[1], NODE_INFO, "0.1.0")):
                url = line.split()[0]
                status, _, body = raw(url, client, path)
                assert status == 200
                assert (json.loads(body).get("version") or json.loads(body)["agent_version"])["number"] == version
                with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
                    raw(url, anonymous, path)
            discovery = configparser.ConfigParser()
            discovery.read(tmp_path / "discovery.ini")
            assert discovery.sections() == ["cluster:mongo-1", "cluster:kafka-2"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert proc.stderr.read() == ""
        finally:
            proc.kill()


def test_cli_generation_option(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    agentsim.add_arguments(parser)
    assert parser.parse_args(["--out", str(tmp_path)]).generation == "legacy"
    assert parser.parse_args(["--out", str(tmp_path), "--generation", "replisdk"]).generation == "replisdk"
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", str(tmp_path), "--generation", "v3"])


def test_a_replisdk_fleet_serves_its_start_time_bodies_unchanged(start_sim, session):
    """Bodies are built once at start: two reads are byte-identical (the benchmark relies on it)."""
    sim = start_sim(agentsim.fleet(3, 1, generation="replisdk"))
    for _, url in sim.agents:
        first = session.get(url + SHARDS_INFO, timeout=5).content
        assert session.get(url + SHARDS_INFO, timeout=5).content == first
