"""The benchmark's agents: one nginx on loopback serving N agents on N ports from static
JSON files shaped like agent-sim's, behind an ECDSA P-256 certificate from a throw-away CA."""
from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Optional

from bench_proc import children, proc_cpu_seconds

AGENT_INFO = "/api/unstable/info/agent"
DATASTORE_INFO = "/api/unstable/info/datastore"
SHARDS = "/api/unstable/shards"
PATHS = (AGENT_INFO, DATASTORE_INFO, SHARDS)
NODES_PER_CLUSTER = 3
FIRST_PORT = 20000  # agents' ports are taken from here up, below the ephemeral range of clients
LAST_PORT = 32767

def agent_documents(index: int) -> tuple[str, dict, dict]:
    """Cluster id, datastore info and shards of agent `index`, shaped like agent-sim's."""
    cluster = index // NODES_PER_CLUSTER
    node = index % NODES_PER_CLUSTER
    kind = ("MongoDB", "Kafka", "Zookeeper")[cluster % 3]
    prefix = {"MongoDB": "mongo", "Kafka": "kafka", "Zookeeper": "zk"}[kind]
    cluster_id = f"{prefix}-{cluster + 1}"
    role = "primary" if node == 0 else "secondary"
    if kind == "MongoDB":
        shards = [{"id": "rs0", "role": role, "commit_offset": {"unit": "seconds", "value": 1700000000},
                   "lag": {"unit": "seconds", "value": 0}}]
        version = "4.0.1"
    elif kind == "Kafka":
        unit = {"unit": "offset"}
        shards = [{"id": "events/0", "role": role, "commit_offset": {"unit": unit, "value": 1042},
                   "lag": {"unit": unit, "value": 0}},
                  {"id": "events/1", "role": role, "commit_offset": {"unit": unit, "value": 977},
                   "lag": {"unit": unit, "value": 0}},
                  {"id": "events/2", "role": {"unknown": "leaderless"},
                   "commit_offset": {"unit": unit, "value": 311}, "lag": None}]
        version = "2.8.0"
    else:
        unit = {"unit": "zxid"}
        shards = [{"id": cluster_id, "role": role, "commit_offset": {"unit": unit, "value": 0x100000042},
                   "lag": {"unit": unit, "value": 0}}]
        version = "3.8.4"
    datastore = {"cluster_display_name": None, "cluster_id": cluster_id, "kind": kind,
                 "node_id": f"{cluster_id}-node-{node + 1}", "version": version}
    return cluster_id, datastore, {"shards": shards}


BIG_BROKER_PARTITIONS = 20_000


def big_broker_shards(partitions: int) -> dict:
    """The shards answer of a large Kafka broker: one entry per partition (~3 MB at 20,000)."""
    return {"shards": [{"id": f"events-{n}", "role": "primary" if n % 3 == 0 else "secondary",
                        "commit_offset": {"unit": {"unit": "offset"}, "value": 1_000_000 + n},
                        "lag": None if n % 3 == 0 else {"unit": {"unit": "messages"}, "value": n % 7}}
                       for n in range(partitions)]}


AGENT_DOC = {"version": {"checkout": "8f3c2a1d9e0b4c5a6f7e8d9c0b1a2f3e4d5c6b7a", "number": "0.7.0",
                         "taint": "not tainted"}}

NGINX_CONF = """\
daemon on;
worker_processes 1;
{affinity}
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{ }}
    default_type application/json;
    etag off;
    server {{
{listens}
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {dir}/www;
        location = {agent} {{ try_files /agent.json =404; }}
        location = {datastore} {{ try_files /datastore/$server_port.json =404; }}
        location = {shards} {{ try_files /shards/$server_port.json =404; }}
    }}
}}
"""


def free_ports(count: int, start: int = FIRST_PORT) -> list[int]:
    """`count` loopback ports from `start` up that can be bound now."""
    ports: list[int] = []
    port = start
    while len(ports) < count:
        if port > LAST_PORT:
            raise SystemExit(f"not enough free ports between {start} and {LAST_PORT} for {count} agents")
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit (inherited by children)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


class Agents:
    """N agents on N loopback ports served by one nginx, with a throw-away CA."""

    def __init__(self, folder: Path, count: int, pin_cpu: Optional[int], big_brokers: int = 0):
        """`big_brokers`: that many Kafka agents answer BIG_BROKER_PARTITIONS shards."""
        import trustme

        self.folder, self.count, self.big_brokers = folder, count, big_brokers
        ca = trustme.CA(key_type=trustme.KeyType.ECDSA)  # P-256 CA and leaf
        leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)
        self.ca_file = str(folder / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        leaf.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
        leaf.private_key_pem.write_to_path(str(folder / "server.key"))
        folder.chmod(0o755)  # nginx workers run as another user when started by root
        for attempt in range(5):  # a port found free may be taken before nginx binds it
            start = FIRST_PORT + random.randrange(max(1, LAST_PORT - FIRST_PORT - 2 * count))
            self.ports = free_ports(count, start)
            self._write_documents()
            problem = self._start_nginx(pin_cpu)
            if problem is None:
                break
            if "in use" not in problem or attempt == 4:
                raise SystemExit(f"nginx did not start: {problem}")
        self.pid = int((folder / "nginx.pid").read_text())

    def _write_documents(self) -> None:
        www = self.folder / "www"
        for sub in ("datastore", "shards"):
            (www / sub).mkdir(parents=True, exist_ok=True)
        (www / "agent.json").write_text(json.dumps(AGENT_DOC))
        self.clusters: dict[str, list[str]] = {}
        big = self.big_brokers
        for index, port in enumerate(self.ports):
            cluster_id, datastore, shards = agent_documents(index)
            if big and datastore["kind"] == "Kafka":
                shards, big = big_broker_shards(BIG_BROKER_PARTITIONS), big - 1
            (www / "datastore" / f"{port}.json").write_text(json.dumps(datastore))
            (www / "shards" / f"{port}.json").write_text(json.dumps(shards))
            self.clusters.setdefault(cluster_id, []).append(self.url(port))

    def _start_nginx(self, pin_cpu: Optional[int]) -> Optional[str]:
        """Start nginx on `self.ports`; None once it runs, else its complaint."""
        folder, count = self.folder, len(self.ports)
        nofile = raise_nofile()
        if count + 64 > nofile:
            raise SystemExit(f"{count} agents need more than the open-file limit of {nofile}")
        affinity = "worker_cpu_affinity " + format(1 << pin_cpu, "b") + ";" if pin_cpu is not None else ""
        (folder / "nginx.conf").write_text(NGINX_CONF.format(
            dir=folder, affinity=affinity, nofile=nofile, connections=nofile - 16,
            listens="\n".join(f"        listen 127.0.0.1:{port} ssl;" for port in self.ports),
            cert=folder / "server.pem", key=folder / "server.key",
            agent=AGENT_INFO, datastore=DATASTORE_INFO, shards=SHARDS))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(binary):
            raise SystemExit("nginx is not installed (apt-get install -y nginx-light)")
        done = subprocess.run([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
                              capture_output=True, text=True, timeout=120)
        return None if done.returncode == 0 else done.stderr.strip()

    def cpu_seconds(self) -> float:
        """CPU time of nginx's worker processes so far (what serving the agents cost)."""
        return sum(proc_cpu_seconds(child) for child in children(self.pid))

    @staticmethod
    def url(port: int) -> str:
        return f"https://127.0.0.1:{port}"

    def discovery(self, count: int) -> list[dict]:
        """Replicante's JSON file discovery for the first `count` agents."""
        wanted = {self.url(p) for p in self.ports[:count]}
        entries = []
        for cluster_id, urls in self.clusters.items():
            nodes = [u for u in urls if u in wanted]
            if nodes:
                entries.append({"cluster_id": cluster_id, "display_name": None, "nodes": nodes})
        return entries

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
