"""Numbers several layers share, one home for each (DESIGN sections 5 and 7)."""
from __future__ import annotations

MAX_BODY = 64 * 1024  # default cap of a JSON body: agent answers, action submissions, gateway requests
MAX_SHARDS_BODY = 8 * 1024 * 1024  # default cap of a shards answer: a 20,000-partition Kafka broker sends ~2.3 MB
ACTION_TTL = 60  # seconds a signed action is valid, by default
MAX_ACTION_TTL = 300  # the longest a signature may be valid: signers refuse more, verifiers too
CLOCK_SKEW = 30  # seconds of clock difference a verifier allows each way
FLAP_WINDOW = 600.0  # seconds within which health changes count towards flapping
FLAP_THRESHOLD = 4  # health changes within the window that make a target flapping
MAX_RETRY_AFTER = 300.0  # the longest an agent's Retry-After defers its polls
MAX_BACKOFF = 60.0  # the longest wait between two attempts of an action
MAX_SCHEDULE_BODY = 32 * 1024  # released legacy agents refuse larger schedule bodies (an empty 413)
MAX_ARGS_DEPTH = 64  # nesting of action args (JSON arrays and objects)


def backoff(base: float, attempt: int) -> float:
    """The wait after failed attempt `attempt` (1 for the first): `base` doubled each time,
    at most MAX_BACKOFF."""
    return min(MAX_BACKOFF, base * 2 ** min(max(attempt, 1) - 1, 16))
