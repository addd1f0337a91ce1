"""The verifying gateway as a real process in front of agent-sim: the forgery matrix."""
from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
import uuid

import pytest
import requests

from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.agentapi import AGENT_INFO, DATASTORE_INFO, SCHEDULE_PREFIX
from replicante_poller.agentsim import AgentSim, NodeSpec
from replicante_poller.actions.httpsig import COVERED, LABEL, TAG, SignatureParams, content_digest, sign_action, signature_base
from replicante_poller.actions.signing import generate_keypair, load_signing_key

from process import PollerProcess
from tls_servers import Exchange, TlsServer, json_response, response_bytes

KIND = "agent.replicante.io/test.ping"
PATH = f"/api/unstable/actions/schedule/{KIND}"
AGENT_URL = "https://mongo-1.example:37017"  # what Core dials for the agent behind the gateway (its agent_urls)


@pytest.fixture
def keys(tmp_path):
    made = {}
    for name in ("old", "new", "stranger", "revoked"):
        made[name] = {"kid": generate_keypair(str(tmp_path / name)), "key": load_signing_key(tmp_path / f"{name}.key"),
                      "pub": tmp_path / f"{name}.pub"}
    return made


def gateway_config(tmp_path, sim_url, pki, keys, trusted=("old", "revoked"), revoked=("revoked",), extra="") -> str:
    entries = ", ".join(str(keys[name]["pub"]) for name in trusted)
    ids = ", ".join(keys[name]["kid"] for name in revoked)
    return (f"[gateway]\nlisten = 127.0.0.1:0\nmetrics_listen = 127.0.0.1:0\nupstream = {sim_url}\n"
            f"upstream_ca_file = {pki['ca']}\n"
            f"agent_urls = {AGENT_URL}\n"
            f"keys = {entries}\nrevoked = {ids}\nreplay_store = {tmp_path / 'replay.db'}\n{extra}")


@pytest.fixture
def gateway(tmp_path, start_sim, pki, keys):
    """A sim agent (cluster rs, node node-1) behind a real gateway process."""
    sim = start_sim([NodeSpec("rs", "node-1")])
    url = sim.agents[0][1]
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, url, pki, keys))
    started = []

    def start() -> PollerProcess:
        process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
        started.append(process)
        return process

    yield {"sim": sim, "url": url, "start": start, "config": config}
    for process in started:
        process.kill()


def body_of(action_id: str | None = None, args=None) -> bytes:
    return json.dumps({"action_id": action_id or str(uuid.uuid4()), "args": args,
                       "created_ts": "2026-11-25T00:00:00Z", "requester": "CORE_API"}).encode()


def signed(key, body: bytes, path: str = PATH, cluster: str = "rs", node: str = "node-1", now: int | None = None,
           ttl: int = 60, agent: str = AGENT_URL) -> dict[str, str]:
    return sign_action(method="POST", path=path, body=body, agent_url=agent, cluster_id=cluster, node_id=node,
                       key_id=key.key_id,
                       sign=key.sign, now=int(time.time()) if now is None else now, ttl=ttl, nonce=os.urandom(16))


def custom(key, body: bytes, components=COVERED, alg=None, tag=TAG, cluster="rs", node="node-1",
           agent=AGENT_URL) -> dict[str, str]:
    """A signature with chosen components and parameters, made by hand."""
    now = int(time.time())
    headers = {"content-type": "application/json", "content-digest": content_digest(body),
               "replicante-agent": agent, "replicante-cluster": cluster, "replicante-node": node}
    nonce = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    params = SignatureParams(tuple(components), now, now + 60, nonce, key.key_id, alg, tag)
    base = signature_base("POST", PATH, None, headers, params)
    signature = base64.b64encode(key.sign(base)).decode()
    return {**headers, "signature-input": f"{LABEL}={params.serialize()}", "signature": f"{LABEL}=:{signature}:"}


def send(process, body: bytes, headers: dict[str, str], path: str = PATH) -> requests.Response:
    return requests.post(f"http://{process.address}{path}", data=body, headers=headers, timeout=10)


def tampered_body(keys):
    body = body_of()
    return body.replace(b"null", b'{"rm": "-rf"}'), signed(keys["old"]["key"], body), PATH


def tampered_body_digest_recomputed(keys):
    body = body_of()
    tampered = body.replace(b"null", b"1")
    return tampered, {**signed(keys["old"]["key"], body), "content-digest": content_digest(tampered)}, PATH


def relabelled(keys):
    body = body_of()
    return body, {k: v.replace("replicante=", "other=", 1) if k.lower().startswith("signature") else v
                  for k, v in signed(keys["old"]["key"], body).items()}, PATH


def by(name: str, **options):
    """A request signed by key `name` (sign_action), with `options` such as node or now."""
    def build(keys):
        rest = dict(options)
        body = body_of(args=rest.pop("args")) if "args" in rest else body_of()
        now = int(time.time()) + rest.pop("shift") if "shift" in rest else None
        return body, signed(keys[name]["key"], body, now=now, **rest), PATH
    return build


def made(**options):
    """A request signed by the trusted key with hand-chosen components and parameters."""
    def build(keys):
        body = body_of()
        return body, custom(keys["old"]["key"], body, **options), PATH
    return build


def with_headers(**replaced):
    def build(keys):
        body = body_of()
        return body, {**signed(keys["old"]["key"], body), **replaced}, PATH
    return build


def to_path(path):
    def build(keys):
        body = body_of()
        return body, signed(keys["old"]["key"], body), path
    return build


FORGERIES = {  # name: (request builder, the precise reason logged and counted)
    "unsigned": (lambda keys: (body_of(), {"content-type": "application/json"}, PATH), "malformed"),
    "unknown key": (by("stranger"), "unknown_key"),
    "revoked key": (by("revoked"), "revoked_key"),
    "tampered body": (tampered_body, "digest_mismatch"),
    "tampered body, digest recomputed": (tampered_body_digest_recomputed, "bad_signature"),
    "tampered path": (to_path("/api/unstable/actions/schedule/agent.replicante.io/test.stop"), "bad_signature"),
    "another node": (by("old", node="node-2"), "wrong_audience"),
    "another cluster": (by("old", cluster="other"), "wrong_audience"),
    # issue 12: signed for another endpoint (an agent claiming this node's id) and relayed here
    "another agent URL": (by("old", agent="https://impostor.example:37017"), "wrong_audience"),
    "signing profile v1": (made(components=tuple(c for c in COVERED if c != "replicante-agent"),
                                tag="replicante-action-v1"), "bad_tag"),
    "expired": (by("old", shift=-200, ttl=60), "expired"),
    "created in the future": (by("old", shift=120, ttl=60), "not_yet_valid"),
    "oversize body": (by("old", args="x" * (70 * 1024)), "too_large"),
    "malformed Signature-Input": (with_headers(**{"signature-input": 'replicante=("@method" created=1'}), "malformed"),
    "alg other than ed25519": (made(alg="rsa-pss-sha512"), "bad_alg"),
    "missing covered component": (made(components=COVERED[:-1]), "missing_component"),
    "wrong tag": (made(tag="something-else"), "bad_tag"),
    "wrong label": (relabelled, "bad_label"),
    "zeroed signature": (with_headers(signature="replicante=:" + base64.b64encode(bytes(64)).decode() + ":"),
                         "bad_signature"),
}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory, pki):
    """One gateway process in front of one sim agent, shared by the forgery cases."""
    folder = tmp_path_factory.mktemp("forgeries")
    made_keys = {}
    for name in ("old", "new", "stranger", "revoked"):
        made_keys[name] = {"kid": generate_keypair(str(folder / name)), "key": load_signing_key(folder / f"{name}.key"),
                           "pub": folder / f"{name}.pub"}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)
    sim = AgentSim([NodeSpec("rs", "node-1")], context).start()
    url = sim.agents[0][1]
    config = folder / "gateway.ini"
    config.write_text(gateway_config(folder, url, pki, made_keys))
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    yield {"process": process, "sim": sim, "url": url, "keys": made_keys}
    assert process.stop() == 0
    sim.stop()


def metrics_url(process) -> str:
    """The gateway's metrics listener (metrics_listen), as it logged it before it was ready."""
    found = [m for line in process.log if (m := re.search(r"gateway metrics on (http://\S+)", line))]
    assert found, "no metrics listener in the log:\n" + "".join(process.log)
    return found[0].group(1)


def rejections(process) -> dict[str, float]:
    text = requests.get(metrics_url(process), timeout=5).text
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "replicante_gateway_rejections_total"}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forgery_is_refused_with_the_generic_401_and_never_reaches_the_agent(matrix, name):
    build, reason = FORGERIES[name]
    body, headers, path = build(matrix["keys"])
    before = rejections(matrix["process"])

    reply = send(matrix["process"], body, headers, path)

    assert (reply.status_code, reply.json()) == (401, {"error": "unauthorized"}), reply.text
    after = rejections(matrix["process"])
    assert after.get(reason, 0) == before.get(reason, 0) + 1, (reason, before, after)
    assert matrix["sim"].schedule_posts(matrix["url"]) == 0 and matrix["sim"].actions(matrix["url"]) == []


def test_valid_action_reaches_the_agent_once_and_replays_are_refused_even_after_restart(gateway, keys):
    sim, url = gateway["sim"], gateway["url"]
    process = gateway["start"]()
    action_id = str(uuid.uuid4())
    body = body_of(action_id)
    headers = signed(keys["old"]["key"], body)
    first = send(process, body, headers)
    assert (first.status_code, first.json()) == (200, {"id": action_id})
    assert send(process, body, headers).status_code == 401  # replayed: same nonce
    retry = send(process, body, signed(keys["old"]["key"], body))  # a retry: new nonce, same action
    assert (retry.status_code, retry.json()) == (200, {"id": action_id})
    conflicting = body_of(action_id, args={"other": "content"})
    assert send(process, conflicting, signed(keys["old"]["key"], conflicting)).status_code == 401
    assert process.stop() == 0

    again = gateway["start"]()
    assert send(again, body, headers).status_code == 401  # replayed after a restart
    assert sim.wait_for_state(url, action_id, "DONE", timeout=10)
    assert sim.schedule_posts(url) == 1 and sim.executions(url) == {action_id: 1}
    assert again.stop() == 0


def test_gets_are_forwarded_unchanged_and_other_methods_refused(gateway, keys):
    process = gateway["start"]()
    via_gateway = requests.get(f"http://{process.address}/api/unstable/info/datastore", timeout=5)
    assert via_gateway.status_code == 200 and via_gateway.json()["node_id"] == "node-1"
    assert requests.get(f"http://{process.address}/api/unstable/actions/info/{uuid.uuid4()}",
                        timeout=5).status_code == 404
    assert requests.delete(f"http://{process.address}/api/unstable/shards", timeout=5).status_code == 405
    assert requests.post(f"http://{process.address}/api/unstable/shards", data=b"{}", timeout=5).status_code == 405
    assert gateway["sim"].schedule_posts(gateway["url"]) == 0
    assert process.stop() == 0


def test_key_rotation_old_and_new_then_old_revoked_drops_no_action(gateway, keys, tmp_path, pki):
    sim, url = gateway["sim"], gateway["url"]
    config = gateway["config"]
    config.write_text(gateway_config(tmp_path, url, pki, keys, trusted=("old", "new"), revoked=()))
    process = gateway["start"]()
    delivered = []
    for name in ("old", "new"):  # both valid during the rotation
        body = body_of()
        assert send(process, body, signed(keys[name]["key"], body)).status_code == 200, name
        delivered.append(json.loads(body)["action_id"])
    assert process.stop() == 0

    config.write_text(gateway_config(tmp_path, url, pki, keys, trusted=("old", "new"), revoked=("old",)))
    process = gateway["start"]()
    body = body_of()
    assert send(process, body, signed(keys["new"]["key"], body)).status_code == 200
    delivered.append(json.loads(body)["action_id"])
    refused = body_of()
    assert send(process, refused, signed(keys["old"]["key"], refused)).status_code == 401
    assert sorted(a["id"] for a in sim.actions(url)) == sorted(delivered)
    assert process.stop() == 0


def test_keyring_entry_with_a_wrong_kid_is_refused_at_start(gateway, keys, tmp_path, pki):
    config = gateway["config"]
    config.write_text(gateway_config(tmp_path, gateway["url"], pki, keys, trusted=(), revoked=()).replace(
        "keys = \n", f"keys = {keys['old']['pub']};kid={keys['new']['kid']}\n"))
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "gateway", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "is not this key's id" in done.stderr


def test_poller_to_nginx_to_gateway_to_agent_action_reaches_done(tmp_path, start_sim, start_nginx, start_service,
                                                                 pki, keys):
    """The whole chain as deployed: the poller polls and sends a signed action through a
    TLS-terminating nginx to the gateway (plain HTTP behind it), which verifies it and
    forwards it to the agent."""
    from harness import all_polled, config_text
    from replicante_poller.actions.journal import ActionState

    from conftest import free_port

    sim = start_sim([NodeSpec("rs", "node-1")])
    agent = sim.agents[0][1]
    port = free_port()  # nginx's: the URL the poller dials is the one the gateway must answer for
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, agent, pki, keys, trusted=("old",), revoked=())
                      .replace(AGENT_URL, f"https://localhost:{port}"))
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    try:
        front = start_nginx(f"http://{process.address}", port=port)
        token = tmp_path / "token"
        token.write_text("a-long-enough-api-token")
        os.chmod(token, 0o600)
        actions = (f"[actions]\nenabled = true\nsigning_key = {tmp_path / 'old.key'}\n"
                   f"journal = {tmp_path / 'actions.db'}\ntrack_interval = 200ms\n")
        service = start_service(config_text([("rs", front)], pki["ca"], interval="1s", timeout="800ms", extra=actions))
        view, = all_polled(service)
        assert view.result.ok, view.result.message
        action = service.journal.submit(front, KIND, {"via": "nginx and gateway"})
        done = service.journal.wait_for(action.id, lambda a: a.state.final, 15)
        assert done.state is ActionState.DONE, done
        assert sim.executions(agent) == {action.id: 1}
        stored, = sim.actions(agent)
        assert stored["headers"]["replicante-node"] == "node-1"  # the signed headers travelled to the agent
    finally:
        assert process.stop() == 0


def test_https_gateway_serves_while_a_client_stalls_its_handshake(gateway, keys, pki):
    import socket

    config = gateway["config"]
    config.write_text(config.read_text() + f"server_cert = {pki['cert']}\nserver_key = {pki['key']}\n")
    process = gateway["start"]()
    host, port = process.address.rsplit(":", 1)
    staller = socket.create_connection((host, int(port)))  # connects, never says hello
    try:
        reply = requests.get(f"https://localhost:{port}/api/unstable/info/agent", verify=str(pki["ca"]), timeout=5)
        assert reply.status_code == 200 and "version" in reply.json()
        body = body_of()
        signed_reply = requests.post(f"https://localhost:{port}{PATH}", data=body,
                                     headers=signed(keys["old"]["key"], body), verify=str(pki["ca"]), timeout=5)
        assert signed_reply.status_code == 200
    finally:
        staller.close()
    assert process.stop() == 0


def test_request_bodies_outside_signed_schedules_are_refused_not_parsed_as_requests(gateway):
    import socket

    process = gateway["start"]()
    host, port = process.address.rsplit(":", 1)
    smuggled = b"GET /gateway/metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"GET /api/unstable/info/agent HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                     + smuggled)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400") and received.count(b"HTTP/1.1 ") == 1
    with socket.create_connection((host, int(port)), timeout=5) as conn:  # "²" passes str.isdigit()
        conn.sendall(b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n{}")
        assert conn.recv(65536).startswith(b"HTTP/1.1 401")
    assert process.stop() == 0


def test_a_gateway_without_agent_urls_refuses_to_start_naming_the_key(tmp_path, pki, keys):
    import subprocess
    import sys

    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, "https://127.0.0.1:9", pki, keys).replace(f"agent_urls = {AGENT_URL}\n", ""))
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "gateway", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "[gateway] agent_urls" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_sighup_reloads_the_keyring_and_a_bad_file_keeps_the_running_one(gateway, keys, tmp_path, pki):
    import signal

    sim, url, config = gateway["sim"], gateway["url"], gateway["config"]
    config.write_text(gateway_config(tmp_path, url, pki, keys, trusted=("old",), revoked=()))
    process = gateway["start"]()
    body = body_of()
    assert send(process, body, signed(keys["new"]["key"], body)).status_code == 401

    config.write_text("[gateway]\nlisten = nowhere\n")
    process.signal(signal.SIGHUP)
    process.expect(r"gateway reload failed, keeping the running keyring: .*listen")
    body = body_of()
    assert send(process, body, signed(keys["old"]["key"], body)).status_code == 200

    config.write_text(gateway_config(tmp_path, url, pki, keys, trusted=("old", "new"), revoked=("old",)))
    process.signal(signal.SIGHUP)
    process.expect(r"gateway keyring reloaded: 2 keys, 1 revoked")
    body = body_of()
    assert send(process, body, signed(keys["new"]["key"], body)).status_code == 200
    body = body_of()
    assert send(process, body, signed(keys["old"]["key"], body)).status_code == 401
    assert len(sim.actions(url)) == 2
    assert process.stop() == 0


@pytest.fixture
def mtls_agent(ca, pki):
    """An agent with actions on, as real ones run them: TLS that demands a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    scheduled: list[tuple[bytes, bool]] = []

    def schedule(ex: Exchange) -> bool:
        body = ex.rfile.read(int(ex.request.headers.get("content-length", "0")))
        scheduled.append((body, ex.conn.client_cert is not None))
        return ex.send(response_bytes(200, json.dumps({"id": json.loads(body)["action_id"]}).encode()))

    handlers = {AGENT_INFO: json_response({"version": {"checkout": "c", "number": "0.5.0", "taint": "not tainted"}}),
                DATASTORE_INFO: json_response({"cluster_display_name": None, "cluster_id": "rs", "kind": "MongoDB",
                                               "node_id": "node-1", "version": "6.0"}),
                SCHEDULE_PREFIX + KIND: schedule}
    with TlsServer(context, handlers) as server:
        yield server, scheduled


def client_pair(ca, folder):
    leaf = ca.issue_cert("gateway.test")
    cert, key = folder / "gateway-client.pem", folder / "gateway-client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def test_the_gateway_fronts_an_agent_that_demands_a_client_certificate(tmp_path, ca, pki, keys, mtls_agent):
    server, scheduled = mtls_agent
    cert, key = client_pair(ca, tmp_path)
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, server.url, pki, keys,
                                     extra=f"upstream_client_cert = {cert}\nupstream_client_key = {key}\n"))
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")  # learns rs/node-1 over mTLS
    try:
        action_id = str(uuid.uuid4())
        body = body_of(action_id)
        reply = send(process, body, signed(keys["old"]["key"], body))
    finally:
        process.stop()

    assert (reply.status_code, reply.json()) == (200, {"id": action_id}), reply.text
    assert scheduled == [(body, True)]


def test_without_its_client_certificate_the_gateway_cannot_forward(tmp_path, pki, keys, mtls_agent):
    server, scheduled = mtls_agent
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, server.url, pki, keys, extra="cluster_id = rs\nnode_id = node-1\n"))
    process = PollerProcess(config, verb="gateway", ready=r"listening on (\S+:\d+)")
    try:
        body = body_of()
        reply = send(process, body, signed(keys["old"]["key"], body))
    finally:
        process.stop()

    assert reply.status_code == 502, reply.text
    assert scheduled == []
