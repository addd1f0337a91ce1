"""Time as the project writes it: durations as operators type them (`15s`, `2m`, `500ms`,
`1h`, `1m30s`) and RFC 3339 timestamps."""
from __future__ import annotations

import datetime
import re
import time
from typing import Optional

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; ValueError with the accepted forms when it is not a duration."""
    value = text.strip()
    pos, total = 0, 0.0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not value or pos != len(value):
        raise ValueError(f"{text!r} is not a duration (use forms like 15s, 2m, 500ms, 1h)")
    return total


def format_duration(seconds: float) -> str:
    """Short human form of a duration, the inverse of parse_duration for whole units."""
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def rfc3339(timestamp: Optional[float]) -> Optional[str]:
    """UTC RFC 3339 with milliseconds, or None (the API's and the journal's time format)."""
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_seconds(timestamp: float) -> str:
    """Whole-second RFC 3339 in UTC, as agents write timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
