"""Reviews: a project's reviewer sees the others' labels of that project and corrects or rejects them.

* **Correct**: the label's answer becomes the reviewer's (checked as a submitted answer is, in the
  item's response order); the annotator's own answer is kept in ``Label.original_answer`` and every
  correction in :class:`~rlhfkit.feedback.db.LabelReview` (who, when, the answer before and after, a
  reason). The label stays counted; exports use the corrected answer.
* **Reject**: the label is marked ``rejected`` and left out of every training export (preferences,
  rankings, sft, kto; labels.jsonl keeps it with its status), of agreement figures and of what people
  are told is done. Its assignment becomes ``rejected`` and the item's ``done_count`` and
  ``claimed_count`` go down by one, so the item needs (and can be given for) one more label, within
  its overlap. The rejected annotator is not given the item again (one assignment per item and
  person); somebody else labels it. A rejected label stays rejected.

Nobody reviews their own labels. Gold accuracy keeps measuring the annotator's own answer (a
correction does not change ``gold_correct``). Concurrency (ARCHITECTURE.md rule 16): a review locks the
label's item first, as every change of an assignment does (:func:`.assignment.lock_item`), reads the
label afresh and changes the counters only as SQL increments, so two reviewers rejecting one label
at once lower the counters once, and a reject racing a label or an assignment of the same item keeps
the counters exact on PostgreSQL as on SQLite.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.assignment import FeedbackError, lock_item, locking
from rlhfkit.feedback.checks import MAX_ID
from rlhfkit.feedback.db import REVIEW_STATUSES, Assignment, Item, Label, LabelReview, Project, User
from rlhfkit.feedback.labels import check_answer, checked_text
from rlhfkit.feedback.membership import require_reviewer

MAX_REASON_CHARS = 2000
MAX_PAGE = 200
"""The most labels one review page or API call lists."""


def label_of(session: Session, label_id: int) -> Label:
    label = session.get(Label, label_id) if 1 <= label_id <= MAX_ID else None
    if label is None:
        raise FeedbackError(404, "not_found", "No such label.")
    return label


def reviewable(session: Session, label_id: int, reviewer: User) -> tuple[Label, Project]:
    """The label and its project, read afresh with its item locked; a 403 for anyone who does not
    review the project, or for the label's own annotator."""
    label = label_of(session, label_id)
    project = session.get(Project, label.project_id)
    require_reviewer(session, project, reviewer)
    if label.user_id == reviewer.id:
        raise FeedbackError(403, "own_label", "You cannot review your own label; another reviewer can.")
    if locking(session):
        lock_item(session, label.item_id)
        session.refresh(label)
    return label, project


def record_review(session: Session, label: Label, reviewer: User, action: str, new_answer: dict | None,
                  reason: str, now: datetime) -> LabelReview:
    review = LabelReview(label_id=label.id, reviewer_id=reviewer.id, action=action, previous_answer=label.answer,
                         new_answer=new_answer, reason=reason, created_at=now)
    session.add(review)
    return review


def checked_reason(payload: dict) -> str:
    return checked_text(payload.get("reason") or "", "reason", MAX_REASON_CHARS).strip()


def reject_label(session: Session, label_id: int, reviewer: User, payload: dict, now: datetime) -> Label:
    """Reject a label: out of the exports, its place in the overlap free for another annotator (flushed)."""
    if not isinstance(payload, dict):
        raise FeedbackError(422, "invalid", "expected a JSON object")
    reason = checked_reason(payload)
    label, _ = reviewable(session, label_id, reviewer)
    if label.review_status == "rejected":
        raise FeedbackError(409, "already_rejected", "This label was already rejected.")
    record_review(session, label, reviewer, "rejected", None, reason, now)
    label.review_status = "rejected"
    assignment = session.get(Assignment, label.assignment_id)
    if locking(session):
        session.refresh(assignment)
    assignment.status = "rejected"
    item = session.get(Item, label.item_id)
    item.done_count = Item.done_count - 1
    item.claimed_count = Item.claimed_count - 1
    session.flush()
    return label


def correct_label(session: Session, label_id: int, reviewer: User, payload: dict, now: datetime) -> Label:
    """Replace a label's answer with the reviewer's (given in the item's order); the original is kept."""
    if not isinstance(payload, dict):
        raise FeedbackError(422, "invalid", "expected a JSON object")
    reason = checked_reason(payload)
    label, project = reviewable(session, label_id, reviewer)
    if label.review_status == "rejected":
        raise FeedbackError(409, "already_rejected", "This label was rejected; a rejected label is not corrected.")
    answer = check_answer(payload, project, len(session.get(Item, label.item_id).responses))
    record_review(session, label, reviewer, "corrected", answer, reason, now)
    if label.original_answer is None:
        label.original_answer = label.answer
    label.answer = answer
    label.review_status = "corrected"
    session.flush()
    return label


def check_status_filter(status: str | None) -> str | None:
    if status in (None, "", "all"):
        return None
    if status not in REVIEW_STATUSES:
        raise FeedbackError(422, "invalid", f"field 'status': expected one of all, {', '.join(REVIEW_STATUSES)}, "
                                            f"got {status!r}")
    return status


def review_history(session: Session, label_ids: list[int]) -> dict[int, list[dict]]:
    """Label id -> its reviews, oldest first: who, when, what, the answer before and after, the reason."""
    rows = session.execute(select(LabelReview, User.username).join(User, LabelReview.reviewer_id == User.id)
                           .where(LabelReview.label_id.in_(label_ids)).order_by(LabelReview.id)).all()
    history: dict[int, list[dict]] = {label_id: [] for label_id in label_ids}
    for review, reviewer in rows:
        history[review.label_id].append({
            "reviewer": reviewer, "action": review.action, "at": review.created_at.isoformat() + "Z",
            "previous_answer": review.previous_answer, "new_answer": review.new_answer, "reason": review.reason})
    return history


def review_queue(session: Session, project: Project, reviewer: User, status: str | None = None,
                 offset: int = 0, limit: int = 50) -> dict:
    """The project's labels the reviewer may review (everyone's but its own), newest first, with their
    items and review history; ``status`` filters by review status."""
    require_reviewer(session, project, reviewer)
    status = check_status_filter(status)
    if not 0 <= offset <= MAX_ID or not 1 <= limit <= MAX_PAGE:
        raise FeedbackError(422, "invalid", f"fields 'offset' and 'limit': expected 0..{MAX_ID} and 1..{MAX_PAGE}")
    query = (select(Label, Item, User.username).join(Item, Label.item_id == Item.id)
             .join(User, Label.user_id == User.id)
             .where(Label.project_id == project.id, Label.user_id != reviewer.id))
    if status is not None:
        query = query.where(Label.review_status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    rows = session.execute(query.order_by(Label.id.desc()).offset(offset).limit(limit)).all()
    history = review_history(session, [label.id for label, _, _ in rows])
    labels = [{"label_id": label.id, "item_id": item.id, "annotator": annotator, "answer": label.answer,
               "original_answer": label.original_answer, "review_status": label.review_status,
               "rationale": label.rationale, "edited_response": label.edited_response,
               "submitted_at": label.submitted_at.isoformat() + "Z", "is_gold": label.is_gold,
               "prompt": item.prompt, "responses": item.responses, "reviews": history[label.id]}
              for label, item, annotator in rows]
    return {"project_id": project.id, "task_type": project.task_type, "total": total, "offset": offset,
            "limit": limit, "labels": labels}
