"""Replicante Core's HTTP discovery protocol against a real HTTPS discovery server.

The server pages its answer with a cursor, as the protocol says (replicante-io/replicore,
`cluster/discovery` HTTP backend): the first request carries `"cursor": null`, the next
ones the cursor of the previous answer, until an answer's cursor is null.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme

from replicante_poller.agentsim import NodeSpec
from replicante_poller.config import DiscoverySettings, PollSettings, TlsSettings, parse_config
from replicante_poller.errors import ConfigError
from replicante_poller.polling.httpdiscovery import HttpDiscovery, HttpDiscoveryThread

from harness import config_text
from tls_servers import Exchange, TlsServer, response_bytes, server_context

TOKEN = "discovery-token-0123456789"


class DiscoveryServer:
    """Answers POST /discover from `pages` (a list of answers, chosen by cursor) and records
    every request body; `fail` makes it answer 500."""

    def __init__(self, pages: dict[Any, dict]):
        self.pages, self.fail = pages, False
        self.seen: list[tuple[dict, str]] = []
        self.changed = threading.Condition()

    def __call__(self, ex: Exchange) -> bool:
        request = json.loads(ex.rfile.read(int(ex.request.headers.get("content-length", "0"))))
        with self.changed:
            self.seen.append((request, ex.request.headers.get("authorization", "")))
            self.changed.notify_all()
        if self.fail:
            return ex.send(response_bytes(500, b'{"error":"down"}'))
        return ex.send(response_bytes(200, json.dumps(self.pages[request.get("cursor")]).encode()))

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen) >= count, timeout), f"{len(self.seen)} requests"


@pytest.fixture(scope="module")
def disco_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, disco_ca: trustme.CA) -> dict[str, Path]:
    ca = tmp_path / "disco-ca.pem"
    disco_ca.cert_pem.write_to_path(str(ca))
    token = tmp_path / "disco-token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, TOKEN.encode())
    os.close(fd)
    return {"ca": ca, "token": token}


@pytest.fixture
def serve(disco_ca: trustme.CA) -> Iterator[Callable[[DiscoveryServer], TlsServer]]:
    servers: list[TlsServer] = []

    def start(handler: DiscoveryServer) -> TlsServer:
        server = TlsServer(server_context(disco_ca.issue_cert("127.0.0.1")), {"/discover": handler}).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def settings(url: str, files: dict[str, Path], **extra: Any) -> DiscoverySettings:
    return DiscoverySettings(http=url + "/discover", http_ca_file=str(files["ca"]), http_token_file=str(files["token"]),
                             http_body='{"region":"eu"}', http_timeout=5.0, **extra)


TWO_PAGES = {
    None: {"clusters": [{"cluster_id": "mongo-rs", "display_name": "Orders", "nodes": ["https://m1:37017"]}],
           "cursor": "page-2"},
    "page-2": {"clusters": [{"cluster_id": "kafka", "nodes": [{"agent_address": "https://k1:9000", "node_id": "k1",
                                                               "node_class": "big", "node_group": None}]}],
               "cursor": None},
}


def test_every_page_is_read_with_the_configured_body_the_cursor_and_the_token(serve, files):
    handler = DiscoveryServer(TWO_PAGES)
    server = serve(handler)

    clusters = HttpDiscovery(settings(server.url, files), PollSettings(), TlsSettings()).fetch()

    assert [(c.cluster_id, c.agents, c.display_name) for c in clusters] == [
        ("mongo-rs", ("https://m1:37017",), "Orders"), ("kafka", ("https://k1:9000",), None)]
    assert [request for request, _ in handler.seen] == [{"region": "eu", "cursor": None},
                                                        {"region": "eu", "cursor": "page-2"}]
    assert {auth for _, auth in handler.seen} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("answer, key", [
    ({"cursor": None}, "clusters"),
    ({"clusters": {}, "cursor": None}, "clusters"),
    ({"clusters": [], "cursor": 7}, "cursor"),
    ({"clusters": [{"cluster_id": "a", "nodes": ["http://a:1"]}], "cursor": None}, "nodes"),
])
def test_a_wrong_answer_is_an_error_naming_the_server_and_the_key(serve, files, answer, key):
    server = serve(DiscoveryServer({None: answer}))

    with pytest.raises(ConfigError) as info:
        HttpDiscovery(settings(server.url, files), PollSettings(), TlsSettings()).fetch()

    assert server.url in str(info.value) and info.value.key == key


def test_a_failing_server_is_an_error_with_the_status(serve, files):
    handler = DiscoveryServer(TWO_PAGES)
    handler.fail = True
    server = serve(handler)

    with pytest.raises(ConfigError, match="HTTP 500"):
        HttpDiscovery(settings(server.url, files), PollSettings(), TlsSettings()).fetch()


def test_the_server_certificate_is_verified_with_the_configured_ca(serve, files, tmp_path):
    server = serve(DiscoveryServer(TWO_PAGES))
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    wrong = DiscoverySettings(http=server.url + "/discover", http_ca_file=str(other), http_timeout=5.0)

    with pytest.raises(ConfigError, match="certificate verification failed"):
        HttpDiscovery(wrong, PollSettings(), TlsSettings()).fetch()


def test_a_failed_round_keeps_the_last_answer_and_only_changes_are_handed_on(serve, files):
    handler = DiscoveryServer(TWO_PAGES)
    server = serve(handler)
    changes: list[tuple] = []
    failures: list[bool] = []
    rounds = HttpDiscoveryThread(HttpDiscovery(settings(server.url, files), PollSettings(), TlsSettings()),
                                 lambda: 60.0, changes.append, failures.append)

    rounds.round()
    rounds.round()  # the same answer: nothing new
    handler.fail = True
    rounds.round()
    handler.fail = False
    handler.pages = {None: {"clusters": [{"cluster_id": "zk", "nodes": ["https://z1:1"]}], "cursor": None}}
    rounds.round()

    assert [[c.cluster_id for c in answer] for answer in changes] == [["mongo-rs", "kafka"], ["zk"]]
    assert failures == [False, False, True, False]


def test_the_service_polls_what_the_http_discovery_lists_and_follows_its_changes(
        serve, files, start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "n2")])
    (_, first), (_, second) = sim.agents
    handler = DiscoveryServer({None: {"clusters": [{"cluster_id": "rs", "nodes": [first, second]}], "cursor": None}})
    server = serve(handler)
    text = config_text([], pki["ca"], interval="1s", timeout="500ms", extra=(
        f"[discovery]\nrefresh = 200ms\nhttp = {server.url}/discover\nhttp_ca_file = {files['ca']}\n"
        f"http_token_file = {files['token']}\n"))
    service = start_service(text)

    assert service.state.wait_for(lambda views: {v.target.url for v in views if v.result} == {first, second}, 15)
    handler.fail = True  # a failing server changes nothing
    handler.wait_for_requests(len(handler.seen) + 2)
    assert {v.target.url for v in service.snapshot()} == {first, second}
    handler.pages = {None: {"clusters": [{"cluster_id": "rs", "nodes": [second]}], "cursor": None}}
    handler.fail = False

    assert service.state.wait_for(lambda views: {v.target.url for v in views} == {second}, 15)


def test_check_config_asks_the_http_discovery(serve, files, pki, tmp_path):
    server = serve(DiscoveryServer(TWO_PAGES))
    config = parse_config(config_text([], pki["ca"], extra=(
        f"[discovery]\nhttp = {server.url}/discover\nhttp_ca_file = {files['ca']}\n")), base_dir=tmp_path)
    from replicante_poller.service import check_resources

    assert {t.cluster_id for t in check_resources(config)} == {"mongo-rs", "kafka"}


def test_action_submit_knows_the_agents_of_the_http_discovery(serve, files, pki, tmp_path):
    """The CLI journals actions for agents `run` polls, HTTP-discovered ones included; an agent
    nobody lists is refused by name, and a discovery server that cannot be asked says so."""
    import subprocess
    import sys

    from replicante_poller.actions.signing import generate_keypair

    generate_keypair(str(tmp_path / "core"))
    handler = DiscoveryServer(TWO_PAGES)
    server = serve(handler)
    config = tmp_path / "poller.ini"
    config.write_text(config_text([], pki["ca"], extra=(
        f"[discovery]\nhttp = {server.url}/discover\nhttp_ca_file = {files['ca']}\n"
        f"[actions]\nenabled = true\nsigning_key = {tmp_path / 'core.key'}\njournal = {tmp_path / 'actions.db'}\n")))

    def submit(agent: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "replicante_poller", "action", "submit", "--config", str(config),
                               "--agent", agent, "--kind", "agent.replicante.io/test.success"],
                              capture_output=True, text=True, timeout=60)

    listed = submit("https://k1:9000")  # on the discovery's second page
    assert listed.returncode == 0, listed.stderr
    unknown = submit("https://nobody:9000")
    assert unknown.returncode != 0 and "https://nobody:9000" in unknown.stderr, unknown.stderr
    handler.fail = True
    down = submit("https://k1:9000")
    assert down.returncode == 2 and "HTTP 500" in down.stderr and "Traceback" not in down.stderr, down.stderr
