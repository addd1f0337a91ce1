"""Real-socket, real-TLS tests of the reference agent simulator."""
from __future__ import annotations

import argparse
import configparser
import http.client
import json
import logging
import math
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

import pytest
import requests

from replicante_poller import agentsim
from replicante_poller.agentsim import AgentSim, Fault, NodeSpec

AGENT = "/api/unstable/info/agent"
DATASTORE = "/api/unstable/info/datastore"
SHARDS = "/api/unstable/shards"
ERROR_KEYS = {"error", "layers", "trace", "variant"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, ssl.SSLContext]:
    return agentsim.throwaway_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def client_ctx(ca: tuple[pathlib.Path, ssl.SSLContext]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca[0]))


FAULTY = [NodeSpec("faulty", f"faulty-{f.value}", "MongoDB", f) for f in Fault if f is not Fault.HEALTHY]


@pytest.fixture(scope="module")
def sim(ca: tuple[pathlib.Path, ssl.SSLContext]):
    nodes = agentsim.fleet(3, 2) + FAULTY
    with AgentSim(nodes, ca[1]) as running:
        yield running


def url_of(sim: AgentSim, node_id: str) -> str:
    return next(url for spec, url in sim.agents if spec.node_id == node_id)


def connect(url: str, ctx: ssl.SSLContext, timeout: float = 5.0) -> http.client.HTTPSConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx, timeout=timeout)


def get(url: str, ctx: ssl.SSLContext, path: str, method: str = "GET", body: bytes | None = None,
        timeout: float = 5.0) -> tuple[int, http.client.HTTPResponse, bytes]:
    conn = connect(url, ctx, timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response, response.read()
    finally:
        conn.close()


def get_json(url: str, ctx: ssl.SSLContext, path: str) -> object:
    status, response, body = get(url, ctx, path)
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert int(response.getheader("Content-Length")) == len(body)
    return json.loads(body)


# --- healthy bodies --------------------------------------------------------------------------

@pytest.mark.parametrize("cluster,kind,version,unit,lag_unit", [
    ("mongo-1", "MongoDB", "4.0.1", "seconds", "seconds"),
    ("kafka-2", "Kafka", "2.8.0", {"unit": "offset"}, {"unit": "messages"}),
    ("zk-3", "Zookeeper", "3.8.4", {"unit": "zxid"}, {"unit": "zxid"}),
])
def test_healthy_bodies_per_kind(sim, client_ctx, cluster, kind, version, unit, lag_unit):
    primary, secondary = url_of(sim, f"{cluster}-node-1"), url_of(sim, f"{cluster}-node-2")
    info = get_json(primary, client_ctx, AGENT)
    assert info["version"]["number"] == "0.7.0" and info["version"]["taint"] == "not tainted"
    int(info["version"]["checkout"], 16)
    assert get_json(primary, client_ctx, DATASTORE) == {
        "cluster_display_name": None, "cluster_id": cluster, "kind": kind,
        "node_id": f"{cluster}-node-1", "version": version}
    shards = get_json(primary, client_ctx, SHARDS)["shards"]
    assert shards and all(set(s) == {"id", "role", "commit_offset", "lag"} for s in shards)
    assert all(s["commit_offset"]["unit"] == unit and isinstance(s["commit_offset"]["value"], int)
               for s in shards)
    assert all(s["lag"] is None for s in shards)  # a primary lags behind nobody
    followers = get_json(secondary, client_ctx, SHARDS)["shards"]
    assert followers[0]["role"] == "secondary" and followers[0]["lag"] == {"unit": lag_unit, "value": 0}
    if kind == "MongoDB":
        assert [s["id"] for s in shards] == ["rs0"]
    if kind == "Kafka":
        assert len(shards) >= 2
        assert [s["role"] for s in followers if s["lag"] is None] == [{"unknown": "leaderless"}]
    if kind == "Zookeeper":
        assert len(shards) == 1


def test_display_name_is_reported(ca, client_ctx):
    with AgentSim([NodeSpec("c", "n", "Kafka", display_name="Kafka Prod")], ca[1]) as sim:
        assert get_json(sim.agents[0][1], client_ctx, DATASTORE)["cluster_display_name"] == "Kafka Prod"


def test_keep_alive_three_gets_on_one_connection(sim, client_ctx):
    url = url_of(sim, "mongo-1-node-2")
    before = sim.requests_seen(url)
    conn = connect(url, client_ctx)
    try:
        conn.connect()
        first_sock = conn.sock
        for path in (AGENT, DATASTORE, SHARDS):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            json.loads(response.read())
            assert response.getheader("Connection") is None
        assert conn.sock is first_sock  # http.client would have reconnected after a close
    finally:
        conn.close()
    assert sim.requests_seen(url) == before + 3


def test_requests_session_keep_alive(sim, ca):
    url = url_of(sim, "zk-3-node-1")
    before = sim.requests_seen(url)
    with requests.Session() as session:
        session.trust_env = False
        bodies = [session.get(url + path, verify=str(ca[0]), timeout=5).json()
                  for path in (AGENT, DATASTORE, SHARDS)]
    assert bodies[1]["node_id"] == "zk-3-node-1"
    assert sim.requests_seen(url) == before + 3


def test_connection_close_is_honoured(sim, client_ctx):
    conn = connect(url_of(sim, "mongo-1-node-1"), client_ctx)
    try:
        conn.request("GET", AGENT, headers={"Connection": "close"})
        response = conn.getresponse()
        assert response.getheader("Connection") == "close"
        json.loads(response.read())
    finally:
        conn.close()


# --- routing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/api/unstable/actions/queue"),
    ("GET", "/api/unstable/actions/finished"),
    ("GET", "/api/unstable/actions/info/4b1a4a4e-0000-4000-8000-000000000000"),
    ("POST", "/api/unstable/actions/schedule/agent.replicante.io/test.ping"),
])
def test_actions_are_disabled_404_empty(ca, client_ctx, method, path):
    body = b'{"action_id":"x"}' if method == "POST" else None
    with AgentSim(agentsim.fleet(1, 1), ca[1], actions=False) as sim:  # actions are on by default
        status, response, data = get(sim.agents[0][1], client_ctx, path, method, body)
    assert (status, data, response.getheader("Content-Length")) == (404, b"", "0")


def test_unknown_path_is_404_with_an_empty_body_as_real_agents_answer(sim, client_ctx):
    status, response, body = get(url_of(sim, "mongo-1-node-1"), client_ctx, "/api/unstable/nope")
    assert (status, body, response.getheader("Content-Length")) == (404, b"", "0")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
def test_only_get_is_allowed(sim, client_ctx, method):
    url = url_of(sim, "kafka-2-node-1")
    status, response, body = get(url, client_ctx, AGENT, method, b"{}" if method != "HEAD" else None)
    assert status == 405 and response.getheader("Allow") == "GET"
    if method != "HEAD":
        assert set(json.loads(body)) == ERROR_KEYS


def test_query_string_is_ignored(sim, client_ctx):
    assert "version" in get_json(url_of(sim, "mongo-1-node-1"), client_ctx, AGENT + "?x=1")


# --- faults ---------------------------------------------------------------------------------------

def fault_url(sim: AgentSim, fault: Fault) -> str:
    return url_of(sim, f"faulty-{fault.value}")


def test_node_down(sim, client_ctx):
    url = fault_url(sim, Fault.NODE_DOWN)
    assert "version" in get_json(url, client_ctx, AGENT)
    for path in (DATASTORE, SHARDS):
        status, response, body = get(url, client_ctx, path)
        assert status == 500 and response.getheader("Content-Type") == "application/json"
        error = json.loads(body)
        assert error["error"] == "datastore unreachable" and set(error) == ERROR_KEYS
        assert isinstance(error["layers"], list) and error["trace"] is None and error["variant"] is None


def test_wrong_cluster(sim, client_ctx):
    datastore = get_json(fault_url(sim, Fault.WRONG_CLUSTER), client_ctx, DATASTORE)
    assert datastore["cluster_id"] == "faulty-impostor"


def test_garbage(sim, client_ctx):
    status, response, body = get(fault_url(sim, Fault.GARBAGE), client_ctx, AGENT)
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    with pytest.raises(ValueError):
        json.loads(body)


def test_huge(sim, client_ctx):
    status, response, body = get(fault_url(sim, Fault.HUGE), client_ctx, AGENT)
    assert status == 200 and len(body) >= 1 << 20
    assert json.loads(body)["version"]["number"] == "0.7.0"


def test_bad_schema(sim, client_ctx):
    url = fault_url(sim, Fault.BAD_SCHEMA)
    assert "version" in get_json(url, client_ctx, AGENT)
    assert get_json(url, client_ctx, DATASTORE)["cluster_id"] == "faulty"
    assert get_json(url, client_ctx, SHARDS)["shards"][0]["role"] == 42


def test_wrong_content_type(sim, client_ctx):
    status, response, _ = get(fault_url(sim, Fault.WRONG_CONTENT_TYPE), client_ctx, AGENT)
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")


def test_agent_error(sim, client_ctx):
    status, _, body = get(fault_url(sim, Fault.AGENT_ERROR), client_ctx, AGENT)
    assert status == 500 and set(json.loads(body)) == ERROR_KEYS


def test_slow_is_cut_off_by_a_short_deadline(sim, client_ctx):
    with pytest.raises(TimeoutError):
        get(fault_url(sim, Fault.SLOW), client_ctx, AGENT, timeout=0.5)


def test_slow_eventually_delivers_a_valid_body(ca, client_ctx):
    node = NodeSpec("c", "n", fault=Fault.SLOW)
    with AgentSim([node], ca[1], drip_seconds=0.001) as sim:
        assert get_json(sim.agents[0][1], client_ctx, DATASTORE)["node_id"] == "n"


def test_hanging_never_answers(sim, client_ctx):
    url = fault_url(sim, Fault.HANGING)
    before = sim.requests_seen(url)
    with pytest.raises(TimeoutError):
        get(url, client_ctx, AGENT, timeout=0.5)
    assert sim.requests_seen(url) == before + 1


def test_stop_is_prompt_with_hanging_and_slow_clients(ca, client_ctx):
    nodes = [NodeSpec("c", "hang", fault=Fault.HANGING), NodeSpec("c", "slow", fault=Fault.SLOW)]
    threads_before = set(threading.enumerate())
    sim = AgentSim(nodes, ca[1], drip_seconds=5.0).start()
    clients = []
    for _, url in sim.agents:
        conn = connect(url, client_ctx, timeout=0.3)
        conn.request("GET", AGENT)
        with pytest.raises(TimeoutError):
            conn.getresponse()
        clients.append(conn)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.0
    assert set(threading.enumerate()) <= threads_before  # acceptor and handlers joined
    for conn in clients:  # the server side is gone: EOF or reset, not another timeout
        conn.sock.settimeout(1.0)
        try:
            assert len(conn.sock.recv(65536)) < 100
        except (ssl.SSLError, ConnectionError):
            pass
        conn.close()
    sim.stop()  # idempotent


def test_misbehaving_clients_end_quietly(ca, client_ctx, capfd, caplog):
    caplog.set_level(logging.WARNING)
    with AgentSim([NodeSpec("c", "n")], ca[1]) as sim:
        url = sim.agents[0][1]
        port = urllib.parse.urlsplit(url).port
        with socket.create_connection(("127.0.0.1", port), timeout=2) as plain:  # no TLS at all
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:  # the server gives up on the handshake: EOF or reset, never an HTTP answer
                assert not plain.recv(1024).startswith(b"HTTP")
            except ConnectionResetError:
                pass
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # connect and leave
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:  # garbage over TLS
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"\x00\x01 not http at all\r\n\r\n")
                assert tls.recv(1024).startswith(b"HTTP/1.1 400 ")
        untrusting = ssl.create_default_context()  # rejects the throwaway CA: handshake fails
        with pytest.raises(ssl.SSLCertVerificationError):
            get(url, untrusting, AGENT)
        assert "version" in get_json(url, client_ctx, AGENT)
    assert capfd.readouterr().err == ""
    assert not caplog.records


def test_localhost_url_and_hostname_verification(ca, client_ctx):
    with AgentSim([NodeSpec("c", "n")], ca[1], host="localhost") as sim:
        url = sim.agents[0][1]
        assert url.startswith("https://localhost:")
        assert "version" in get_json(url, client_ctx, AGENT)
        assert sim.requests_seen(url) == 1


def test_requests_seen_counts_per_node(ca, client_ctx):
    with AgentSim(agentsim.fleet(1, 2), ca[1]) as sim:
        (_, first), (_, second) = sim.agents
        get(first, client_ctx, AGENT)
        get(first, client_ctx, "/unknown")
        assert (sim.requests_seen(first), sim.requests_seen(second)) == (2, 0)


def test_scales_to_a_thousand_nodes(ca, client_ctx):
    started = time.monotonic()
    with AgentSim(agentsim.fleet(100, 10), ca[1]) as sim:
        assert len({url for _, url in sim.agents}) == 1000
        spec, url = sim.agents[-1]
        assert get_json(url, client_ctx, DATASTORE)["node_id"] == spec.node_id
    assert time.monotonic() - started < 5.0


def test_start_twice_and_agents_before_start(ca):
    sim = AgentSim([NodeSpec("c", "n")], ca[1])
    with pytest.raises(RuntimeError):
        sim.agents
    with sim:
        with pytest.raises(RuntimeError):
            sim.start()


# --- hostile agents ---------------------------------------------------------------------------

QUICK = 0.5  # client-side timeout of the hostile tests: what must not happen fails within it


def raw_connect(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=QUICK)


def handler_of(node_id: str) -> threading.Thread:
    """The simulator's handler thread of the one open connection to `node_id`."""
    (thread,) = [t for t in threading.enumerate() if t.name == f"agentsim-{node_id}"]
    return thread


def test_tls_stall_never_sends_a_byte_and_lets_go_when_the_client_does(ca, client_ctx):
    with AgentSim([NodeSpec("c", "stall", fault=Fault.TLS_STALL)], ca[1]) as sim:
        url = sim.agents[0][1]
        with raw_connect(url) as raw:
            tls = client_ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="127.0.0.1")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            raw.sendall(outgoing.read())  # a real ClientHello
            with pytest.raises(TimeoutError):
                raw.recv(1)  # no ServerHello, no alert, no EOF
            handler = handler_of("stall")
        handler.join(2.0)  # the client went away: the handler ends
        assert not handler.is_alive()
        assert sim.requests_seen(url) == 0


def test_endless_chunked_streams_spaces_for_as_long_as_the_client_reads(ca, client_ctx):
    with AgentSim([NodeSpec("c", "endless", fault=Fault.ENDLESS_CHUNKED)], ca[1]) as sim:
        url = sim.agents[0][1]
        conn = connect(url, client_ctx, timeout=QUICK)
        try:
            conn.request("GET", AGENT)
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Content-Type") == "application/json"
            assert response.getheader("Transfer-Encoding") == "chunked"
            assert response.getheader("Content-Length") is None
            assert response.read(11) == b'{"version":'
            received = 0
            while received < 4 << 20:  # 4 MiB and counting: it never ends
                chunk = response.read(256 * 1024)
                assert chunk.strip(b" ") == b"" and chunk
                received += len(chunk)
            handler = handler_of("endless")
        finally:
            conn.close()
        handler.join(2.0)  # its writes fail once the client is gone
        assert not handler.is_alive()
        assert "version" in get_json(url, client_ctx, DATASTORE)  # only agent info is hostile


def test_deep_nesting_is_thirty_thousand_lists_under_64_kib(sim, client_ctx):
    status, response, body = get(fault_url(sim, Fault.DEEP_NESTING), client_ctx, AGENT, timeout=QUICK)
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    assert body == b"[" * 30_000 + b"]" * 30_000 and len(body) < 64 * 1024
    with pytest.raises(RecursionError):
        json.loads(body)


def test_nan_is_a_bare_nan_token(sim, client_ctx):
    status, _, body = get(fault_url(sim, Fault.NAN), client_ctx, AGENT, timeout=QUICK)
    assert status == 200 and body == b'{"version":{"checkout":"x","number":NaN,"taint":"t"}}'
    assert math.isnan(json.loads(body)["version"]["number"])  # Python's lenient parser takes it


def test_duplicate_keys_has_version_twice(sim, client_ctx):
    status, _, body = get(fault_url(sim, Fault.DUPLICATE_KEYS), client_ctx, AGENT, timeout=QUICK)
    pairs = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    assert status == 200 and [key for key, _ in pairs] == ["version", "version"]
    assert all([key for key, _ in value] == ["checkout", "number", "taint"] for _, value in pairs)


def test_invalid_utf8_is_well_formed_json_with_a_0xff_byte(sim, client_ctx):
    status, _, body = get(fault_url(sim, Fault.INVALID_UTF8), client_ctx, AGENT, timeout=QUICK)
    assert status == 200 and b"\xff" in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert json.loads(body.decode("latin-1"))["version"]["checkout"] == "bad\xff"


def test_wrong_types_has_an_integer_node_id_and_a_fine_agent_info(sim, client_ctx):
    url = fault_url(sim, Fault.WRONG_TYPES)
    assert get_json(url, client_ctx, AGENT)["version"]["number"] == "0.7.0"
    assert get_json(url, client_ctx, DATASTORE)["node_id"] == 12
    assert get_json(url, client_ctx, SHARDS)["shards"][0]["id"] == "rs0"


def test_redirect_is_a_302_to_example_invalid_with_an_empty_body(sim, client_ctx):
    url = fault_url(sim, Fault.REDIRECT)
    before = sim.requests_seen(url)
    status, response, body = get(url, client_ctx, AGENT, timeout=QUICK)
    assert (status, body, response.getheader("Content-Length")) == (302, b"", "0")
    assert response.getheader("Location") == "https://example.invalid/api/unstable/info/agent"
    assert sim.requests_seen(url) == before + 1


def test_service_unavailable_is_a_503_with_retry_after(sim, client_ctx):
    status, response, body = get(fault_url(sim, Fault.SERVICE_UNAVAILABLE), client_ctx, AGENT, timeout=QUICK)
    assert status == 503 and response.getheader("Retry-After") == "30"
    assert response.getheader("Content-Type") == "application/json" and set(json.loads(body)) == ERROR_KEYS


def read_until_error(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError too: checked by callers
        return data, exc
    return data, None


def test_reset_mid_body_sends_100_of_5000_bytes_then_a_tcp_rst(ca):
    with AgentSim([NodeSpec("c", "reset", fault=Fault.RESET_MID_BODY)], None) as sim:  # plain: see the RST
        with raw_connect(sim.agents[0][1]) as raw:
            raw.sendall(f"GET {AGENT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data, error = read_until_error(raw)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 5000" in head
    assert len(body) == 100 and body.startswith(b'{"version":')
    assert isinstance(error, ConnectionResetError)  # RST, not FIN (which reads as b"")


def test_reset_mid_body_over_tls_ends_without_close_notify(sim, client_ctx):
    with raw_connect(fault_url(sim, Fault.RESET_MID_BODY)) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as tls:
            tls.sendall(f"GET {AGENT} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data, error = read_until_error(tls)
    assert len(data.partition(b"\r\n\r\n")[2]) == 100
    # OpenSSL 3 reports the RST under TLS as an unexpected EOF
    assert isinstance(error, (ssl.SSLEOFError, ConnectionResetError)), error


def test_gzip_bomb_is_small_on_the_wire_and_50_mib_inflated(sim, client_ctx):
    status, response, body = get(fault_url(sim, Fault.GZIP_BOMB), client_ctx, AGENT, timeout=QUICK)
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    assert response.getheader("Content-Encoding") == "gzip"
    assert int(response.getheader("Content-Length")) == len(body) < 64 * 1024
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    first = inflater.decompress(body, 1 << 20)
    size, pending = len(first), inflater.unconsumed_tail
    while pending or not inflater.eof:  # inflate in 1 MiB steps, never 50 MiB at once
        size += len(inflater.decompress(pending, 1 << 20))
        pending = inflater.unconsumed_tail
    assert first.startswith(b'{"version":   ') and first[11:].strip(b" ") == b""
    assert size == 11 + 50 * (1 << 20)


def test_hostile_faults_only_touch_agent_info(sim, client_ctx):
    for fault in (Fault.ENDLESS_CHUNKED, Fault.DEEP_NESTING, Fault.NAN, Fault.DUPLICATE_KEYS,
                  Fault.INVALID_UTF8, Fault.REDIRECT, Fault.SERVICE_UNAVAILABLE,
                  Fault.RESET_MID_BODY, Fault.GZIP_BOMB):
        url = fault_url(sim, fault)
        assert get_json(url, client_ctx, DATASTORE)["node_id"] == f"faulty-{fault.value}", fault
        assert get_json(url, client_ctx, SHARDS)["shards"][0]["id"] == "rs0", fault


def test_stop_is_prompt_with_stalled_and_endless_clients(ca, client_ctx):
    nodes = [NodeSpec("c", "stall", fault=Fault.TLS_STALL), NodeSpec("c", "endless", fault=Fault.ENDLESS_CHUNKED)]
    threads_before = set(threading.enumerate())
    sim = AgentSim(nodes, ca[1]).start()
    (_, stall_url), (_, endless_url) = sim.agents
    stalled = raw_connect(stall_url)
    endless = connect(endless_url, client_ctx, timeout=QUICK)
    try:
        endless.request("GET", AGENT)
        assert endless.getresponse().read(11) == b'{"version":'  # and then never reads again
        handlers = [handler_of("stall"), handler_of("endless")]
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 1.0
        assert not any(h.is_alive() for h in handlers)
        assert set(threading.enumerate()) <= threads_before
    finally:
        stalled.close()
        endless.close()


# --- fleet, discovery, throwaway CA ----------------------------------------------------------

def test_fleet_is_deterministic_and_unique():
    nodes = agentsim.fleet(4, 3)
    assert nodes == agentsim.fleet(4, 3)
    assert len({n.node_id for n in nodes}) == 12
    assert [n.cluster_id for n in nodes[::3]] == ["mongo-1", "kafka-2", "zk-3", "mongo-4"]
    assert [n.kind for n in nodes[::3]] == ["MongoDB", "Kafka", "Zookeeper", "MongoDB"]
    assert nodes[1].node_id == "mongo-1-node-2"
    assert all(n.fault is Fault.HEALTHY and n.display_name is None for n in nodes)


def test_fleet_spreads_faults_across_clusters():
    nodes = agentsim.fleet(3, 3, {Fault.HANGING: 2, Fault.SLOW: 2})
    faulty = {n.node_id: n.fault for n in nodes if n.fault is not Fault.HEALTHY}
    assert faulty == {"mongo-1-node-1": Fault.SLOW, "kafka-2-node-1": Fault.SLOW,
                      "zk-3-node-1": Fault.HANGING, "mongo-1-node-2": Fault.HANGING}
    assert nodes == agentsim.fleet(3, 3, {Fault.SLOW: 2, Fault.HANGING: 2})


@pytest.mark.parametrize("faults", [{Fault.SLOW: 5}, {Fault.SLOW: 2, Fault.HUGE: 3}, {Fault.SLOW: -1}])
def test_fleet_rejects_faults_that_do_not_fit(faults):
    with pytest.raises(ValueError):
        agentsim.fleet(2, 2, faults)


def test_fleet_all_faulty_fits():
    assert {n.fault for n in agentsim.fleet(2, 2, {Fault.GARBAGE: 4})} == {Fault.GARBAGE}


def test_fleet_assigns_every_fault_in_enum_order():
    faulty = [fault for fault in Fault if fault is not Fault.HEALTHY]
    nodes = agentsim.fleet(len(faulty), 1, {fault: 1 for fault in faulty})
    assert [n.fault for n in nodes] == faulty


def test_cli_fault_names_include_the_hostile_ones():
    assert agentsim._parse_faults(["tls-stall=1", "GZIP_BOMB=2", "reset_mid_body=1"]) == {
        Fault.TLS_STALL: 1, Fault.GZIP_BOMB: 2, Fault.RESET_MID_BODY: 1}


def test_nodespec_rejects_unknown_kind():
    with pytest.raises(ValueError):
        NodeSpec("c", "n", kind="Postgres")


def test_discovery_ini_text():
    agents = [(NodeSpec("mongo-1", "a", display_name="Mongo One"), "https://127.0.0.1:4001"),
              (NodeSpec("mongo-1", "b"), "https://127.0.0.1:4002"),
              (NodeSpec("kafka-2", "c", "Kafka"), "https://127.0.0.1:4003")]
    text = agentsim.discovery_ini(agents)
    assert text == ("[cluster:mongo-1]\n"
                    "display_name = Mongo One\n"
                    "agents = https://127.0.0.1:4001, https://127.0.0.1:4002\n"
                    "\n"
                    "[cluster:kafka-2]\n"
                    "agents = https://127.0.0.1:4003\n")
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser.sections() == ["cluster:mongo-1", "cluster:kafka-2"]


def test_throwaway_ca_writes_pem(tmp_path):
    pem, context = agentsim.throwaway_ca(tmp_path / "sub")
    assert pem == tmp_path / "sub" / "ca.pem"
    assert pem.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert isinstance(context, ssl.SSLContext)


# --- CLI ---------------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agentsim.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults(tmp_path):
    args = parse(["--out", str(tmp_path)])
    assert (args.clusters, args.nodes_per_cluster, args.fault, args.host, args.drip_seconds) == (
        3, 3, [], "127.0.0.1", 1.0)


@pytest.mark.parametrize("fault", ["bogus=1", "slow", "slow=x", "slow=100"])
def test_cli_bad_fault_is_one_line_exit_2(tmp_path, capsys, fault):
    assert agentsim.main(parse(["--out", str(tmp_path), "--fault", fault])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "agent-sim:" in err


def test_cli_runs_until_sigterm(tmp_path, client_ctx):
    script = ("import argparse, sys\n"
              "from replicante_poller import agentsim\n"
              "p = argparse.ArgumentParser(); agentsim.add_arguments(p)\n"
              "sys.exit(agentsim.main(p.parse_args(sys.argv[1:])))\n")
    argv = [sys.executable, "-X", "dev", "-c", script, "--out", str(tmp_path), "--clusters", "2",
            "--nodes-per-cluster", "2", "--fault", "node_down=1"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            lines = []
            while not (line := proc.stdout.readline()).startswith("discovery file:"):
                assert line, proc.stderr.read()
                lines.append(line)
            assert len(lines) == 5 and "fault=node_down" in lines[0]
            ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")  # actions on: required
            url = lines[1].split()[0]
            assert "version" in get_json(url, ctx, AGENT)
            parser = configparser.ConfigParser()
            parser.read(tmp_path / "discovery.ini")
            assert parser.sections() == ["cluster:mongo-1", "cluster:kafka-2"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
            assert proc.stderr.read() == ""
        finally:
            proc.kill()
