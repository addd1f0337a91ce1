"""Command-line options operators reach for: `run --listen`, `--log-format json`, and log
options taken after the verb as well as before it (the real process, its stderr read)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import requests

from conftest import free_port
from harness import config_text
from process import PollerProcess


def config(tmp_path, pki):
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", "https://127.0.0.1:9")], pki["ca"]).replace("listen = 127.0.0.1:0",
                                                                                     "listen = 127.0.0.1:9"))
    return path


def test_run_listen_overrides_the_configuration_and_survives_a_reload(tmp_path, pki):
    port = free_port()
    process = PollerProcess(config(tmp_path, pki), args=["--listen", f"127.0.0.1:{port}"])
    try:
        assert process.address == f"127.0.0.1:{port}"
        process.signal(signal.SIGHUP)
        process.expect("configuration reloaded")
        assert not any("[http] listen changed" in line for line in process.log), process.log
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        assert process.stop() == 0


def test_a_bad_listen_address_is_a_usage_error(tmp_path, pki):
    done = subprocess.run([sys.executable, "-m", "replicante_poller", "run", "--config", str(config(tmp_path, pki)),
                           "--listen", "nowhere"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--listen" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_json_logs_one_object_a_line_with_options_after_the_verb(tmp_path, pki):
    process = PollerProcess(config(tmp_path, pki), args=["--log-format", "json", "--log-level", "debug",
                                                         "--listen", "127.0.0.1:0"], ready=r'status on http://([^/"]+)/')
    try:
        process.expect(r"all 1 agents polled")
    finally:
        assert process.stop() == 0
    records = [json.loads(line) for line in process.log if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "debug" for r in records)  # --log-level after the verb took effect
    assert all(r["time"].endswith("Z") for r in records)
