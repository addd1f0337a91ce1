"""Issue 15, a newcomer's first hour (part): a state folder or action journal that `run`
could not use is refused by `run` and `check-config` alike, with the same one line."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from test_newcomer import check_config, cli, one_line_error, poller_ini


def test_a_state_dir_under_a_regular_file_is_refused_by_run_and_check_config(tmp_path, pki):
    (tmp_path / "file").write_text("not a folder")
    state = tmp_path / "file" / "state"
    path = poller_ini(tmp_path, pki, f"[poller]\nstate_dir = {state}\n")
    for verb in ("check-config", "run"):
        one_line_error(cli(verb, "--config", str(path)),
                       f"{path}: [poller] state_dir: cannot create {state}: {tmp_path / 'file'} is not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a mode 0500 folder: the regular-file case covers root")
def test_a_read_only_state_dir_is_refused_by_run_and_check_config(tmp_path, pki):
    state = tmp_path / "state"
    state.mkdir(mode=0o500)
    path = poller_ini(tmp_path, pki, f"[poller]\nstate_dir = {state}\n")
    try:
        for verb in ("check-config", "run"):
            one_line_error(cli(verb, "--config", str(path)),
                           f"{path}: [poller] state_dir: cannot create a file in {state}: permission denied")
    finally:
        state.chmod(0o700)


def test_check_config_creates_no_state_dir_and_run_does(tmp_path, pki):
    from process import PollerProcess

    state = tmp_path / "var" / "state"
    path = poller_ini(tmp_path, pki, f"[poller]\nstate_dir = {state}\n[http]\nlisten = 127.0.0.1:0\n")
    assert check_config(path).returncode == 0 and not (tmp_path / "var").exists()
    process = PollerProcess(path)
    try:
        assert state.is_dir() and os.listdir(state) == []  # the probe's file is gone
        assert process.metrics()[("replicante_poller_state_save_errors_total", ())] == 0
    finally:
        assert process.stop() == 0


def test_a_save_failing_at_run_time_is_logged_and_counted_and_polling_goes_on(tmp_path, pki, start_service, caplog):
    from replicante_poller.web.metrics import sample

    state = tmp_path / "state"
    service = start_service(f"[poller]\nstate_dir = {state}\n[tls]\nca_file = {pki['ca']}\n"
                            "[http]\nlisten = 127.0.0.1:0\n[cluster:rs]\nagents = https://127.0.0.1:9\n")
    shutil.rmtree(state)
    state.write_text("the folder was replaced by a file")
    with caplog.at_level(logging.ERROR):
        service.stop()  # saves the state one last time
    assert sample(service.registry, "replicante_poller_state_save_errors_total") == 1.0
    assert any(f"cannot save state to {state}" in r.getMessage() for r in caplog.records), caplog.text
