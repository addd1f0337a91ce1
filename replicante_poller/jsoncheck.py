"""Type checks of decoded JSON with the path of the first problem (`$.shards[2].role`):
one vocabulary for agent answers (polling.validation) and the state file (polling.statefile).

A check returns its value or raises `Problem`; each reader turns that into its own value
at its boundary (an `Invalid` answer, a state file set aside). Paths are formatted by the
caller, and only on failure where it matters (20,000 shards a poll).
"""
from __future__ import annotations

from typing import Any, Callable, NoReturn, Optional, TypeVar

T = TypeVar("T")


class Problem(Exception):
    """Where a document is wrong, and how."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


def fail(path: str, message: str) -> NoReturn:
    raise Problem(path, message)


def kind(value: Any) -> str:
    """A value's JSON kind, as a message says it."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), "something else")


def expect_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        fail(path, f"expected an object, got {kind(value)}")
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        fail(path, f"expected a list, got {kind(value)}")
    return value


def expect_string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        fail(path, f"expected a string, got {kind(value)}")
    return value


def optional(value: Any, path: str, convert: Callable[[Any, str], T]) -> Optional[T]:
    """None stays None; anything else must pass `convert`."""
    return None if value is None else convert(value, path)


def duplicate_key(pairs: list[tuple[str, Any]]) -> Optional[str]:
    """The first key an object gives twice (`json.loads` would keep only its last value), or None."""
    if len({key for key, _ in pairs}) == len(pairs):
        return None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None
