"""The fixed vocabularies of a poll: statuses and failure reasons (DESIGN section 2 and 6)."""
from __future__ import annotations

import enum
import errno


class Status(str, enum.Enum):
    """Status of one agent after one poll."""

    UP = "UP"
    AGENT_DOWN = "AGENT_DOWN"
    NODE_DOWN = "NODE_DOWN"


class Reason(str, enum.Enum):
    """Why a poll failed; the label values of `poll_failures_total{reason}`."""

    DNS = "dns"
    CONNECT = "connect"
    CONNECT_TIMEOUT = "connect_timeout"
    TLS_HANDSHAKE = "tls_handshake"
    TLS_VERIFY = "tls_verify"
    TLS_PIN = "tls_pin"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"
    HTTP_STATUS = "http_status"
    TOO_LARGE = "too_large"
    CONTENT_TYPE = "content_type"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    CLUSTER_MISMATCH = "cluster_mismatch"
    DUPLICATE_NODE = "duplicate_node"
    NODE_UNAVAILABLE = "node_unavailable"  # a replisdk agent reports node_status UNAVAILABLE
    LOCAL = "local"  # the poller itself could not try (out of file descriptors): not the agent's fault
    INTERNAL = "internal"


# errnos that mean this process or host ran out of something, whatever the agent does
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})


def transient_status(status: int) -> bool:
    """An HTTP status that may change on retry: 408, 425, 429 and every 5xx."""
    return status in (408, 425, 429) or 500 <= status <= 599
