"""Which item an annotator gets next, decided in one serialised transaction.

An item is offered to at most ``overlap`` annotators at once or in total (skips and expiries give the
place back), never twice to the same annotator, never with a category the annotator opted out of,
and never sensitive once the annotator's sensitive cap is reached. Items already started by others
come first, so items are finished rather than all half-done. Gold items (known answers) are mixed in
so that about ``gold_rate`` of an annotator's labels are gold.

Concurrency: the caller's transaction is serialised on SQLite (BEGIN IMMEDIATE, see
:mod:`rlhfkit.feedback.db`); on PostgreSQL the candidate row is locked with
``FOR UPDATE SKIP LOCKED`` and ``Item.claimed_count`` (on that row) is re-checked against the
overlap, so two annotators cannot take the same last place.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Assignment, Item, ItemCategory, Label, Project, SiteSettings, User
from rlhfkit.feedback.welfare import WelfareLimits, WelfareStatus, assignment_intervals, welfare_status

ASSIGNMENT_TIMEOUT_MINUTES = 60.0
"""An item given out and neither labelled nor skipped within this time goes back to the pool."""


class FeedbackError(Exception):
    """A request the app refuses: an HTTP status, a short code and a sentence for people."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def as_dict(self) -> dict:
        return {"error": self.code, "detail": self.message, **self.extra}


def limits_of(settings: SiteSettings) -> WelfareLimits:
    return WelfareLimits(settings.break_after_minutes, settings.break_minutes, settings.daily_cap_minutes,
                         settings.daily_sensitive_cap_minutes)


def user_welfare(session: Session, user_id: int, now: datetime, limits: WelfareLimits) -> WelfareStatus:
    """The annotator's welfare status from their finished assignments of the last two days."""
    rows = session.execute(
        select(Assignment.assigned_at, Assignment.revealed_at, Assignment.finished_at, Assignment.sensitive)
        .where(Assignment.user_id == user_id, Assignment.finished_at.is_not(None),
               Assignment.finished_at >= now - timedelta(days=2))
    ).all()
    intervals = [interval for row in rows for interval in assignment_intervals(*row)]
    return welfare_status(intervals, now, limits)


def welfare_refusal(status: WelfareStatus, wellbeing_url: str) -> FeedbackError:
    """The 429 answer for an annotator who must pause; says when work can resume."""
    return FeedbackError(429, status.reason or "sensitive_cap", status.message(),
                         resume_at=(status.resume_at or status.sensitive_resume_at).isoformat() + "Z",
                         wellbeing_url=wellbeing_url)


def expire_stale_assignments(session: Session, project_id: int, now: datetime) -> int:
    """Give back the places of items held longer than the timeout; returns how many."""
    stale = session.scalars(select(Assignment).where(
        Assignment.project_id == project_id, Assignment.status == "active",
        Assignment.assigned_at < now - timedelta(minutes=ASSIGNMENT_TIMEOUT_MINUTES))).all()
    for assignment in stale:
        assignment.status = "expired"
        assignment.finished_at = now
        assignment.item.claimed_count -= 1
    return len(stale)


def gold_is_due(session: Session, project: Project, user_id: int) -> bool:
    """Whether the annotator's next item should be gold, to keep their gold share at the rate."""
    if project.gold_rate <= 0:
        return False
    total, gold = session.execute(
        select(func.count(Label.id), func.count(Label.id).filter(Label.is_gold))
        .where(Label.project_id == project.id, Label.user_id == user_id)).one()
    return gold < project.gold_rate * (total + 1)


def candidate_query(project: Project, user: User, *, gold: bool, sensitive_allowed: bool, dialect: str) -> Select:
    """The query for the next item this annotator may take (locked with SKIP LOCKED on PostgreSQL)."""
    query = select(Item).where(Item.project_id == project.id, Item.is_gold == gold)
    if not gold:
        query = query.where(Item.claimed_count < project.overlap)
    query = query.where(~exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id))
    if user.opted_out_categories:
        query = query.where(~exists().where(ItemCategory.item_id == Item.id,
                                            ItemCategory.category.in_(user.opted_out_categories)))
    if not sensitive_allowed:
        query = query.where(~exists().where(ItemCategory.item_id == Item.id))
    order = [Item.position] if gold else [Item.claimed_count.desc(), Item.position]
    query = query.order_by(*order).limit(1)
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Item)
    return query


def candidate_item(session: Session, project: Project, user: User, *, gold: bool,
                   sensitive_allowed: bool) -> Item | None:
    dialect = session.get_bind().dialect.name
    return session.scalar(candidate_query(project, user, gold=gold, sensitive_allowed=sensitive_allowed,
                                          dialect=dialect))


def active_assignment(session: Session, project_id: int, user_id: int) -> Assignment | None:
    return session.scalar(select(Assignment).where(
        Assignment.project_id == project_id, Assignment.user_id == user_id, Assignment.status == "active"))


def next_assignment(session: Session, project: Project, user: User, now: datetime,
                    settings: SiteSettings) -> Assignment | None:
    """The annotator's current or next assignment (flushed, not committed), or None when none is left.

    Raises a 429 FeedbackError when welfare limits forbid new work (a break, the daily cap, or only
    sensitive items left past the sensitive cap).
    """
    expire_stale_assignments(session, project.id, now)
    current = active_assignment(session, project.id, user.id)
    if current is not None:
        return current
    status = user_welfare(session, user.id, now, limits_of(settings))
    if not status.may_work:
        raise welfare_refusal(status, settings.wellbeing_url)

    item = None
    if gold_is_due(session, project, user.id):
        item = candidate_item(session, project, user, gold=True, sensitive_allowed=status.sensitive_allowed)
    if item is None:
        item = candidate_item(session, project, user, gold=False, sensitive_allowed=status.sensitive_allowed)
    if item is None:
        if not status.sensitive_allowed and candidate_item(session, project, user, gold=False,
                                                           sensitive_allowed=True) is not None:
            raise welfare_refusal(status, settings.wellbeing_url)
        return None

    sensitive = bool(item.categories)
    assignment = Assignment(item_id=item.id, user_id=user.id, project_id=project.id, status="active",
                            sensitive=sensitive, assigned_at=now, revealed_at=None if sensitive else now)
    item.claimed_count += 1
    session.add(assignment)
    session.flush()
    assignment.item = item
    return assignment
