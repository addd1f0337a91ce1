"""`replicante-poller demo`: simulated agents with a throw-away CA, and the service polling them.

The fleet mixes both agent generations (legacy and replisdk clusters alternate), each with
real agents' TLS: legacy agents speak TLS 1.2 only, replisdk agents 1.3 only, and since their
actions are on, both demand the poller's client certificate. Everything runs on loopback in
one process and in a temporary folder removed at exit.
"""
from __future__ import annotations

import argparse
import http.client
import os
import ssl
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from ..actions.api import submit
from ..actions.httpsig import sign_action
from ..actions.signing import generate_keypair, signer_from_seed
from ..agentapi import LEGACY
from ..agentside.verifier import Keyring
from ..cli_signals import install_stop_handlers
from ..config import TlsSettings, load_config
from ..converters import to_duration, to_listen
from ..durations import format_duration
from ..errors import ConfigError
from ..service import Service
from ..web.server import ListenError
from ..web.status import targets_document
from ..actions.protocols import PROTOCOLS
from . import MIXED, AgentSim, Fault, discovery_ini, fleet
from .tls import SimPki, throwaway_pki

DEMO_KIND = "agent.replicante.io/test.success"  # a kind both generations' agents know
DEMO_FAULTS = {
    Fault.NODE_DOWN: 1, Fault.WRONG_CLUSTER: 1, Fault.GARBAGE: 1, Fault.HANGING: 1,
    Fault.SLOW: 1, Fault.HUGE: 1, Fault.BAD_SCHEMA: 1, Fault.WRONG_CONTENT_TYPE: 1, Fault.AGENT_ERROR: 1,
}


def _duration(text: str) -> float:
    """argparse's form of to_duration: its message (the forms allowed), not `invalid to_duration value`."""
    try:
        return to_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", type=to_listen, default=("127.0.0.1", 9102),
                        help="address of /metrics and the status API (default 127.0.0.1:9102)")
    parser.add_argument("--clusters", type=int, default=4, help="simulated clusters (default 4)")
    parser.add_argument("--nodes-per-cluster", type=int, default=4, help="nodes per cluster (default 4)")
    parser.add_argument("--interval", type=_duration, default=5.0, help="poll interval (default 5s)")
    parser.add_argument("--timeout", type=_duration, default=2.0, help="poll deadline (default 2s)")
    parser.add_argument("--healthy-only", action="store_true", help="simulate no faults")
    parser.add_argument("--generation", choices=("legacy", "replisdk", MIXED), default=MIXED,
                        help="agent API generation of the fleet (default mixed: clusters alternate)")
    parser.add_argument("--duration", type=_duration, default=None, help="stop after this long (default: until Ctrl-C)")


def demo_config(folder: Path, pki: SimPki, args: argparse.Namespace) -> str:
    """The service configuration the demo runs with (written next to the discovery file)."""
    host, port = args.listen
    return (
        "[poller]\n"
        f"interval = {format_duration(args.interval)}\ntimeout = {format_duration(args.timeout)}\n"
        "workers = 8\nfall = 2\nrise = 1\n\n"
        f"{pki.tls_section()}\n"
        f"[discovery]\nfiles = {folder / 'discovery.ini'}\nrefresh = 5s\n\n"
        f"[http]\nlisten = {host}:{port}\n\n"
        f"[actions]\nenabled = true\nsigning_key = {folder / 'core.key'}\njournal = {folder / 'actions.db'}\n"
        "track_interval = 500ms\n"
    )


def table(service: Service) -> str:
    """A fixed-width status table of every agent."""
    lines = [f"{'CLUSTER':<12} {'AGENT':<24} {'API':<9} {'STATUS':<11} {'REASON':<17} MESSAGE"]
    for item in targets_document(service.snapshot())["targets"]:
        lines.append(f"{item['cluster']:<12} {item['url']:<24} {item['api'] or '?':<9} {item['status'] or 'PENDING':<11} "
                     f"{item['reason'] or '-':<17} {item['message'][:70]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    faults = {} if args.healthy_only else DEMO_FAULTS
    needed = sum(faults.values()) + 1
    if args.clusters < 1 or args.nodes_per_cluster < 1 or args.clusters * args.nodes_per_cluster < needed:
        raise ConfigError("command line", None, "--clusters", f"the demo needs at least {needed} agents "
                          f"({sum(faults.values())} faulty and a healthy one); use more clusters or --healthy-only")
    if args.interval <= args.timeout:  # what the service refuses, said in the options given here
        raise ConfigError("command line", None, "--interval", f"{format_duration(args.interval)} must be longer "
                          f"than --timeout ({format_duration(args.timeout)})")
    nodes = fleet(args.clusters, args.nodes_per_cluster, faults, generation=args.generation)
    with tempfile.TemporaryDirectory(prefix="replicante-demo-") as tmp:
        folder = Path(tmp)
        pki = throwaway_pki(folder, client_auth=True)  # actions are on: real agents then demand client certificates
        key_id = generate_keypair(str(folder / "core"))
        keyring = Keyring.from_entries([str(folder / "core.pub")])
        with AgentSim(nodes, pki.contexts, keyring=keyring) as sim:
            (folder / "discovery.ini").write_text(discovery_ini(sim.agents))
            (folder / "poller.ini").write_text(demo_config(folder, pki, args))
            service = Service(load_config(folder / "poller.ini"))
            try:
                service.start()
            except ListenError as exc:
                raise ConfigError("command line", None, "--listen", str(exc)) from None
            try:
                host, port = service.api_address
                generations = sorted({spec.generation for spec in nodes})
                print(f"simulating {len(nodes)} agents ({sum(faults.values())} faulty; {' and '.join(generations)} "
                      f"API) with a throw-away CA in {folder}")
                print(f"status page: http://{host}:{port}/")
                print(f"targets:     http://{host}:{port}/api/v1/targets")
                print(f"metrics:     http://{host}:{port}/metrics")
                print(f"actions are signed with the throw-away key {key_id}; the agents enforce signatures")
                print("Ctrl-C to stop.", flush=True)
                _report(service, args, sim)
            finally:
                service.stop()
    return 0


def _report(service: Service, args: argparse.Namespace, sim: AgentSim) -> None:
    """The table after the first full cycle, a signed action followed to DONE, then a
    summary line every interval."""
    stop = threading.Event()
    install_stop_handlers(stop)
    if args.duration is not None:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    if stop.wait(args.interval + args.timeout):
        return
    print(table(service), flush=True)
    if _demo_actions(service, sim, stop):
        return
    _demo_forgery(sim, service.config.tls)
    while not stop.wait(args.interval):
        views = service.snapshot()
        up = sum(1 for v in views if v.result and v.result.ok)
        print(f"{up}/{len(views)} agents UP", flush=True)


def _healthy(sim: AgentSim) -> dict[str, str]:
    """A healthy agent's URL per generation."""
    found: dict[str, str] = {}
    for spec, url in sim.agents:
        if spec.fault is Fault.HEALTHY:
            found.setdefault(spec.generation, url)
    return found


def _demo_forgery(sim: AgentSim, tls: TlsSettings) -> None:
    """Send an action signed by a key the agents do not trust, and show it refused."""
    healthy = [(s, u) for s, u in sim.agents if s.fault is Fault.HEALTHY]
    if not healthy:
        return
    spec, url = healthy[0]
    forger = signer_from_seed(os.urandom(32))
    path, body = PROTOCOLS[spec.generation].request(str(uuid.uuid4()), DEMO_KIND, None, time.time())
    headers = sign_action(method="POST", path=path, body=body, agent_url=url, cluster_id=spec.cluster_id, node_id=spec.node_id,
                          key_id=forger.key_id, sign=forger.sign, now=int(time.time()), nonce=os.urandom(16))
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.client_cert:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=5, context=context)
    try:
        conn.request("POST", path, body, headers)
        status = conn.getresponse().status
    except OSError as exc:
        print(f"forged action: could not send ({exc})")
        return
    finally:
        conn.close()
    print(f"forged action signed by untrusted key {forger.key_id} to a {spec.generation} agent: HTTP {status} "
          f"({'refused' if status == 401 else 'NOT refused'})", flush=True)


def _demo_actions(service: Service, sim: AgentSim, stop: threading.Event) -> bool:
    """Submit a signed test action to a healthy agent of each generation and print their
    states until final. Returns True when asked to stop meanwhile."""
    journal = service.journal
    if journal is None:
        return False
    actions = {}
    for generation, url in sorted(_healthy(sim).items(), key=lambda item: item[0] != LEGACY):
        action = submit(journal, service.find_target, url, DEMO_KIND, {"message": "hello from the demo"})
        actions[action.id] = action
        print(f"submitted action {action.id} ({DEMO_KIND}) to {generation} agent {url}", flush=True)
    seen: dict[str, object] = {action_id: None for action_id in actions}
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up and any(state is None or not state.final for state in seen.values()):
        for action_id in actions:
            current = journal.wait_for(action_id, lambda a: a.state != seen[action_id], 0.25)  # wakes on a change
            if current is not None and current.state != seen[action_id]:
                seen[action_id] = current.state
                print(f"  action {action_id}: {current.state.value} ({current.message})", flush=True)
        if stop.is_set():
            return True
    return False
