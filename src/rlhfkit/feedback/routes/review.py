"""Reviewing: a project's reviewers (and admins) see the others' labels and correct or reject them.

Page: ``/projects/ID/review`` (``?status=submitted|corrected|rejected&offset=N``), whose forms POST
to ``/projects/ID/review/LABEL/reject`` and ``.../correct``. API: ``GET /api/projects/ID/labels``
(``status``, ``offset``, ``limit``), ``POST /api/labels/ID/reject`` ``{reason}`` and
``POST /api/labels/ID/correct`` ``{choice | ranks | ratings, reason}`` (the answer in the item's
response order). Everyone else gets a 403; see :mod:`rlhfkit.feedback.review` for what a review does.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse

from rlhfkit.feedback import review, services
from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.db import PAIRWISE_CHOICES
from rlhfkit.feedback.routes.deps import ApiUser, Db, FormUser, Login, Now, Page

router = APIRouter()
PAGE_SIZE = 25


# ---------------------------------------------------------------- API


@router.get("/api/projects/{project_id}/labels")
def labels_api(db: Db, user: ApiUser, project_id: int, status: str | None = None, offset: int = 0,
               limit: int = 50):
    return review.review_queue(db, services.get_project(db, project_id), user, status, offset, limit)


@router.post("/api/labels/{label_id}/reject")
def reject_api(db: Db, user: ApiUser, now: Now, label_id: int, body: dict):
    label = review.reject_label(db, label_id, user, body, now)
    db.commit()
    return {"label_id": label.id, "review_status": label.review_status}


@router.post("/api/labels/{label_id}/correct")
def correct_api(db: Db, user: ApiUser, now: Now, label_id: int, body: dict):
    label = review.correct_label(db, label_id, user, body, now)
    db.commit()
    return {"label_id": label.id, "review_status": label.review_status, "answer": label.answer,
            "original_answer": label.original_answer}


# ---------------------------------------------------------------- the page and its forms


@router.get("/projects/{project_id}/review", response_class=HTMLResponse)
def review_page(db: Db, login: Login, page: Page, project_id: int, status: str = "submitted", offset: int = 0,
                notice: str = ""):
    project = services.get_project(db, project_id)
    queue = review.review_queue(db, project, login.user, status, offset, PAGE_SIZE)
    return page("review.html", {"user": login.user, "csrf_token": login.csrf_token, "project": project,
                                "queue": queue, "status": status or "all", "statuses": ("all", *review.REVIEW_STATUSES),
                                "choices": PAIRWISE_CHOICES, "page_size": PAGE_SIZE, "notice": notice[:200]})


def back_to_review(project_id: int, status: str, notice: str) -> RedirectResponse:
    query = urlencode({"status": status, "notice": notice})
    return RedirectResponse(f"/projects/{project_id}/review?{query}", status_code=303)


def label_in_project(db, label_id: int, project_id: int) -> None:
    """A 404 unless the label belongs to the project of the page its form was on."""
    if review.label_of(db, label_id).project_id != project_id:
        raise FeedbackError(404, "not_found", "No such label in this project.")


def form_answer(task_type: str, choice: str, values: str) -> dict:
    """The answer of a correction form: a choice, or the comma-separated ranks or ratings."""
    if task_type == "pairwise":
        return {"choice": choice}
    field = "ranks" if task_type == "rank" else "ratings"
    try:
        return {field: [int(value) for value in values.replace(",", " ").split()]}
    except ValueError:
        raise FeedbackError(422, "invalid", f"field '{field}': expected whole numbers separated by commas, "
                                            f"got {values[:80]!r}") from None


@router.post("/projects/{project_id}/review/{label_id}/reject")
def reject_form(db: Db, user: FormUser, now: Now, project_id: int, label_id: int,
                reason: Annotated[str, Form()] = "", status: Annotated[str, Form()] = "submitted"):
    label_in_project(db, label_id, project_id)
    review.reject_label(db, label_id, user, {"reason": reason}, now)
    db.commit()
    return back_to_review(project_id, status, f"Label {label_id} rejected; its item is open for another label.")


@router.post("/projects/{project_id}/review/{label_id}/correct")
def correct_form(db: Db, user: FormUser, now: Now, project_id: int, label_id: int,
                 choice: Annotated[str, Form()] = "", values: Annotated[str, Form()] = "",
                 reason: Annotated[str, Form()] = "", status: Annotated[str, Form()] = "submitted"):
    label_in_project(db, label_id, project_id)
    project = services.get_project(db, project_id)
    answer = form_answer(project.task_type, choice, values)
    review.correct_label(db, label_id, user, {**answer, "reason": reason}, now)
    db.commit()
    return back_to_review(project_id, status, f"Label {label_id} corrected.")
