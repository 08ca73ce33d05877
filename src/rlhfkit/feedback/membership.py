"""Who may work on a project: its members (annotators and reviewers) and every admin.

An annotator sees only the projects it is a member of, and every labelling request (the next task,
reveal, skip, flag, label) of a project it is not a member of is refused with a 403 that says so. A
reviewer of a project labels it too and reviews the others' labels of that project, and only of that
project (see :mod:`.review`). Admins need no membership: they see, label and review every project.

Admins add members (or change their role) and remove them. A removed member's open assignment in the
project goes back to the pool at once, under its item's lock, so the item's place in the overlap is
not held until the assignment times out. Checks happen in the services, not in
:func:`.assignment.next_assignment`, which simulated annotators (the demo) call directly.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.feedback import names
from rlhfkit.feedback.assignment import FeedbackError, give_back, relock
from rlhfkit.feedback.db import MEMBER_ROLES, Assignment, Project, ProjectMember, User


def member_role(session: Session, project_id: int, user: User) -> str | None:
    """The user's role in the project: ``admin`` for admins, the member's role, or None for outsiders."""
    if user.role == "admin":
        return "admin"
    return session.scalar(select(ProjectMember.role).where(ProjectMember.project_id == project_id,
                                                           ProjectMember.user_id == user.id))


def require_member(session: Session, project: Project, user: User) -> str:
    """The user's role in the project, or a 403 for someone who is not a member of it."""
    role = member_role(session, project.id, user)
    if role is None:
        raise FeedbackError(403, "not_a_member", f"You are not a member of the project {project.name!r}; "
                                                 "ask an admin to add you to it.")
    return role


def require_reviewer(session: Session, project: Project, user: User) -> None:
    """A 403 unless the user reviews the project (a reviewer member, or an admin)."""
    if require_member(session, project, user) not in ("reviewer", "admin"):
        raise FeedbackError(403, "not_a_reviewer", f"You are not a reviewer of the project {project.name!r}.")


def visible_projects(session: Session, user: User) -> list[tuple[Project, str]]:
    """(project, the user's role in it) for every project the user may see, oldest first."""
    if user.role == "admin":
        return [(project, "admin") for project in session.scalars(select(Project).order_by(Project.id))]
    rows = session.execute(select(Project, ProjectMember.role)
                           .join(ProjectMember, ProjectMember.project_id == Project.id)
                           .where(ProjectMember.user_id == user.id).order_by(Project.id)).all()
    return [(project, role) for project, role in rows]


def project_members(session: Session, project: Project) -> list[dict]:
    """The members of a project, by username: name, role, whether the account is disabled, since when."""
    rows = session.execute(select(ProjectMember, User).join(User, ProjectMember.user_id == User.id)
                           .where(ProjectMember.project_id == project.id).order_by(User.username)).all()
    return [{"user_id": user.id, "username": user.username, "role": member.role,
             "disabled": user.disabled_at is not None, "added_at": member.added_at.isoformat() + "Z"}
            for member, user in rows]


def user_by_name(session: Session, username: object, field: str = "username") -> User:
    """The account a typed name names (compared by key, as logging in does), or a 422 naming the field."""
    key = names.username_key(username) if isinstance(username, str) else names.NO_KEY
    user = session.scalar(select(User).where(User.username_key == key)) if key != names.NO_KEY else None
    if user is None:
        raise FeedbackError(422, "invalid", f"field '{field}': no account called {str(username)[:80]!r}")
    return user


def check_member_role(role: object) -> str:
    if role not in MEMBER_ROLES:
        raise FeedbackError(422, "invalid", f"field 'role': expected one of {', '.join(MEMBER_ROLES)}, got {role!r}")
    return role


def set_member(session: Session, project: Project, user: User, role: object, added_by: User | None,
               now: datetime) -> ProjectMember:
    """Make the user a member of the project with ``role`` (or change its role); flushed."""
    role = check_member_role(role)
    if user.role == "admin":
        raise FeedbackError(422, "invalid", f"field 'username': {user.username!r} is an admin, who works on "
                                            "every project without being a member")
    member = session.scalar(select(ProjectMember).where(ProjectMember.project_id == project.id,
                                                        ProjectMember.user_id == user.id))
    if member is None:
        member = ProjectMember(project_id=project.id, user_id=user.id, role=role, added_at=now,
                               added_by_id=added_by.id if added_by else None)
        session.add(member)
    member.role = role
    session.flush()
    return member


def remove_member(session: Session, project: Project, user: User, now: datetime) -> bool:
    """Take the user out of the project; its open assignment there goes back to the pool. Whether it was a member."""
    member = session.scalar(select(ProjectMember).where(ProjectMember.project_id == project.id,
                                                        ProjectMember.user_id == user.id))
    if member is None:
        return False
    session.delete(member)
    give_back_open_work(session, user, now, project_id=project.id)
    return True


def give_back_open_work(session: Session, user: User, now: datetime, project_id: int | None = None) -> int:
    """End the user's active assignments (of one project, or all) as expired, each under its item's lock."""
    query = select(Assignment).where(Assignment.user_id == user.id, Assignment.status == "active")
    if project_id is not None:
        query = query.where(Assignment.project_id == project_id)
    freed = 0
    for assignment in session.scalars(query.order_by(Assignment.item_id)).all():
        if relock(session, assignment).status == "active":
            give_back(assignment, "expired", now)
            freed += 1
    session.flush()
    return freed


def copy_members(session: Session, source: Project, target: Project, added_by: User | None, now: datetime) -> int:
    """Give ``target`` the members of ``source`` (with their roles), e.g. for a project's next round; how many."""
    added = 0
    for row in project_members(session, source):
        set_member(session, target, session.get(User, row["user_id"]), row["role"], added_by, now)
        added += 1
    return added
