"""Both agent generations in one fleet, end to end: the real service polling agent-sim's
legacy and replisdk agents over their own TLS versions, and actions reaching DONE on each
(one through the verifying gateway, whose upstream demands a client certificate)."""
from __future__ import annotations

import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.actions.journal import ActionState
from replicante_poller.agentapi import ACTION, NODE_INFO
from replicante_poller.agentsim import Fault, NodeSpec
from replicante_poller.reasons import Reason, Status

from conftest import free_port
from harness import action_files, actions_config, all_polled, config_text
from process import PollerProcess

SUCCESS = "agent.replicante.io/test.success"


@pytest.fixture
def keys(tmp_path):
    return action_files(tmp_path)


def targets(service) -> dict[str, dict]:
    host, port = service.api_address
    document = requests.get(f"http://{host}:{port}/api/v1/targets", timeout=5).json()
    return {t["url"]: t for t in document["targets"]}


def metric(service, name: str) -> dict[tuple, float]:
    host, port = service.api_address
    text = requests.get(f"http://{host}:{port}/metrics", timeout=5).text
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


FLEET = [  # (spec, expected status, reason, api, node_status as the targets API shows it)
    (NodeSpec("rs-old", "legacy-up"), Status.UP, None, "legacy", None),
    (NodeSpec("rs-old", "legacy-down", fault=Fault.NODE_DOWN), Status.NODE_DOWN, Reason.HTTP_STATUS, "legacy", None),
    (NodeSpec("rs", "sdk-up", generation="replisdk"), Status.UP, None, "replisdk", "HEALTHY"),
    (NodeSpec("rs", "sdk-joining", generation="replisdk", node_status="JOINING_CLUSTER"), Status.UP, None, "replisdk",
     "JOINING_CLUSTER"),
    (NodeSpec("rs", "sdk-arbiter", generation="replisdk", node_status="UNKNOWN:ARBITER"), Status.UP, None, "replisdk",
     {"UNKNOWN": "ARBITER"}),
    (NodeSpec("rs", "sdk-unavailable", generation="replisdk", fault=Fault.NODE_DOWN), Status.NODE_DOWN,
     Reason.NODE_UNAVAILABLE, "replisdk", "UNAVAILABLE"),
    (NodeSpec("rs", "sdk-impostor", generation="replisdk", fault=Fault.WRONG_CLUSTER), Status.NODE_DOWN,
     Reason.CLUSTER_MISMATCH, "replisdk", "HEALTHY"),
    (NodeSpec("rs", "sdk-error", generation="replisdk", fault=Fault.AGENT_ERROR), Status.NODE_DOWN,
     Reason.HTTP_STATUS, "replisdk", None),
    (NodeSpec("rs", "sdk-garbage", generation="replisdk", fault=Fault.GARBAGE), Status.AGENT_DOWN,
     Reason.INVALID_JSON, "replisdk", None),  # its info/node answered, with garbage
]


def test_a_mixed_fleet_polls_with_every_status_right(start_sim, start_service, pki):
    sim = start_sim([spec for spec, *_ in FLEET])
    urls = {spec.node_id: url for spec, url in sim.agents}
    service = start_service(config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"]))

    all_polled(service)
    shown = targets(service)
    node_status = metric(service, "replicante_poller_node_status")

    for spec, status, reason, api, reported in FLEET:
        target = shown[urls[spec.node_id]]
        assert (target["status"], target["reason"]) == (status.value, reason.value if reason else None), target
        assert target["api"] == api, target
        assert target["node_status"] == reported, target
        labels = (("agent", urls[spec.node_id]), ("cluster", spec.cluster_id))
        exported = {dict(k)["status"]: v for k, v in node_status.items() if k[:1] == labels[:1]}
        if reported is None:
            assert exported == {}, spec
        else:
            hot = "UNKNOWN" if isinstance(reported, dict) else reported
            assert exported[hot] == 1.0 and sum(exported.values()) == 1.0, (spec, exported)
    sdk = shown[urls["sdk-up"]]
    assert sdk["datastore"] == {"cluster_display_name": None, "cluster_id": "rs", "kind": "mongo.replica",
                                "node_id": "sdk-up", "version": sdk["datastore"]["version"]}
    assert {s["role"] for s in sdk["shards"]} <= {"primary", "secondary"}
    assert "answered HTTP 500" in shown[urls["sdk-error"]]["message"], shown[urls["sdk-error"]]


def test_a_cluster_pinned_to_one_generation_never_probes_the_other(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "sdk", generation="replisdk")])
    (_, url), = sim.agents
    service = start_service(config_text([("rs", url)], pki["ca"]).replace("[cluster:rs]\n", "[cluster:rs]\napi = legacy\n"))

    view, = all_polled(service)

    assert (view.result.status, view.result.reason) == (Status.AGENT_DOWN, Reason.HTTP_STATUS), view.result.message
    assert NODE_INFO not in view.result.message and view.api is None


def test_an_action_reaches_done_on_each_generation(start_sim, start_service, pki, keys):
    sim = start_sim([NodeSpec("rs-old", "legacy-1"), NodeSpec("rs", "sdk-1", generation="replisdk")],
                    action_seconds=0.05)
    (_, legacy), (_, sdk) = sim.agents
    service = start_service(actions_config([("rs-old", legacy), ("rs", sdk)], pki, keys))
    all_polled(service)

    ids = {url: service.journal.submit(url, SUCCESS, {"n": 1}).id for url in (legacy, sdk)}
    for url, action_id in ids.items():
        done = service.journal.wait_for(action_id, lambda a: a.state.final, 20)
        assert done.state is ActionState.DONE, (url, done)
        assert sim.executions(url) == {action_id: 1}, url
    stored, = sim.actions(sdk)
    assert stored["id"] == ids[sdk] and stored["headers"]["replicante-node"] == "sdk-1"
    assert stored["headers"]["signature-input"].startswith("replicante=")


def test_a_replisdk_action_through_the_gateway_with_upstream_mtls_reaches_done(
        tmp_path, ca, start_sim, start_service, pki, keys):
    """Real agents turn actions on only with a client CA and then demand a client certificate:
    the gateway presents its own to the agent; the poller talks HTTPS to the gateway."""
    sim = start_sim([NodeSpec("rs", "sdk-1", generation="replisdk")], client_ca=pki["ca"], action_seconds=0.05)
    (_, agent), = sim.agents
    leaf = ca.issue_cert("gateway.test")
    cert, key = tmp_path / "gateway-client.pem", tmp_path / "gateway-client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    config = tmp_path / "gateway.ini"
    port = free_port()
    front = f"https://localhost:{port}"  # what the poller dials: the gateway answers for it alone
    config.write_text(f"[gateway]\nlisten = 127.0.0.1:{port}\nagent_urls = {front}\nupstream = {agent}\n"
                      f"upstream_ca_file = {pki['ca']}\n"
                      f"upstream_client_cert = {cert}\nupstream_client_key = {key}\n"
                      f"server_cert = {pki['cert']}\nserver_key = {pki['key']}\n"
                      f"keys = {keys['pub']}\nreplay_store = {tmp_path / 'replay.db'}\n")
    gateway = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")  # learns rs/sdk-1 over mTLS
    try:
        service = start_service(actions_config([("rs", front)], pki, keys))
        view, = all_polled(service)
        assert view.result.ok and view.api == "replisdk", view.result.message

        action = service.journal.submit(front, SUCCESS, {"via": "gateway"})
        done = service.journal.wait_for(action.id, lambda a: a.state.final, 20)
        assert done.state is ActionState.DONE, done
        assert sim.executions(agent) == {action.id: 1}
        stored, = sim.actions(agent)
        assert stored["headers"]["replicante-node"] == "sdk-1"  # the signed headers travelled to the agent

        forged = requests.post(front + ACTION, json={"id": str(uuid.uuid4()), "kind": SUCCESS},
                               verify=str(pki["ca"]), timeout=5)
        assert forged.status_code == 401 and len(sim.actions(agent)) == 1
    finally:
        assert gateway.stop() == 0


def test_without_a_client_certificate_an_agent_with_actions_on_is_a_handshake_failure(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "sdk-1", generation="replisdk")], client_ca=pki["ca"])
    (_, url), = sim.agents
    service = start_service(config_text([("rs", url)], pki["ca"]))

    view, = all_polled(service)

    assert (view.result.status, view.result.reason) == (Status.AGENT_DOWN, Reason.TLS_HANDSHAKE), view.result.message
