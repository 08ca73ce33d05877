"""Admins only: the dashboard pages and forms, and the admin API (accounts and members: :mod:`.access`).

Pages: ``/admin`` (projects, accounts, exposure, invitations, settings) and ``/admin/projects/ID``
(with its members); their forms POST to ``/admin/projects`` (upload), ``/admin/invitations`` and
``/admin/settings``. API:
``POST /api/admin/projects`` (upload), ``GET /api/admin/projects/ID/stats``,
``GET /api/admin/projects/ID/export/KIND`` (JSONL), ``GET /api/admin/exposure``,
``POST /api/admin/invitations``, ``POST /api/admin/settings``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from sqlalchemy.orm import Session

from rlhfkit.data.errors import DataError
from rlhfkit.feedback import services
from rlhfkit.feedback.db import MEMBER_ROLES, LoginSession, User
from rlhfkit.feedback.export import EXPORT_KINDS, content_disposition
from rlhfkit.feedback.importing import import_upload
from rlhfkit.feedback.membership import project_members
from rlhfkit.feedback.routes.deps import (
    AdminApiUser,
    AdminFormUser,
    AdminPageUser,
    Db,
    Login,
    Now,
    Page,
    PageRenderer,
)

router = APIRouter()


def invitation_url(request: Request, token: str) -> str:
    return str(request.base_url) + f"invite/{token}"


def admin_page_response(page: PageRenderer, db: Session, login: LoginSession, user: User, now: datetime,
                        status_code: int = 200, **extra) -> HTMLResponse:
    """The admin page; ``extra`` sets ``error``, ``notice``, ``invitation_url`` or ``reset_url``."""
    context = {"user": user, "csrf_token": login.csrf_token, **services.admin_dashboard(db, now),
               "error": None, "notice": None, "invitation_url": None, "reset_url": None, **extra}
    return page("admin.html", context, status_code=status_code)


# ---------------------------------------------------------------- API


@router.post("/api/admin/projects")
def create_project_api(db: Db, user: AdminApiUser, file: Annotated[UploadFile, File()],
                       name: Annotated[str, Form()], task_type: Annotated[str, Form()] = "pairwise",
                       guidelines: Annotated[str, Form()] = "", overlap: Annotated[int, Form()] = 1,
                       gold_rate: Annotated[float, Form()] = 0.0,
                       ask_rationale: Annotated[str | None, Form()] = None,
                       allow_edit: Annotated[str | None, Form()] = None,
                       rating_scale: Annotated[int, Form()] = 5, use_lexicon: Annotated[str, Form()] = "1",
                       shuffle_responses: Annotated[str | None, Form()] = None):
    options = services.project_options(task_type, guidelines, overlap, gold_rate, ask_rationale, allow_edit,
                                       rating_scale, shuffle_responses)
    try:
        project, count = import_upload(db, name, options, file.filename, file.file, services.parse_bool(use_lexicon))
    except (DataError, ValueError) as error:
        db.rollback()
        return JSONResponse({"error": "invalid_upload", "detail": str(error)}, status_code=422)
    db.commit()
    return {"project_id": project.id, "items": count}


@router.get("/api/admin/projects/{project_id}/stats")
def project_stats_api(db: Db, user: AdminApiUser, project_id: int):
    return services.project_stats(db, services.get_project(db, project_id))


@router.get("/api/admin/projects/{project_id}/export/{kind}")
def export_api(db: Db, user: AdminApiUser, project_id: int, kind: str, aggregate: bool = True):
    filename, text = services.project_export(db, project_id, kind, aggregate)
    return PlainTextResponse(text, media_type="application/x-ndjson",
                             headers={"Content-Disposition": content_disposition(filename)})


@router.get("/api/admin/exposure")
def exposure_api(db: Db, user: AdminApiUser, now: Now):
    return {"annotators": services.annotator_exposure(db, now)}


@router.post("/api/admin/invitations")
def invitation_api(request: Request, db: Db, user: AdminApiUser, now: Now, body: dict):
    token = services.invite(db, user, str(body.get("role", "annotator")), now)
    db.commit()
    return {"token": token, "url": invitation_url(request, token)}


@router.post("/api/admin/settings")
def settings_api(db: Db, user: AdminApiUser, body: dict):
    services.update_settings(db, body)
    db.commit()
    return {"ok": True}


# ---------------------------------------------------------------- pages and forms


@router.get("/admin", response_class=HTMLResponse)
def admin_page(db: Db, login: Login, user: AdminPageUser, now: Now, page: Page):
    return admin_page_response(page, db, login, user, now)


@router.post("/admin/projects")
def create_project_form(db: Db, login: Login, user: AdminFormUser, now: Now, page: Page,
                        file: Annotated[UploadFile, File()], name: Annotated[str, Form()],
                        task_type: Annotated[str, Form()] = "pairwise", guidelines: Annotated[str, Form()] = "",
                        overlap: Annotated[int, Form()] = 1, gold_rate: Annotated[float, Form()] = 0.0,
                        ask_rationale: Annotated[str | None, Form()] = None,
                        allow_edit: Annotated[str | None, Form()] = None,
                        rating_scale: Annotated[int, Form()] = 5,
                        use_lexicon: Annotated[str | None, Form()] = None,
                        shuffle_responses: Annotated[str | None, Form()] = None):
    options = services.project_options(task_type, guidelines, overlap, gold_rate, ask_rationale, allow_edit,
                                       rating_scale, shuffle_responses)
    try:
        project, count = import_upload(db, name, options, file.filename, file.file, services.parse_bool(use_lexicon))
    except (DataError, ValueError) as error:
        db.rollback()
        return admin_page_response(page, db, login, user, now, status_code=422, error=f"Nothing imported: {error}")
    db.commit()
    return admin_page_response(page, db, login, user, now, notice=f"Project {project.name!r} created with {count} items.")


@router.post("/admin/invitations", response_class=HTMLResponse)
def invitation_form(request: Request, db: Db, login: Login, user: AdminFormUser, now: Now, page: Page,
                    role: Annotated[str, Form()] = "annotator"):
    token = services.invite(db, user, role, now)
    db.commit()
    return admin_page_response(page, db, login, user, now, invitation_url=invitation_url(request, token))


@router.post("/admin/settings")
def settings_form(db: Db, user: AdminFormUser, break_after_minutes: Annotated[str, Form()] = "",
                  break_minutes: Annotated[str, Form()] = "", daily_cap_minutes: Annotated[str, Form()] = "",
                  daily_sensitive_cap_minutes: Annotated[str, Form()] = "",
                  too_fast_seconds: Annotated[str, Form()] = "", wellbeing_url: Annotated[str, Form()] = ""):
    services.update_settings(db, {"break_after_minutes": break_after_minutes, "break_minutes": break_minutes,
                                  "daily_cap_minutes": daily_cap_minutes,
                                  "daily_sensitive_cap_minutes": daily_sensitive_cap_minutes,
                                  "too_fast_seconds": too_fast_seconds, "wellbeing_url": wellbeing_url})
    db.commit()
    return RedirectResponse("/admin", status_code=303)


def project_page_response(page: PageRenderer, db: Session, login: LoginSession, user: User, project_id: int,
                          status_code: int = 200, **extra) -> HTMLResponse:
    """A project's admin page (progress, annotators, agreement, members, exports); ``extra`` sets
    ``error`` or ``notice``."""
    project = services.get_project(db, project_id)
    context = {"user": user, "csrf_token": login.csrf_token, "project": project,
               "report": services.project_stats(db, project), "export_kinds": EXPORT_KINDS,
               "members": project_members(db, project), "member_roles": MEMBER_ROLES,
               "error": None, "notice": None, **extra}
    return page("project_admin.html", context, status_code=status_code)


@router.get("/admin/projects/{project_id}", response_class=HTMLResponse)
def project_admin_page(db: Db, login: Login, user: AdminPageUser, page: Page, project_id: int):
    return project_page_response(page, db, login, user, project_id)
