"""Issue 15, a newcomer's first hour (part): a state folder or action journal that `run`
could not use is refused by `run` and `check-config` alike, with the same one line; a reload
refuses a discovery glob matching no file as the start does."""
from __future__ import annotations

import logging
import re
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


def test_a_read_only_state_dir_is_refused_by_run_and_check_config(tmp_path, pki):
    """A folder mode 0500; as root (who writes there anyway) sysfs, where root may not create files."""
    root = os.geteuid() == 0
    state = Path("/sys/kernel") if root else tmp_path / "state"
    if not root:
        state.mkdir(mode=0o500)
    path = poller_ini(tmp_path, pki, f"[poller]\nstate_dir = {state}\n")
    try:
        for verb in ("check-config", "run"):
            done = cli(verb, "--config", str(path))
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1, done
            assert re.fullmatch(rf"error: {re.escape(str(path))}: \[poller\] state_dir: cannot create a file in "
                                rf"{re.escape(str(state))}: (permission denied|read-only file system)", lines[0]), lines
    finally:
        if not root:
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


def actions_ini(tmp_path: Path, pki: dict, journal: Path, name: str = "poller.ini") -> Path:
    from harness import action_files

    keys = action_files(tmp_path) if not (tmp_path / "core.key").exists() else {"key": tmp_path / "core.key"}
    path = tmp_path / name
    path.write_text(f"[tls]\nca_file = {pki['ca']}\n[http]\nlisten = 127.0.0.1:0\n[cluster:rs]\n"
                    f"agents = https://127.0.0.1:9\n[actions]\nenabled = true\nsigning_key = {keys['key']}\n"
                    f"journal = {journal}\n")
    return path


def same_error_line(path: Path, *verbs: list) -> str:
    """Run each verb on `path` (in parallel); each exits 2 with the same one line, returned."""
    import subprocess
    import sys

    running = [subprocess.Popen([sys.executable, "-m", "replicante_poller", *verb, "--config", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for verb in verbs]
    lines = set()
    for verb, process in zip(verbs, running):
        out, err = process.communicate(timeout=60)
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        one_line_error(done)
        lines.add(next(line for line in err.splitlines() if line.startswith("error:")))
    assert len(lines) == 1, lines
    return lines.pop()


def test_a_damaged_journal_stops_check_config_as_it_stops_run(tmp_path, pki):
    journal = tmp_path / "actions.db"
    journal.write_bytes(b"not a database, " * 512)
    path = actions_ini(tmp_path, pki, journal)
    line = same_error_line(path, ["check-config"], ["run"])
    assert f"{path}: [actions] journal: {journal}: action journal: damaged, refusing to use it" in line, line
    assert journal.read_bytes() == b"not a database, " * 512


def test_a_journal_that_cannot_be_created_stops_check_config_as_it_stops_run(tmp_path, pki):
    (tmp_path / "file").write_text("not a folder")
    journal = tmp_path / "file" / "actions.db"
    path = actions_ini(tmp_path, pki, journal)
    line = same_error_line(path, ["check-config"], ["run"], ["action", "submit", "--agent", "https://127.0.0.1:9",
                                                             "--kind", "agent.replicante.io/test.ping"])
    assert line == f"error: {path}: [actions] journal: cannot create {journal.parent}: {journal.parent} is not a directory"


def test_check_config_creates_no_journal(tmp_path, pki):
    journal = tmp_path / "var" / "actions.db"
    assert check_config(actions_ini(tmp_path, pki, journal)).returncode == 0
    assert not (tmp_path / "var").exists()


def test_a_locked_journal_is_exit_2_naming_it_for_every_verb(tmp_path, pki):
    """Another process holds the journal's write lock (or an exclusive lock, which also
    stops readers) past the busy timeout: every verb the lock stops says so the same way."""
    import subprocess
    import sys

    from replicante_poller.actions.journal import Journal

    holders, configs, ids = [], {}, {}
    for mode in ("write", "exclusive"):
        journal = tmp_path / f"{mode}.db"
        opened = Journal(str(journal))
        ids[mode] = opened.submit("https://127.0.0.1:9", "agent.replicante.io/test.ping", None).id
        opened.close()
        configs[mode] = actions_ini(tmp_path, pki, journal, f"{mode}.ini")
        pragma = "db.execute('PRAGMA locking_mode=EXCLUSIVE'); " if mode == "exclusive" else ""
        holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys\n"
                                   f"db = sqlite3.connect({str(journal)!r}, isolation_level=None); {pragma}"
                                   "db.execute('BEGIN IMMEDIATE'); db.execute(\"UPDATE actions SET message = 'x'\")\n"
                                   "print('locked', flush=True); sys.stdin.read()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline() == "locked\n"
    try:
        submit = ["action", "submit", "--agent", "https://127.0.0.1:9", "--kind", "agent.replicante.io/test.ping"]
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both wait out the busy timeout at once
            write = pool.submit(same_error_line, configs["write"], ["run"], submit, ["check-config"])
            exclusive = pool.submit(same_error_line, configs["exclusive"], ["run"], submit, ["check-config"],
                                    ["action", "list"], ["action", "show", ids["exclusive"]])
            lines = write.result(), exclusive.result()
        for mode, line in zip(("write", "exclusive"), lines):
            assert line == (f"error: {configs[mode]}: [actions] journal: {tmp_path / mode}.db: action journal: "
                            "locked by another process for more than 10s (the busy timeout)"), line
        listed = cli("action", "list", "--config", str(configs["write"]))  # readers pass a write lock
        assert listed.returncode == 0 and ids["write"] in listed.stdout, listed.stderr
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_reload_to_a_glob_matching_no_file_fails_and_keeps_the_last_good(tmp_path, pki):
    import signal

    import requests

    from process import PollerProcess

    (tmp_path / "d.json").write_text('[{"cluster_id": "kafka", "nodes": ["https://127.0.0.1:10"]}]')
    path = poller_ini(tmp_path, pki, "[http]\nlisten = 127.0.0.1:0\n[discovery]\nfiles = d.json\n")
    process = PollerProcess(path)
    try:
        assert set(process.targets()) == {"https://127.0.0.1:9", "https://127.0.0.1:10"}
        path.write_text(path.read_text().replace("files = d.json", "files = discovery/*.jsn"))
        expected = f"{path}: [discovery] files: {tmp_path}/discovery/*.jsn matches no file"
        answer = requests.post(f"http://{process.address}/-/reload", timeout=30)
        assert answer.status_code == 500 and answer.json()["message"].endswith(expected), answer.text
        process.signal(signal.SIGHUP)
        process.expect(r"configuration reload failed, still running the last good one: " + re.escape(expected))
        assert set(process.targets()) == {"https://127.0.0.1:9", "https://127.0.0.1:10"}
        assert process.metrics()[("replicante_poller_config_last_reload_successful", ())] == 0.0
    finally:
        assert process.stop() == 0


def test_a_state_dir_changed_by_a_reload_takes_effect_at_the_next_restart_only(tmp_path, pki):
    """The reload warns that `[poller] state_dir` takes effect at the next restart, and so it
    does: saves (the shutdown's too) stay in the running folder (before, they went to the
    new one at once, a folder never checked, while restarts restored from the old one)."""
    import signal

    from process import PollerProcess

    running, edited = tmp_path / "running", tmp_path / "edited"
    edited.mkdir()
    path = poller_ini(tmp_path, pki, f"[http]\nlisten = 127.0.0.1:0\n[poller]\nstate_dir = {running}\n")
    process = PollerProcess(path)
    try:
        path.write_text(path.read_text().replace(str(running), str(edited)))
        for _ in range(2):  # warned at each reload while the file differs from what runs
            process.signal(signal.SIGHUP)
            process.expect(r"\[poller\] state_dir changed: takes effect at the next restart")
            process.expect("configuration reloaded")
    finally:
        assert process.stop() == 0
    assert (running / "state.json").exists() and not (edited / "state.json").exists()


def test_a_journal_locked_while_the_dispatcher_runs_is_one_error_line_not_a_traceback(tmp_path):
    import sqlite3
    import threading

    from replicante_poller.actions.dispatcher import Dispatcher
    from replicante_poller.actions.journal import Journal
    from replicante_poller.actions.signing import generate_keypair, load_signing_key
    from replicante_poller.config import ActionsSettings
    from replicante_poller.polling.tls import TlsContexts
    from replicante_poller.polling.transport import Transport
    from replicante_poller.web.metrics import PollerMetrics, new_registry, sample

    path = str(tmp_path / "actions.db")
    journal = Journal(path, timeout=0.2)
    journal.submit("https://127.0.0.1:9", "agent.replicante.io/test.ping", None)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock: the dispatcher reads its due action, cannot write
    holder.execute("UPDATE actions SET message = 'held'")

    said = threading.Event()
    records: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            if "locked by another process" in record.getMessage():
                said.set()

    catch = Catch(level=logging.ERROR)
    logger = logging.getLogger("replicante_poller.actions.dispatcher")
    logger.addHandler(catch)
    generate_keypair(str(tmp_path / "core"))
    registry = new_registry()
    dispatcher = Dispatcher(journal, ActionsSettings(enabled=True), load_signing_key(str(tmp_path / "core.key")),
                            lambda url: None, lambda target: None, Transport(TlsContexts()),
                            PollerMetrics(registry, lambda: []))
    try:
        dispatcher.start()
        assert said.wait(20), [r.getMessage() for r in records]
    finally:
        dispatcher.stop()
        logger.removeHandler(catch)
        holder.close()
        journal.close()
    assert all(r.exc_info is None for r in records), [r.getMessage() for r in records]
    assert f"{path}: action journal: locked by another process for more than 0.2s" in records[0].getMessage()
    assert sample(registry, "replicante_poller_thread_errors_total", {"thread": "dispatcher"}) == 0
