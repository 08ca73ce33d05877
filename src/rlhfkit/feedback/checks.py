"""Checks of what people send, at the edge, so that nothing the databases cannot hold gets in.

Text is refused when it holds a lone surrogate (``"\\ud800"``: JSON can say it, UTF-8 cannot, so
neither SQLite nor an answer could be written) or a NUL (PostgreSQL's text cannot hold one); names
and one-line settings also refuse the other control characters (CR/LF would break a header).
Numbers are bounded: ids fit PostgreSQL's ``integer`` and every setting has a range that keeps the
app working. Each check raises :class:`ValueError` naming the field; callers add the location
(an upload's ``FILE:LINE``) or turn it into a 422. JSON nested deeper than :data:`MAX_NESTING` is
refused, and JSON too deep for Python's parser becomes a DataError at its line, not a RecursionError
(:func:`without_recursion_errors`).
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from rlhfkit.data.errors import DataError, short_repr

MAX_ID = 2**31 - 1
"""The largest id a table can hold (PostgreSQL ``integer``); larger ids name nothing."""
MAX_NESTING = 64
"""How deeply a record's JSON may nest (messages need 3 levels); deeper is refused, not parsed."""


def text_problem(text: str) -> str | None:
    """What makes ``text`` unstorable (a NUL, a lone surrogate), or None."""
    position = text.find("\x00")
    if position >= 0:
        return f"contains a NUL character (U+0000) at position {position}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"contains a lone surrogate (U+{ord(text[error.start]):04X}) at position {error.start}"
    return None


def check_text(value: object, field: str, *, max_chars: int, one_line: bool = False) -> str:
    """``value`` as storable text of at most ``max_chars`` characters (one line, no controls: ``one_line``)."""
    if not isinstance(value, str):
        raise ValueError(f"field '{field}': expected text, got {type(value).__name__}")
    problem = text_problem(value)
    if problem is None and one_line:
        control = next((c for c in value if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            problem = f"contains a control character (U+{ord(control):04X}); use one line of text"
    if problem is None and len(value) > max_chars:
        problem = f"expected at most {max_chars} characters, got {len(value)}"
    if problem is not None:
        raise ValueError(f"field '{field}': {problem}")
    return value


def json_problem(value: object, field: str) -> tuple[str, str] | None:
    """The first (field path, problem) in a JSON value: unstorable text (keys too), or too deep nesting."""
    stack = [(value, field, 0)]
    while stack:
        current, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return path, f"nested more than {MAX_NESTING} levels deep"
        if isinstance(current, str):
            if (problem := text_problem(current)) is not None:
                return path, problem
        elif isinstance(current, dict):
            for key, inner in current.items():
                if (problem := text_problem(key)) is not None:
                    return f"{path}.<key>", problem
                stack.append((inner, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(current, list):
            stack.extend((inner, f"{path}[{index}]", depth + 1) for index, inner in enumerate(current))
    return None


def check_number(value: object, field: str, low: float, high: float, *, integer: bool = False) -> float | int:
    """``value`` (a number, or text of one) within [low, high]; an integer where ``integer``."""
    kind = "a whole number" if integer else "a number"
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        number = int(value) if integer and not isinstance(value, float) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"field '{field}': expected {kind} from {low:g} to {high:g}") from None
    if isinstance(number, float) and (not math.isfinite(number) or (integer and not number.is_integer())):
        raise ValueError(f"field '{field}': expected {kind} from {low:g} to {high:g}, got {short_repr(value)}")
    if not low <= number <= high:
        raise ValueError(f"field '{field}': expected {kind} from {low:g} to {high:g}, got {number:g}")
    return int(number) if integer else number


def without_recursion_errors(rows: Iterator, path: Path, text: str = "") -> Iterator[tuple[str, dict | DataError]]:
    """The rows; JSON too deep for Python's parser (a RecursionError) becomes a DataError at its line
    (found in ``text`` where given, else counted as a record)."""
    count = 0
    try:
        for location, row in rows:
            count += 1
            yield location, row
    except RecursionError:
        line = next((number for number, line in enumerate(text.split("\n"), start=1)
                     if line.strip() and too_deep_to_parse(line)), None)
        where = f"{path}:{line}" if line is not None else f"{path}: record {count}"
        raise DataError(f"{where}: JSON nested too deeply to read (at most {MAX_NESTING} levels)") from None


def too_deep_to_parse(line: str) -> bool:
    try:
        json.loads(line)
    except RecursionError:
        return True
    except ValueError:
        pass
    return False
