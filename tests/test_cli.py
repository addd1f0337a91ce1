"""The command line as operators use it: real processes, exit codes, one-line errors."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from replicante_poller.agentsim import Fault, NodeSpec

from harness import config_text

CLI = [sys.executable, "-m", "replicante_poller"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def test_check_config_summarises_a_valid_file(tmp_path, pki):
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", "https://127.0.0.1:9"), ("rs", "https://127.0.0.1:10")], pki["ca"]))
    done = run("check-config", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout and "2 agents in 1 cluster" in done.stdout


def test_check_config_names_file_section_and_key_and_exits_2(tmp_path):
    path = tmp_path / "poller.ini"
    path.write_text("[poller]\ninterval = soon\n")
    done = run("check-config", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path}: [poller] interval: 'soon' is not a duration "
                                                "(use forms like 15s, 2m, 500ms, 1h)"]
    assert "Traceback" not in done.stderr


def test_missing_config_file_is_a_one_line_error(tmp_path):
    done = run("check-config", "--config", str(tmp_path / "absent.ini"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "cannot read" in done.stderr


def test_poll_prints_json_and_exit_code_follows_status(tmp_path, start_sim, pki):
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "n2", fault=Fault.WRONG_CLUSTER)])
    (good_spec, good), (_, bad) = sim.agents
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", good), ("rs", bad)], pki["ca"]))

    done = run("poll", "--config", str(path), good)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["datastore"]["node_id"]) == ("UP", "n1")

    done = run("poll", "--config", str(path), bad)
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "cluster_mismatch"

    done = run("poll", "--config", str(path), "https://127.0.0.1:9")
    assert done.returncode == 2 and "--cluster" in done.stderr


def test_poll_shows_the_api_generation_that_answered(tmp_path, start_sim, pki):
    """`poll` printed `"api": null` for every agent, whatever generation answered."""
    sim = start_sim([NodeSpec("rs", "n1"), NodeSpec("rs", "n2", generation="replisdk")])
    (_, legacy), (_, replisdk) = sim.agents
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", legacy), ("rs", replisdk)], pki["ca"]))

    for url, generation in ((legacy, "legacy"), (replisdk, "replisdk")):
        done = run("poll", "--config", str(path), url)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["status"], result["api"]) == ("UP", generation)
        assert result["last_success"] >= result["last_poll"]  # RFC 3339 with milliseconds: ordered as text


def test_run_serves_status_and_stops_cleanly_on_sigterm(tmp_path, start_sim, pki):
    sim = start_sim([NodeSpec("rs", "n1")])
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", sim.agents[0][1])], pki["ca"], interval="1s", timeout="500ms"))
    proc = subprocess.Popen(CLI + ["run", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "status on http://" not in line:  # the service logs its address once listening
            line = proc.stderr.readline()
            assert line, "service exited before listening"
        address = line.rsplit("http://", 1)[1].strip().rstrip("/")
        assert requests.get(f"http://{address}/api/v1/targets", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 0.5 + 5  # timeout + 5 s, the shutdown budget
    finally:
        proc.kill()
        proc.wait()


def test_run_with_bad_config_exits_2_without_traceback(tmp_path):
    path = tmp_path / "poller.ini"
    path.write_text("[cluster:rs]\nagents = http://plain:80\n")
    done = run("run", "--config", str(path))
    assert done.returncode == 2 and "must use https://" in done.stderr and "Traceback" not in done.stderr


def test_demo_shows_agents_up_and_down():
    done = run("demo", "--listen", "127.0.0.1:0", "--clusters", "4", "--nodes-per-cluster", "3",
               "--interval", "2s", "--timeout", "800ms", "--duration", "6s")
    assert done.returncode == 0, done.stderr
    assert "status page: http://127.0.0.1:" in done.stdout
    for expected in ("UP", "AGENT_DOWN", "NODE_DOWN", "cluster_mismatch", "timeout", "too_large", "invalid_json"):
        assert expected in done.stdout, expected
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("mongo-", "kafka-", "zk-"))]
    assert {(row[2], row[3]) for row in rows} >= {("legacy", "UP"), ("replisdk", "UP")}, done.stdout  # a mixed fleet
    for generation in ("legacy", "replisdk"):
        submitted = re.search(rf"submitted action (\S+) \(\S+\) to {generation} agent", done.stdout)
        assert submitted, done.stdout
        assert f"action {submitted.group(1)}: DONE (agent reports DONE)" in done.stdout, done.stdout
    assert re.search(r"forged action signed by untrusted key \S+ to a \S+ agent: HTTP 401 \(refused\)",
                     done.stdout), done.stdout


def test_shipped_example_configuration_is_valid():
    example = Path(__file__).resolve().parent.parent / "etc" / "replicante-poller.ini"
    done = run("check-config", "--config", str(example))
    assert done.returncode == 0, done.stderr
    assert "13 agents in 5 clusters" in done.stdout
    assert "kafka-events: 3 agents" in done.stdout  # the YAML discovery file (Core's format)


def test_check_config_loads_what_run_loads(tmp_path, pki):
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", "https://127.0.0.1:9")], bad_ca))
    done = run("check-config", "--config", str(path))
    assert done.returncode == 2 and f"{path}: [tls]" in done.stderr and "cannot load TLS material" in done.stderr

    from replicante_poller.actions.signing import generate_keypair
    generate_keypair(str(tmp_path / "core"))
    (tmp_path / "core.key").chmod(0o644)
    path.write_text(config_text([("rs", "https://127.0.0.1:9")], pki["ca"],
                                extra=f"[actions]\nenabled = true\nsigning_key = {tmp_path / 'core.key'}\n"
                                      f"journal = {tmp_path / 'a.db'}\n"))
    done = run("check-config", "--config", str(path))
    assert done.returncode == 2 and "chmod 600" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "a.db").exists()  # checking opens no journal


def test_the_service_verbs_import_no_tool_module():
    """trustme, the demo and the simulator are tools: a service start never imports them."""
    probe = ("import sys; from replicante_poller import cli; cli.parser(['run', '--config', 'x']); "
             "tools = [m for m in ('trustme', 'replicante_poller.agentsim.demo', 'replicante_poller.agentsim') if m in sys.modules]; "
             "print(tools)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
