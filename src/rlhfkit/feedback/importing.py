"""Projects and their items from files: the ``{"prompt", "responses"}`` JSONL of ``rlhfkit generate``.

Pair records (``{"prompt"?, "chosen", "rejected"}``, Anthropic HH transcripts included) are accepted
too, as items with the two responses, so existing comparisons can be labelled again.

How records become items:

* rank and rating projects: one item per record with all its K responses;
* pairwise projects: a record with K > 2 responses gives disjoint pairs (0, 1), (2, 3), ...; an odd
  last response is paired with the first, so every response is shown at least once.

A record may carry its own ``"id"`` (a string or an integer, unique in the project) and a
``"metadata"`` object: both are kept with its items and written into every export record made from
them, so labels can be traced back to their source. A record may carry ``"gold"``, the known answer, which makes its item a gold item (mixed into the
annotators' work to measure accuracy, never exported as training data): ``"A"``, ``"B"``, ``"tie"``
or ``"both_bad"`` for pairwise (records of exactly 2 responses), a list of ranks (1 = best, a
permutation of 1..K) for rank, a list of ratings for rating.

The whole file is checked before anything is stored: the first bad record raises a DataError naming
its line and field, and the caller's transaction is rolled back, so nothing partial is kept. Every
string of a record (unknown fields too) must be storable text (no lone surrogate, no NUL; see
:mod:`.checks`), and a record nested deeper than :data:`.checks.MAX_NESTING` levels is refused, also
where it is too deep for Python's JSON parser.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.data.errors import DataError, missing_field, wrong_value
from rlhfkit.data.readers import file_rows, json_rows, jsonl_rows
from rlhfkit.data.records import TEXT_EXPECTED, has_field, parse_preference, parse_text, required
from rlhfkit.feedback.checks import check_text, json_problem, without_recursion_errors
from rlhfkit.feedback.db import PAIRWISE_CHOICES, TASK_TYPES, Item, ItemCategory, Project, committed, utcnow
from rlhfkit.feedback.lexicon import flag_categories, text_of

RESPONSES_EXPECTED = "a list of responses (strings or message lists)"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
MAX_OVERLAP = 100
"""Annotators per item at most (agreement needs a few; a team rarely has more)."""
MAX_NAME_CHARS = 200
MAX_ID_CHARS = 200
MAX_GUIDELINES_CHARS = 200_000


@dataclass
class ItemSpec:
    """An item to create: checked prompt and responses, its gold answer, where it came from."""

    prompt: object
    responses: list
    location: str
    gold: object | None = None
    categories: list[str] = field(default_factory=list)
    external_id: str | None = None
    metadata: dict | None = None


@dataclass
class ProjectOptions:
    """How a new project is labelled (see :class:`rlhfkit.feedback.db.Project`)."""

    task_type: str = "pairwise"
    guidelines: str = ""
    overlap: int = 1
    gold_rate: float = 0.0
    ask_rationale: bool = False
    allow_edit: bool = False
    rating_scale: int = 5
    shuffle_responses: bool = False

    def check(self) -> None:
        """Raise a ValueError naming the option that is out of range."""
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task type: expected one of {', '.join(TASK_TYPES)}, got {self.task_type!r}")
        if not 1 <= self.overlap <= MAX_OVERLAP:
            raise ValueError(f"overlap: expected 1 to {MAX_OVERLAP} annotators per item, got {self.overlap}")
        if not 0.0 <= self.gold_rate < 1.0:  # NaN fails this too
            raise ValueError(f"gold rate: expected a fraction in [0, 1), got {self.gold_rate}")
        check_text(self.guidelines, "guidelines", max_chars=MAX_GUIDELINES_CHARS)
        if not 2 <= self.rating_scale <= 10:
            raise ValueError(f"rating scale: expected 2 to 10 points, got {self.rating_scale}")


# ---------------------------------------------------------------- checking records


def check_gold(value: object, task_type: str, response_count: int, rating_scale: int, location: str) -> object:
    """The record's gold answer after checking it fits the task type."""
    if task_type == "pairwise":
        if response_count != 2:
            raise DataError(f"{location}: field 'gold': a pairwise gold answer needs exactly 2 responses, "
                            f"got {response_count}")
        if value not in PAIRWISE_CHOICES:
            raise wrong_value(location, "gold", "one of " + ", ".join(map(repr, PAIRWISE_CHOICES)), value)
        return value
    if not isinstance(value, list) or len(value) != response_count or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise wrong_value(location, "gold", f"a list of {response_count} integers", value)
    if task_type == "rank" and sorted(value) != list(range(1, response_count + 1)):
        raise wrong_value(location, "gold", f"ranks 1..{response_count}, each once (1 = best)", value)
    if task_type == "rating" and not all(1 <= v <= rating_scale for v in value):
        raise wrong_value(location, "gold", f"ratings from 1 to {rating_scale}", value)
    return value


def parse_item_record(raw: dict, location: str, options: ProjectOptions) -> tuple[object, list, object | None]:
    """(prompt, responses, gold) of one record, checked; raises DataError with location and field."""
    if (problem := json_problem(raw, "")) is not None:
        raise DataError(f"{location}: field '{problem[0]}': {problem[1]}")
    if has_field(raw, "responses"):
        prompt = parse_text(required(raw, "prompt", location, TEXT_EXPECTED), location, "prompt")
        responses = raw["responses"]
        if not isinstance(responses, list):
            raise wrong_value(location, "responses", RESPONSES_EXPECTED, responses)
        responses = [parse_text(r, location, f"responses[{i}]") for i, r in enumerate(responses)]
    elif has_field(raw, "chosen") or has_field(raw, "rejected"):
        pair = parse_preference(raw, location)
        prompt, responses = pair.prompt, [pair.chosen, pair.rejected]
    else:
        raise missing_field(location, "responses", RESPONSES_EXPECTED + " (or 'chosen' and 'rejected')", raw)
    least = 1 if options.task_type == "rating" else 2
    if len(responses) < least:
        raise DataError(f"{location}: field 'responses': expected at least {least} responses for a "
                        f"{options.task_type} project, got {len(responses)}")
    gold = None
    if has_field(raw, "gold"):
        gold = check_gold(raw["gold"], options.task_type, len(responses), options.rating_scale, location)
    return prompt, responses, gold


def record_identity(raw: dict, location: str) -> tuple[str | None, dict | None]:
    """The record's own ``id`` (a string or an integer, kept as text) and ``metadata`` (an object)."""
    external_id = raw.get("id")
    if external_id is not None:
        if isinstance(external_id, bool) or not isinstance(external_id, str | int):
            raise wrong_value(location, "id", "a string or an integer", external_id)
        external_id = str(external_id)
        try:
            check_text(external_id, "id", max_chars=MAX_ID_CHARS, one_line=True)
        except ValueError as error:
            raise DataError(f"{location}: {error}") from error
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise wrong_value(location, "metadata", "an object", metadata)
    return external_id, metadata


def check_unique_ids(specs: list[ItemSpec], taken: Iterable[str] = ()) -> None:
    """A DataError for a record id given twice in the file, or already in the project."""
    seen = {external_id: "the project" for external_id in taken}
    for spec in specs:
        if spec.external_id is None or seen.get(spec.external_id) == spec.location:
            continue  # a record split into several pairs keeps its id
        if spec.external_id in seen:
            raise DataError(f"{spec.location}: field 'id': {spec.external_id!r} is already used "
                            f"({seen[spec.external_id]})")
        seen[spec.external_id] = spec.location


def pairs_of(count: int) -> list[tuple[int, int]]:
    """Disjoint pairs (0, 1), (2, 3), ... covering every index; an odd last index pairs with 0."""
    pairs = [(i, i + 1) for i in range(0, count - 1, 2)]
    if count % 2:
        pairs.append((count - 1, 0))
    return pairs


def item_specs(rows: Iterable[tuple[str, dict | DataError]], options: ProjectOptions,
               use_lexicon: bool = True) -> list[ItemSpec]:
    """The items of all rows; the first bad row raises its DataError (nothing is returned)."""
    specs: list[ItemSpec] = []
    for location, row in rows:
        if isinstance(row, DataError):
            raise row
        prompt, responses, gold = parse_item_record(row, location, options)
        external_id, metadata = record_identity(row, location)
        if options.task_type == "pairwise" and len(responses) > 2:
            groups = [[responses[a], responses[b]] for a, b in pairs_of(len(responses))]
        else:
            groups = [responses]
        for group in groups:
            text = text_of(prompt) + "\n" + "\n".join(text_of(r) for r in group)
            categories = flag_categories(text) if use_lexicon else []
            specs.append(ItemSpec(prompt, group, location, gold, categories, external_id, metadata))
    if not specs:
        raise DataError("the file has no records")
    check_unique_ids(specs)
    return specs


def rows_of_upload(filename: str, text: str) -> Iterator[tuple[str, dict | DataError]]:
    """Rows of an uploaded file's text (JSON lines, or a JSON array for ``.json``)."""
    path = Path(filename or "upload.jsonl")
    rows = json_rows(path, text) if path.name.lower().endswith(".json") else jsonl_rows(path, text)
    return without_recursion_errors(rows, path, text)


# ---------------------------------------------------------------- storing


def create_project(session: Session, name: str, options: ProjectOptions) -> Project:
    """A new project (flushed, not committed); a ValueError if the name is taken or an option is bad."""
    options.check()
    name = check_text(name, "project name", max_chars=MAX_NAME_CHARS, one_line=True).strip()
    if not name:
        raise ValueError("field 'project name': expected a non-empty name")
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise ValueError(f"project name: a project called {name!r} already exists")
    project = Project(name=name, task_type=options.task_type, guidelines=options.guidelines,
                      overlap=options.overlap, gold_rate=options.gold_rate, ask_rationale=options.ask_rationale,
                      allow_edit=options.allow_edit, rating_scale=options.rating_scale,
                      shuffle_responses=options.shuffle_responses, created_at=utcnow())
    session.add(project)
    session.flush()
    return project


def add_items(session: Session, project: Project, specs: list[ItemSpec]) -> int:
    """Store the items (flushed, not committed); returns how many were added."""
    check_unique_ids(specs, session.scalars(select(Item.external_id).where(
        Item.project_id == project.id, Item.external_id.is_not(None))).all())
    start = session.scalar(select(func.coalesce(func.max(Item.position), -1)).where(
        Item.project_id == project.id)) + 1
    for offset, spec in enumerate(specs):
        item = Item(project_id=project.id, position=start + offset, prompt=spec.prompt, responses=spec.responses,
                    source_location=spec.location[:500], is_gold=spec.gold is not None, gold_answer=spec.gold,
                    claimed_count=0, done_count=0, external_id=spec.external_id, record_metadata=spec.metadata)
        item.categories = [ItemCategory(category=c, source="lexicon") for c in spec.categories]
        session.add(item)
    session.flush()
    return len(specs)


def project_options_of(project: Project) -> ProjectOptions:
    return ProjectOptions(project.task_type, project.guidelines, project.overlap, project.gold_rate,
                          project.ask_rationale, project.allow_edit, project.rating_scale, project.shuffle_responses)


def import_file(session: Session, path: str | Path, project_name: str, options: ProjectOptions,
                use_lexicon: bool = True) -> tuple[Project, int]:
    """Items from the file at ``path`` into the project (created with ``options`` when new).

    Commits once, after every record has been checked; any error leaves the database as it was.
    """
    with committed(session):
        project = session.scalar(select(Project).where(Project.name == project_name.strip()))
        if project is not None:
            options = project_options_of(project)
        specs = item_specs(without_recursion_errors(file_rows(path), Path(path)), options, use_lexicon)
        if project is None:
            project = create_project(session, project_name, options)
        count = add_items(session, project, specs)
    return project, count


def read_upload(filename: str | None, stream: BinaryIO) -> str:
    """The text of an uploaded file; a DataError when it is over MAX_UPLOAD_BYTES or not UTF-8."""
    data = stream.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"{filename}: the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{filename}: cannot read the file as UTF-8 text ({error})") from error


def import_upload(session: Session, name: str, options: ProjectOptions, filename: str | None, stream: BinaryIO,
                  use_lexicon: bool = True) -> tuple[Project, int]:
    """A new project with the items of an uploaded file (flushed, not committed).

    Every record is checked before anything is stored; raises DataError or ValueError, after which
    the caller rolls back.
    """
    text = read_upload(filename, stream)
    options.check()
    specs = item_specs(rows_of_upload(filename or "upload.jsonl", text), options, use_lexicon)
    project = create_project(session, name, options)
    return project, add_items(session, project, specs)
