"""What the web routes do, apart from HTTP: look things up, check input, change rows, shape the answers.

Every function works inside the caller's transaction and flushes at most; the route commits (with
:func:`commit_or_conflict` where a repeated request could hit a unique constraint). Refusals are
:class:`~rlhfkit.feedback.assignment.FeedbackError`, which the app turns into a page or a JSON answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.feedback import auth
from rlhfkit.feedback.account_admin import account_rows
from rlhfkit.feedback.assignment import (
    FeedbackError,
    items_held_by_others,
    limits_of,
    next_assignment,
    user_welfare,
)
from rlhfkit.feedback.checks import MAX_ID, check_number, check_text
from rlhfkit.feedback.db import TASK_TYPES, Assignment, Label, Project, User, settings_row
from rlhfkit.feedback.export import EXPORT_KINDS, export_file
from rlhfkit.feedback.importing import ProjectOptions
from rlhfkit.feedback.labels import flag, own_assignment, reveal, shown_responses, skip, submit_label
from rlhfkit.feedback.lexicon import CATEGORIES
from rlhfkit.feedback.membership import require_member, visible_projects
from rlhfkit.feedback.stats import annotator_progress, exposure_rows, project_progress, project_report

NO_MORE_TASKS = "No more items for you in this project. Thank you!"
WAITING_RETRY_SECONDS = 10
"""How soon an annotator asks again while the last items are held by others (the page does it itself)."""
NUMERIC_SETTINGS = {"break_after_minutes": (5, 720), "break_minutes": (1, 240), "daily_cap_minutes": (15, 1440),
                    "daily_sensitive_cap_minutes": (5, 1440), "too_fast_seconds": (0.5, 600)}
"""The numeric site settings and the range each takes: none can stop all work or switch a limit off."""
MAX_URL_CHARS = 500


def get_project(session: Session, project_id: int) -> Project:
    """The project, or a 404 (ids past what a table holds name nothing)."""
    project = session.get(Project, project_id) if 1 <= project_id <= MAX_ID else None
    if project is None:
        raise FeedbackError(404, "not_found", "No such project.")
    return project


def commit_or_conflict(session: Session) -> None:
    """Commit, turning a lost race on a unique constraint (a double submit) into a 409."""
    try:
        session.commit()
    except IntegrityError as error:
        session.rollback()
        raise FeedbackError(409, "conflict", "This was already saved (a repeated request).") from error


def parse_bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "on", "yes")


# ---------------------------------------------------------------- annotators


def welfare_report(session: Session, user: User, now: datetime) -> dict:
    """The annotator's welfare status and the site's limits, as the pages and ``/api/me/welfare`` show them."""
    settings = settings_row(session)
    status = user_welfare(session, user.id, now, limits_of(settings))
    return {"may_work": status.may_work, "reason": status.reason, "message": status.message(),
            "resume_at": status.resume_at.isoformat() + "Z" if status.resume_at else None,
            "sensitive_allowed": status.sensitive_allowed,
            "worked_today_minutes": round(status.worked_today_minutes, 1),
            "sensitive_today_minutes": round(status.sensitive_today_minutes, 1),
            "wellbeing_url": settings.wellbeing_url,
            "limits": {"break_after_minutes": settings.break_after_minutes, "break_minutes": settings.break_minutes,
                       "daily_cap_minutes": settings.daily_cap_minutes,
                       "daily_sensitive_cap_minutes": settings.daily_sensitive_cap_minutes}}


def projects_with_progress(session: Session, user: User) -> list[tuple[Project, dict, str]]:
    """(project, the user's progress in it, its role there) for every project the user may see
    (its member projects; an admin's: all), oldest first."""
    return [(project, annotator_progress(session, project, user), role)
            for project, role in visible_projects(session, user)]


def member_project(session: Session, project_id: int, user: User) -> Project:
    """The project, or a 404; a 403 for someone who is not a member of it."""
    project = get_project(session, project_id)
    require_member(session, project, user)
    return project


def member_assignment(session: Session, assignment_id: int, user: User) -> Assignment:
    """The user's own assignment (see :func:`.labels.own_assignment`) in a project it is still a member of."""
    assignment = own_assignment(session, assignment_id, user)
    require_member(session, get_project(session, assignment.project_id), user)
    return assignment


def task_json(session: Session, assignment: Assignment, project: Project, user: User) -> dict:
    """What the page needs to show a task; the content only once a warned item has been revealed."""
    item = assignment.item
    revealed = assignment.revealed_at is not None
    task = {
        "assignment_id": assignment.id, "project_id": project.id, "task_type": project.task_type,
        "sensitive": assignment.sensitive, "categories": item.category_names, "revealed": revealed,
        "response_count": len(item.responses), "rating_scale": project.rating_scale,
        "ask_rationale": project.ask_rationale, "allow_edit": project.allow_edit,
    }
    if revealed:
        task["prompt"], task["responses"] = item.prompt, shown_responses(assignment)
    return {"task": task, "progress": annotator_progress(session, project, user)}


def next_task(session: Session, project_id: int, user: User, now: datetime) -> dict:
    """The annotator's current or next task in the project, or ``{"task": None, ...}`` when none is left."""
    project = member_project(session, project_id, user)
    assignment = next_assignment(session, project, user, now, settings_row(session))
    if assignment is None:
        answer = {"task": None, "message": NO_MORE_TASKS, "progress": annotator_progress(session, project, user)}
        if held := items_held_by_others(session, project, user):
            answer.update(message=f"Others are working on the last {held} item(s) open to you; if one comes back "
                                  "(skipped or left too long), it is yours. Checking again shortly.",
                          waiting_items=held, retry_after_seconds=WAITING_RETRY_SECONDS)
        return answer
    return task_json(session, assignment, project, user)


def reveal_task(session: Session, assignment_id: int, user: User, now: datetime) -> dict:
    """Reveal a warned item of the annotator's; the task with its content."""
    assignment = member_assignment(session, assignment_id, user)
    reveal(session, assignment, now, settings_row(session))
    return task_json(session, assignment, get_project(session, assignment.project_id), user)


def skip_task(session: Session, assignment_id: int, user: User, now: datetime) -> None:
    """Hand the annotator's item back for someone else."""
    skip(member_assignment(session, assignment_id, user), now)


def flag_task(session: Session, assignment_id: int, user: User, category: str) -> list[str]:
    """Flag the item of the annotator's assignment as sensitive; the item's categories."""
    return flag(session, member_assignment(session, assignment_id, user), user, category)


def label_task(session: Session, assignment_id: int, user: User, payload: dict, now: datetime) -> Label:
    """Store the annotator's label for their assignment."""
    assignment = member_assignment(session, assignment_id, user)
    project = get_project(session, assignment.project_id)
    return submit_label(session, assignment, project, payload, now)


def parse_opt_outs(chosen: object) -> list[str]:
    """The categories of an ``/api/me/opt-outs`` request, or a 422 naming the allowed ones."""
    if not isinstance(chosen, list) or not all(c in CATEGORIES for c in chosen):
        raise FeedbackError(422, "invalid", f"field 'categories': expected a list of {', '.join(CATEGORIES)}")
    return chosen


def set_opt_outs(user: User, chosen: Iterable[str]) -> list[str]:
    """Opt the user out of the chosen categories (unknown names are ignored); the new list."""
    chosen = list(chosen)
    user.opted_out_categories = [c for c in CATEGORIES if c in chosen]
    return user.opted_out_categories


# ---------------------------------------------------------------- admins


def project_options(task_type: str, guidelines: str, overlap: int, gold_rate: float, ask_rationale: str | None,
                    allow_edit: str | None, rating_scale: int, shuffle_responses: str | None = None) -> ProjectOptions:
    """The options of an upload form (checkboxes arrive as text, or not at all)."""
    return ProjectOptions(task_type, guidelines, overlap, gold_rate, parse_bool(ask_rationale),
                          parse_bool(allow_edit), rating_scale, parse_bool(shuffle_responses))


def invite(session: Session, creator: User, role: str, now: datetime) -> str:
    """A new invitation's token; a 422 for an unknown role."""
    try:
        return auth.create_invitation(session, creator, role, now)
    except auth.AuthError as error:
        raise FeedbackError(422, "invalid", str(error)) from error


def update_settings(session: Session, values: dict) -> None:
    """Apply the site settings given in ``values`` (empty ones are left as they are); a 422 names a bad one."""
    settings = settings_row(session)
    try:
        for name, (low, high) in NUMERIC_SETTINGS.items():
            if values.get(name) not in (None, ""):
                setattr(settings, name, check_number(values[name], name, low, high))
        if "wellbeing_url" in values:
            url = check_text(str(values["wellbeing_url"] or ""), "wellbeing_url", max_chars=MAX_URL_CHARS,
                             one_line=True).strip()
            if url and not url.startswith(("https://", "http://")):
                raise ValueError("field 'wellbeing_url': expected an http(s) link")
            settings.wellbeing_url = url
    except ValueError as error:
        raise FeedbackError(422, "invalid", str(error)) from error


def annotator_exposure(session: Session, now: datetime) -> list[dict]:
    """Every account's work and sensitive exposure today (see :func:`.stats.exposure_rows`)."""
    return exposure_rows(session, now, settings_row(session))


def project_stats(session: Session, project: Project) -> dict:
    """The project's progress, annotators and agreement (see :func:`.stats.project_report`)."""
    return project_report(session, project, settings_row(session))


def project_export(session: Session, project_id: int, kind: str, aggregate: bool) -> tuple[str, str]:
    """(file name, JSONL text) of one export of a project; a 404 for an unknown kind or project."""
    if kind not in EXPORT_KINDS:
        raise FeedbackError(404, "not_found", f"Unknown export {kind!r}; one of {', '.join(EXPORT_KINDS)}.")
    return export_file(session, get_project(session, project_id), kind, aggregate)


def admin_dashboard(session: Session, now: datetime) -> dict:
    """The admin page's data: task types, site settings, projects with progress, accounts, exposure."""
    projects = session.scalars(select(Project).order_by(Project.id)).all()
    return {"task_types": TASK_TYPES, "settings": settings_row(session),
            "projects": [(p, project_progress(session, p)) for p in projects],
            "accounts": account_rows(session, now), "exposure": annotator_exposure(session, now)}
