"""The agent transport against real HTTPS servers on loopback (DESIGN sections 2, 3 and 6).

Real `AgentClient` and `poll_target`, a real `DeadlineReaper` and `TlsContexts`, servers
from `tls_servers` with trustme certificates. Nothing of requests, urllib3 or ssl is mocked.
One test per behaviour; each asserts the reason, the status where a poll decides one, and
that the message says what happened. Deadlines are 1 s, so slow servers cost about that.
"""
from __future__ import annotations

import base64
import gc
import hashlib
import json
import pathlib
import socket
import ssl
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, Optional

import certifi
import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.poll import AGENT_INFO, DATASTORE_INFO, SHARDS, PollResult, poll_target
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.transport import AgentClient, Failure

from blackhole import Blackhole
from tls_servers import (
    Handler,
    TlsServer,
    chunked,
    closed_port,
    drip,
    gzip_zeros,
    head,
    json_response,
    respond,
    response_bytes,
    send_then_close,
    send_then_hang,
    send_then_reset,
    server_context,
    then_drip,
)

CLUSTER = "cluster-1"
DEADLINE = 1.0  # every poll's deadline in these tests
SLACK = 1.0  # how far past the deadline a cut-off poll may return
CAP = 64 * 1024

AGENT_DOC = {"version": {"checkout": "8f3c2a1", "number": "0.7.2", "taint": "not tainted"}}
DATASTORE_DOC = {"cluster_display_name": "Orders", "cluster_id": CLUSTER, "kind": "MongoDB",
                 "node_id": "mongo1:27017", "version": "4.4.6"}
SHARDS_DOC = {"shards": [{"id": "rs0", "role": "primary", "commit_offset": {"unit": "seconds", "value": 1700000000},
                          "lag": {"unit": "seconds", "value": 0}}]}


def healthy(**overrides: Handler) -> dict[str, Handler]:
    """Handlers of a healthy agent, with some paths replaced."""
    handlers = {
        AGENT_INFO: json_response(AGENT_DOC),
        DATASTORE_INFO: json_response(DATASTORE_DOC),
        SHARDS: json_response(SHARDS_DOC),
    }
    handlers.update({{"agent": AGENT_INFO, "datastore": DATASTORE_INFO, "shards": SHARDS}[k]: v
                     for k, v in overrides.items()})
    return handlers


# -- certificates ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_ca() -> trustme.CA:
    return trustme.CA(organization_name="poller test CA")


@pytest.fixture(scope="module")
def server_cert(agent_ca: trustme.CA) -> trustme.LeafCert:
    return agent_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory, agent_ca: trustme.CA) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("agent-tls")
    agent_ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return folder


@pytest.fixture(scope="module")
def ca_file(tls_dir: pathlib.Path) -> str:
    return str(tls_dir / "ca.pem")


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return gzip_zeros(100 * 1024 * 1024)


def spki_pin(cert: trustme.LeafCert) -> str:
    """curl's form of a certificate's key pin: sha256// + base64(sha256(SubjectPublicKeyInfo))."""
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


# -- the poller side ---------------------------------------------------------------------


@pytest.fixture
def serve(server_cert: trustme.LeafCert) -> Iterator[Callable[..., TlsServer]]:
    """Start servers (the healthy agent by default); all are stopped at the end of the test."""
    servers: list[TlsServer] = []

    def start(handlers: Optional[Mapping[str, Handler]] = None, context: Any = "default") -> TlsServer:
        if context == "default":
            context = server_context(server_cert)
        server = TlsServer(context, healthy() if handlers is None else handlers).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def target(ca_file: str) -> Callable[..., Target]:
    def make(url: str, timeout: float = DEADLINE, max_body: int = CAP, **tls: Any) -> Target:
        return Target(CLUSTER, url, None, PollSettings(interval=10.0, timeout=timeout, max_body=max_body),
                      TlsSettings(ca_file=tls.pop("ca_file", ca_file), **tls))

    return make


def timed_poll(client: AgentClient, target: Target) -> tuple[PollResult, float]:
    t0 = time.monotonic()
    result = poll_target(client, target)
    return result, time.monotonic() - t0


def assert_down(result: PollResult, status: Status, reason: Reason, *fragments: str) -> None:
    assert (result.status, result.reason) == (status, reason), result.message
    for fragment in fragments:
        assert fragment.lower() in result.message.lower(), result.message


def assert_timeout(result: PollResult, status: Status, path: str) -> None:
    """Reason `timeout`, and a message that says so. Which of the reaper and the socket's own
    timeout (set to the time left) fires first is a race: either is a correct timeout."""
    assert_down(result, status, Reason.TIMEOUT, path)
    assert f"deadline of {DEADLINE:g}s" in result.message or "timed out" in result.message, result.message


# -- happy path ----------------------------------------------------------------------------


def test_poll_uses_one_connection_and_closes_it(client, serve, target, server_cert):
    server = serve()

    result = poll_target(client, target(server.url))

    assert result.status is Status.UP and result.reason is None, result.message
    assert result.agent.version.number == "0.7.2"
    assert (result.datastore.cluster_id, result.datastore.node_id) == (CLUSTER, "mongo1:27017")
    assert [(s.id, s.role, s.commit_offset.value) for s in result.shards] == [("rs0", "primary", 1700000000)]
    leaf = x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    assert result.cert_not_after == leaf.not_valid_after_utc.timestamp()

    assert server.accepted == 1
    conn = server.connection(0)
    assert conn.handshake_error is None and conn.tls_version is not None
    assert [r.path for r in conn.requests] == [AGENT_INFO, DATASTORE_INFO, SHARDS]
    assert all(r.headers["user-agent"].startswith("replicante-poller/") for r in conn.requests)
    assert conn.eof.wait(5), "the poll left its connection open"
    assert not conn.reset_by_peer


def test_polls_go_through_session_send_one_connection_each_and_load_no_ca(client, serve, target, monkeypatch):
    """requests carries every GET (Session.send, the PollAdapter), each poll dials once, and
    once the shared SSLContext exists no CA file, default store or certifi bundle is read."""
    server = serve()
    agent = target(server.url)
    assert poll_target(client, agent).ok  # builds the target's SSLContext: its one CA load
    sends: list[dict[str, Any]] = []
    real_send = requests.Session.send

    def counting_send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        sends.append(dict(kwargs, url=request.url))
        return real_send(session, request, **kwargs)

    loads: list[str] = []
    for name in ("load_verify_locations", "load_default_certs", "set_default_verify_paths"):
        original = getattr(ssl.SSLContext, name)
        monkeypatch.setattr(ssl.SSLContext, name,
                            lambda self, *a, _name=name, _original=original, **k: (loads.append(_name), _original(self, *a, **k))[1])
    monkeypatch.setattr(certifi, "where", lambda: loads.append("certifi") or pytest.fail("certifi read"))
    monkeypatch.setattr(requests.Session, "send", counting_send)

    results = [poll_target(client, agent) for _ in range(5)]

    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    assert loads == []
    assert [s["url"] for s in sends] == [server.url + p for p in (AGENT_INFO, DATASTORE_INFO, SHARDS)] * 5
    assert all(s["stream"] and not s["allow_redirects"] and s["proxies"] == {} for s in sends)
    assert server.accepted == 6


@pytest.mark.parametrize("agent_handlers", ["healthy", "failing"])
def test_every_poll_closes_its_connection_itself(client, serve, target, agent_handlers):
    """Closed by the transport when the poll ends, success or failure, never left for the
    garbage collector (which warns `unclosed socket`, and only closes when it gets to it)."""
    handlers = healthy() if agent_handlers == "healthy" else healthy(datastore=respond(500))
    server = serve(handlers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.disable()  # nothing may rely on a collection happening
        try:
            result = poll_target(client, target(server.url))
            unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        finally:
            gc.enable()

    assert result.ok is (agent_handlers == "healthy"), result.message
    assert unclosed == []
    assert server.connection(0).eof.wait(5)


# -- TLS -----------------------------------------------------------------------------------


def test_certificate_from_another_ca_is_tls_verify(client, serve, target):
    stranger = trustme.CA(organization_name="someone else").issue_cert("127.0.0.1")
    server = serve(context=server_context(stranger))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.TLS_VERIFY, "certificate verification failed", "issuer")
    assert server.requests == []


def test_certificate_for_another_name_is_tls_verify(client, serve, target, agent_ca):
    server = serve(context=server_context(agent_ca.issue_cert("agent.example.org")))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.TLS_VERIFY, "certificate verification failed", "127.0.0.1")
    assert server.requests == []


def test_missing_client_certificate_is_tls_handshake(client, serve, target, agent_ca, server_cert):
    server = serve(context=server_context(server_cert, client_ca=agent_ca))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.TLS_HANDSHAKE, "TLS failed", "CERTIFICATE_REQUIRED")
    assert server.requests == []
    assert server.connection(0).handshake_done.wait(5) and server.connection(0).handshake_error is not None


def test_client_certificate_gives_mutual_tls(client, serve, target, agent_ca, server_cert, tls_dir):
    server = serve(context=server_context(server_cert, client_ca=agent_ca))
    identity = agent_ca.issue_cert("poller.example.org")
    identity.cert_chain_pems[0].write_to_path(str(tls_dir / "client.pem"))
    identity.private_key_pem.write_to_path(str(tls_dir / "client.key"))

    result = poll_target(client, target(server.url, client_cert=str(tls_dir / "client.pem"),
                                        client_key=str(tls_dir / "client.key")))

    assert result.status is Status.UP, result.message
    assert server.connection(0).client_cert == x509.load_pem_x509_certificate(
        identity.cert_chain_pems[0].bytes()).public_bytes(serialization.Encoding.DER)


def test_pin_mismatch_is_tls_pin(client, serve, target, agent_ca, server_cert):
    server = serve()
    other_pin = spki_pin(agent_ca.issue_cert("127.0.0.1"))

    result = poll_target(client, target(server.url, pins=frozenset({other_pin})))

    assert_down(result, Status.AGENT_DOWN, Reason.TLS_PIN, spki_pin(server_cert), "no configured pin")
    assert server.requests == []


def test_matching_pin_succeeds(client, serve, target, server_cert, agent_ca):
    server = serve()
    pins = frozenset({spki_pin(server_cert), spki_pin(agent_ca.issue_cert("127.0.0.1"))})

    result = poll_target(client, target(server.url, pins=pins))

    assert result.status is Status.UP, result.message


def test_min_version_above_server_maximum_is_tls_handshake(client, serve, target, server_cert):
    server = serve(context=server_context(server_cert, maximum_version=ssl.TLSVersion.TLSv1_2))

    result = poll_target(client, target(server.url, min_version="1.3"))

    assert_down(result, Status.AGENT_DOWN, Reason.TLS_HANDSHAKE, "TLS failed", "protocol")
    assert server.requests == []


# -- one deadline for the whole poll -------------------------------------------------------


def test_headers_dripping_past_the_deadline_is_timeout(client, serve, target):
    server = serve(healthy(agent=drip(response_bytes(200, json.dumps(AGENT_DOC).encode()), 0.2)))

    result, elapsed = timed_poll(client, target(server.url))

    assert_timeout(result, Status.AGENT_DOWN, AGENT_INFO)
    assert elapsed < DEADLINE + SLACK


def test_body_dripping_past_the_deadline_is_timeout(client, serve, target):
    body = json.dumps(DATASTORE_DOC).encode()
    headers = head(200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    server = serve(healthy(datastore=then_drip(headers, body, 0.2)))

    result, elapsed = timed_poll(client, target(server.url))

    assert_timeout(result, Status.NODE_DOWN, DATASTORE_INFO)
    assert elapsed < DEADLINE + SLACK


def test_close_delimited_body_dripping_past_the_deadline_is_timeout(client, serve, target):
    """A body without Content-Length ends when the connection does (RFC 9112 6.3): the
    reaper's shutdown must not pass for the end of the body."""
    body = json.dumps(SHARDS_DOC).encode()
    headers = head(200, [("Content-Type", "application/json"), ("Connection", "close")])
    server = serve(healthy(shards=then_drip(headers, body, 0.2)))

    result, elapsed = timed_poll(client, target(server.url))

    assert_timeout(result, Status.NODE_DOWN, SHARDS)
    assert elapsed < DEADLINE + SLACK


def test_server_that_never_starts_tls_is_timeout_not_connect_timeout(client, serve, target):
    server = serve(context=None)

    result, elapsed = timed_poll(client, target(server.url))

    assert_timeout(result, Status.AGENT_DOWN, AGENT_INFO)
    assert elapsed < DEADLINE + SLACK
    assert server.accepted == 1
    assert server.connection(0).eof.wait(5)


# -- bodies --------------------------------------------------------------------------------


def test_gzip_bomb_is_too_large_after_decompression(client, serve, target, gzip_bomb):
    assert len(gzip_bomb) < 256 * 1024  # the compressed size passes the Content-Length check
    bomb = respond(200, gzip_bomb, headers=[("Content-Encoding", "gzip")])
    server = serve(healthy(agent=bomb))

    result, elapsed = timed_poll(client, target(server.url, max_body=1024 * 1024))

    # Inflating 100 MB would take longer than the deadline: too_large (not timeout) is "fast".
    assert_down(result, Status.AGENT_DOWN, Reason.TOO_LARGE, "1048576 byte cap", "after decompression")
    assert elapsed < DEADLINE


def test_content_length_over_cap_is_too_large(client, serve, target):
    announce = head(200, [("Content-Type", "application/json"), ("Content-Length", str(10 * 1024 * 1024))])
    server = serve(healthy(agent=send_then_hang(announce)))

    result, elapsed = timed_poll(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.TOO_LARGE, "10485760 bytes", f"{CAP} byte cap")
    assert elapsed < DEADLINE


def test_chunked_body_growing_past_cap_is_too_large(client, serve, target):
    server = serve(healthy(datastore=chunked(b" " * 8192, count=1024)))

    result, elapsed = timed_poll(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.TOO_LARGE, DATASTORE_INFO, f"{CAP} byte cap")
    assert elapsed < DEADLINE


def kafka_shards(partitions: int) -> dict:
    """The shards answer of a Kafka broker with `partitions` partitions, as real agents shape it."""
    return {"shards": [{"id": f"orders-{n}", "role": "primary" if n % 3 == 0 else "secondary",
                        "commit_offset": {"unit": {"unit": "messages"}, "value": 1_000_000 + n},
                        "lag": None if n % 3 == 0 else {"unit": {"unit": "messages"}, "value": n % 7}}
                       for n in range(partitions)]}


def test_shards_of_a_20000_partition_broker_are_up_under_the_default_caps(client, serve, ca_file):
    shards = json.dumps(kafka_shards(20_000)).encode()
    assert len(shards) > 2 * 1024 * 1024  # far over the 64 KiB cap of the other answers
    server = serve(healthy(shards=respond(200, shards)))
    agent = Target(CLUSTER, server.url, None, PollSettings(interval=10.0, timeout=5.0), TlsSettings(ca_file=ca_file))

    result = poll_target(client, agent)

    assert result.status is Status.UP, result.message
    assert len(result.shards) == 20_000


def test_the_shards_answer_has_its_own_cap(client, serve, ca_file):
    server = serve(healthy(shards=respond(200, json.dumps(kafka_shards(20_000)).encode())))
    agent = Target(CLUSTER, server.url, None, PollSettings(interval=10.0, timeout=5.0, max_shards_body=1024 * 1024),
                   TlsSettings(ca_file=ca_file))

    result = poll_target(client, agent)

    assert_down(result, Status.NODE_DOWN, Reason.TOO_LARGE, SHARDS, "1048576 byte")


# -- HTTP ----------------------------------------------------------------------------------


def test_redirect_is_http_status_and_never_followed(client, serve, target):
    elsewhere = serve()
    server = serve(healthy(agent=respond(302, b"", headers=[("Location", elsewhere.url + AGENT_INFO)])))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, AGENT_INFO, "HTTP 302")
    assert elsewhere.accepted == 0


def test_http_500_is_http_status_with_its_status(client, serve, target):
    error = {"error": "boom", "layers": ["boom"], "trace": None, "variant": None}
    server = serve(healthy(agent=json_response(error, status=500)))

    with client.connect(target(server.url)) as conn:
        failure = conn.get(AGENT_INFO)

    assert isinstance(failure, Failure)
    assert (failure.reason, failure.status, failure.retry_after) == (Reason.HTTP_STATUS, 500, None)
    assert "HTTP 500" in failure.message and AGENT_INFO in failure.message


def test_http_503_carries_retry_after(client, serve, target):
    server = serve(healthy(shards=respond(503, b"", headers=[("Retry-After", "7")])))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.HTTP_STATUS, SHARDS, "HTTP 503")
    assert result.retry_after == 7


def test_wrong_content_type_is_content_type(client, serve, target):
    server = serve(healthy(datastore=respond(200, b"<html></html>", content_type="text/html; charset=utf-8")))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.CONTENT_TYPE, DATASTORE_INFO, "text/html")


def test_invalid_json_is_invalid_json(client, serve, target):
    server = serve(healthy(agent=respond(200, b'{"version": {"checkout": ')))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.INVALID_JSON, AGENT_INFO, "not JSON")


def test_schema_error_names_its_path(client, serve, target):
    bad = {"shards": [{"id": "rs0", "role": "leader", "commit_offset": None, "lag": None}]}
    server = serve(healthy(shards=json_response(bad)))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.SCHEMA, SHARDS, "$.shards[0].role")


# -- the network ---------------------------------------------------------------------------


def test_connection_refused_is_connect(client, target):
    result = poll_target(client, target(f"https://127.0.0.1:{closed_port()}"))

    assert_down(result, Status.AGENT_DOWN, Reason.CONNECT, "refused")


def test_tcp_connect_that_never_completes_is_connect_timeout(client, target):
    """A listener whose accept queue is full drops SYNs: the TCP connect itself hangs."""
    with Blackhole() as hole:
        result, elapsed = timed_poll(client, target(f"https://127.0.0.1:{hole.port}", timeout=0.5))

    assert_down(result, Status.AGENT_DOWN, Reason.CONNECT_TIMEOUT, "TCP connect", "1 of 1 address of 127.0.0.1 tried")
    assert elapsed < 0.5 + SLACK


def test_unknown_host_is_dns(client, target):
    result = poll_target(client, target("https://nonexistent.invalid:8443"))

    assert_down(result, Status.AGENT_DOWN, Reason.DNS, "name resolution of nonexistent.invalid failed")


def test_reset_mid_body_is_connect(client, serve, target):
    body = json.dumps(DATASTORE_DOC).encode()
    partial = head(200, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]) + body[:20]
    server = serve(healthy(datastore=send_then_reset(partial)))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.CONNECT, DATASTORE_INFO, "connection broken")


# -- one connection per poll, broken HTTP ----------------------------------------------------


def test_agent_closing_between_gets_fails_the_poll_without_a_second_connection(client, serve, target):
    server = serve(healthy(agent=send_then_close(response_bytes(200, json.dumps(AGENT_DOC).encode()))))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.CONNECT, DATASTORE_INFO, "closed the connection")
    assert server.accepted == 1


def test_connection_close_answer_fails_the_next_get_without_a_second_connection(client, serve, target):
    server = serve(healthy(datastore=respond(200, json.dumps(DATASTORE_DOC).encode(), headers=[("Connection", "close")])))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.NODE_DOWN, Reason.CONNECT, SHARDS, "closed the connection")
    assert server.accepted == 1


@pytest.mark.parametrize("answer, fragment", [
    pytest.param(json.dumps(AGENT_DOC).encode(), "HTTP/0.9", id="http-0.9"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n", "over 64 KiB", id="100kb-header-line"),
    pytest.param(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n",
                 "more than 100 headers", id="10000-headers"),
    pytest.param(head(200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
                 + b"zz\r\n{}\r\n0\r\n\r\n", "chunked", id="bad-chunk-size"),
])
def test_broken_http_is_protocol(client, serve, target, answer, fragment):
    server = serve(healthy(agent=send_then_close(answer)))

    result = poll_target(client, target(server.url))

    assert_down(result, Status.AGENT_DOWN, Reason.PROTOCOL, AGENT_INFO, fragment)


def test_environment_changes_nothing(client, serve, target, monkeypatch, tmp_path):
    bogus = tmp_path / "bogus-ca.pem"
    bogus.write_text("not a certificate\n")
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(bogus))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = serve()

    result = poll_target(client, target(server.url))

    assert result.status is Status.UP, result.message
    assert server.accepted == 1


# -- the deadline reaper -------------------------------------------------------------------


def test_reaper_wakes_a_blocked_recv_at_the_deadline(reaper):
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(10)  # a safety net only: the reaper must wake the recv long before
        watch = reaper.watch(0.5)
        watch.attach(left)

        data = left.recv(1)
        woke = time.monotonic()

        assert data == b""
        assert watch.expired and watch.connected
        assert woke >= watch.deadline
        watch.close()


def test_reaper_leaves_a_closed_watch_alone(reaper):
    left, right = socket.socketpair()
    probe_left, probe_right = socket.socketpair()
    with left, right, probe_left, probe_right:
        watch = reaper.watch(0.3)
        watch.attach(left)
        watch.close()
        # A later watch is a barrier: once the reaper expired it, it has handled the first.
        probe = reaper.watch(0.5)
        probe.attach(probe_left)
        probe_left.settimeout(10)
        assert probe_left.recv(1) == b"" and probe.expired
        probe.close()

        assert not watch.expired
        right.sendall(b"x")
        left.sendall(b"y")
        assert (left.recv(1), right.recv(1)) == (b"x", b"y")
