"""Debounced health on top of each poll's status: `fall` failures down, `rise` successes up."""
from __future__ import annotations

import dataclasses
import enum


class HealthState(str, enum.Enum):
    UNKNOWN = "unknown"  # never polled
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclasses.dataclass(frozen=True)
class Health:
    """An immutable health value; `observe` returns the next one."""

    state: HealthState = HealthState.UNKNOWN
    streak: int = 0  # consecutive polls that disagree with `state` (or agree, while UNKNOWN)

    def observe(self, ok: bool, fall: int, rise: int) -> "Health":
        """The health after one more poll that succeeded (`ok`) or failed."""
        if self.state is HealthState.UNKNOWN:
            return Health(HealthState.HEALTHY if ok else HealthState.UNHEALTHY, 0)
        agrees = ok == (self.state is HealthState.HEALTHY)
        if agrees:
            return Health(self.state, 0)
        streak = self.streak + 1
        if streak >= (rise if ok else fall):
            return Health(HealthState.HEALTHY if ok else HealthState.UNHEALTHY, 0)
        return Health(self.state, streak)

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.HEALTHY
