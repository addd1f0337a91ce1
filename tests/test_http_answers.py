"""How HTTP answers become statuses and reasons: the real Session and adapter, no sockets.

`responses` stands in for `PollAdapter.send`, the one method of requests' extension point
that touches the network; everything above it is the product: `Session.send`, the
adapter's response building, the capped and decompressing body read, the status and
Content-Type checks, Retry-After, validation and the status rules of `poll_target`.
Transport behaviour that needs a wire (TLS, deadlines, connections) is in
test_transport.py against real servers.
"""
from __future__ import annotations

import email.utils
from pathlib import Path
import gzip
import json
import logging
import queue
import time
from typing import Any, Iterator, Optional

import pytest
import responses

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.dialer import Dialer
from replicante_poller.polling.discovery import Target
from replicante_poller.web.metrics import PollerMetrics, new_registry, sample
from replicante_poller.agentapi import NODE_INFO, SHARDS_INFO, STORE_INFO
from replicante_poller.polling.poll import AGENT_INFO, DATASTORE_INFO, SHARDS, PollResult, poll_target
from replicante_poller.polling.pool import WorkerPool
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.scheduler import Due
from replicante_poller.polling.tls import TlsContexts
from replicante_poller.polling.transport import AgentClient, Transport, new_session

URL = "https://mongo1.test:37017"
CAP = 64 * 1024
AGENT = {"version": {"checkout": "8f3c2a1", "number": "0.7.2", "taint": "not tainted"}}
DATASTORE = {"cluster_display_name": "Orders", "cluster_id": "orders", "kind": "MongoDB", "node_id": "mongo1:27017",
             "version": "6.0.4"}
SHARDS_DOC = {"shards": [{"id": "rs0", "role": "primary", "commit_offset": {"unit": "seconds", "value": 1700000000},
                          "lag": None}]}
JSON = "application/json"


def no_lookup(host: str, port: int) -> list:
    raise AssertionError(f"{host} looked up: responses must answer before any connection")


@pytest.fixture
def agent() -> Iterator[responses.RequestsMock]:
    """The agent's answers, registered per test; unregistered URLs raise ConnectionError."""
    with responses.RequestsMock(target="replicante_poller.polling.transport.PollAdapter.send",
                                assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def transport(reaper) -> Transport:
    return Transport(TlsContexts(), reaper=reaper, dialer=Dialer(1, lookup=no_lookup))


@pytest.fixture
def client(transport: Transport) -> Iterator[AgentClient]:
    agent_client = transport.client()
    yield agent_client
    agent_client.close()


def target(max_body: int = CAP, api: str = "auto", cluster_id: str = "orders") -> Target:
    return Target(cluster_id, URL, None, PollSettings(interval=10.0, timeout=2.0, max_body=max_body, api=api),
                  TlsSettings())


def answer(mock: responses.RequestsMock, path: str, body: Any = None, status: int = 200,
           content_type: Optional[str] = JSON, headers: Optional[dict[str, str]] = None) -> None:
    raw = body if isinstance(body, (bytes, Exception)) else json.dumps(body).encode()
    mock.add(responses.GET, URL + path, body=raw, status=status, content_type=content_type, headers=headers or {})


def healthy(mock: responses.RequestsMock, **replace: dict) -> None:
    """A healthy legacy agent, with some paths answered otherwise (given as answer() keyword
    sets); the other generation's paths answer an empty 404, as on a real legacy agent."""
    answer(mock, NODE_INFO, b"", status=404, content_type=None)
    for name, path, document in (("agent", AGENT_INFO, AGENT), ("datastore", DATASTORE_INFO, DATASTORE),
                                 ("shards", SHARDS, SHARDS_DOC)):
        if name in replace:
            answer(mock, path, **replace[name])
        else:
            answer(mock, path, document)


def down(result: PollResult, status: Status, reason: Reason, *fragments: str) -> None:
    assert (result.status, result.reason) == (status, reason), result.message
    for fragment in fragments:
        assert fragment in result.message, result.message


def test_a_healthy_agent_is_up_with_its_documents(agent, client):
    healthy(agent)

    result = poll_target(client, target())

    assert result.status is Status.UP and result.reason is None, result.message
    assert result.agent.version.number == "0.7.2"
    assert result.datastore.node_id == "mongo1:27017"
    assert [s.id for s in result.shards] == ["rs0"]
    assert [call.request.url for call in agent.calls] == [URL + AGENT_INFO, URL + DATASTORE_INFO, URL + SHARDS]


def test_every_request_says_who_it_is_and_what_it_accepts(agent, client):
    healthy(agent)

    poll_target(client, target())

    for call in agent.calls:
        headers = call.request.headers
        assert headers["User-Agent"].startswith("replicante-poller/")
        assert headers["Accept"] == JSON
        assert "gzip" in headers["Accept-Encoding"]


@pytest.mark.parametrize("path, status, reason_status", [
    (AGENT_INFO, 404, Status.AGENT_DOWN),
    (AGENT_INFO, 500, Status.AGENT_DOWN),
    (DATASTORE_INFO, 500, Status.NODE_DOWN),
    (SHARDS, 502, Status.NODE_DOWN),
])
def test_an_error_status_is_http_status_of_the_right_side(agent, client, path, status, reason_status):
    name = {AGENT_INFO: "agent", DATASTORE_INFO: "datastore", SHARDS: "shards"}[path]
    healthy(agent, **{name: {"body": b"", "status": status, "content_type": None}})

    result = poll_target(client, target())

    down(result, reason_status, Reason.HTTP_STATUS, path, f"HTTP {status}")


def test_a_redirect_is_http_status_and_never_followed(agent, client):
    healthy(agent, agent={"body": b"", "status": 302, "headers": {"Location": "https://elsewhere.test/"}})

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 302")
    assert len(agent.calls) == 1


def test_503_with_retry_after_seconds_defers(agent, client):
    healthy(agent, agent={"body": {"error": "busy"}, "status": 503, "headers": {"Retry-After": "120"}})

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 503")
    assert result.retry_after == 120.0


def test_429_with_retry_after_date_defers(agent, client):
    when = email.utils.formatdate(time.time() + 90, usegmt=True)
    healthy(agent, agent={"body": b"", "status": 429, "headers": {"Retry-After": when}})

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 429")
    assert 85 <= result.retry_after <= 91


def test_retry_after_on_other_statuses_is_ignored(agent, client):
    healthy(agent, agent={"body": b"", "status": 500, "headers": {"Retry-After": "120"}})

    assert poll_target(client, target()).retry_after is None


@pytest.mark.parametrize("content_type", ["text/html", "application/jsonp", None])
def test_a_body_that_is_not_json_by_its_content_type_is_content_type(agent, client, content_type):
    healthy(agent, agent={"body": AGENT, "content_type": content_type})

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.CONTENT_TYPE, "not application/json")


def test_json_with_parameters_and_any_case_is_json(agent, client):
    healthy(agent, agent={"body": AGENT, "content_type": "Application/JSON; charset=utf-8"})

    assert poll_target(client, target()).status is Status.UP


def test_a_gzip_body_is_decompressed(agent, client):
    healthy(agent, shards={"body": gzip.compress(json.dumps(SHARDS_DOC).encode()), "headers": {"Content-Encoding": "gzip"}})

    assert poll_target(client, target()).status is Status.UP


def test_a_body_over_the_cap_after_decompression_is_too_large(agent, client):
    bomb = gzip.compress(b" " * (CAP + 1))  # a few hundred bytes on the wire
    healthy(agent, datastore={"body": bomb, "headers": {"Content-Encoding": "gzip"}})

    result = poll_target(client, target())

    down(result, Status.NODE_DOWN, Reason.TOO_LARGE, "after decompression")


def test_a_declared_length_over_the_cap_is_too_large_before_reading(agent, client):
    healthy(agent, datastore={"body": b"{}" + b" " * CAP})

    result = poll_target(client, target())

    down(result, Status.NODE_DOWN, Reason.TOO_LARGE, DATASTORE_INFO, "cap")


def test_broken_compression_is_invalid_json(agent, client):
    healthy(agent, agent={"body": b"not gzip at all", "headers": {"Content-Encoding": "gzip"}})

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.INVALID_JSON, "decoded")


def test_invalid_json_and_wrong_shapes(agent, client):
    healthy(agent, datastore={"body": b'{"cluster_id": '})
    down(poll_target(client, target()), Status.NODE_DOWN, Reason.INVALID_JSON, DATASTORE_INFO)

    agent.reset()
    bad_role = {"shards": [{"id": "rs0", "role": 7, "commit_offset": None, "lag": None}]}
    healthy(agent, shards={"body": bad_role})
    down(poll_target(client, target()), Status.NODE_DOWN, Reason.SCHEMA, "$.shards[0].role")


def test_another_cluster_id_is_cluster_mismatch(agent, client):
    healthy(agent, datastore={"body": dict(DATASTORE, cluster_id="billing")})

    result = poll_target(client, target())

    down(result, Status.NODE_DOWN, Reason.CLUSTER_MISMATCH, "'billing'")


def test_cookies_an_agent_sets_are_never_sent_back(agent, client):
    healthy(agent, agent={"body": AGENT, "headers": {"Set-Cookie": "session=abc; Path=/"}})

    poll_target(client, target())
    poll_target(client, target())

    assert len(agent.calls) == 6
    assert all("Cookie" not in call.request.headers for call in agent.calls)


def test_a_refused_request_is_connect(agent, client):
    answer(agent, AGENT_INFO, AGENT)  # nothing registered for the datastore: responses refuses it

    result = poll_target(client, target())

    down(result, Status.NODE_DOWN, Reason.CONNECT, DATASTORE_INFO)


def test_a_bug_is_internal_logged_with_its_traceback_and_counted(agent, transport, caplog):
    """An exception that is no network or agent failure is ours: the worker's loop logs it
    with a traceback and counts it (README: every `internal` is)."""
    healthy(agent, datastore={"body": RuntimeError("a bug in the product")})
    registry = new_registry()
    metrics = PollerMetrics(registry, lambda: [])
    results: "queue.Queue[object]" = queue.Queue()
    pool = WorkerPool(1, transport, results, metrics)
    pool.start()
    try:
        with caplog.at_level(logging.ERROR):
            assert pool.submit(Due(target(), time.time()))
            result = results.get(timeout=10)
    finally:
        pool.stop(5)

    down(result, Status.AGENT_DOWN, Reason.INTERNAL, "a bug in the product")
    assert sample(registry, "replicante_poller_thread_errors_total", {"thread": "worker"}) == 1
    logged = [r for r in caplog.records if r.exc_info and "a bug in the product" in str(r.exc_info[1])]
    assert logged, caplog.text


def test_the_adapter_refuses_what_would_weaken_or_bypass_the_configured_trust():
    """Fail closed: the adapter never turns verification off, never reads a CA bundle or a
    certificate given per request, never uses a proxy, and never sends outside a poll."""
    session = new_session()
    adapter = session.get_adapter("https://")
    request = AgentClient.prepare("GET", URL, AGENT_INFO, None, None)

    with pytest.raises(RuntimeError, match="outside of a poll"):
        session.send(request)
    with adapter.bind(object()):  # refused before the connection is touched
        for weakening in ({"verify": False}, {"verify": "/etc/ssl/certs/ca-certificates.crt"},
                          {"cert": "/etc/client.pem"}, {"proxies": {"https": "http://127.0.0.1:3128"}}):
            with pytest.raises(ValueError, match="configured SSLContext"):
                session.send(request, **weakening)
    assert set(session.adapters) == {"https://"}  # plain http:// has no adapter at all
    assert session.trust_env is False


# -- the replisdk generation (recorded bodies: tests/data/agents/README.md) -----------------

AGENTS = Path(__file__).parent / "data" / "agents"


def recorded(name: str) -> bytes:
    return (AGENTS / name).read_bytes()


def replisdk_agent(mock: responses.RequestsMock, node: str = "replisdk/info-node.primary.json",
                   shards: str = "replisdk/info-shards.primary.json") -> None:
    """A replisdk agent: its three paths, and an empty 404 on the legacy ones."""
    for path in (AGENT_INFO, DATASTORE_INFO, SHARDS):
        answer(mock, path, b"", status=404, content_type=None)
    answer(mock, NODE_INFO, recorded(node))
    answer(mock, STORE_INFO, recorded("replisdk/info-store.json"))
    answer(mock, SHARDS_INFO, recorded(shards))


def paths_asked(mock: responses.RequestsMock) -> list[str]:
    return [call.request.path_url for call in mock.calls]


def test_auto_learns_a_replisdk_agent_within_one_poll_on_one_connection(agent, client):
    replisdk_agent(agent)

    result = poll_target(client, target(cluster_id="rs0"))

    assert result.status is Status.UP, result.message
    assert result.api == "replisdk"
    assert paths_asked(agent) == [AGENT_INFO, NODE_INFO, STORE_INFO, SHARDS_INFO]
    assert (result.datastore.cluster_id, result.datastore.node_id, result.datastore.kind,
            result.datastore.version) == ("rs0", "mongo-0", "mongo.replica", "6.0.16")
    assert result.agent.version.number == "0.1.0"
    assert result.node_status.to_json() == "HEALTHY"
    assert [(s.id, s.role, s.commit_offset.unit, s.lag) for s in result.shards] == [
        ("mongo-0.rs:27017", "primary", "milliseconds", None)]


def test_a_known_generation_is_asked_first_and_relearned_on_404(agent, client):
    replisdk_agent(agent)

    assert poll_target(client, target(cluster_id="rs0"), known="replisdk").status is Status.UP
    assert paths_asked(agent) == [NODE_INFO, STORE_INFO, SHARDS_INFO]  # no probe once known

    agent.reset()
    healthy(agent)  # the agent was replaced by a legacy one at the same address
    result = poll_target(client, target(), known="replisdk")
    assert (result.status, result.api) == (Status.UP, "legacy"), result.message
    assert paths_asked(agent) == [NODE_INFO, AGENT_INFO, DATASTORE_INFO, SHARDS]


def test_a_configured_generation_never_probes_the_other(agent, client):
    replisdk_agent(agent)

    result = poll_target(client, target(cluster_id="rs0", api="legacy"))

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, AGENT_INFO, "404")
    assert paths_asked(agent) == [AGENT_INFO]


def test_neither_generation_is_agent_down_naming_both_paths(agent, client):
    for path in (AGENT_INFO, NODE_INFO):
        answer(agent, path, b"", status=404, content_type=None)

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, AGENT_INFO, NODE_INFO, "either API generation")
    assert result.api is None


def test_a_first_path_that_answers_at_all_teaches_the_generation(agent, client):
    answer(agent, AGENT_INFO, b"", status=404, content_type=None)
    answer(agent, NODE_INFO, b"<html>", content_type="text/html")

    result = poll_target(client, target())

    down(result, Status.AGENT_DOWN, Reason.CONTENT_TYPE, NODE_INFO)
    assert result.api == "replisdk"


def test_a_replisdk_node_unavailable_is_node_down_without_asking_further(agent, client):
    replisdk_agent(agent, node="replisdk/info-node.unavailable.json")

    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")

    down(result, Status.NODE_DOWN, Reason.NODE_UNAVAILABLE, "UNAVAILABLE")
    assert result.node_status.status == "UNAVAILABLE" and result.agent is not None
    assert paths_asked(agent) == [NODE_INFO]


def test_other_node_statuses_are_data_not_failures(agent, client):
    replisdk_agent(agent, node="replisdk/info-node.unknown-status.json", shards="replisdk/info-shards.rollback.json")

    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")

    assert result.status is Status.UP, result.message
    assert result.node_status.to_json() == {"UNKNOWN": "ARBITER"}
    assert [(s.role, s.role_detail) for s in result.shards] == [("unknown", "ROLLBACK"), ("recovering", None)]


def test_a_replisdk_error_answer_is_the_node_failing_with_the_agents_message(agent, client):
    answer(agent, NODE_INFO, recorded("replisdk/error.store-down.json"), status=500)

    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")

    down(result, Status.NODE_DOWN, Reason.HTTP_STATUS, "HTTP 500", "get replica set status command failed",
         "Server selection timeout")


def test_a_replisdk_500_without_its_error_body_is_the_agent_failing(agent, client):
    answer(agent, NODE_INFO, b"<html>bad gateway</html>", status=502, content_type="text/html")

    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")

    down(result, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 502")


def test_replisdk_store_and_shards_failures_are_node_down(agent, client):
    replisdk_agent(agent)
    agent.replace(responses.GET, URL + STORE_INFO, body=recorded("replisdk/error.store-down.json"), status=500)

    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")
    down(result, Status.NODE_DOWN, Reason.HTTP_STATUS, STORE_INFO, "command failed")

    agent.reset()
    replisdk_agent(agent, shards="replisdk/info-shards.primary.json")
    agent.replace(responses.GET, URL + SHARDS_INFO, json={"shards": [{"id": "x", "role": "primary",
                                                                      "commit_offset": None, "lag": None}]})
    result = poll_target(client, target(cluster_id="rs0"), known="replisdk")
    down(result, Status.NODE_DOWN, Reason.SCHEMA, "$.shards[0].role", '"Primary"')


def test_a_replisdk_agent_of_another_cluster_is_cluster_mismatch(agent, client):
    replisdk_agent(agent)

    result = poll_target(client, target(cluster_id="orders"), known="replisdk")

    down(result, Status.NODE_DOWN, Reason.CLUSTER_MISMATCH, "'rs0'", "'orders'")
    assert result.datastore.node_id == "mongo-0"
