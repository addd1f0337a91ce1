"""Issue 12, the gateway's findings, each reproduced against the real gateway process:
`100 Continue` only after the head of a signed POST passed its checks; a non-ASCII path gets
a clean 400 (raw) or 404 (percent-encoded), never an internal error; only the agent API's
GETs of both generations reach the agent; metrics only on their own listener
(`metrics_listen`); and claims on an action carry an owner token, so a stale owner can
neither release nor overwrite a newer owner's claim (on the replay store, with a clock).
"""
from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import subprocess
import sys
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.agentapi import (
    ACTION,
    ACTION_INFO_PREFIX,
    ACTION_PREFIX,
    ACTIONS_FINISHED,
    ACTIONS_INDEX,
    ACTIONS_PREFIX,
    ACTIONS_QUEUE,
    AGENT_INFO,
    DATASTORE_INFO,
    NODE_INFO,
    SHARDS,
    SHARDS_INFO,
    STORE_INFO,
)
from replicante_poller.agentside.replay import ReplayStore

import test_gateway
from process import PollerProcess
from test_gateway import PATH, body_of, gateway_config, metrics_url, signed
from tls_servers import TlsServer, respond

gateway, keys = test_gateway.gateway, test_gateway.keys  # the fixtures: a sim agent behind a gateway, and keys

READY = r"listening on (\S+:\d+)"
AGENT_GETS = [AGENT_INFO, DATASTORE_INFO, SHARDS, ACTIONS_INDEX, ACTIONS_PREFIX, ACTIONS_QUEUE, ACTIONS_FINISHED,
              ACTION_INFO_PREFIX + str(uuid.uuid4()),  # legacy
              NODE_INFO, STORE_INFO, SHARDS_INFO, ACTION_PREFIX + str(uuid.uuid4())]  # replisdk


def exchange(process: PollerProcess, head: bytes, body: bytes = b"") -> tuple[bytes, bytes]:
    """Send a request head on a raw connection; what the gateway answers before the body
    (up to its first blank line), then, after `body` is sent, everything until it closes."""
    host, port = process.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head)
        first = _read_head(conn)
        if body and first.startswith(b"HTTP/1.1 100 "):
            conn.sendall(body)
        rest = b""
        while chunk := conn.recv(65536):
            rest += chunk
    return first, rest


def _read_head(conn: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(1)
        if not chunk:
            break
        received += chunk
    return received


def counters(process: PollerProcess) -> dict[tuple[str, str], float]:
    """The gateway's counters by (name, label value), from its metrics listener."""
    text = requests.get(metrics_url(process), timeout=5).text
    return {(s.name, next(iter(s.labels.values()), "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- Expect: 100-continue ---------------------------------------------------------------------


def post_head(path: str = PATH, length: int = 10, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {length}", "Expect: 100-continue"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")  # each character one byte, as sent


@pytest.mark.parametrize("head, status", [
    (post_head(), b"401"),  # no signature at all
    (post_head(length=10 * 1024 * 1024, headers={"Signature-Input": "x", "Signature": "y"}), b"401"),  # too large
    (post_head(headers={"Signature-Input": "a", "Signature": "b", "signature": "c"}), b"401"),  # repeated
    (post_head("/api/unstable/shards"), b"405"),  # not an action path
    (post_head("/api/unstable/action/caf\xc3\xa9"), b"400"),  # raw UTF-8: not ASCII
])
def test_no_100_continue_before_the_head_of_a_post_passed_its_checks(gateway, head, status):
    process = gateway["start"]()
    seen = gateway["sim"].requests_seen(gateway["url"])

    first, rest = exchange(process, head, body=b"x" * 10)

    assert first.startswith(b"HTTP/1.1 " + status), first  # the final answer, not an invitation to send the body
    assert b"100 Continue" not in first + rest
    assert gateway["sim"].requests_seen(gateway["url"]) == seen
    assert process.stop() == 0


def test_a_signed_post_that_expects_100_continue_gets_it_then_goes_through(gateway, keys):
    process = gateway["start"]()
    action_id = str(uuid.uuid4())
    body = body_of(action_id)
    head = post_head(length=len(body), headers={**signed(keys["old"]["key"], body), "Connection": "close"})

    first, rest = exchange(process, head, body)

    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200 ") and json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {"id": action_id}, rest
    assert gateway["sim"].wait_for_state(gateway["url"], action_id, "DONE", timeout=10)
    assert gateway["sim"].executions(gateway["url"]) == {action_id: 1}
    assert process.stop() == 0


# -- non-ASCII paths ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", [b"GET", b"POST"])
@pytest.mark.parametrize("path", [b"/api/unstable/info/agent\xc3\xa9", b"/api/unstable/action/\xff",
                                  b"/api/unstable/actions/info/\xe2\x80\xae", b"/\x7f"])
def test_a_raw_non_ascii_path_is_a_clean_400_and_never_reaches_the_agent(gateway, method, path):
    process = gateway["start"]()
    seen = gateway["sim"].requests_seen(gateway["url"])

    first, rest = exchange(process, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")

    assert first.startswith(b"HTTP/1.1 400 "), first
    assert rest == b'{"error":"the path must be printable ASCII"}'
    assert gateway["sim"].requests_seen(gateway["url"]) == seen
    assert counters(process)[("replicante_gateway_requests_total", "error")] == 0
    assert process.stop() == 0


def test_a_percent_encoded_non_ascii_path_is_a_clean_404_and_never_reaches_the_agent(gateway):
    process = gateway["start"]()
    seen = gateway["sim"].requests_seen(gateway["url"])
    for path in ("/api/unstable/info/agent%C3%A9", "/api/unstable/actions/info/%C3%A9", "/api/unstable/action/%FF",
                 "/%C3%A9"):
        reply = requests.get(f"http://{process.address}{path}", timeout=5)
        assert (reply.status_code, reply.json()) == (404, {"error": "not an agent API path"}), path
    assert gateway["sim"].requests_seen(gateway["url"]) == seen
    assert counters(process)[("replicante_gateway_requests_total", "error")] == 0
    assert process.stop() == 0


# -- only the agent API is forwarded -------------------------------------------------------------


@pytest.fixture
def recording_agent(pki):
    """An agent that answers 200 {} to any path and records what reached it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki["server"].configure_cert(context)
    with TlsServer(context, default=respond(200, b"{}")) as server:
        yield server


def test_only_the_agent_api_gets_of_both_generations_reach_the_agent(tmp_path, pki, keys, recording_agent):
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, recording_agent.url, pki, keys, extra="cluster_id = rs\nnode_id = node-1\n"))
    process = PollerProcess(config, verb="gateway", ready=READY)
    refused = ["/", "/metrics", "/gateway/metrics", "/admin", AGENT_INFO + "?verbose=1", AGENT_INFO + "/",
               NODE_INFO + "/../../../admin", ACTION_PREFIX, ACTION_PREFIX + "a.b", ACTION_PREFIX + "..",
               ACTION_INFO_PREFIX + "%2e%2e", ACTION_INFO_PREFIX + "x/y", ACTIONS_PREFIX + "schedule/x", ACTION,
               "/api/unstable", "/api/unstable/info", "/api/v1/targets"]
    try:
        for path in AGENT_GETS:
            assert requests.get(f"http://{process.address}{path}", timeout=5).status_code == 200, path
        for path in refused:
            reply = requests.get(f"http://{process.address}{path}", timeout=5)
            assert (reply.status_code, reply.json()) == (404, {"error": "not an agent API path"}), path
        assert [r.path for r in recording_agent.requests] == AGENT_GETS
        assert counters(process)[("replicante_gateway_requests_total", "refused")] == len(refused)
    finally:
        assert process.stop() == 0


# -- metrics on their own listener -----------------------------------------------------------------


def test_metrics_are_served_on_the_metrics_listener_only(gateway):
    process = gateway["start"]()
    seen = gateway["sim"].requests_seen(gateway["url"])

    public = requests.get(f"http://{process.address}/gateway/metrics", timeout=5)
    private = requests.get(metrics_url(process), timeout=5)
    elsewhere = requests.get(metrics_url(process).replace("/gateway/metrics", "/api/unstable/info/agent"), timeout=5)

    assert public.status_code == 404 and "replicante_gateway" not in public.text
    assert private.status_code == 200 and "replicante_gateway_requests_total" in private.text
    assert elsewhere.status_code == 404
    assert gateway["sim"].requests_seen(gateway["url"]) == seen  # neither reached the agent
    assert process.stop() == 0


def test_without_metrics_listen_no_metrics_are_served(gateway):
    config = gateway["config"]
    config.write_text(config.read_text().replace("metrics_listen = 127.0.0.1:0\n", ""))
    process = gateway["start"]()
    process.expect(r"gateway metrics are not served \(set \[gateway\] metrics_listen")
    assert requests.get(f"http://{process.address}/gateway/metrics", timeout=5).status_code == 404
    assert process.stop() == 0


def test_metrics_listen_on_the_port_of_listen_is_refused_naming_the_key(tmp_path, pki, keys):
    config = tmp_path / "gateway.ini"
    config.write_text(gateway_config(tmp_path, "https://127.0.0.1:9", pki, keys)
                      .replace("listen = 127.0.0.1:0\nmetrics_listen = 127.0.0.1:0", "listen = :37017\n"
                               "metrics_listen = 127.0.0.1:37017"))
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "gateway", "--config", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "[gateway] metrics_listen" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# -- claims carry an owner token -------------------------------------------------------------------


@pytest.fixture
def clock():
    return [1_800_000_000.0]


@pytest.fixture
def store(clock):
    return ReplayStore(":memory:", clock=lambda: clock[0])


def test_a_stale_owner_cannot_release_a_newer_owners_claim(store, clock):
    assert store.claim_action("a-1", "fp", stale_after=20, owner="first")[0]
    clock[0] += 21  # the first forwarder is stuck past the stale age
    assert store.claim_action("a-1", "fp", stale_after=20, owner="second")[0]  # taken over

    assert store.release_action("a-1", "first") is False  # the stuck one fails at last: not its claim any more

    assert store.claim_action("a-1", "fp", stale_after=20, owner="third") == (False, "fp", None)  # still in flight
    assert store.record_outcome("a-1", 200, "application/json", b'{"id":"a-1"}', "second") is True
    assert store.claim_action("a-1", "fp", stale_after=20, owner="third")[2].body == b'{"id":"a-1"}'


def test_a_stale_owner_cannot_overwrite_a_newer_owners_claim_or_answer(store, clock):
    assert store.claim_action("a-1", "fp", stale_after=20, owner="first")[0]
    clock[0] += 21
    assert store.claim_action("a-1", "fp", stale_after=20, owner="second")[0]

    assert store.record_outcome("a-1", 500, "text/plain", b"stale", "first") is False
    assert store.claim_action("a-1", "fp", stale_after=20, owner="third") == (False, "fp", None)
    assert store.record_outcome("a-1", 200, "application/json", b"{}", "second") is True
    assert store.record_outcome("a-1", 500, "text/plain", b"stale", "first") is False  # after it either
    assert store.record_outcome("a-1", 500, "text/plain", b"again", "second") is False  # the first answer is kept
    assert store.release_action("a-1", "second") is False  # an answered claim is never released
    claimed, _, previous = store.claim_action("a-1", "fp", stale_after=20, owner="third")
    assert not claimed and (previous.status, previous.body) == (200, b"{}")


def test_the_owner_releases_its_own_claim_so_a_retry_goes_through(store):
    assert store.claim_action("a-1", "fp", owner="first")[0]
    assert store.release_action("a-1", "other") is False
    assert store.release_action("a-1", "first") is True
    assert store.claim_action("a-1", "fp", owner="retry")[0]


def test_a_replay_store_from_before_owners_is_upgraded_in_place(tmp_path, clock):
    path = tmp_path / "replay.db"
    with sqlite3.connect(path) as db:  # the schema before claims had owners, with a claim in flight
        db.execute("CREATE TABLE actions (action_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER,"
                   " content_type TEXT, body BLOB, first_seen REAL NOT NULL)")
        db.execute("INSERT INTO actions VALUES ('old', 'fp', NULL, NULL, NULL, ?)", (clock[0] - 100,))
    db.close()
    store = ReplayStore(str(path), clock=lambda: clock[0])
    assert store.release_action("old", "someone") is False
    assert store.claim_action("old", "fp", stale_after=20, owner="new")[0]  # stale: taken over
    assert store.record_outcome("old", 200, "application/json", b"{}", "new") is True
