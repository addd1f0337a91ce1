"""The real `poll` and `run` processes with the system resolver, in a network namespace.

Each test runs the poller under `unshare --net --mount` (tests/ns_helper.py): a private
loopback, /etc/resolv.conf pointing at a stub DNS server on 127.0.0.1:53 inside the
namespace, and blackholed addresses made by full accept queues. Nothing leaves the
machine. The resolver is glibc's, as in production: DESIGN section 3 requires the poll
deadline to cover it and every address of a name.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme

from harness import config_text
from process import PollerProcess

HELPER = Path(__file__).with_name("ns_helper.py")
TIMEOUT = 2.0  # the poll deadline in these tests
SLACK = 1.0
URL = "https://agent.test:8443"


@pytest.fixture(scope="module", autouse=True)
def namespaces_work() -> None:
    """These tests need unshare (util-linux) and root; fail loudly, never skip, without them."""
    probe = subprocess.run(["unshare", "--net", "--mount", "--fork", "true"], capture_output=True, text=True)
    assert probe.returncode == 0, f"cannot create network namespaces (root and util-linux needed): {probe.stderr}"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """resolv.conf, hosts and nsswitch.conf for inside the namespace. glibc would wait
    2 x 10 s for a silent server: far longer than the poll deadline."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:10 attempts:2\n")
    (folder / "hosts").write_text("127.0.0.1 localhost\n")
    (folder / "nsswitch.conf").write_text("hosts: files dns\n")
    return folder


@pytest.fixture
def config(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("c1", URL)], ca, interval="3s", timeout=f"{TIMEOUT:g}s"))
    return path


def in_namespace(etc: Path, dns: str, *options: str) -> list[str]:
    return ["unshare", "--net", "--mount", "--fork", "--kill-child", sys.executable, str(HELPER), "--etc", str(etc), "--dns", dns,
            *options, "--"]


def poll(etc: Path, config: Path, dns: str, *options: str) -> tuple[dict, int, float]:
    command = in_namespace(etc, dns, *options) + [sys.executable, "-m", "replicante_poller", "poll", "--config",
                                                  str(config), URL]
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert done.stdout, done.stderr
    return json.loads(done.stdout), done.returncode, elapsed


def test_a_dns_server_that_never_answers_ends_the_poll_at_its_deadline_as_dns(etc, config):
    result, code, elapsed = poll(etc, config, "silent")

    assert code == 1
    assert (result["status"], result["reason"]) == ("AGENT_DOWN", "dns"), result["message"]
    assert f"name resolution of agent.test did not complete within {TIMEOUT:g}s" in result["message"]
    assert TIMEOUT <= result["duration_seconds"] < TIMEOUT + SLACK
    assert elapsed < TIMEOUT + 10  # two interpreters start in there; glibc alone would take 20 s


def test_a_name_whose_addresses_all_blackhole_ends_at_the_deadline_as_connect_timeout(etc, config):
    result, code, _ = poll(etc, config, "answer", "--addresses", "127.0.0.2,127.0.0.3,127.0.0.4",
                           "--blackhole-port", "8443")

    assert code == 1
    assert (result["status"], result["reason"]) == ("AGENT_DOWN", "connect_timeout"), result["message"]
    assert "3 of 3 addresses of agent.test tried" in result["message"]
    assert result["duration_seconds"] < TIMEOUT + SLACK


def test_an_unknown_name_is_dns_at_once(etc, config):
    result, code, _ = poll(etc, config, "answer")  # no --addresses: the name has no record

    assert code == 1
    assert (result["status"], result["reason"]) == ("AGENT_DOWN", "dns"), result["message"]
    assert "name resolution of agent.test failed" in result["message"]
    assert result["duration_seconds"] < TIMEOUT


def test_shutdown_keeps_its_promise_while_a_lookup_hangs(etc, config):
    """SIGTERM while a worker waits on a resolver that never answers: exit 0 within timeout + 5 s."""
    process = PollerProcess(config, prefix=in_namespace(etc, "silent"))
    try:
        helper = int(process.expect(r"ns-helper: pid (\d+)").group(1))
        process.expect(r"ns-helper: dns query agent\.test")
        t0 = time.monotonic()
        os.kill(helper, signal.SIGTERM)  # forwarded to the poller
        code = process.proc.wait(30)
        elapsed = time.monotonic() - t0
    finally:
        process.kill()

    assert code == 0, "".join(process.log)
    assert elapsed < TIMEOUT + 5
