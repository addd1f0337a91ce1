"""The action journal in ZooKeeper against the SQLite one, in the same run.

Starts Debian's ZooKeeper on loopback (own data dir and port) and measures, for N actions:
submissions (one durable commit each), a listing of the newest 200 (first and second: an
instance remembers submission times), what a new leader reads
when elected (every action, pipelined) against the SQLite journal's due-list, and one
delivery's writes (begin + end of an attempt). Prints figures and ZooKeeper/SQLite ratios.

    python benchmarks/bench_journal.py                 # 2,000 actions
    python benchmarks/bench_journal.py --actions 10000 # the retention cap
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from kazoo.client import KazooClient

from replicante_poller.actions.journal import ActionState, Journal
from replicante_poller.config import CoordinationSettings
from replicante_poller.coordination.journal import ZkJournal

ZK_JAR = Path("/usr/share/java/zookeeper.jar")
KIND = "agent.replicante.io/test.ping"


def start_zookeeper(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "data").mkdir()
    config = folder / "zoo.cfg"
    config.write_text(f"tickTime=2000\ndataDir={folder / 'data'}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
                      "admin.enableServer=false\n")
    log = open(folder / "zookeeper.log", "wb")
    proc = subprocess.Popen(["java", "-cp", f"/etc/zookeeper/conf:{ZK_JAR}",
                             "org.apache.zookeeper.server.ZooKeeperServerMain", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}"


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def measure(journal: object, lead: Callable[[], object], n: int) -> dict[str, float]:
    submit = timed(lambda: [journal.submit(f"https://agent-{i % 50}:1", KIND, {"n": i}) for i in range(n)])
    listing = timed(lambda: journal.list(200))
    again = timed(lambda: journal.list(200))
    elected = timed(lead)
    due = journal.due(float("inf"), 100)
    writes = timed(lambda: [(journal.end_attempt(a.id, journal.begin_attempt(a, "rs", "node"), "accepted", "HTTP 200",
                                                 ActionState.SCHEDULED, time.time() + 60, "delivered")) for a in due])
    return {"submit/s": n / submit, "list 200 (ms)": listing * 1000, "list 200 again (ms)": again * 1000,
            "leader read (ms)": elected * 1000,
            "deliveries/s": len(due) / writes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=2000)
    args = parser.parse_args()
    if not ZK_JAR.exists() or shutil.which("java") is None:
        raise SystemExit("needs Debian's zookeeper package (apt install zookeeper)")
    folder = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    proc, hosts = start_zookeeper(folder)
    client = KazooClient(hosts, timeout=10)
    try:
        client.start(timeout=30)
        sqlite = Journal(str(folder / "actions.db"))
        base = measure(sqlite, lambda: sqlite.due(float("inf"), 100_000), args.actions)
        zk = ZkJournal(client, CoordinationSettings(backend="zookeeper", hosts=hosts, path="/bench"))
        fence = client.create("/bench/leader/x-", b"", ephemeral=True, sequence=True, makepath=True)
        figures = measure(zk, lambda: zk.lead(fence), args.actions)
        print(f"{args.actions:,} actions         {'SQLite':>10} {'ZooKeeper':>10} {'ratio':>7}")
        for key, value in base.items():
            print(f"{key:<24} {value:>10,.1f} {figures[key]:>10,.1f} {figures[key] / value:>7.2f}")
    finally:
        client.stop()
        client.close()
        proc.kill()
        proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
