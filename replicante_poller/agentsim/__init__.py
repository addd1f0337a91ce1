"""Reference agent simulator: many Replicante agents ("unstable" API) over HTTPS on loopback,
of both generations: legacy agents (replicante-io/agents; DESIGN section 1) and replisdk
agents (`../shared/agent-api-replisdk.md`), each node serving exactly its generation's API
(the other generation's paths answer an empty 404).

One listening socket per simulated node, ONE acceptor thread multiplexing all of them with
`selectors`, and one short-lived daemon thread per accepted connection (TLS handshake and a
small HTTP/1.1 keep-alive loop). Response bytes are built once per node at start (replisdk
answers in both plain and gzip form, as actix-web's Compress middleware serves them), so the
simulator is cheap enough to be the benchmark server too.

The actions APIs are the one dynamic part: each node keeps its actions in memory, and ONE
executor thread per simulator moves them NEW -> RUNNING -> final (legacy: every action a step
each `action_seconds`; replisdk: one action per node per tick, as the SDK's executor), and
deletes finished ones as the agents do (legacy: the newest 100 kept, every `prune_interval`;
replisdk: after `clean_age`), woken by a Condition. `actions=False` gives agents with actions
disabled (404, empty body). TLS as real agents: `server_contexts` gives legacy nodes TLS 1.2
only and replisdk nodes TLS 1.3 only, requiring a client certificate given a client CA.

Modules: `faults` (the fleet), `wire` (HTTP/1.1), `api` (error answers of both generations),
`hostile` (hostile answers), `bodies` (legacy GET routes), `replisdk` (replisdk GET routes),
`engine` (the executor thread), `actions` and `schedule` (the legacy actions API), `sdkactions`
and `sdkrequest` (the replisdk actions API), `tls` (server contexts, throw-away CA and client
certificate), `server` (AgentSim), `cli` (the `agent-sim` verb, discovery file).
"""
from .actions import MAX_ACTION_BODY
from .cli import _parse_faults as _parse_faults  # private, but tests use it
from .cli import add_arguments, discovery_ini, main
from .engine import DONE, FAILED, FORGOTTEN, NEW, PRUNED, RUNNING, Verifier
from .faults import MIXED, NODE_STATUSES, Fault, NodeSpec, fleet
from .sdkrequest import MAX_JSON_BODY
from .server import CLEAN_AGE, IDLE_TIMEOUT, PRUNE_INTERVAL, AgentSim
from .tls import SimPki, server_contexts, throwaway_ca, throwaway_pki

__all__ = [
    "CLEAN_AGE", "DONE", "FAILED", "FORGOTTEN", "IDLE_TIMEOUT", "MAX_ACTION_BODY", "MAX_JSON_BODY",
    "MIXED", "NEW", "NODE_STATUSES", "PRUNE_INTERVAL", "PRUNED", "RUNNING",
    "AgentSim", "Fault", "NodeSpec", "SimPki", "Verifier", "add_arguments", "discovery_ini",
    "fleet", "main", "server_contexts", "throwaway_ca", "throwaway_pki",
]
