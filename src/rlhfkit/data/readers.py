"""Reading records from files, and the loaders that turn them into checked training records.

Formats, chosen by the path:

* ``.jsonl`` / ``.jsonl.gz``: one JSON object per line (blank lines are skipped);
* ``.json`` / ``.json.gz``: a top-level array of objects, or JSON-lines content;
* ``.parquet``: one record per row;
* ``.csv``: a header row of field names, then one record per row; list fields may hold JSON text;
* a directory: a Hugging Face dataset made by ``save_to_disk``; ``DIR:split`` picks a split of a
  DatasetDict (``train`` by default).

Locations in messages: ``FILE:LINE`` (lines count from 1), ``FILE: row N`` for Parquet and Hugging
Face datasets and ``FILE: record N (line L)`` for JSON arrays (rows and records count from 0, as
indexes into the table or array).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from rlhfkit.data.errors import DataError, short_repr
from rlhfkit.data.records import (
    BinaryFeedback,
    Demonstration,
    Preference,
    PromptRecord,
    Ranking,
    is_binary_feedback_record,
    is_ranking_record,
    parse_binary_feedback,
    parse_demonstration,
    parse_preference,
    parse_prompt,
    parse_ranking,
    ranking_to_pairs,
)

logger = logging.getLogger("rlhfkit.data")

FORMATS_EXPECTED = ".jsonl, .jsonl.gz, .json, .json.gz, .parquet, .csv, or a Hugging Face dataset folder"

CSV_LIST_FIELDS = frozenset({"messages", "responses", "ranks", "chosen", "rejected", "prompt", "completion"})
"""CSV columns whose cells may hold JSON text (a list of messages, responses or ranks)."""

CSV_FIELDS_ABSENT_WHEN_EMPTY = frozenset({"margin", "source", "messages", "responses", "ranks"})
"""CSV columns where an empty cell means the field is absent: the optional fields, and the fields that
can only hold lists (so pair and ranking rows, which leave each other's columns empty, can share a file).
Other empty cells are empty strings: an empty ``prompt`` cell is an empty prompt, not a missing one."""

MAX_LISTED_SKIPS = 10
"""How many skipped records the skip warning lists before saying "and N more"."""

RawRow = dict | DataError
"""A row as read from a file: the record, or the error that makes it unreadable."""

RecordT = TypeVar("RecordT")


# ---------------------------------------------------------------- opening files


def open_text(path: Path) -> TextIO:
    """``path`` opened for reading text, decompressing ``.gz`` files."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_text(path: Path) -> str:
    """The whole text of ``path`` (decompressed if ``.gz``); undecodable bytes are a DataError."""
    try:
        with open_text(path) as file:
            return file.read()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"{path}: cannot read the file as UTF-8 text ({error})") from error


# ---------------------------------------------------------------- JSON lines and JSON


def jsonl_rows(path: Path, text: str) -> Iterator[tuple[str, RawRow]]:
    """Rows of JSON-lines text: ``FILE:LINE`` and each non-blank line's object (or its error)."""
    # Split on "\n" only: str.splitlines would also split on characters such as U+2028, which JSON
    # strings may hold as they are.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        location = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield location, DataError(f"{location}: invalid JSON ({error})")
            continue
        yield location, object_or_error(row, location)


def object_or_error(row: Any, location: str) -> RawRow:
    """``row`` if it is a JSON object, else the DataError saying it is not."""
    if isinstance(row, dict):
        return row
    return DataError(f"{location}: expected a JSON object, got {type(row).__name__} ({short_repr(row)})")


def skip_whitespace(text: str, index: int) -> int:
    """The first index at or after ``index`` that is not JSON whitespace."""
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def line_of(text: str, index: int) -> int:
    """The line number (from 1) of position ``index`` in ``text``."""
    return text.count("\n", 0, index) + 1


def json_array_rows(path: Path, text: str) -> Iterator[tuple[str, RawRow]]:
    """Rows of a JSON array, located as ``FILE: record N (line L)`` by where each element starts.

    The array is scanned one element at a time; a syntax error anywhere is a DataError for the file.
    """
    decoder = json.JSONDecoder()
    index = skip_whitespace(text, text.index("[") + 1)
    line, counted_up_to = 1, 0
    record_number = 0
    is_empty = text.startswith("]", index)
    while not is_empty:
        line += text.count("\n", counted_up_to, index)
        counted_up_to = index
        location = f"{path}: record {record_number} (line {line})"
        try:
            element, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON ({error})") from error
        yield location, object_or_error(element, location)
        record_number += 1
        index = skip_whitespace(text, index)
        if text.startswith("]", index):
            break
        if not text.startswith(",", index):
            raise DataError(
                f"{path}:{line_of(text, index)}: invalid JSON (expected ',' or ']' after an array element)"
            )
        index = skip_whitespace(text, index + 1)
    rest = skip_whitespace(text, index + 1)
    if rest < len(text):
        raise DataError(f"{path}:{line_of(text, rest)}: invalid JSON (extra text after the top-level array)")


def json_rows(path: Path, text: str) -> Iterator[tuple[str, RawRow]]:
    """Rows of a ``.json`` file: a top-level array of objects, one object, or JSON lines."""
    start = skip_whitespace(text, 0)
    if text.startswith("[", start):
        yield from json_array_rows(path, text)
        return
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        yield from jsonl_rows(path, text)  # JSON-lines content
        return
    if not isinstance(whole, dict):
        raise DataError(
            f"{path}: expected a top-level array of objects or JSON lines, got {type(whole).__name__}"
        )
    yield f"{path}:{line_of(text, start)}", whole


# ---------------------------------------------------------------- CSV


def decode_csv_cell(field: str, cell: str, location: str) -> Any:
    """A CSV cell's value: JSON-decoded for list fields holding ``[...]``/``{...}``, numeric margins."""
    if field in CSV_LIST_FIELDS and cell.lstrip().startswith(("[", "{")):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as error:
            raise DataError(f"{location}: field '{field}': invalid JSON in the cell ({error})") from error
    if field == "margin":
        try:
            return float(cell)
        except ValueError:
            return cell  # left as text, so that checking the record reports it
    if field == "label" and cell.strip().lower() in ("true", "false"):
        return cell.strip().lower() == "true"  # KTO's desirable / undesirable flag
    return cell


def csv_record(header: list[str], cells: list[str], location: str) -> dict:
    """The record of one CSV row (empty cells of CSV_FIELDS_ABSENT_WHEN_EMPTY are left out)."""
    if len(cells) != len(header):
        raise DataError(f"{location}: expected {len(header)} cells as in the header, got {len(cells)}")
    record = {}
    for field, cell in zip(header, cells, strict=True):
        if field in CSV_FIELDS_ABSENT_WHEN_EMPTY and not cell.strip():
            continue
        record[field] = decode_csv_cell(field, cell, location)
    return record


def csv_rows(path: Path, text: str) -> Iterator[tuple[str, RawRow]]:
    """Rows of CSV text, located by the file line each row starts on."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [name.strip() for name in header]
    ended_on_line = reader.line_num
    for cells in reader:
        location = f"{path}:{ended_on_line + 1}"
        ended_on_line = reader.line_num
        if not cells:
            continue  # a blank line
        try:
            yield location, csv_record(header, cells, location)
        except DataError as error:
            yield location, error


# ---------------------------------------------------------------- Parquet and Hugging Face datasets


def without_nulls(row: dict) -> dict:
    """``row`` without null columns: in a table, a null cell means the record lacks that field."""
    return {field: value for field, value in row.items() if value is not None}


def parquet_rows(path: Path) -> Iterator[tuple[str, RawRow]]:
    """Rows of a Parquet file, located as ``FILE: row N``."""
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several error types for unreadable files
        raise DataError(f"{path}: cannot read the file as Parquet ({error})") from error
    row_number = 0
    for batch in table_file.iter_batches():
        for row in batch.to_pylist():
            yield f"{path}: row {row_number}", without_nulls(row)
            row_number += 1


def split_dataset_path(path: str) -> tuple[Path, str | None]:
    """(dataset folder, split or None) from ``DIR`` or ``DIR:split``."""
    if not Path(path).exists() and ":" in path:
        folder, split = path.rsplit(":", 1)
        if Path(folder).is_dir():
            return Path(folder), split
    return Path(path), None


def load_hf_dataset(folder: Path, split: str | None, name: str) -> Any:
    """The Dataset saved in ``folder`` (for a DatasetDict: its ``split``, ``train`` by default)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{name}: cannot load the folder as a Hugging Face dataset ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        split = split or "train"
        if split not in loaded:
            raise DataError(f"{name}: no split {split!r} in the dataset (it has: {', '.join(loaded)})")
        return loaded[split]
    if split is not None:
        raise DataError(f"{name}: the folder holds a single Dataset, not a DatasetDict; drop ':{split}'")
    return loaded


def hf_dataset_rows(folder: Path, split: str | None, name: str) -> Iterator[tuple[str, RawRow]]:
    """Rows of a saved Hugging Face dataset, located as ``DIR: row N`` (or ``DIR:split: row N``)."""
    dataset = load_hf_dataset(folder, split, name)
    for row_number, row in enumerate(dataset):
        yield f"{name}: row {row_number}", without_nulls(row)


# ---------------------------------------------------------------- any file


def file_rows(path: str | Path) -> Iterator[tuple[str, RawRow]]:
    """Every row of the file at ``path`` in order, each a record or the DataError it raises.

    Errors that concern the whole file (missing, unknown format, a broken JSON array) are raised.
    """
    name = str(path)
    folder, split = split_dataset_path(name)
    if folder.is_dir():
        yield from hf_dataset_rows(folder, split, name)
        return
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    suffix = path.name.lower()
    if suffix.endswith((".jsonl", ".jsonl.gz")):
        yield from jsonl_rows(path, read_text(path))
    elif suffix.endswith((".json", ".json.gz")):
        yield from json_rows(path, read_text(path))
    elif suffix.endswith(".csv"):
        yield from csv_rows(path, read_text(path))
    elif suffix.endswith(".parquet"):
        yield from parquet_rows(path)
    else:
        raise DataError(
            f"{path}: unknown file format {''.join(path.suffixes)!r} (expected {FORMATS_EXPECTED})"
        )


def read_rows(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yields (location, raw record) for every record of the file at ``path``, in file order.

    A row that cannot be read (invalid JSON, not an object) raises its DataError, and so does a
    file with no records.
    """
    count = 0
    for location, row in file_rows(path):
        if isinstance(row, DataError):
            raise row
        count += 1
        yield location, row
    if count == 0:
        raise DataError(f"{path}: the file has no records")


# ---------------------------------------------------------------- loaders


def skipped_summary(path: str | Path, errors: list[DataError], total: int) -> str:
    """The warning text for skipped invalid records: how many, and where with why."""
    lines = [f"{path}: skipped {len(errors)} of {total} records that are invalid:"]
    lines += [f"  {error}" for error in errors[:MAX_LISTED_SKIPS]]
    if len(errors) > MAX_LISTED_SKIPS:
        lines.append(f"  and {len(errors) - MAX_LISTED_SKIPS} more")
    return "\n".join(lines)


def load_records(
    path: str | Path, parse: Callable[[dict, str], list[RecordT]], *, skip_invalid: bool
) -> list[RecordT]:
    """The records that ``parse`` makes of each row of ``path`` (it returns a list per row).

    Without ``skip_invalid`` the first invalid row raises; with it invalid rows are skipped and a
    warning lists them. A file with no records, or no valid ones, raises either way.
    """
    records: list[RecordT] = []
    errors: list[DataError] = []
    total = 0
    for location, row in file_rows(path):
        total += 1
        try:
            if isinstance(row, DataError):
                raise row
            records.extend(parse(row, location))
        except DataError as error:
            if not skip_invalid:
                raise
            errors.append(error)
    if total == 0:
        raise DataError(f"{path}: the file has no records")
    if errors and len(errors) == total:
        raise DataError(f"{path}: all {total} records are invalid; the first: {errors[0]}")
    if errors:
        logger.warning(skipped_summary(path, errors, total))
    return records


def load_prompts(path: str | Path, *, skip_invalid: bool = False) -> list[PromptRecord]:
    """The prompts in the file at ``path`` (records ``{"prompt": text}``)."""
    return load_records(path, lambda raw, location: [parse_prompt(raw, location)], skip_invalid=skip_invalid)


def load_demonstrations(path: str | Path, *, skip_invalid: bool = False) -> list[Demonstration]:
    """The demonstrations in the file at ``path`` (``{"messages"}`` or ``{"prompt", "completion"}``)."""
    return load_records(
        path, lambda raw, location: [parse_demonstration(raw, location)], skip_invalid=skip_invalid
    )


def load_rankings(path: str | Path, *, skip_invalid: bool = False) -> list[Ranking]:
    """The rankings in the file at ``path`` (records ``{"prompt", "responses", "ranks"}``)."""
    return load_records(path, lambda raw, location: [parse_ranking(raw, location)], skip_invalid=skip_invalid)


def load_preferences(
    path: str | Path, *, skip_invalid: bool = False, skip_ties: bool = True
) -> list[Preference]:
    """The preference pairs in the file at ``path``.

    Pair records (``{"prompt"?, "chosen", "rejected"}``, HH transcripts included) and ranking
    records (``{"prompt", "responses", "ranks"}``, expanded with ranking_to_pairs) may be mixed.
    Tied responses give no pair with ``skip_ties``; without it a tie is an invalid record.
    """
    tie_only_locations: list[str] = []

    def parse(raw: dict, location: str) -> list[Preference]:
        if not is_ranking_record(raw):
            return [parse_preference(raw, location)]
        pairs = ranking_to_pairs(parse_ranking(raw, location), skip_ties=skip_ties)
        if not pairs:
            tie_only_locations.append(location)
        return pairs

    preferences = load_records(path, parse, skip_invalid=skip_invalid)
    if tie_only_locations:
        logger.warning(
            f"{path}: {len(tie_only_locations)} rankings gave no pairs (all their responses are tied), "
            f"e.g. {', '.join(tie_only_locations[:MAX_LISTED_SKIPS])}"
        )
    if not preferences:
        raise DataError(f"{path}: no preference pairs (every ranking has only tied responses)")
    return preferences


def load_binary_feedback(path: str | Path, *, skip_invalid: bool = False) -> list[BinaryFeedback]:
    """Unpaired feedback (KTO data) in the file at ``path``.

    Records ``{"prompt", "completion", "label": true|false}`` give one answer each. Preference records
    may be mixed in: as in the KTO paper, each pair gives its chosen answer as desirable and its
    rejected answer as undesirable (a ranking gives its C(K,2) pairs, ties skipped).
    """

    def parse(raw: dict, location: str) -> list[BinaryFeedback]:
        if is_binary_feedback_record(raw):
            return [parse_binary_feedback(raw, location)]
        if is_ranking_record(raw):
            pairs = ranking_to_pairs(parse_ranking(raw, location))
        else:
            pairs = [parse_preference(raw, location)]
        return [BinaryFeedback(pair.prompt, answer, desirable, pair.source, location)
                for pair in pairs for answer, desirable in ((pair.chosen, True), (pair.rejected, False))]

    records = load_records(path, parse, skip_invalid=skip_invalid)
    if not records:
        raise DataError(f"{path}: no feedback records (every ranking has only tied responses)")
    return records
