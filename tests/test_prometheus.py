"""A real Prometheus (Debian's `prometheus`, started on loopback with its own data folder)
scrapes the running service and answers which agent fails and why, through its query API;
the shipped alerting rules load into it."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from replicante_poller.agentsim import Fault, NodeSpec

from conftest import free_port
from harness import all_polled, config_text

RULES = Path(__file__).resolve().parent.parent / "etc" / "prometheus" / "replicante-poller.rules.yml"


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus scraping `target` (host:port) every second; yields its base URL."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed: .ci/run installs Debian's prometheus package")
    started: list[subprocess.Popen] = []

    def start(target: str) -> str:
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            f"scrape_configs:\n  - job_name: replicante-poller\n    static_configs:\n      - targets: ['{target}']\n")
        log = open(tmp_path / "prometheus.log", "w")
        started.append(subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                         f"--storage.tsdb.path={tmp_path / 'data'}",
                                         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def query_until(base: str, promql: str, ready, timeout: float = 40.0) -> list:
    """Ask Prometheus `promql` until `ready(result)` holds (its scrapes run every second)."""
    deadline, pause, last = time.monotonic() + timeout, threading.Event(), None
    while time.monotonic() < deadline:
        try:
            reply = requests.get(base + "/api/v1/query", params={"query": promql}, timeout=5).json()
            last = reply["data"]["result"]
            if ready(last):
                return last
        except requests.RequestException as exc:  # Prometheus still starting
            last = repr(exc)
        pause.wait(0.25)
    raise AssertionError(f"{promql}: {last!r} after {timeout}s")


def test_prometheus_scrapes_the_service_and_names_the_failing_agent_and_its_reason(start_sim, start_service,
                                                                                     prometheus, pki):
    sim = start_sim([NodeSpec("rs", "healthy"), NodeSpec("rs", "lies", fault=Fault.WRONG_CLUSTER)])
    urls = {spec.node_id: url for spec, url in sim.agents}
    service = start_service(config_text([("rs", url) for url in urls.values()], pki["ca"]))
    all_polled(service)
    host, port = service.api_address
    base = prometheus(f"{host}:{port}")

    failing = query_until(base, "replicante_poller_agent_reason == 1", lambda result: len(result) == 1)
    labels = failing[0]["metric"]
    assert (labels["agent"], labels["cluster"], labels["reason"]) == (urls["lies"], "rs", "cluster_mismatch")
    up = query_until(base, "sum(replicante_poller_agent_up)", lambda result: bool(result))
    assert float(up[0]["value"][1]) == 1.0
    rules = requests.get(base + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {group["name"] for group in rules} == {"replicante-poller-agents", "replicante-poller-service"}
