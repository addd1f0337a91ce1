"""Log line formats: `text` for people, `json` (one object a line) for log pipelines."""
from __future__ import annotations

import json
import logging

from .durations import rfc3339

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` plus `"exception"` (the traceback) when there
    is one; UTC RFC 3339 with milliseconds, as the status API writes times."""

    def format(self, record: logging.LogRecord) -> str:
        document = {"time": rfc3339(record.created), "level": record.levelname.lower(), "logger": record.name,
                    "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False)
