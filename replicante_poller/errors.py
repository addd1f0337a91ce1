"""The errors this package raises on purpose, all under `PollerError`: caught at the edges
(command line, service start, reload) and shown as one line."""
from __future__ import annotations


def os_problem(exc: BaseException) -> str:
    """An OS error in the system's words, lower-case and without its errno (`permission
    denied`, `no such file or directory`); any other exception as its text."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text[:1].lower() + text[1:]


class PollerError(Exception):
    """Base of the errors this package raises on purpose."""

    exit_code = 2  # of the command line: a configuration or resource problem


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


class JournalConflict(StoreError):
    """A journal write that found the record changed by another writer: nothing was written."""


class KeyFileError(PollerError, ValueError):
    """A key file that cannot be used; the message names the file and the fix."""

    def __init__(self, source: str, message: str):
        self.source, self.message = source, message
        super().__init__(f"{source}: {message}")


class SignatureFormatError(PollerError, ValueError):
    """A signature header, or a message, that does not fit the profile."""


class SubmissionError(PollerError, ValueError):
    """An action submission that cannot be queued; the message says why."""


class ActionNotFound(PollerError, LookupError):
    """No action, or several, match the id (or prefix) given; the message says which."""

    exit_code = 1


class CancelRefused(PollerError):
    """An action that cannot be cancelled (not PENDING, or an attempt in flight); the message says why."""

    exit_code = 1
