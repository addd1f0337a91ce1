"""Whom to sign for, for agents this instance does not poll: the elected dispatcher of a
coordinated fleet delivers to every agent, but polls only the clusters it holds. For the
others it polls the agent once itself (the same validated poll, over the same verified TLS)
and remembers the answer for the target's poll interval.

The owner's cluster-wide checks (duplicate node ids) cannot run on one probe: the service
signs only when the health the owner published agrees (`Service._probed_identity`), and
the signature binds the agent URL the dispatcher dialed (profile v2).
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from ..polling.discovery import Target
from ..polling.poll import poll_target
from ..polling.transport import Transport
from ..reasons import Reason
from .dispatcher import AgentIdentity

UNTRUSTED_IDENTITY = (Reason.CLUSTER_MISMATCH, Reason.DUPLICATE_NODE)


class IdentityProbe:
    """`identity(target)`: from a poll of its own, at most one per target per interval."""

    def __init__(self, transport: Transport, clock: Callable[[], float] = time.time):
        self._transport, self._clock = transport, clock
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, Optional[AgentIdentity]]] = {}  # url -> (until, identity)

    def identity(self, target: Target) -> Optional[AgentIdentity]:
        """The agent's cluster id, node id and API generation, or None when its poll failed."""
        now = time.monotonic()
        with self._lock:
            until, known = self._known.get(target.url, (0.0, None))
        if until > now:
            return known
        client = self._transport.client()
        try:
            result = poll_target(client, target, self._clock)
        finally:
            client.close()
        identity = None
        if result.datastore is not None and result.api is not None and result.reason not in UNTRUSTED_IDENTITY:
            identity = AgentIdentity(result.datastore.cluster_id, result.datastore.node_id, result.api)
        with self._lock:
            self._known[target.url] = (now + target.poll.interval, identity)
        return identity

    def generation(self, target: Target) -> Optional[str]:
        identity = self.identity(target)
        return identity.api if identity is not None else None
