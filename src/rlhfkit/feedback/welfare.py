"""Annotator welfare: enforced breaks and daily caps, as pure functions of the time worked.

Work is measured by the server, from assignments: an item counts from when it was given out to when
it was labelled or skipped (at most :data:`MAX_COUNTED_TASK_MINUTES`, so a tab left open overnight is
not a day of work). Sensitive exposure counts from when the annotator revealed the content.

Rules (the limits are site settings an admin edits; defaults in :class:`WelfareLimits`):

* **Breaks.** A *stretch* is work whose pauses are all shorter than the break length. Once a stretch
  spans ``break_after_minutes`` of wall time, no task is given out until ``break_minutes`` after its
  last item ended; that pause ends the stretch.
* **Daily cap.** After ``daily_cap_minutes`` of work in a UTC calendar day, no task until the next day.
* **Sensitive cap.** After ``daily_sensitive_cap_minutes`` of revealed sensitive items in a day, no
  more sensitive items that day (other items still come).

The server checks these before it assigns a task and before it reveals sensitive content; a task
already under way can always be finished (work is never thrown away).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_COUNTED_TASK_MINUTES = 20.0
"""The most time one item counts as work, however long it stayed open."""


@dataclass(frozen=True)
class WelfareLimits:
    break_after_minutes: float = 50.0
    break_minutes: float = 10.0
    daily_cap_minutes: float = 360.0
    daily_sensitive_cap_minutes: float = 120.0


@dataclass(frozen=True)
class WorkInterval:
    """A span of work; ``sensitive`` when it was time spent with revealed sensitive content."""

    start: datetime
    end: datetime
    sensitive: bool = False


@dataclass(frozen=True)
class WelfareStatus:
    """What an annotator may do now, and why not.

    ``reason`` is None (may work), ``"break"`` or ``"daily_cap"``; ``resume_at`` says when work can
    resume. ``sensitive_allowed`` is False past the sensitive cap, until ``sensitive_resume_at``.
    """

    reason: str | None
    resume_at: datetime | None
    sensitive_allowed: bool
    sensitive_resume_at: datetime | None
    worked_today_minutes: float
    sensitive_today_minutes: float
    stretch_minutes: float

    @property
    def may_work(self) -> bool:
        return self.reason is None

    def message(self) -> str:
        """The sentence the page shows (times in UTC)."""
        if self.reason == "break":
            return (f"Time for a break: you have worked {self.stretch_minutes:.0f} minutes without one. "
                    f"Work can resume at {self.resume_at:%H:%M} UTC.")
        if self.reason == "daily_cap":
            return (f"You have reached today's limit ({self.worked_today_minutes:.0f} minutes of work). "
                    f"Work can resume at {self.resume_at:%Y-%m-%d %H:%M} UTC.")
        if not self.sensitive_allowed:
            return (f"You have reached today's limit for sensitive items ({self.sensitive_today_minutes:.0f} "
                    f"minutes); they resume at {self.sensitive_resume_at:%Y-%m-%d %H:%M} UTC.")
        return "You can work."


def merge_intervals(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The union of the intervals, as sorted, disjoint intervals."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def start_of_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def minutes_between(intervals: list[tuple[datetime, datetime]], start: datetime, end: datetime) -> float:
    """Minutes of the (disjoint) intervals that fall within [start, end]."""
    total = 0.0
    for a, b in intervals:
        overlap = (min(b, end) - max(a, start)).total_seconds()
        total += max(overlap, 0.0)
    return total / 60.0


def current_stretch(merged: list[tuple[datetime, datetime]], now: datetime,
                    break_minutes: float) -> tuple[datetime, datetime] | None:
    """(start, end) of the stretch still going on at ``now``, or None after a long enough pause."""
    pause = timedelta(minutes=break_minutes)
    if not merged or now - merged[-1][1] >= pause:
        return None
    start, end = merged[-1]
    for earlier_start, earlier_end in reversed(merged[:-1]):
        if start - earlier_end >= pause:
            break
        start = earlier_start
    return start, end


def welfare_status(intervals: list[WorkInterval], now: datetime, limits: WelfareLimits) -> WelfareStatus:
    """The annotator's status at ``now`` given all their work intervals."""
    all_work = merge_intervals([(i.start, i.end) for i in intervals])
    sensitive_work = merge_intervals([(i.start, i.end) for i in intervals if i.sensitive])
    today, tomorrow = start_of_day(now), start_of_day(now) + timedelta(days=1)
    worked = minutes_between(all_work, today, now)
    sensitive = minutes_between(sensitive_work, today, now)
    stretch = current_stretch(all_work, now, limits.break_minutes)
    stretch_minutes = (stretch[1] - stretch[0]).total_seconds() / 60.0 if stretch else 0.0

    reason, resume_at = None, None
    if worked >= limits.daily_cap_minutes:
        reason, resume_at = "daily_cap", tomorrow
    elif stretch and stretch_minutes >= limits.break_after_minutes:
        reason, resume_at = "break", stretch[1] + timedelta(minutes=limits.break_minutes)
    sensitive_allowed = sensitive < limits.daily_sensitive_cap_minutes
    return WelfareStatus(reason, resume_at, sensitive_allowed, None if sensitive_allowed else tomorrow,
                         worked, sensitive, stretch_minutes)


def assignment_intervals(assigned_at: datetime, revealed_at: datetime | None, finished_at: datetime,
                         sensitive: bool) -> list[WorkInterval]:
    """The work intervals of one finished assignment (the whole task, and the revealed sensitive part)."""
    floor = finished_at - timedelta(minutes=MAX_COUNTED_TASK_MINUTES)
    intervals = [WorkInterval(max(assigned_at, floor), finished_at)]
    if sensitive and revealed_at is not None:
        intervals.append(WorkInterval(max(revealed_at, floor), finished_at, sensitive=True))
    return intervals
