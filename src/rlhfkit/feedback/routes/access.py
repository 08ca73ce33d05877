"""Admins only: accounts (disable, enable, end sessions, password-reset links) and project members.

Forms (on ``/admin`` and ``/admin/projects/ID``): ``POST /admin/users/ID/disable | enable |
end-sessions | reset-link``, ``POST /admin/projects/ID/members`` (username, role) and
``POST /admin/projects/ID/members/USER_ID/remove``. API: ``GET /api/admin/users``,
``POST /api/admin/users/ID/disable | enable | end-sessions | reset-link`` (the link in ``url``),
``GET /api/admin/projects/ID/members``, ``POST /api/admin/projects/ID/members`` ``{username, role}``
and ``POST /api/admin/projects/ID/members/remove`` ``{username}``. What each does:
:mod:`rlhfkit.feedback.account_admin` and :mod:`rlhfkit.feedback.membership`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from rlhfkit.feedback import account_admin, membership, services
from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.routes.admin import admin_page_response, project_page_response
from rlhfkit.feedback.routes.deps import AdminApiUser, AdminFormUser, Db, Login, Now, Page

router = APIRouter()
ACCOUNT_ACTIONS = ("disable", "enable", "end-sessions", "reset-link")


def reset_url(request: Request, token: str) -> str:
    return str(request.base_url) + f"reset/{token}"


def account_action(request: Request, db, admin, user_id: int, action: str, now) -> dict:
    """Do one account action; what to answer (a message, and the link of a reset)."""
    user = account_admin.get_user(db, user_id)
    if action == "disable":
        ended = account_admin.disable_account(db, admin, user, now)
        return {"message": f"{user.username!r} is disabled; {ended} session(s) ended."}
    if action == "enable":
        account_admin.enable_account(db, user)
        return {"message": f"{user.username!r} is enabled again."}
    if action == "end-sessions":
        ended = account_admin.end_sessions(db, user)
        return {"message": f"{ended} session(s) of {user.username!r} ended."}
    if action == "reset-link":
        token = account_admin.create_reset_link(db, admin, user, now)
        return {"message": f"A password-reset link for {user.username!r} (works once, for "
                           f"{account_admin.RESET_HOURS} hours).", "url": reset_url(request, token)}
    raise FeedbackError(404, "not_found", f"Unknown account action {action!r}; one of {', '.join(ACCOUNT_ACTIONS)}.")


# ---------------------------------------------------------------- API


@router.get("/api/admin/users")
def accounts_api(db: Db, user: AdminApiUser, now: Now):
    return {"accounts": account_admin.account_rows(db, now)}


@router.post("/api/admin/users/{user_id}/{action}")
def account_api(request: Request, db: Db, user: AdminApiUser, now: Now, user_id: int, action: str):
    answer = account_action(request, db, user, user_id, action, now)
    db.commit()
    return answer


@router.get("/api/admin/projects/{project_id}/members")
def members_api(db: Db, user: AdminApiUser, project_id: int):
    return {"members": membership.project_members(db, services.get_project(db, project_id))}


@router.post("/api/admin/projects/{project_id}/members")
def add_member_api(db: Db, user: AdminApiUser, now: Now, project_id: int, body: dict):
    project = services.get_project(db, project_id)
    member = membership.user_by_name(db, body.get("username"))
    membership.set_member(db, project, member, body.get("role", "annotator"), user, now)
    db.commit()
    return {"members": membership.project_members(db, project)}


@router.post("/api/admin/projects/{project_id}/members/remove")
def remove_member_api(db: Db, user: AdminApiUser, now: Now, project_id: int, body: dict):
    project = services.get_project(db, project_id)
    removed = membership.remove_member(db, project, membership.user_by_name(db, body.get("username")), now)
    db.commit()
    return {"removed": removed, "members": membership.project_members(db, project)}


# ---------------------------------------------------------------- forms


@router.post("/admin/users/{user_id}/{action}", response_class=HTMLResponse)
def account_form(request: Request, db: Db, login: Login, user: AdminFormUser, now: Now, page: Page, user_id: int,
                 action: str):
    try:
        answer = account_action(request, db, user, user_id, action, now)
    except FeedbackError as error:
        db.rollback()
        return admin_page_response(page, db, login, user, now, status_code=error.status, error=error.message)
    db.commit()
    return admin_page_response(page, db, login, user, now, notice=answer["message"], reset_url=answer.get("url"))


@router.post("/admin/projects/{project_id}/members", response_class=HTMLResponse)
def add_member_form(db: Db, login: Login, user: AdminFormUser, now: Now, page: Page, project_id: int,
                    username: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "annotator"):
    project = services.get_project(db, project_id)
    try:
        member = membership.user_by_name(db, username)
        membership.set_member(db, project, member, role, user, now)
    except FeedbackError as error:
        db.rollback()
        return project_page_response(page, db, login, user, project_id, status_code=error.status, error=error.message)
    db.commit()
    return project_page_response(page, db, login, user, project_id,
                                 notice=f"{member.username!r} is now {role} of {project.name!r}.")


@router.post("/admin/projects/{project_id}/members/{user_id}/remove", response_class=HTMLResponse)
def remove_member_form(db: Db, login: Login, user: AdminFormUser, now: Now, page: Page, project_id: int,
                       user_id: int):
    project = services.get_project(db, project_id)
    member = account_admin.get_user(db, user_id)
    membership.remove_member(db, project, member, now)
    db.commit()
    return project_page_response(page, db, login, user, project_id,
                                 notice=f"{member.username!r} is no longer a member of {project.name!r}.")
