"""The pinned client processes: the stdlib floor, the naive requests peer, the product's
poll_target() loop and the signing path, each measured with time.process_time() in a
subprocess of its own pinned to one CPU; plus the audit of avoidable per-connection costs
and the cProfile summary."""
from __future__ import annotations

import json
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from bench_agents import PATHS, Agents

BENCH = Path(__file__).with_name("bench.py")

def pin(cpu: Optional[int]) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def floor_poller(ca_file: str, resume: bool = False) -> Callable[[int], None]:
    """One poll with the stdlib only: fresh TCP + TLS, 3 GETs, close; one shared context.

    With `resume`, each new connection offers the TLS session of the previous one to the
    same agent (the connection is still fresh; only the handshake is abbreviated).
    """
    context = ssl.create_default_context(cafile=ca_file)
    sessions: dict[int, ssl.SSLSession] = {}

    def get(sock: ssl.SSLSocket, port: int, path: str) -> bytes:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: floor\r\n"
                     f"Accept: application/json\r\n\r\n".encode("ascii"))
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            data += chunk
        head, body = data[:end].decode("latin-1"), data[end + 4:]
        status = head[9:12]
        match = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if status != "200" or match is None:
            raise ValueError(f"unexpected answer: {head.splitlines()[0]}")
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            body += chunk
        return body

    def poll(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1", session=sessions.get(port)) as sock:
                for path in PATHS:
                    json.loads(get(sock, port, path))
                if resume:
                    sessions[port] = sock.session  # TLS 1.3 tickets arrive after the handshake
                    RESUMED[0] += sock.session_reused

    return poll


RESUMED = [0]  # connections whose TLS session was resumed (floor_resumed)


def peer_poller(ca_file: str) -> Callable[[int], None]:
    """One poll the way most scripts do it: requests.get per GET, Connection: close."""
    import requests

    def poll(port: int) -> None:
        for path in PATHS:
            response = requests.get(f"https://127.0.0.1:{port}{path}", headers={"Connection": "close"},
                                    verify=ca_file, timeout=5)
            response.raise_for_status()
            response.json()

    return poll


def poll_path(name: str) -> Any:
    """A module of the poll path: replicante_poller.polling.NAME, or replicante_poller.NAME
    in a tree from before the subpackages (--tree)."""
    import importlib
    try:
        return importlib.import_module(f"replicante_poller.polling.{name}")
    except ImportError:
        return importlib.import_module(f"replicante_poller.{name}")


def transport_poller(ca_file: str, clusters: dict[str, str]) -> Callable[[int], None]:
    """poll_target() of the product in a loop: transport and validation, nothing else."""
    from replicante_poller.config import PollSettings, TlsSettings

    Target = poll_path("discovery").Target
    poll_target = poll_path("poll").poll_target
    TlsContexts = poll_path("tls").TlsContexts
    transport = poll_path("transport")
    if hasattr(transport, "Transport"):
        client = transport.Transport(TlsContexts()).start().client()
    else:  # a tree from before the requests transport (--tree), for before/after runs
        client = transport.AgentClient(TlsContexts(), poll_path("deadlines").DeadlineReaper().start())
    poll_settings, tls = PollSettings(interval=30.0, timeout=5.0), TlsSettings(ca_file=ca_file)
    targets = {int(url.rsplit(":", 1)[1]): Target(cluster, url, None, poll_settings, tls)
               for url, cluster in clusters.items()}

    def poll(port: int) -> None:
        result = poll_target(client, targets[port])
        if not result.ok:
            raise RuntimeError(f"{result.reason}: {result.message}")

    return poll


class Audit:
    """Counts the avoidable per-connection costs: contexts built, CA files or certifi
    loaded, environment scans (proxy look-ups), .netrc look-ups."""

    def __init__(self) -> None:
        self.counts = {"ssl_contexts_created": 0, "ca_loads": 0, "certifi_where": 0, "environ_scans": 0,
                       "netrc_lookups": 0}
        self._originals: list[tuple[Any, str, Any]] = []
        self._count(ssl.SSLContext, "__new__", "ssl_contexts_created", static=True)
        for name in ("load_verify_locations", "load_default_certs", "set_default_verify_paths"):
            self._count(ssl.SSLContext, name, "ca_loads")
        self._count(type(os.environ), "__iter__", "environ_scans")
        try:
            import certifi
            self._count(certifi, "where", "certifi_where")
        except ImportError:
            pass
        try:
            import requests.sessions
            import requests.utils
            for module in (requests.sessions, requests.utils):
                if hasattr(module, "get_netrc_auth"):
                    self._count(module, "get_netrc_auth", "netrc_lookups")
        except ImportError:
            pass

    def _count(self, owner: Any, name: str, counter: str, static: bool = False) -> None:
        original = getattr(owner, name)
        self._originals.append((owner, name, owner.__dict__[name] if name in owner.__dict__ else original))

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[counter] += 1
            return original(*args, **kwargs)

        setattr(owner, name, staticmethod(counted) if static else counted)

    def reset(self) -> None:
        for key in self.counts:
            self.counts[key] = 0

    def remove(self) -> None:
        """Put the counted functions back (so a profile attributes their time to them)."""
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()


def run_client(spec: dict) -> dict:
    """In a pinned subprocess: poll the agents round robin for `duration` seconds."""
    pin(spec["cpu"])
    if spec.get("tree"):  # the product from another source tree (--tree)
        sys.path.insert(0, spec["tree"])
    kind, ports = spec["kind"], spec["ports"]
    if kind == "signing":
        return run_signing(spec["duration"])
    if kind == "framework":
        return run_framework(spec["duration"])
    make = {"floor": lambda: floor_poller(spec["ca"]), "floor_resumed": lambda: floor_poller(spec["ca"], True),
            "peer": lambda: peer_poller(spec["ca"]),
            "transport": lambda: transport_poller(spec["ca"], spec["clusters"])}[kind]
    audit = Audit()
    poll = make()
    warm = ports[:min(len(ports), 20)]
    for port in warm:  # warm up: imports, caches, first handshakes
        poll(port)
    audit.reset()
    RESUMED[0] = 0
    polls = errors = 0
    first_error = None
    wall0, cpu0 = time.monotonic(), time.process_time()
    deadline = wall0 + spec["duration"]
    while time.monotonic() < deadline:
        for port in ports:
            try:
                poll(port)
            except Exception as exc:  # counted: a benchmark reports errors, it does not stop
                errors += 1
                first_error = first_error or repr(exc)
            polls += 1
            if polls % 16 == 0 and time.monotonic() >= deadline:
                break
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"polls": polls, "errors": errors, "first_error": first_error, "wall_s": wall, "cpu_s": cpu,
              "polls_per_s": polls / wall, "cpu_ms_per_poll": 1000 * cpu / max(polls, 1),
              "peak_rss_mb": usage.ru_maxrss / 1024,
              "per_poll": {key: value / max(polls, 1) for key, value in audit.counts.items()},
              "resumed_fraction": RESUMED[0] / max(polls, 1)}
    if spec.get("cprofile"):
        audit.remove()
        result["profile"] = profile_polls(poll, ports, min(polls, 3000))
    result["polls_served"] = len(warm) + polls + result.get("profile", {}).get("polls", 0)  # what nginx saw
    return result


# Where profiled self time goes, by the file (or C function) it is spent in: first match wins.
PROFILE_GROUPS = (
    ("TLS handshake (OpenSSL)", ("do_handshake",)),
    ("CA files loaded, SSLContext built", ("load_verify_locations", "load_default_certs", "set_default_verify_paths",
                                           ("/ssl.py", "(__new__)"), "create_urllib3_context", "certifi")),
    ("environment: proxies, .netrc", ("<frozen os>", "getproxies", "proxy_bypass", "netrc", "<frozen posixpath>",
                                      "should_bypass_proxies", "get_environ_proxies")),
    ("socket and TLS I/O (C)", ("_ssl.", "_socket.", "socket.close", "'_io.")),
    ("requests (Session, adapter, models, utils)", ("/requests/",)),
    ("urllib3 pool, retries, timeouts", ("urllib3/connectionpool.py", "urllib3/poolmanager.py",
                                         "urllib3/util/retry.py", "urllib3/util/timeout.py")),
    ("urllib3 connection and response", ("/urllib3/",)),
    ("http.client and email header parsing", ("/http/client.py", "/email/")),
    ("typing runtime Protocol checks", ("/typing.py",)),
    ("ssl.py and socket.py wrappers", ("/ssl.py", "/socket.py")),
    ("replicante_poller (transport, poll, validation)", ("replicante_poller/",)),
    ("json", ("/json/",)),
    ("other Python (stdlib)", ("/python3.", "<frozen")),
    ("C builtins (isinstance, str, dict, ...)", ("<",)),
)


def profile_polls(poll: Callable[[int], None], ports: list[int], count: int) -> dict:
    """cProfile `count` polls: self time by group and the top functions, in us per poll."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(count):
        poll(ports[index % len(ports)])
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    functions = []
    for (filename, line, name), (_, calls, tottime, _, _) in stats.items():
        where = f"{filename}:{line}({name})" if filename != "~" else name
        group = next((label for label, needles in PROFILE_GROUPS if any(_matches(n, where) for n in needles)), "other")
        groups[group] = groups.get(group, 0.0) + tottime
        functions.append((tottime, calls, where))
    total = sum(groups.values())
    functions.sort(reverse=True)
    return {
        "polls": count, "profiled_us_per_poll": 1e6 * total / count,
        "groups": {label: {"us_per_poll": 1e6 * t / count, "share": t / total}
                   for label, t in sorted(groups.items(), key=lambda item: -item[1])},
        "top": [{"function": _short_path(where), "calls_per_poll": calls / count, "us_per_poll": 1e6 * t / count}
                for t, calls, where in functions[:20]],
    }


def _matches(needle: "str | tuple[str, ...]", where: str) -> bool:
    return needle in where if isinstance(needle, str) else all(part in where for part in needle)


def _short_path(where: str) -> str:
    for marker in ("site-packages/", "lib/python3", "replicante_poller/"):
        if marker in where:
            head, _, tail = where.partition(marker)
            return (marker if marker == "replicante_poller/" else "") + tail.split("/", 1)[-1] \
                if marker == "lib/python3" else (marker if marker == "replicante_poller/" else "") + tail
    return where


def profile_table(profile: dict) -> str:
    lines = [f"cProfile of {profile['polls']} polls ({profile['profiled_us_per_poll']:.0f} us per poll under the "
             "profiler), self time by group:"]
    for label, figures in profile["groups"].items():
        lines.append(f"  {figures['share'] * 100:5.1f}%  {figures['us_per_poll']:7.1f} us/poll  {label}")
    lines.append("top functions by self time:")
    for item in profile["top"][:12]:
        lines.append(f"  {item['us_per_poll']:7.1f} us/poll  {item['calls_per_poll']:5.1f} calls/poll  {item['function']}")
    return "\n".join(lines)


def run_framework(duration: float, agents: int = 999, interval: float = 1.0) -> dict:
    """The service's own machinery (scheduler, queues, workers, state, metrics) in-process,
    with poll_target() replaced by a canned UP result: what a poll costs besides the network."""
    import replicante_poller.polling.pool as pool
    from replicante_poller.config import parse_config
    from replicante_poller.web.metrics import sample
    from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, Offset, Shard
    from replicante_poller.polling.poll import PollResult
    from replicante_poller.reasons import Status
    from replicante_poller.service import Service

    agent = AgentInfo(AgentVersion("8f3c2a1", "0.7.0", "not tainted"))
    shards = (Shard("rs0", "primary", None, Offset("seconds", 1700000000), Offset("seconds", 0)),)

    def canned(client: Any, target: Any, clock: Callable[[], float] = time.time) -> PollResult:
        now = clock()
        return PollResult(target, Status.UP, None, "all checks passed", now, 0.001, agent=agent,
                          datastore=DatastoreInfo(None, target.cluster_id, "MongoDB", target.url, "4.0.1"),
                          shards=shards, cert_not_after=2e9)

    pool.poll_target = canned  # type: ignore[assignment]
    text = f"[poller]\ninterval = {interval:g}s\ntimeout = {interval / 2:g}s\n[http]\nlisten = 127.0.0.1:0\n"
    for c in range(agents // 3):  # never connected to: the canned poll stands in for the network
        text += f"[cluster:c{c}]\nagents = " + ", ".join(f"https://10.9.{c // 250}.{c % 250}:{p}" for p in (1, 2, 3)) + "\n"
    service = Service(parse_config(text))
    service.start()
    try:
        service.state.wait_for(lambda views: all(v.result for v in views), interval + 10)
        polls0 = sample(service.registry, "replicante_poller_polls_total", {"result": "success"}) or 0.0
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(duration)
        polls = (sample(service.registry, "replicante_poller_polls_total", {"result": "success"}) or 0.0) - polls0
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        service.stop()
    return {"polls": int(polls), "errors": 0, "polls_per_s": polls / wall, "cpu_ms_per_poll": 1000 * cpu / max(polls, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": wall, "cpu_s": cpu}


def run_signing(duration: float) -> dict:
    """Signatures per second of Signer.sign alone and of the whole sign_action path."""
    from replicante_poller.actions import httpsig
    from replicante_poller.actions.signing import signer_from_seed

    signer = signer_from_seed(bytes(range(32)))
    body = json.dumps({"action_id": "5c5a2d8e-8f5e-4a39-9a53-3c1f1f3bb0c2", "args": {"why": "check"},
                       "created_ts": "2024-01-01T00:00:00Z", "requester": "CORE_API"}).encode()
    base = httpsig.signature_base("POST", "/api/unstable/actions/schedule/agent.replicante.io/test.ping", None, {
        "content-type": "application/json", "content-digest": httpsig.content_digest(body),
        "replicante-agent": "https://mongo-1-node-1:37017", "replicante-cluster": "mongo-1",
        "replicante-node": "mongo-1-node-1"},
        httpsig.SignatureParams(components=httpsig.COVERED, created=1700000000, expires=1700000060,
                                nonce="AAAAAAAAAAAAAAAAAAAAAA", keyid=signer.key_id, tag=httpsig.TAG))
    nonce = os.urandom(16)

    def raw() -> None:
        signer.sign(base)

    def whole() -> None:
        httpsig.sign_action(method="POST", path="/api/unstable/actions/schedule/agent.replicante.io/test.ping",
                            body=body, agent_url="https://mongo-1-node-1:37017", cluster_id="mongo-1",
                            node_id="mongo-1-node-1", key_id=signer.key_id,
                            sign=signer.sign, now=1700000000, nonce=nonce)

    out = {}
    for name, call in (("sign", raw), ("sign_action", whole)):
        count, cpu0, wall0 = 0, time.process_time(), time.monotonic()
        end = wall0 + duration / 2
        while time.monotonic() < end:
            for _ in range(200):
                call()
            count += 200
        cpu = time.process_time() - cpu0
        out[name] = {"count": count, "per_s": count / cpu, "us_each": 1e6 * cpu / count}
    return out


def client_subprocess(kind: str, agents: Agents, count: int, duration: float, cpu: Optional[int],
                      tree: Optional[str] = None, cprofile: bool = False) -> dict:
    urls = {agents.url(p): None for p in agents.ports[:count]}
    clusters = {url: cluster for cluster, members in agents.clusters.items() for url in members if url in urls}
    spec = {"kind": kind, "ports": agents.ports[:count], "ca": agents.ca_file, "duration": duration, "cpu": cpu,
            "clusters": clusters, "tree": tree, "cprofile": cprofile}
    spec_file = agents.folder / f"{kind}.json"
    spec_file.write_text(json.dumps(spec))
    nginx0 = agents.cpu_seconds()
    done = subprocess.run([sys.executable, str(BENCH), "--client", str(spec_file)], capture_output=True, text=True,
                          timeout=duration + 120)
    if done.returncode != 0:
        raise SystemExit(f"{kind} client failed:\n{done.stderr.strip()}")
    result = json.loads(done.stdout)
    if result.get("polls_served"):  # nginx served the warm-up and profiled polls too
        result["nginx_cpu_ms_per_poll"] = 1000 * (agents.cpu_seconds() - nginx0) / result["polls_served"]
    return result
