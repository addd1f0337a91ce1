"""The recent polls of one target, for its status page: the last RECENT polls, plus the
last FAILURES failures even when they are older.

A fleet of 10,000 agents keeps this for every agent, so it is packed: one `bytes` value of
fixed-size records (start, duration, status, reason) and a tuple of the messages, two
objects an agent whatever the length, none of them followed by the garbage collector. A
message equal to one already kept is the same string object. Values are immutable:
`add` returns the next history. It lives in memory only (never in the state file).
"""
from __future__ import annotations

import dataclasses
import struct
from typing import Optional

from ..reasons import Reason, Status
from .poll import PollResult

RECENT = 20  # the latest polls, whatever their outcome
FAILURES = 10  # the latest failures, kept even when older than the RECENT polls

_RECORD = struct.Struct("<dfBB")  # started (unix s), duration (s), status, reason (0: none)
_STATUSES = tuple(Status)
_REASONS = (None, *Reason)
_STATUS_CODE = {status: i for i, status in enumerate(_STATUSES)}
_REASON_CODE = {reason: i for i, reason in enumerate(_REASONS)}


@dataclasses.dataclass(frozen=True)
class PollOutcome:
    """One poll as its target's page lists it."""

    started: float
    duration: float
    status: Status
    reason: Optional[Reason]
    message: str

    @property
    def ok(self) -> bool:
        return self.status is Status.UP


@dataclasses.dataclass(frozen=True)
class PollHistory:
    """Recent polls, oldest first: `packed` holds one record a poll, `messages` their messages."""

    packed: bytes = b""
    messages: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.messages)

    def add(self, result: PollResult, recent: int = RECENT, failures: int = FAILURES) -> "PollHistory":
        """This history with `result` appended, trimmed to the last `recent` polls and the
        last `failures` failures."""
        message = next((m for m in self.messages if m == result.message), result.message)
        records = [self.packed[i:i + _RECORD.size] for i in range(0, len(self.packed), _RECORD.size)]
        records.append(_RECORD.pack(result.started, result.duration, _STATUS_CODE[result.status],
                                    _REASON_CODE[result.reason]))
        messages = (*self.messages, message)
        if len(records) > recent:
            failed = [i for i, record in enumerate(records) if record[-2] != _STATUS_CODE[Status.UP]]
            keep = set(range(len(records) - recent, len(records))) | set(failed[-failures:] if failures else ())
            records = [r for i, r in enumerate(records) if i in keep]
            messages = tuple(m for i, m in enumerate(messages) if i in keep)
        return PollHistory(b"".join(records), messages)

    def outcomes(self) -> tuple[PollOutcome, ...]:
        """Every kept poll, oldest first."""
        return tuple(
            PollOutcome(started, duration, _STATUSES[status], _REASONS[reason], message)
            for (started, duration, status, reason), message in zip(_RECORD.iter_unpack(self.packed), self.messages))
