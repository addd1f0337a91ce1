"""Whether the service can write in a folder (`[poller] state_dir`, the action journal's):
checked the only reliable way, by creating and removing a file there (`os.access` is
wrong for root, ACLs, read-only mounts and full disks)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

from .errors import os_problem


def _try_file(folder: Path) -> Optional[str]:
    """None when a file can be created (and removed) in `folder`, else why not."""
    try:
        fd, name = tempfile.mkstemp(prefix=".replicante-poller-probe-", dir=folder)
    except OSError as exc:
        return f"cannot create a file in {folder}: {os_problem(exc)}"
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:
        return f"cannot remove a file from {folder}: {os_problem(exc)}"
    return None


def make_writable_folder(path: str) -> Optional[str]:
    """Create `path` (and its parents) if absent and write a file in it; None when that
    worked, else one line saying which path failed and why (what `run` checks): the same
    line `writable_folder` gives for the same problem."""
    problem = writable_folder(path)
    if problem is not None:
        return problem
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {folder}: {os_problem(exc)}"
    return _try_file(folder)


def writable_folder(path: str) -> Optional[str]:
    """What `make_writable_folder` would say, without creating anything that is absent:
    the nearest existing folder on the way must be a folder, and writable (`check-config`)."""
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {folder}: {existing} is not a directory"
    problem = _try_file(existing)
    if problem is not None and existing != folder:
        return f"cannot create {folder}: {problem}"
    return problem
