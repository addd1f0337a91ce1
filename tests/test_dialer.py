"""Resolution and connect inside the poll deadline (DESIGN section 3), with real sockets.

The lookups are stubs (a resolver that never answers, a name with several addresses);
every connect is a real TCP connect on loopback: to a TLS agent, to a closed port, or to
a `Blackhole` whose SYNs are dropped. The real system resolver behind a DNS server that
never answers is tested in a network namespace (test_netns.py).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Iterator

import pytest
import trustme

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.deadlines import DeadlineReaper
from replicante_poller.polling.dialer import DialFailure, Dialer
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.poll import PollResult, poll_target
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.tls import TlsContexts
from replicante_poller.polling.transport import Transport

from blackhole import Blackhole
from tls_servers import TlsServer, closed_port, json_response, server_context

SLACK = 1.0
NAME = "agent.test"
AGENT = {"version": {"checkout": "8f3c2a1", "number": "0.7.2", "taint": "not tainted"}}
DATASTORE = {"cluster_display_name": None, "cluster_id": "c1", "kind": "MongoDB", "node_id": "n1", "version": "6.0"}
SHARDS = {"shards": []}


def addresses(*hosts: str, port: int) -> list[tuple]:
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port)) for host in hosts]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("dialer") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def agent(ca: trustme.CA) -> Iterator[TlsServer]:
    """A healthy agent on 127.0.0.1 whose certificate names agent.test."""
    handlers = {"/api/unstable/info/agent": json_response(AGENT), "/api/unstable/info/datastore": json_response(DATASTORE),
                "/api/unstable/shards": json_response(SHARDS)}
    with TlsServer(server_context(ca.issue_cert(NAME)), handlers) as server:
        yield server


@pytest.fixture
def poll(reaper: DeadlineReaper, ca_file: str) -> Callable[..., tuple[PollResult, float]]:
    """Poll https://agent.test:PORT once through a Dialer with the given stub lookup."""

    def run(lookup: Callable[[str, int], list], port: int, timeout: float = 1.0) -> tuple[PollResult, float]:
        transport = Transport(TlsContexts(), reaper=reaper, dialer=Dialer(2, lookup=lookup))
        target = Target("c1", f"https://{NAME}:{port}", None, PollSettings(interval=10.0, timeout=timeout),
                        TlsSettings(ca_file=ca_file))
        client = transport.client()
        t0 = time.monotonic()
        try:
            return poll_target(client, target), time.monotonic() - t0
        finally:
            client.close()

    return run


def test_a_resolver_that_never_answers_ends_the_poll_at_its_deadline_as_dns(poll):
    release = threading.Event()

    def never(host: str, port: int) -> list:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    try:
        result, elapsed = poll(never, 8443, timeout=0.5)
    finally:
        release.set()

    assert (result.status, result.reason) == (Status.AGENT_DOWN, Reason.DNS), result.message
    assert f"name resolution of {NAME} did not complete within 0.5s" in result.message
    assert 0.5 <= elapsed < 0.5 + SLACK


def test_a_failed_lookup_is_dns_and_names_the_host(poll):
    def unknown(host: str, port: int) -> list:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result, _ = poll(unknown, 8443)

    assert (result.status, result.reason) == (Status.AGENT_DOWN, Reason.DNS), result.message
    assert f"name resolution of {NAME} failed: Name or service not known" in result.message


def test_every_blackholed_address_is_tried_and_the_poll_ends_at_its_deadline(poll):
    with Blackhole("127.0.0.2") as first, Blackhole("127.0.0.3", first.port), Blackhole("127.0.0.4", first.port):
        tried = addresses("127.0.0.2", "127.0.0.3", "127.0.0.4", port=first.port)
        result, elapsed = poll(lambda host, port: tried, first.port, timeout=1.5)

    assert (result.status, result.reason) == (Status.AGENT_DOWN, Reason.CONNECT_TIMEOUT), result.message
    assert f"3 of 3 addresses of {NAME} tried" in result.message
    assert "within 1.5s" in result.message
    assert elapsed < 1.5 + SLACK


def test_a_refused_address_falls_through_to_the_next_one(poll, agent):
    port = int(agent.url.rsplit(":", 1)[1])
    result, _ = poll(lambda host, p: addresses("127.0.0.2", "127.0.0.1", port=port), port)

    assert result.status is Status.UP, result.message
    assert agent.accepted == 1


def test_a_blackholed_first_address_leaves_time_for_the_next_one(poll, agent):
    port = int(agent.url.rsplit(":", 1)[1])
    with Blackhole("127.0.0.2", port):
        result, elapsed = poll(lambda host, p: addresses("127.0.0.2", "127.0.0.1", port=port), port, timeout=2.0)

    assert result.status is Status.UP, result.message
    assert elapsed < 2.0


def test_every_address_refused_is_connect_with_the_count(poll):
    port = closed_port()
    result, _ = poll(lambda host, p: addresses("127.0.0.2", "127.0.0.3", port=port), port)

    assert (result.status, result.reason) == (Status.AGENT_DOWN, Reason.CONNECT), result.message
    assert "refused" in result.message.lower() and f"2 of 2 addresses of {NAME} tried" in result.message


def test_ip_literals_are_never_looked_up():
    def forbidden(host: str, port: int) -> list:
        raise AssertionError(f"looked up {host}")

    dialer = Dialer(1, lookup=forbidden)
    deadline = time.monotonic() + 1

    assert dialer.resolve("127.0.0.1", 443, deadline, 1)[0][4] == ("127.0.0.1", 443)
    assert dialer.resolve("::1", 443, deadline, 1)[0][4][:2] == ("::1", 443)


def test_stuck_lookups_hold_at_most_the_thread_cap_and_abandoned_ones_never_run():
    release = threading.Event()
    calls: list[str] = []

    def lookup(host: str, port: int) -> list:
        calls.append(host)
        if host.startswith("stuck"):
            release.wait(30)
        return addresses("127.0.0.1", port=port)

    dialer = Dialer(2, lookup=lookup)
    failures: list[DialFailure] = []

    def resolve(name: str) -> None:
        try:
            dialer.resolve(name, 443, time.monotonic() + 0.3, 0.3)
        except DialFailure as exc:
            failures.append(exc)

    callers = [threading.Thread(target=resolve, args=(f"stuck{i}.test",)) for i in range(5)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    started = dialer.threads
    release.set()
    # Queued behind the three abandoned lookups: once it is answered, they were skipped.
    answer = dialer.resolve("fresh.test", 443, time.monotonic() + 10, 10)

    assert [f.reason for f in failures] == [Reason.DNS] * 5
    assert started == 2
    assert answer[0][4] == ("127.0.0.1", 443)
    assert len(calls) == 3 and calls[-1] == "fresh.test", calls
