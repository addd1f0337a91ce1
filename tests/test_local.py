"""Issue 12: running out of file descriptors. The limit is checked (and raised when the hard
limit allows) at start, and a poll the poller could not even try is reason `local`: counted,
logged, and not charged to the agent (its status and health stay what the last real poll
found), instead of hundreds of healthy agents turning AGENT_DOWN `connect`."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time

from replicante_poller.agentsim import NodeSpec
from replicante_poller.web.metrics import sample

from harness import all_polled, config_text
from process import PollerProcess


def write_config(tmp_path, pki, workers: int = 16):
    path = tmp_path / "poller.ini"
    path.write_text(config_text([("rs", "https://127.0.0.1:9")], pki["ca"]).replace("workers = 8", f"workers = {workers}"))
    return path


def test_a_hard_open_file_limit_too_low_is_refused_at_start_naming_the_setting(tmp_path, pki):
    config = write_config(tmp_path, pki)
    done = subprocess.run(["prlimit", "--nofile=100:100", "--", sys.executable, "-m", "replicante_poller", "run",
                           "--config", str(config)], capture_output=True, text=True, timeout=30)

    assert done.returncode == 2, done.stderr
    assert "[poller] workers" in done.stderr and "open-file limit is 100" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_refuses_a_hard_open_file_limit_too_low_as_run_does(tmp_path, pki):
    """check-config (the unit's ExecStartPre) said OK for a configuration `run` then refused."""
    config = write_config(tmp_path, pki)
    done = subprocess.run(["prlimit", "--nofile=100:100", "--", sys.executable, "-m", "replicante_poller",
                           "check-config", "--config", str(config)], capture_output=True, text=True, timeout=30)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"{config}: [poller] workers" in done.stderr and "open-file limit is 100" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "OK" not in done.stdout


def test_workers_far_over_the_open_file_limit_are_refused_at_once(tmp_path, pki):
    """`workers = 2000000` (a typo) built two million worker threads' objects, silently, for
    tens of seconds before the open-file check refused them."""
    config = write_config(tmp_path, pki, workers=2_000_000)
    started = time.monotonic()
    done = subprocess.run(["prlimit", "--nofile=4096:4096", "--", sys.executable, "-m", "replicante_poller", "run",
                           "--config", str(config)], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and "[poller] workers" in done.stderr, done.stderr
    assert time.monotonic() - started < 5


def test_a_low_soft_limit_is_raised_to_what_the_configuration_needs(tmp_path, pki):
    config = write_config(tmp_path, pki)
    process = PollerProcess(config, prefix=["prlimit", "--nofile=100:4096", "--"])
    try:
        process.expect(r"raised the open-file limit from 100 to \d+ \(16 workers, \d+ listener connections\)")
    finally:
        assert process.stop() == 0


def local_failures(service) -> float:
    return sample(service.registry, "replicante_poller_poll_failures_total", {"reason": "local"}) or 0.0


def test_out_of_file_descriptors_is_local_and_keeps_every_agents_state(start_sim, start_service, pki):
    sim = start_sim([NodeSpec("rs", f"node-{i}") for i in range(3)])
    service = start_service(config_text([(spec.cluster_id, url) for spec, url in sim.agents], pki["ca"],
                                        interval="1s", timeout="500ms"))
    before = {v.target.key: v for v in all_polled(service)}
    assert all(v.result.ok for v in before.values())

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:  # take every descriptor left
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        waited = threading.Event()
        deadline = time.monotonic() + 15
        while local_failures(service) < 3 and time.monotonic() < deadline:
            waited.wait(0.05)  # a test's bounded wait for a counter (nothing to wait on otherwise)
        starved = {v.target.key: v for v in service.snapshot()}
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    assert local_failures(service) >= 3
    for key, view in starved.items():
        assert view.result.ok and view.health.healthy, view.result.message  # nothing charged to the agents
        assert view.result.started >= before[key].result.started
    assert sample(service.registry, "replicante_poller_poll_failures_total", {"reason": "connect"}) == 0
    latest = max(v.result.started for v in starved.values())
    assert service.state.wait_for(lambda views: all(v.result.ok and v.result.started > latest for v in views), 10)
