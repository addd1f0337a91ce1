"""The open-file limit a process needs, checked at start and raised when the hard limit
allows: running out of descriptors later would show as healthy agents failing to connect."""
from __future__ import annotations

import resource

FILES_RESERVE = 64  # logs, journal and state files, TLS material, resolver threads, pipes


def ensure_fd_limit(needed: int, change: bool = True) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `needed` when it is lower; (soft before, soft after).
    With `change` False, only say whether it could be raised (the limit stays as it is).

    Raises ValueError saying both figures when the hard limit is below `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft, soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"the open-file limit is {soft} (hard limit {hard}), below the {needed} needed")
    if change:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, needed
