"""Debounced health on top of each poll's status.

`fall` consecutive failures turn a target unhealthy, `rise` successes turn it healthy
again; a target whose health changed `flap_threshold` times within `flap_window` seconds
is flapping. Values are immutable: `observe` returns the next one.
"""
from __future__ import annotations

import dataclasses
import enum

from ..limits import FLAP_THRESHOLD, FLAP_WINDOW


class HealthState(str, enum.Enum):
    UNKNOWN = "unknown"  # never polled
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclasses.dataclass(frozen=True)
class HealthPolicy:
    """How health is debounced and when it is flapping."""

    fall: int = 3
    rise: int = 2
    flap_window: float = FLAP_WINDOW
    flap_threshold: int = FLAP_THRESHOLD


@dataclasses.dataclass(frozen=True)
class Health:
    """An immutable health value."""

    state: HealthState = HealthState.UNKNOWN
    streak: int = 0  # consecutive polls that disagree with `state`
    transitions: tuple[float, ...] = ()  # when the state changed, within the flap window

    def observe(self, ok: bool, fall: int, rise: int, now: float = 0.0, flap_window: float = FLAP_WINDOW) -> "Health":
        """The health after one more poll that succeeded (`ok`) or failed, at `now`."""
        recent = tuple(t for t in self.transitions if now - t < flap_window)
        if self.state is HealthState.UNKNOWN:
            return Health(HealthState.HEALTHY if ok else HealthState.UNHEALTHY, 0, recent)
        if ok == (self.state is HealthState.HEALTHY):
            return Health(self.state, 0, recent)
        streak = self.streak + 1
        if streak >= (rise if ok else fall):
            return Health(HealthState.HEALTHY if ok else HealthState.UNHEALTHY, 0, recent + (now,))
        return Health(self.state, streak, recent)

    def apply(self, ok: bool, policy: HealthPolicy, now: float) -> "Health":
        """`observe` with a policy."""
        return self.observe(ok, policy.fall, policy.rise, now, policy.flap_window)

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.HEALTHY

    def flapping(self, policy: HealthPolicy) -> bool:
        """Whether health changed at least `flap_threshold` times in the window."""
        return len(self.transitions) >= policy.flap_threshold
