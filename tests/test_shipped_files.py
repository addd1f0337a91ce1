"""What etc/ ships for deployment is valid as its tools read it: the systemd units
(`systemd-analyze verify`) and the Prometheus scrape example (`promtool check config`)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ETC = Path(__file__).resolve().parent.parent / "etc"


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: .ci/run installs Debian's {package} package")
    return found


@pytest.mark.parametrize("unit", ["replicante-poller.service", "replicante-gateway.service"])
def test_the_systemd_units_verify(unit, tmp_path):
    """As installed: the console script where the unit says it is (here: where pip put it)."""
    script = shutil.which("replicante-poller") or str(Path(sys.executable).with_name("replicante-poller"))
    text = (ETC / "systemd" / unit).read_text().replace("/usr/local/bin/replicante-poller", script)
    (tmp_path / unit).write_text(text)
    done = subprocess.run([tool("systemd-analyze", "systemd"), "verify", "--man=no", str(tmp_path / unit)],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if unit in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=", "ExecReload=", "User="):
        assert setting in text, setting


def test_the_scrape_example_is_a_valid_prometheus_configuration(tmp_path):
    rules = ETC / "prometheus" / "replicante-poller.rules.yml"
    text = (ETC / "prometheus" / "scrape.yml").read_text().replace("/etc/prometheus/replicante-poller.rules.yml",
                                                                     str(rules))
    (tmp_path / "prometheus.yml").write_text(text)
    done = subprocess.run([tool("promtool", "prometheus"), "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_queries() -> list[str]:
    import json

    dashboard = json.loads((ETC / "grafana" / "replicante-poller.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """Each panel's query, its template variables filled, as promtool parses rule expressions."""
    import json

    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$instance", ".*").replace("$cluster", ".*")}
        for i, q in enumerate(queries)]}]}
    (tmp_path / "queries.yml").write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run([tool("promtool", "prometheus"), "check", "rules", str(tmp_path / "queries.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_every_metric_the_dashboard_and_rules_use_is_exported(start_sim, start_service, pki):
    """No panel or alert reads a metric the service does not export (a typo would be silent)."""
    import re

    import requests
    from prometheus_client.parser import text_string_to_metric_families

    from replicante_poller.agentsim import Fault, NodeSpec

    from harness import all_polled, config_text

    sim = start_sim([NodeSpec("rs", "ok"), NodeSpec("rs", "bad", fault=Fault.NODE_DOWN),
                     NodeSpec("rs2", "sdk", generation="replisdk")])
    service = start_service(config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"]))
    all_polled(service)
    host, port = service.api_address
    text = requests.get(f"http://{host}:{port}/metrics", timeout=5).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    from replicante_poller.web.metrics import PollerMetrics, new_registry, render

    coordinated = PollerMetrics(new_registry(), lambda: [])  # what [coordination] backend = zookeeper adds
    coordinated.observe_coordination(*[lambda: 0.0] * 4)
    exported |= {s.name for family in text_string_to_metric_families(render(coordinated.registry)[0].decode())
                 for s in family.samples}
    used_text = " ".join(dashboard_queries()) + (ETC / "prometheus" / "replicante-poller.rules.yml").read_text()
    used = set(re.findall(r"\b(?:replicante_poller|process)_[a-z_]+\b", used_text))
    assert used and used <= exported, sorted(used - exported)
