"""The `agent-sim` verb, and the discovery file a poller needs to reach a simulated fleet
(with the CA, client certificate and [tls] settings of `tls.throwaway_pki`)."""
from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import threading
from collections.abc import Iterable

from ..agentapi import GENERATIONS, LEGACY
from ..agentside.verifier import Keyring
from .faults import MIXED, Fault, NodeSpec, fleet
from .server import AgentSim
from .tls import throwaway_pki

def discovery_ini(agents: Iterable[tuple[NodeSpec, str]]) -> str:
    """INI discovery text: one [cluster:ID] section per cluster, in order of first appearance."""
    clusters: dict[str, tuple[list[str], list[str]]] = {}
    for spec, url in agents:
        urls, names = clusters.setdefault(spec.cluster_id, ([], []))
        urls.append(url)
        if spec.display_name and not names:
            names.append(spec.display_name)
    sections = []
    for cluster_id, (urls, names) in clusters.items():
        lines = [f"[cluster:{cluster_id}]"] + [f"display_name = {name}" for name in names]
        sections.append("\n".join(lines + ["agents = " + ", ".join(urls)]) + "\n")
    return "\n".join(sections)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `agent-sim` verb."""
    parser.add_argument("--clusters", type=int, default=3, help="number of clusters (default 3)")
    parser.add_argument("--nodes-per-cluster", type=int, default=3, help="nodes per cluster (default 3)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=COUNT",
                        help="give COUNT nodes a fault, repeatable; NAME in: "
                        + ", ".join(f.value for f in Fault if f is not Fault.HEALTHY))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--generation", choices=[*GENERATIONS, MIXED], default=LEGACY,
                        help="agent API: legacy (TLS 1.2), replisdk (TLS 1.3), or mixed: clusters "
                             "alternate, the first legacy (default legacy)")
    parser.add_argument("--out", type=pathlib.Path, required=True,
                        help="directory for ca.pem, discovery.ini, tls.ini and (actions on) client.pem, client.key")
    parser.add_argument("--drip-seconds", type=float, default=1.0,
                        help="seconds between bytes of a slow agent (default 1.0)")
    parser.add_argument("--no-actions", dest="actions", action="store_false",
                        help="agents with actions disabled: 404 with an empty body on the actions paths, "
                             "and no client certificate required (with actions on, agents require one, "
                             "as real agents are deployed: it is issued into --out)")
    parser.add_argument("--action-seconds", type=float, default=0.2,
                        help="seconds per action step, NEW -> RUNNING -> DONE (default 0.2)")
    parser.add_argument("--enforce-keys", default=None, metavar="PUB[,PUB...]",
                        help="enforcing mode: refuse schedule requests not signed by one of these public keys")


def _parse_faults(values: Iterable[str]) -> dict[Fault, int]:
    faults: dict[Fault, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        try:
            fault = Fault(name.strip().lower().replace("-", "_"))
        except ValueError:
            raise ValueError(f"--fault {value!r}: unknown fault {name!r}; expected one of "
                             + ", ".join(f.value for f in Fault)) from None
        if not sep or not count.strip().isdigit():
            raise ValueError(f"--fault {value!r}: expected NAME=COUNT with COUNT a whole number")
        faults[fault] = faults.get(fault, 0) + int(count)
    return faults


def main(args: argparse.Namespace) -> int:
    """The `agent-sim` verb: serve a simulated fleet until SIGINT/SIGTERM."""
    try:
        nodes = fleet(args.clusters, args.nodes_per_cluster, _parse_faults(args.fault), args.generation)
        if args.drip_seconds <= 0:
            raise ValueError("--drip-seconds must be positive")
        if args.action_seconds < 0:
            raise ValueError("--action-seconds must not be negative")
        keyring = None
        if args.enforce_keys:
            keyring = Keyring.from_entries(k for k in args.enforce_keys.split(",") if k.strip())
    except ValueError as exc:
        print(f"agent-sim: {exc}", file=sys.stderr)
        return 2
    try:
        pki = throwaway_pki(args.out, client_auth=args.actions)
        sim = AgentSim(nodes, pki.contexts, host=args.host, drip_seconds=args.drip_seconds,
                       actions=args.actions, action_seconds=args.action_seconds, keyring=keyring).start()
    except OSError as exc:
        print(f"agent-sim: cannot start: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stopping.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        discovery, tls = args.out / "discovery.ini", args.out / "tls.ini"
        discovery.write_text(discovery_ini(sim.agents))
        tls.write_text(pki.tls_section())
        for spec, url in sim.agents:
            print(f"{url} cluster={spec.cluster_id} node={spec.node_id} fault={spec.fault.value} "
                  f"api={spec.generation}")
        print(f"CA certificate: {pki.ca_file}")
        print(f"discovery file: {discovery}")
        if pki.client_cert is not None:
            print(f"client certificate: {pki.client_cert}")
            print(f"client key: {pki.client_key}")
        print(f"poller [tls] settings: {tls}", flush=True)
        stopping.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sim.stop()
    return 0
