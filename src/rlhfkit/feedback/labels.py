"""What an annotator does with an assignment: reveal, skip, flag, label. Each checks its input first.

Answers are stored in the item's response order: ``{"choice": "A"|"B"|"tie"|"both_bad"}`` (pairwise;
A is response 0), ``{"ranks": [...]}`` (a permutation of 1..K, 1 = best) or ``{"ratings": [...]}``
(1..scale per response). Skips free the item's place for someone else and are never held against
the annotator (no count, no accuracy, no speed figure uses them).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from rlhfkit.feedback.assignment import FeedbackError, limits_of, user_welfare, welfare_refusal
from rlhfkit.feedback.db import PAIRWISE_CHOICES, Assignment, ItemCategory, Label, Project, SiteSettings, User
from rlhfkit.feedback.lexicon import CATEGORIES

MAX_RATIONALE_CHARS = 5000
MAX_EDIT_CHARS = 20000
ANNOTATOR_FLAG_CATEGORIES = (*CATEGORIES, "other")


def own_assignment(session: Session, assignment_id: int, user: User) -> Assignment:
    """The user's own assignment; anyone else's is 'not found' (its existence is not revealed)."""
    assignment = session.get(Assignment, assignment_id)
    if assignment is None or assignment.user_id != user.id:
        raise FeedbackError(404, "not_found", "No such assignment.")
    return assignment


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
    assignment.status = "skipped"
    assignment.finished_at = now
    assignment.item.claimed_count -= 1


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


def invalid(field: str, message: str) -> FeedbackError:
    return FeedbackError(422, "invalid", f"field '{field}': {message}")


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
    if not isinstance(text, str) or len(text) > MAX_EDIT_CHARS:
        raise invalid("edited_response", f"expected text of at most {MAX_EDIT_CHARS} characters")
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
    answer = check_answer(payload, project, len(item.responses))
    rationale = payload.get("rationale") or ""
    if not isinstance(rationale, str) or len(rationale) > MAX_RATIONALE_CHARS:
        raise invalid("rationale", f"expected text of at most {MAX_RATIONALE_CHARS} characters")
    edited, edited_index = check_edit(payload, project, answer, item.responses)
    label = Label(
        assignment_id=assignment.id, item_id=item.id, user_id=assignment.user_id, project_id=project.id,
        answer=answer, rationale=rationale.strip(), edited_response=edited, edited_index=edited_index,
        duration_seconds=(now - assignment.revealed_at).total_seconds(), submitted_at=now,
        is_gold=item.is_gold, gold_correct=gold_correct(answer, item.gold_answer) if item.is_gold else None,
    )
    session.add(label)
    assignment.status = "done"
    assignment.finished_at = now
    item.done_count += 1
    session.flush()
    return label
