"""Labelling: the annotator's projects page, the labelling page, and the task API its JavaScript calls.

Pages: ``/`` (the projects the user is a member of; an admin's: all) and ``/projects/ID``. API:
``POST /api/projects/ID/next`` (the current or next task, ``{"task": null}`` when none is left, or
429 during a break or past a daily cap) and ``POST /api/assignments/ID/reveal | skip | flag | label``.
Each refuses (403, ``not_a_member``) a project the user is not a member of (see :mod:`..membership`).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from rlhfkit.feedback import services
from rlhfkit.feedback.db import settings_row
from rlhfkit.feedback.labels import ANNOTATOR_FLAG_CATEGORIES
from rlhfkit.feedback.markdown_text import render_markdown
from rlhfkit.feedback.routes.deps import ApiUser, Db, Login, Now, Page

router = APIRouter()


# ---------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse)
def home(db: Db, login: Login, now: Now, page: Page):
    user = login.user
    return page("home.html", {"user": user, "csrf_token": login.csrf_token,
                              "projects": services.projects_with_progress(db, user),
                              "welfare": services.welfare_report(db, user, now)})


@router.get("/projects/{project_id}", response_class=HTMLResponse)
def label_page(db: Db, login: Login, page: Page, project_id: int):
    project = services.member_project(db, project_id, login.user)
    config = {"project_id": project.id, "task_type": project.task_type, "csrf_token": login.csrf_token,
              "flag_categories": list(ANNOTATOR_FLAG_CATEGORIES), "wellbeing_url": settings_row(db).wellbeing_url}
    return page("label.html", {"user": login.user, "csrf_token": login.csrf_token, "project": project,
                               "guidelines": render_markdown(project.guidelines), "config": config})


# ---------------------------------------------------------------- the task API


@router.post("/api/projects/{project_id}/next")
def next_task(db: Db, user: ApiUser, now: Now, project_id: int):
    result = services.next_task(db, project_id, user, now)
    db.commit()
    return result


@router.post("/api/assignments/{assignment_id}/reveal")
def reveal_task(db: Db, user: ApiUser, now: Now, assignment_id: int):
    result = services.reveal_task(db, assignment_id, user, now)
    db.commit()
    return result


@router.post("/api/assignments/{assignment_id}/skip")
def skip_task(db: Db, user: ApiUser, now: Now, assignment_id: int):
    services.skip_task(db, assignment_id, user, now)
    db.commit()
    return {"ok": True}


@router.post("/api/assignments/{assignment_id}/flag")
def flag_task(db: Db, user: ApiUser, assignment_id: int, body: dict):
    categories = services.flag_task(db, assignment_id, user, str(body.get("category", "")))
    services.commit_or_conflict(db)
    return {"categories": categories}


@router.post("/api/assignments/{assignment_id}/label")
def label_task(db: Db, user: ApiUser, now: Now, assignment_id: int, body: dict):
    label = services.label_task(db, assignment_id, user, body, now)
    services.commit_or_conflict(db)
    return {"label_id": label.id}  # the progress comes with the next task
