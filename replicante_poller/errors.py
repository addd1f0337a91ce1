"""Exceptions raised at the edges of the service (configuration, command line)."""
from __future__ import annotations


class PollerError(Exception):
    """Base of the errors this package raises on purpose."""


class ConfigError(PollerError, ValueError):
    """A configuration problem, located by file, section and key."""

    def __init__(self, source: str, section: str | None, key: str | None, message: str):
        self.source, self.section, self.key, self.message = source, section, key, message
        where = source
        if section is not None:
            where += f": [{section}]"
        if key is not None:
            where += f" {key}"
        super().__init__(f"{where}: {message}")


class StoreError(PollerError):
    """A SQLite store (action journal, replay store) that cannot be opened or used."""

    def __init__(self, path: str, what: str, problem: object):
        self.path = path
        super().__init__(f"{path}: {what}: {problem}")
