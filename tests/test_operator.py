"""Issue 13, what operators meet: metrics Prometheus can alert on (a reason per failing agent,
series from the start, build and process metrics), /-/healthy, /-/ready, POST /-/reload, and
the listener over HTTPS with client certificates (reloaded when its files change). Against
the real service and agent-sim."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from replicante_poller.agentsim import Fault, NodeSpec

from harness import all_polled, config_text


def scrape(base: str, **options) -> tuple[str, dict]:
    text = requests.get(base + "/metrics", timeout=5, **options).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def base_of(service) -> str:
    host, port = service.api_address
    return f"http://{host}:{port}"


def test_metrics_name_each_failing_agents_reason_and_exist_from_the_start(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", "ok"), NodeSpec("rs", "bad", fault=Fault.GARBAGE),
                     NodeSpec("rs", "hangs", fault=Fault.HANGING)])
    urls = {spec.node_id: url for spec, url in sim.agents}
    text = config_text([("rs", url) for url in urls.values()], pki["ca"], interval="10s", timeout="3s")
    service = start_service(text.replace("[cluster:rs]\n", "[cluster:rs]\ndisplay_name = Orders \"main\"\n"))
    before, early = scrape(base_of(service))  # the hanging agent has not been polled yet

    hanging = (("agent", urls["hangs"]), ("cluster", "rs"))
    assert early[("replicante_poller_agent_up", hanging)] == 0.0
    assert early[("replicante_poller_last_poll_success_timestamp_seconds", hanging)] == 0.0
    assert early[("replicante_poller_agent_status", hanging + (("status", "AGENT_DOWN"),))] == 0.0
    for thread in ("worker", "scheduler", "dispatcher", "reaper", "status_api"):
        assert early[("replicante_poller_thread_errors_total", (("thread", thread),))] == 0.0
    build = [k for k in early if k[0] == "replicante_poller_build_info"]
    assert len(build) == 1 and early[build[0]] == 1.0 and dict(build[0][1])["version"]
    assert ("process_cpu_seconds_total", ()) in early and ("process_resident_memory_bytes", ()) in early
    assert any(k[0] == "python_info" for k in early)
    assert early[("replicante_poller_cluster_info", (("cluster", "rs"), ("display_name", 'Orders "main"')))] == 1.0

    assert service.state.wait_for(lambda views: all(v.result for v in views), 25)  # slot + timeout
    _, samples = scrape(base_of(service))
    reasons = {dict(k[1])["agent"]: dict(k[1])["reason"] for k, v in samples.items()
               if k[0] == "replicante_poller_agent_reason" and v == 1.0}
    assert reasons == {urls["bad"]: "invalid_json", urls["hangs"]: "timeout"}  # none for the UP agent


def test_the_exposition_passes_promtool_check_metrics(start_sim, start_service, pki):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: .ci/run installs Debian's prometheus package")
    sim = start_sim([NodeSpec("rs", "ok"), NodeSpec("rs", "bad", fault=Fault.NODE_DOWN)])
    service = start_service(config_text([("rs", url) for _, url in sim.agents], pki["ca"]))
    all_polled(service)
    text, _ = scrape(base_of(service))
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_healthy_ready_and_reload_endpoints(start_sim, start_service, pki, tmp_path):
    sim = start_sim([NodeSpec("rs", "hangs", fault=Fault.HANGING)])
    (_, url), = sim.agents
    config = tmp_path / "poller.ini"
    config.write_text(config_text([("rs", url)], pki["ca"], interval="10s", timeout="2s"))
    from replicante_poller.config import load_config
    from replicante_poller.service import Service

    service = Service(load_config(config), config_path=str(config))
    service.start()
    try:
        base = base_of(service)
        assert requests.get(base + "/-/healthy", timeout=5).status_code == 200
        not_yet = requests.get(base + "/-/ready", timeout=5)
        assert not_yet.status_code == 503 and "0 of 1 agents" in not_yet.text
        assert service.state.wait_for(lambda views: all(v.result for v in views), 25)  # slot + timeout
        assert requests.get(base + "/-/ready", timeout=5).status_code == 200

        assert requests.get(base + "/-/reload", timeout=5).status_code == 405
        reloaded = requests.post(base + "/-/reload", timeout=35)
        assert (reloaded.status_code, reloaded.json()["reloaded"]) == (200, True), reloaded.text
        config.write_text(config.read_text() + "[cluster:more]\nagents = https://127.0.0.1:9\nbogus = 1\n")
        failed = requests.post(base + "/-/reload", timeout=35)
        assert failed.status_code == 500 and "bogus" in failed.json()["message"], failed.text
        _, samples = scrape(base)
        assert samples[("replicante_poller_config_last_reload_successful", ())] == 0.0
    finally:
        service.stop()


def test_the_listener_over_https_demands_client_certificates_and_reloads_its_own(ca, start_service, pki, tmp_path):
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "listener.pem", tmp_path / "listener.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)  # the service refuses a private key others can read
    client = ca.issue_cert("prometheus.test")
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    extra = (f"[http]\nlisten = 127.0.0.1:0\ntls_cert_file = {cert}\ntls_key_file = {key}\n"
             f"tls_client_ca_file = {pki['ca']}\n[discovery]\nrefresh = 200ms\n")
    text = config_text([], pki["ca"]).replace("[http]\nlisten = 127.0.0.1:0\n", "") + extra
    service = start_service(text)
    host, port = service.api_address
    base = f"https://localhost:{port}"

    with pytest.raises(requests.exceptions.RequestException):
        requests.get(base + "/metrics", verify=str(pki["ca"]), timeout=5)  # no client certificate
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"http://{host}:{port}/metrics", timeout=5)  # no clear text
    ok = requests.get(base + "/-/healthy", verify=str(pki["ca"]), cert=(str(client_cert), str(client_key)), timeout=5)
    assert ok.status_code == 200

    def served_serial() -> int:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        context.load_cert_chain(str(client_cert), str(client_key))
        import socket
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                from cryptography import x509
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number

    first = served_serial()
    renewed = ca.issue_cert("localhost", "127.0.0.1")
    renewed.private_key_pem.write_to_path(str(key))
    renewed.cert_chain_pems[0].write_to_path(str(cert))
    import threading
    import time
    deadline, pause = time.monotonic() + 10, threading.Event()
    while served_serial() == first and time.monotonic() < deadline:
        pause.wait(0.1)  # the refresh runs every 200 ms
    assert served_serial() != first
