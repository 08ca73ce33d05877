"""What an annotator does with an assignment: reveal, skip, flag, label. Each checks its input first.

Answers are stored in the item's response order: ``{"choice": "A"|"B"|"tie"|"both_bad"}`` (pairwise;
A is response 0), ``{"ranks": [...]}`` (a permutation of 1..K, 1 = best) or ``{"ratings": [...]}``
(1..scale per response). An annotator answers in the order the responses were shown
(``Assignment.shown_order``, shuffled per assignment in projects that ask for it); the answer and an
edit's index are mapped back to the item's order before they are stored. Skips free the item's
place for someone else and are never held against the annotator (no count, no accuracy, no speed
figure uses them). Text (a rationale, an edit) must be storable (see :mod:`.checks`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from rlhfkit.feedback.assignment import (
    FeedbackError,
    give_back,
    limits_of,
    relock,
    user_welfare,
    welfare_refusal,
)
from rlhfkit.feedback.checks import MAX_ID, check_text
from rlhfkit.feedback.db import (
    PAIRWISE_CHOICES,
    Assignment,
    Item,
    ItemCategory,
    Label,
    Project,
    SiteSettings,
    User,
)
from rlhfkit.feedback.lexicon import CATEGORIES

MAX_RATIONALE_CHARS = 5000
MAX_EDIT_CHARS = 20000
ANNOTATOR_FLAG_CATEGORIES = (*CATEGORIES, "other")


def own_assignment(session: Session, assignment_id: int, user: User) -> Assignment:
    """The user's own assignment, read afresh with its item locked (see :mod:`.assignment`); anyone
    else's is 'not found' (its existence is not revealed)."""
    assignment = session.get(Assignment, assignment_id) if 1 <= assignment_id <= MAX_ID else None
    if assignment is None or assignment.user_id != user.id:
        raise FeedbackError(404, "not_found", "No such assignment.")
    return relock(session, assignment)


def require_active(assignment: Assignment) -> None:
    if assignment.status != "active":
        messages = {"done": "This item is already labelled.", "skipped": "This item was skipped.",
                    "expired": "This item was open too long and went back to the pool; take the next one."}
        raise FeedbackError(409, f"already_{assignment.status}", messages[assignment.status])


def reveal(session: Session, assignment: Assignment, now: datetime, settings: SiteSettings) -> None:
    """Show a warned item's content; refused past the daily sensitive cap."""
    require_active(assignment)
    if assignment.revealed_at is not None:
        return
    status = user_welfare(session, assignment.user_id, now, limits_of(settings))
    if not status.sensitive_allowed:
        raise welfare_refusal(status, settings.wellbeing_url)
    assignment.revealed_at = now


def skip(assignment: Assignment, now: datetime) -> None:
    """Hand the item back (for someone else); the annotator will not get it again."""
    require_active(assignment)
    give_back(assignment, "skipped", now)


def flag(session: Session, assignment: Assignment, user: User, category: str) -> list[str]:
    """Mark the item as sensitive in ``category``; later annotators see the warning. Returns the categories."""
    if category not in ANNOTATOR_FLAG_CATEGORIES:
        raise FeedbackError(422, "invalid", f"category: expected one of {', '.join(ANNOTATOR_FLAG_CATEGORIES)}, "
                                            f"got {category!r}")
    item = assignment.item
    if category not in item.category_names:
        item.categories.append(ItemCategory(category=category, source="annotator", flagged_by_id=user.id))
        session.flush()
    return item.category_names


# ---------------------------------------------------------------- answers


def shown_responses(assignment: Assignment) -> list:
    """The item's responses in the order this assignment shows them."""
    responses = assignment.item.responses
    return [responses[i] for i in assignment.shown_order] if assignment.shown_order else responses


def in_item_order(answer: dict, shown_order: list[int] | None) -> dict:
    """An answer given over the shown order, in the item's order (A and B swap when B was shown first)."""
    if not shown_order:
        return answer
    if "choice" in answer:
        choice = answer["choice"]
        return {"choice": "AB"[shown_order["AB".index(choice)]]} if choice in ("A", "B") else answer
    (field, values), = answer.items()
    in_order = list(values)
    for position, index in enumerate(shown_order):
        in_order[index] = values[position]
    return {field: in_order}


def chose_first_shown(answer: dict, shown_order: list[int] | None) -> bool | None:
    """For a pairwise A or B answer (item order): whether the chosen response was the one shown first."""
    if answer.get("choice") not in ("A", "B"):
        return None
    chosen = "AB".index(answer["choice"])
    return (shown_order[0] if shown_order else 0) == chosen


def invalid(field: str, message: str) -> FeedbackError:
    return FeedbackError(422, "invalid", f"field '{field}': {message}")


def checked_text(value: object, field: str, max_chars: int) -> str:
    """Storable text of at most ``max_chars`` characters, or a 422 naming the field (see :mod:`.checks`)."""
    try:
        return check_text(value, field, max_chars=max_chars)
    except ValueError as error:
        raise FeedbackError(422, "invalid", str(error)) from error


def check_answer(payload: dict, project: Project, response_count: int) -> dict:
    """The answer part of a submitted payload, checked against the task type."""
    if project.task_type == "pairwise":
        choice = payload.get("choice")
        if choice not in PAIRWISE_CHOICES:
            raise invalid("choice", f"expected one of {', '.join(PAIRWISE_CHOICES)}, got {choice!r}")
        return {"choice": choice}
    field = "ranks" if project.task_type == "rank" else "ratings"
    values = payload.get(field)
    if not isinstance(values, list) or len(values) != response_count or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise invalid(field, f"expected a list of {response_count} integers, got {values!r}")
    if field == "ranks" and sorted(values) != list(range(1, response_count + 1)):
        raise invalid("ranks", f"expected each rank 1..{response_count} once (1 = best), got {values}")
    if field == "ratings" and not all(1 <= v <= project.rating_scale for v in values):
        raise invalid("ratings", f"expected ratings from 1 to {project.rating_scale}, got {values}")
    return {field: values}


def best_index(answer: dict) -> int:
    """The response an answer says is best (pairwise: A for a tie or both bad)."""
    if "choice" in answer:
        return 1 if answer["choice"] == "B" else 0
    if "ranks" in answer:
        return answer["ranks"].index(1)
    return max(range(len(answer["ratings"])), key=lambda i: answer["ratings"][i])


def gold_correct(answer: dict, gold: object) -> bool:
    """Whether an answer agrees with a gold answer: same choice; same best response; ratings within 1."""
    if "choice" in answer:
        return answer["choice"] == gold
    if "ranks" in answer:
        return answer["ranks"].index(1) == gold.index(1)
    return all(abs(a - g) <= 1 for a, g in zip(answer["ratings"], gold, strict=True))


def check_edit(payload: dict, project: Project, answer: dict, responses: list) -> tuple[str | None, int | None]:
    """(edited text, index of the edited response) when the project allows edits and one was sent."""
    text = payload.get("edited_response")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None, None
    if not project.allow_edit:
        raise invalid("edited_response", "this project does not take edits")
    text = checked_text(text, "edited_response", MAX_EDIT_CHARS)
    index = payload.get("edited_index", best_index(answer))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(responses):
        raise invalid("edited_index", f"expected a response index 0..{len(responses) - 1}, got {index!r}")
    return text, index


def submit_label(session: Session, assignment: Assignment, project: Project, payload: dict,
                 now: datetime) -> Label:
    """Store the annotator's label for the assignment (flushed; the caller commits before answering)."""
    require_active(assignment)
    if assignment.revealed_at is None:
        raise FeedbackError(409, "not_revealed", "Reveal the item (or skip it) before labelling it.")
    if not isinstance(payload, dict):
        raise FeedbackError(422, "invalid", "expected a JSON object")
    item = assignment.item
    shown = check_answer(payload, project, len(item.responses))
    rationale = checked_text(payload.get("rationale") or "", "rationale", MAX_RATIONALE_CHARS)
    edited, edited_index = check_edit(payload, project, shown, item.responses)
    answer = in_item_order(shown, assignment.shown_order)
    if edited_index is not None and assignment.shown_order:
        edited_index = assignment.shown_order[edited_index]
    label = Label(
        assignment_id=assignment.id, item_id=item.id, user_id=assignment.user_id, project_id=project.id,
        answer=answer, rationale=rationale.strip(), edited_response=edited, edited_index=edited_index,
        duration_seconds=(now - assignment.revealed_at).total_seconds(), submitted_at=now,
        is_gold=item.is_gold, gold_correct=gold_correct(answer, item.gold_answer) if item.is_gold else None,
    )
    session.add(label)
    assignment.status = "done"
    assignment.finished_at = now
    item.done_count = Item.done_count + 1
    session.flush()
    return label
