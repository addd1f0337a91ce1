"""What tells a changed file from an unchanged one, cheaply: names, mtimes and sizes."""
from __future__ import annotations

import os
from typing import Iterable, Union

Stamp = tuple[tuple[str, float, int], ...]


def file_stamp(paths: Iterable[Union[str, "os.PathLike[str]"]]) -> Stamp:
    """(name, mtime, size) of each file, a missing one as (name, -1, -1): compare two
    stamps to know whether any file changed, appeared or went."""
    stamps = []
    for path in paths:
        name = os.fspath(path)
        try:
            st = os.stat(name)
            stamps.append((name, st.st_mtime, st.st_size))
        except OSError:
            stamps.append((name, -1.0, -1))
    return tuple(stamps)
