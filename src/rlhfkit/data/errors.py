"""The error raised for data that cannot be read, and helpers that write its messages.

Every message starts with the location of the problem (``FILE:LINE``, ``FILE: row N`` or
``FILE: record N (line L)``), then names the field, what was expected and what was found, e.g.::

    data/prefs.jsonl:7: field 'chosen': expected a string or a list of {"role", "content"} messages, got int (42)
"""

from __future__ import annotations

from typing import Any

MAX_SHOWN_CHARS = 60
"""How many characters of a found value an error message shows before cutting it short."""


class DataError(ValueError):
    """A file or record that cannot be read as the expected data; the message says where and why."""


def short_repr(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """The repr of ``value``, cut to about ``limit`` characters so that messages stay readable."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def describe_value(value: Any) -> str:
    """A found value as error messages show it: its type name and a short repr, e.g. ``int (42)``."""
    if value is None:
        return "null"
    if isinstance(value, list) and not value:
        return "an empty list"
    return f"{type(value).__name__} ({short_repr(value)})"


def wrong_value(location: str, field: str, expected: str, found: Any) -> DataError:
    """The error for a field whose value is not what was expected."""
    return DataError(f"{location}: field '{field}': expected {expected}, got {describe_value(found)}")


def missing_field(location: str, field: str, expected: str, record: dict) -> DataError:
    """The error for a required field that the record lacks; lists the fields it has, to show typos."""
    present = ", ".join(repr(name) for name in record) or "none"
    return DataError(
        f"{location}: field '{field}': missing (expected {expected}); the record has fields: "
        f"{short_repr_text(present)}"
    )


def short_repr_text(text: str, limit: int = MAX_SHOWN_CHARS * 2) -> str:
    """``text`` cut to about ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."
