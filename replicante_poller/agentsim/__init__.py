"""Reference agent simulator: many Replicante agents ("unstable" API) over HTTPS on loopback.

One listening socket per simulated node, ONE acceptor thread multiplexing all of them with
`selectors`, and one short-lived daemon thread per accepted connection (TLS handshake and a
small HTTP/1.1 keep-alive loop). Response bytes are built once per node at start, so the
simulator is cheap enough to be the benchmark server too.

The actions API (`/api/unstable/actions/*`) is the one dynamic part: each node keeps its
actions in memory, and ONE executor thread per simulator moves them NEW -> RUNNING -> final,
woken by a Condition. `actions=False` gives agents with actions disabled (404, empty body).

Modules: `faults` (the fleet), `wire` (HTTP/1.1), `api` (paths, error answers), `bodies`
(GET routes by kind and fault), `schedule` and `actions` (the actions API), `server`
(AgentSim), `cli` (the `agent-sim` verb, CA and discovery files).
"""
from .actions import DONE, FAILED, FORGOTTEN, MAX_ACTION_BODY, NEW, RUNNING, Verifier
from .cli import _parse_faults as _parse_faults  # private, but tests use it
from .cli import add_arguments, discovery_ini, main, throwaway_ca
from .faults import Fault, NodeSpec, fleet
from .server import IDLE_TIMEOUT, AgentSim

__all__ = [
    "DONE", "FAILED", "FORGOTTEN", "IDLE_TIMEOUT", "MAX_ACTION_BODY", "NEW", "RUNNING",
    "AgentSim", "Fault", "NodeSpec", "Verifier", "add_arguments",
    "discovery_ini", "fleet", "main", "throwaway_ca",
]
