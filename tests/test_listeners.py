"""The listeners under attack, as real processes: the service's status listener (`run`) and
the verifying gateway (`gateway`, over HTTPS).

The attacker is on 127.0.0.2 (and 127.0.0.3), the victims on 127.0.0.1: every 127/8
address is loopback on Linux, and the listeners share their slots by peer address."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import resource
import selectors
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.actions.httpsig import sign_action
from replicante_poller.actions.signing import generate_keypair, load_signing_key
from replicante_poller.agentsim import NodeSpec
from replicante_poller.web.server import (MAX_CONNECTIONS, PEER_SHARE, REQUEST_DEADLINE, CountingServer, Refusals,
                                          peer_key, send)

from harness import config_text
from process import PollerProcess

KIND = "agent.replicante.io/test.ping"
SCHEDULE = f"/api/unstable/actions/schedule/{KIND}"
AGENT_URL = "https://mongo-1.example:37017"  # the gateway's agent_urls: what Core dials for its agent
FLOOD = 300  # the attack of issue 12: 300 connections dripping a byte a second
SHARE = MAX_CONNECTIONS // PEER_SHARE
REFUSED = re.compile(r"(status api|gateway): refused")


@pytest.fixture(scope="module", autouse=True)
def open_files() -> None:
    """Room for the flood: the attackers' sockets live in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 4 * FLOOD:
        pytest.fail(f"the open-file limit ({soft}, hard {hard}) leaves no room for {FLOOD} attacking connections")


class Drip:
    """`count` connections from `source` to `address` that each send `opening` at once, then
    one byte of `payload` a second, and never finish. A connection the server closes is opened
    again at the next tick, so the flood lasts. `closed` holds (opened at, lived) of every
    connection the server closed; `answers` what the server wrote before closing."""

    def __init__(self, address: tuple[str, int], payload: bytes, count: int = FLOOD, source: str = "127.0.0.2",
                 opening: bytes = b"", every: float = 1.0):
        self.address, self.payload, self.count, self.source, self.opening, self.every = \
            address, payload, count, source, opening, every
        self.closed: list[tuple[float, float]] = []
        self.answers: list[bytes] = []
        self.opened = 0
        self.changed = threading.Condition()
        self._open: dict[socket.socket, list] = {}  # socket -> [opened at, bytes of payload sent, answer]
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"drip-{source}", daemon=True)

    def __enter__(self) -> "Drip":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake_w.send(b"\0")
        self._thread.join(10)
        for sock in list(self._open):
            sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def wait_for(self, predicate: Callable[["Drip"], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def held(self, longer_than: float) -> int:
        """Connections open now that have been open for longer than `longer_than` seconds."""
        now = time.monotonic()
        with self.changed:
            return sum(1 for opened, _, _ in list(self._open.values()) if now - opened > longer_than)

    def _run(self) -> None:
        while not self._stop.is_set():
            while len(self._open) < self.count:
                self._connect()
            for sock, state in list(self._open.items()):
                self._send(sock, state, self.payload[state[1]:state[1] + 1], advance=True)
            tick = time.monotonic() + self.every
            while not self._stop.is_set() and (left := tick - time.monotonic()) > 0:
                for key, _ in self._selector.select(left):
                    if key.fileobj is not self._wake_r:
                        self._readable(key.fileobj)  # type: ignore[arg-type]

    def _connect(self) -> None:
        """One connection, established before the next: a flood that gets in even through a
        short listen backlog (a dropped SYN would wait for its retransmission)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.source, 0))
        sock.settimeout(5)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            with self.changed:
                self.closed.append((time.monotonic(), 0.0))
                self.changed.notify_all()
            return
        sock.setblocking(False)
        state = [time.monotonic(), 0, bytearray()]
        self._open[sock] = state
        self._selector.register(sock, selectors.EVENT_READ)
        self.opened += 1
        self._send(sock, state, self.opening + self.payload[:1], advance=False)
        state[1] = 1

    def _send(self, sock: socket.socket, state: list, data: bytes, advance: bool) -> None:
        if not data:
            return
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            return  # the connect is still in progress: this byte goes at the next tick
        except OSError:
            return self._gone(sock)
        if advance:
            state[1] += 1

    def _readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._open[sock][2] += data
        else:
            self._gone(sock)

    def _gone(self, sock: socket.socket) -> None:
        opened, _, answer = self._open.pop(sock)
        self._selector.unregister(sock)
        sock.close()
        with self.changed:
            self.closed.append((opened, time.monotonic() - opened))
            if answer:
                self.answers.append(bytes(answer))
            self.changed.notify_all()


def client_hello() -> bytes:
    """The first flight of a real TLS client: dripped, the handshake never completes."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def drain(process: PollerProcess) -> list[str]:
    """Every line the process logged so far."""
    while True:
        try:
            line = process.lines.get_nowait()
        except queue.Empty:
            return process.log
        if line is not None:
            process.log.append(line)


def samples(text: str, name: str) -> dict[str, float]:
    """The `reason` label -> value of one counter in a Prometheus text exposition."""
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


@pytest.fixture
def signer(tmp_path: Path):
    kid = generate_keypair(str(tmp_path / "core"))
    return {"kid": kid, "key": load_signing_key(tmp_path / "core.key"), "pub": tmp_path / "core.pub"}


def signed_action(signer: dict) -> tuple[str, bytes, dict[str, str]]:
    action_id = str(uuid.uuid4())
    body = json.dumps({"action_id": action_id, "args": None, "created_ts": "2026-11-25T00:00:00Z",
                       "requester": "CORE_API"}).encode()
    key = signer["key"]
    headers = sign_action(method="POST", path=SCHEDULE, body=body, agent_url=AGENT_URL, cluster_id="rs",
                          node_id="node-1", key_id=key.key_id, sign=key.sign, now=int(time.time()), ttl=60,
                          nonce=os.urandom(16))
    return action_id, body, headers


@pytest.fixture
def listeners(tmp_path: Path, start_sim, pki, signer):
    """A sim agent (cluster rs, node node-1) behind an HTTPS gateway process, and a service
    process polling the agent through the gateway."""
    sim = start_sim([NodeSpec("rs", "node-1")])
    upstream = sim.agents[0][1]
    gateway_ini = tmp_path / "gateway.ini"
    gateway_ini.write_text(
        f"[gateway]\nlisten = 127.0.0.1:0\nmetrics_listen = 127.0.0.1:0\nupstream = {upstream}\n"
        f"upstream_ca_file = {pki['ca']}\nagent_urls = {AGENT_URL}\nkeys = {signer['pub']}\n"
        f"replay_store = {tmp_path / 'replay.db'}\nserver_cert = {pki['cert']}\nserver_key = {pki['key']}\n")
    started: list[PollerProcess] = []
    try:
        gateway = PollerProcess(gateway_ini, verb="gateway", ready=r"listening on (\S+:\d+)")
        started.append(gateway)
        gateway_metrics = gateway.expect(r"gateway metrics on (http://[^/\s]+)").group(1)
        gateway_url = f"https://{gateway.address}"
        service_ini = tmp_path / "poller.ini"
        service_ini.write_text(config_text([("rs", gateway_url)], pki["ca"], interval="1s", timeout="800ms"))
        service = PollerProcess(service_ini)
        started.append(service)
        yield {"sim": sim, "upstream": upstream, "gateway": gateway, "gateway_url": gateway_url,
               "gateway_metrics": gateway_metrics, "service": service, "ca": str(pki["ca"])}
    finally:
        for process in started:
            process.kill()


def test_slow_clients_do_not_take_the_listeners_down(listeners, signer):
    """Issue 12: 300 connections dripping a header byte a second from one address (and one
    dripping a body, one handshake stalled) take neither listener down: /metrics, targets,
    the page, a poll through the gateway and a signed action are served all along; the
    attacker holds its fair share only, each of its connections for the request deadline at
    most; refusals are counted and logged a few lines, not one a refusal."""
    service, gateway = listeners["service"], listeners["gateway"]
    service_address = tuple(service.address.rsplit(":", 1))
    gateway_address = tuple(gateway.address.rsplit(":", 1))
    service_target = (service_address[0], int(service_address[1]))
    gateway_target = (gateway_address[0], int(gateway_address[1]))
    header = b"GET /metrics HTTP/1.1\r\nHost: poller\r\nX-Drip: " + b"a" * 200
    body_head = (b"POST /api/v1/actions HTTP/1.1\r\nHost: poller\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n")
    started = time.monotonic()
    with Drip(service_target, header) as on_service, Drip(gateway_target, client_hello()) as on_gateway, \
            Drip(service_target, b"{" * 200, count=1, source="127.0.0.3", opening=body_head) as slow_body:
        assert on_service.wait_for(lambda d: d.opened >= FLOOD and len(d.closed) >= FLOOD - SHARE, 10)
        assert on_gateway.wait_for(lambda d: d.opened >= FLOOD and len(d.closed) >= FLOOD - SHARE, 10)

        # Under the flood, the victims on 127.0.0.1 are served.
        base = f"http://{service.address}"
        for path in ("/metrics", "/api/v1/targets", "/"):
            assert requests.get(base + path, timeout=5).status_code == 200, path
        action_id, body, headers = signed_action(signer)
        reply = requests.post(listeners["gateway_url"] + SCHEDULE, data=body, headers=headers,
                              verify=listeners["ca"], timeout=10)
        assert (reply.status_code, reply.json()) == (200, {"id": action_id})
        assert listeners["sim"].wait_for_state(listeners["upstream"], action_id, "DONE", timeout=10)
        via_gateway = requests.get(listeners["gateway_url"] + "/api/unstable/info/datastore",
                                   verify=listeners["ca"], timeout=5)
        assert via_gateway.status_code == 200 and via_gateway.json()["node_id"] == "node-1"
        # the attacker holds its share of the slots, not more
        assert on_service.held(longer_than=1.5) <= SHARE and on_gateway.held(longer_than=1.5) <= SHARE

        # Past the deadline every slow connection the listeners took was dropped: headers,
        # body and handshake alike, whose bytes kept coming.
        def dropped_late(drip: Drip) -> list[float]:
            return [lived for _, lived in drip.closed if lived > REQUEST_DEADLINE / 2]

        for drip, wanted in ((on_service, SHARE), (on_gateway, SHARE), (slow_body, 1)):
            assert drip.wait_for(lambda d: len(dropped_late(d)) >= wanted, REQUEST_DEADLINE + 5), drip.closed[-5:]
            first_wave = dropped_late(drip)[:wanted]
            assert all(REQUEST_DEADLINE - 0.5 <= lived <= REQUEST_DEADLINE + 3 for lived in first_wave), first_wave
        assert slow_body.answers and slow_body.answers[0].startswith(b"HTTP/1.1 408 ")

        # The poller polled its agent through the flooded gateway all along.
        target = service.targets()[listeners["gateway_url"]]
        assert (target["status"], target["reason"]) == ("UP", None), target
        failures = samples(requests.get(base + "/metrics", timeout=5).text, "replicante_poller_poll_failures_total")
        assert not any(failures.values()), failures

        # Counted: the refusals of the flood, each reason's value present from the start.
        text = requests.get(base + "/metrics", timeout=5).text
        refused = samples(text, "replicante_poller_listener_refusals_total")
        assert set(refused) == {"capacity", "peer_share", "deadline", "too_large", "tls_handshake", "fd_limit"}
        assert refused["peer_share"] >= FLOOD - SHARE and refused["deadline"] >= SHARE + 1, refused
        assert refused["capacity"] == 0, refused
        text = requests.get(listeners["gateway_metrics"] + "/gateway/metrics", timeout=5).text
        refused = samples(text, "replicante_gateway_listener_refusals_total")
        assert refused["peer_share"] >= FLOOD - SHARE and refused["deadline"] >= SHARE, refused

        # Logged at a bounded rate: the first refusal of a reason, then one line per 10 s that
        # says how many were refused meanwhile.
        for process in (service, gateway):
            process.expect(r"refused (\d+) connections in the last 10 s: peer_share", timeout=15)
    elapsed = time.monotonic() - started
    for process, name in ((service, "status api"), (gateway, "gateway")):
        lines = [line for line in drain(process) if REFUSED.search(line)]
        summary = [int(m.group(1)) for line in lines
                   if (m := re.search(r"refused (\d+) connections in the last 10 s: peer_share", line))]
        assert summary and max(summary) >= FLOOD, lines
        # per reason: the first line and one per started 10 s after it
        assert len(lines) <= 2 * (2 + elapsed // 10), lines
        assert all(name in line for line in lines), lines
        assert not any("Traceback" in line for line in process.log), "".join(process.log)


def test_every_response_has_the_hardening_headers_and_no_python_version(listeners):
    base = f"http://{listeners['service'].address}"
    page = requests.get(base + "/", timeout=5)
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    style = re.search(r"<style>(.*?)</style>", page.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy  # the page's own style, nothing else
    responses = [page] + [requests.get(base + path, timeout=5) for path in ("/metrics", "/api/v1/targets", "/nowhere")]
    responses.append(requests.request("FOO", base + "/", timeout=5))  # an unknown method: the stdlib's own error page (501)
    responses.append(requests.request("PUT", base + "/", timeout=5))  # a method of no route: 405 in JSON
    gateway_url, ca = listeners["gateway_url"], listeners["ca"]
    responses.append(requests.get(gateway_url + "/api/unstable/info/agent", verify=ca, timeout=5))
    responses.append(requests.post(gateway_url + SCHEDULE, data=b"{}", verify=ca, timeout=5,
                                   headers={"Content-Type": "application/json"}))  # unsigned: 401
    responses.append(requests.delete(gateway_url + "/api/unstable/shards", verify=ca, timeout=5))
    responses.append(requests.get(listeners["gateway_metrics"] + "/gateway/metrics", timeout=5))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 404, 501, 405, 200, 401, 405, 200], statuses
    for reply in responses:
        assert reply.headers["X-Content-Type-Options"] == "nosniff", (reply.url, reply.headers)
        assert "default-src 'none'" in reply.headers["Content-Security-Policy"], (reply.url, reply.headers)
        assert reply.headers["Server"] in ("replicante-poller", "replicante-gateway"), reply.headers["Server"]
        assert "python" not in reply.headers["Server"].lower()


def tls_client(address: tuple[str, int], ca: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca)
    return context.wrap_socket(socket.create_connection(address, timeout=5), server_hostname="127.0.0.1")


def test_tls_clients_that_vanish_are_not_errors(listeners):
    """A TLS client that closes without close_notify, mid-request or before reading its
    answer, or resets, is no error with a traceback; one that does not speak TLS is a
    counted `tls_handshake` refusal."""
    gateway, ca = listeners["gateway"], listeners["ca"]
    host, port = gateway.address.rsplit(":", 1)
    address = (host, int(port))
    request = b"GET /api/unstable/shards HTTP/1.1\r\nHost: gateway\r\n\r\n"
    for how in ("mid-request", "before the answer", "reset", "after the answer"):
        sock = tls_client(address, ca)
        if how == "mid-request":
            sock.sendall(request[:20])
        else:
            sock.sendall(request)
        if how == "after the answer":
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # SSLSocket.close never sends close_notify (unwrap would)
    with socket.create_connection(address, timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
        try:
            assert plain.recv(4096) == b""  # closed after the failed handshake
        except ConnectionResetError:
            pass  # closed with the rest of the request unread
    # each vanished client was served (or dropped) before this one's answer came back
    ok = requests.get(listeners["gateway_url"] + "/api/unstable/shards", verify=ca, timeout=5)
    assert ok.status_code == 200
    text = requests.get(listeners["gateway_metrics"] + "/gateway/metrics", timeout=5).text
    assert samples(text, "replicante_gateway_listener_refusals_total")["tls_handshake"] == 1
    errors = {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
              for s in family.samples if s.name == "replicante_gateway_requests_total"}
    assert errors["error"] == 0, errors
    assert gateway.stop() == 0
    log = "".join(drain(gateway))
    assert "Traceback" not in log and "ERROR" not in log, log
    assert re.search(r"gateway: refused a connection from 127\.0\.0\.1: tls_handshake", log), log


# -- the listener itself, in-process, with short deadlines -------------------------------------

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo"

    def do_GET(self) -> None:
        send(self, 200, "text/plain", self.path.encode())

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        send(self, 200, "text/plain", self.rfile.read(length)[::-1])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def listener():
    """A CountingServer with a 1 s deadline, 16 connections, 4 a peer; its refusals counted."""
    started = []

    def start(**options) -> tuple[CountingServer, list[str]]:
        refused: list[str] = []
        server = CountingServer(("127.0.0.1", 0), Echo, **{"max_connections": 16, "deadline": 1.0,
                                                          "on_refusal": refused.append, **options})
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append(server)
        return server, refused

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_one_address_gets_its_share_and_the_others_are_served(listener):
    server, refused = listener(deadline=5.0)
    attackers = [socket.create_connection(server.server_address, source_address=("127.0.0.2", 0))
                 for _ in range(10)]
    try:
        alive = 0
        for sock in attackers:
            sock.settimeout(0.2)
            try:
                sock.sendall(b"GET / HTTP/1.1\r\n")  # and never more
            except ConnectionResetError:
                continue  # refused at once
            try:
                sock.recv(1)  # b"" or a reset: refused
            except socket.timeout:
                alive += 1  # still open: it holds a slot
            except ConnectionResetError:
                pass
        assert alive == 16 // PEER_SHARE  # max_connections // peer_share
        assert refused.count("peer_share") == 10 - alive
        with socket.create_connection(server.server_address) as victim:
            victim.sendall(b"GET /victim HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(victim).endswith(b"/victim")
    finally:
        for sock in attackers:
            sock.close()


def test_a_body_announced_but_never_sent_is_dropped_at_the_deadline_and_counted(listener):
    server, refused = listener()
    with socket.create_connection(server.server_address) as sock:
        # Expect: the handler reads the body itself, past what the listener read ahead
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\nabc")
        sock.settimeout(5)
        started = time.monotonic()
        answer = read_all(sock)
        assert 0.9 <= time.monotonic() - started < 4 and b" 200 " not in answer
    with socket.create_connection(server.server_address) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")  # read ahead by the listener
        sock.settimeout(5)
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")
    assert refused == ["deadline", "deadline"]


def test_a_head_over_the_cap_is_refused_and_a_kept_alive_idle_connection_closed_quietly(listener):
    server, refused = listener()
    with socket.create_connection(server.server_address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * (70 * 1024))
        sock.settimeout(5)
        assert read_all(sock).startswith(b"HTTP/1.1 431 ")
    assert refused == ["too_large"]
    with socket.create_connection(server.server_address) as sock:  # two requests, pipelined, then idle
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        sock.settimeout(5)
        answers = read_all(sock)
        assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.endswith(b"cba"), answers
    assert refused == ["too_large"]  # an idle connection between requests is no refusal


def test_refusals_are_logged_once_then_summarised_every_interval(caplog):
    now = [100.0]
    counted: list[str] = []
    refusals = Refusals("test listener", counted.append, every=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="replicante_poller.web.server"):
        for _ in range(1000):
            refusals.refused("peer_share", "127.0.0.2", "32 connections open from that address")
        assert refusals.flush() == 110.0
        now[0] = 110.0
        assert refusals.flush() is None
        refusals.refused("deadline", "127.0.0.3")
    assert len(counted) == 1001
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "test listener: refused a connection from 127.0.0.2: peer_share (32 connections open from that address); "
        "further refusals are summarised every 10 s",
        "test listener: refused 999 connections in the last 10 s: peer_share, the latest from 127.0.0.2 "
        "(32 connections open from that address)",
        "test listener: refused a connection from 127.0.0.3: deadline; further refusals are summarised every 10 s"]


def test_peer_addresses_share_by_ipv4_address_and_ipv6_64():
    assert peer_key(("127.0.0.2", 5000)) == "127.0.0.2"
    assert peer_key(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == peer_key(("2001:db8:1:2:bbbb::7", 1, 0, 0)) \
        == "2001:db8:1:2::/64"
    assert peer_key(("::ffff:10.0.0.1", 5000, 0, 0)) == "10.0.0.1"
