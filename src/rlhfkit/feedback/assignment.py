"""Which item an annotator gets next, decided in one serialised transaction.

An item is offered to at most ``overlap`` annotators at once or in total (skips and expiries give the
place back), never twice to the same annotator, never with a category the annotator opted out of,
and never sensitive once the annotator's sensitive cap is reached. Items already started by others
come first, so items are finished rather than all half-done. Gold items (known answers) are mixed in
so that about ``gold_rate`` of an annotator's labels are gold. In projects that shuffle, each
assignment draws the order its responses are shown in (against position bias; see :mod:`.labels`).

Concurrency (ARCHITECTURE.md rule 16). On SQLite the caller's transaction is serialised (BEGIN
IMMEDIATE, see :mod:`rlhfkit.feedback.db`). On PostgreSQL (READ COMMITTED) three locks do it:

* an item's row is the lock of the item, its counters and its assignments: whatever changes an
  assignment's status first locks the item (:func:`lock_item`, ``FOR NO KEY UPDATE``) and reads the
  assignment afresh, so a label, a skip and an expiry of one assignment never both happen, and the
  counters change only as SQL increments (``claimed_count = claimed_count + 1``) under that lock;
* the assignment query locks its candidate with ``FOR NO KEY UPDATE SKIP LOCKED``; PostgreSQL
  re-checks ``claimed_count < overlap`` on the newest version of the row it locks, so two annotators
  cannot take the same last place. When every candidate is locked by someone else just then (a label
  being saved holds its item), the query asks again shortly instead of answering "no more items";
* the annotator's own row is locked first, so two requests of one annotator (two tabs) cannot both
  start an assignment.

Locks are taken in one order (the user, then items in ascending id, then assignments) and the
candidate query never waits, so these transactions cannot deadlock each other.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from rlhfkit.feedback.db import Assignment, Item, ItemCategory, Label, Project, SiteSettings, User
from rlhfkit.feedback.welfare import WelfareLimits, WelfareStatus, assignment_intervals, welfare_status

ASSIGNMENT_TIMEOUT_MINUTES = 60.0
"""An item given out and neither labelled nor skipped within this time goes back to the pool."""
_shuffler = random.SystemRandom()
LOCKED_CANDIDATE_WAITS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
"""Seconds to wait, in turn, while the only items left are locked by other requests (PostgreSQL)."""


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


def lock_item(session: Session, item_id: int) -> Item:
    """The item, read afresh with its row locked until commit (a no-op lock on SQLite, already serialised)."""
    return session.scalars(select(Item).where(Item.id == item_id).with_for_update(key_share=True)
                           .execution_options(populate_existing=True)).one()


def locking(session: Session) -> bool:
    """Whether rows must be locked: on PostgreSQL; a SQLite transaction holds the whole database already."""
    return session.get_bind().dialect.name == "postgresql"


def relock(session: Session, assignment: Assignment) -> Assignment:
    """The assignment read afresh after locking its item (see the module's docstring)."""
    if locking(session):
        lock_item(session, assignment.item_id)
        session.refresh(assignment)
    return assignment


def give_back(assignment: Assignment, status: str, now: datetime) -> None:
    """End an active, locked assignment as skipped or expired: its place in the overlap is free again."""
    assignment.status = status
    assignment.finished_at = now
    assignment.item.claimed_count = Item.claimed_count - 1


def expire_stale_assignments(session: Session, project_id: int, now: datetime) -> int:
    """Give back the places of items held longer than the timeout; returns how many."""
    stale = session.scalars(select(Assignment.id).where(
        Assignment.project_id == project_id, Assignment.status == "active",
        Assignment.assigned_at < now - timedelta(minutes=ASSIGNMENT_TIMEOUT_MINUTES))
        .order_by(Assignment.item_id, Assignment.id)).all()
    expired = 0
    for assignment_id in stale:
        assignment = relock(session, session.get(Assignment, assignment_id))
        if assignment.status == "active":  # not labelled or skipped meanwhile
            give_back(assignment, "expired", now)
            expired += 1
    session.flush()
    return expired


def gold_is_due(session: Session, project: Project, user_id: int) -> bool:
    """Whether the annotator's next item should be gold, to keep their gold share at the rate."""
    if project.gold_rate <= 0:
        return False
    total, gold = session.execute(
        select(func.count(Label.id), func.count(Label.id).filter(Label.is_gold))
        .where(Label.project_id == project.id, Label.user_id == user_id)).one()
    return gold < project.gold_rate * (total + 1)


def eligible_items(project: Project, user: User, *, gold: bool, sensitive_allowed: bool) -> Select:
    """The project's items this annotator may be given, whatever their counters say."""
    query = select(Item).where(Item.project_id == project.id, Item.is_gold == gold)
    query = query.where(~exists().where(Assignment.item_id == Item.id, Assignment.user_id == user.id))
    if user.opted_out_categories:
        query = query.where(~exists().where(ItemCategory.item_id == Item.id,
                                            ItemCategory.category.in_(user.opted_out_categories)))
    if not sensitive_allowed:
        query = query.where(~exists().where(ItemCategory.item_id == Item.id))
    return query


def candidate_query(project: Project, user: User, *, gold: bool, sensitive_allowed: bool, dialect: str,
                    lock: bool = True) -> Select:
    """The query for the next item this annotator may take (locked with SKIP LOCKED on PostgreSQL)."""
    query = eligible_items(project, user, gold=gold, sensitive_allowed=sensitive_allowed)
    if not gold:
        query = query.where(Item.claimed_count < project.overlap)
    order = [Item.position] if gold else [Item.claimed_count.desc(), Item.position]
    query = query.order_by(*order).limit(1)
    if lock and dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Item, key_share=True)
    return query.execution_options(populate_existing=True)


def items_held_by_others(session: Session, project: Project, user: User) -> int:
    """Unfinished items the annotator could get but others hold now: each comes back on a skip or expiry."""
    held = eligible_items(project, user, gold=False, sensitive_allowed=True).where(
        Item.claimed_count >= project.overlap, Item.done_count < project.overlap)
    return session.scalar(select(func.count()).select_from(held.subquery()))


def candidate_item(session: Session, project: Project, user: User, *, gold: bool,
                   sensitive_allowed: bool) -> Item | None:
    """The next item, locked; None only when no item is left (not when those left are locked just now)."""
    dialect = session.get_bind().dialect.name
    query = candidate_query(project, user, gold=gold, sensitive_allowed=sensitive_allowed, dialect=dialect)
    item = session.scalar(query)
    if item is not None or dialect != "postgresql":
        return item
    unlocked = candidate_query(project, user, gold=gold, sensitive_allowed=sensitive_allowed, dialect=dialect,
                               lock=False)
    for wait in LOCKED_CANDIDATE_WAITS:
        if not session.scalar(select(unlocked.exists())):
            return None
        time.sleep(wait)
        if (item := session.scalar(query)) is not None:
            return item
    raise FeedbackError(503, "busy", "Items are being handed out right now; try again in a moment.",
                        retry_after=1)


def lock_user(session: Session, user: User) -> None:
    """Lock the annotator's row until commit: one assignment decision per annotator at a time."""
    if locking(session):
        session.execute(select(User.id).where(User.id == user.id).with_for_update(key_share=True))


def active_assignment(session: Session, project_id: int, user_id: int) -> Assignment | None:
    return session.scalar(select(Assignment).where(
        Assignment.project_id == project_id, Assignment.user_id == user_id, Assignment.status == "active"))


def next_assignment(session: Session, project: Project, user: User, now: datetime,
                    settings: SiteSettings) -> Assignment | None:
    """The annotator's current or next assignment (flushed, not committed), or None when none is left.

    Raises a 429 FeedbackError when welfare limits forbid new work (a break, the daily cap, or only
    sensitive items left past the sensitive cap).
    """
    lock_user(session, user)
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
    shown_order = _shuffler.sample(range(len(item.responses)), len(item.responses)) if project.shuffle_responses else None
    assignment = Assignment(item_id=item.id, user_id=user.id, project_id=project.id, status="active",
                            sensitive=sensitive, assigned_at=now, revealed_at=None if sensitive else now,
                            shown_order=shown_order)
    item.claimed_count = Item.claimed_count + 1
    session.add(assignment)
    session.flush()
    assignment.item = item
    return assignment
