"""Accounts: logging in and out, invitations, the session, and the annotator's own page (opt-outs, welfare).

Pages: ``/login``, ``/invite/TOKEN``, ``/me``. API: ``POST /api/login``, ``GET /api/session``,
``GET /api/me/welfare``, ``POST /api/me/opt-outs``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from rlhfkit.feedback import auth, services
from rlhfkit.feedback.lexicon import CATEGORIES
from rlhfkit.feedback.routes.deps import (
    ApiUser,
    Db,
    FormUser,
    Login,
    Now,
    Page,
    clear_session_cookie,
    set_session_cookie,
)

router = APIRouter()


def safe_next(target: str | None) -> str:
    """A same-site path to go to after logging in (never another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# ---------------------------------------------------------------- sign in, sign up


@router.get("/login", response_class=HTMLResponse)
def login_page(page: Page, next: str = "/"):
    return page("login.html", {"next": safe_next(next), "error": None, "user": None})


@router.post("/login")
def login_form(request: Request, db: Db, now: Now, page: Page, username: Annotated[str, Form()],
               password: Annotated[str, Form()], next: Annotated[str, Form()] = "/"):
    try:
        _, token, _ = auth.log_in(db, username, password, now)
    except auth.AuthError as error:
        return page("login.html", {"next": safe_next(next), "error": str(error), "user": None}, status_code=401)
    db.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(response, token, request.app.state.secure_cookies)
    return response


@router.post("/api/login")
def login_api(request: Request, db: Db, now: Now, credentials: dict):
    try:
        user, token, login = auth.log_in(db, str(credentials.get("username", "")),
                                         str(credentials.get("password", "")), now)
    except auth.AuthError as error:
        return JSONResponse({"error": "wrong_credentials", "detail": str(error)}, status_code=401)
    db.commit()
    response = JSONResponse({"username": user.username, "role": user.role, "csrf_token": login.csrf_token})
    set_session_cookie(response, token, request.app.state.secure_cookies)
    return response


@router.get("/api/session")
def session_api(login: Login):
    return {"username": login.user.username, "role": login.user.role, "csrf_token": login.csrf_token}


@router.post("/logout")
def logout(db: Db, login: Login, user: FormUser):
    db.delete(login)
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response)
    return response


@router.get("/invite/{token}", response_class=HTMLResponse)
def invitation_page(db: Db, now: Now, page: Page, token: str):
    try:
        invitation = auth.open_invitation(db, token, now)
    except auth.AuthError as error:
        return page("message.html", {"title": "Invitation", "message": str(error), "user": None}, status_code=404)
    return page("invite.html", {"token": token, "role": invitation.role, "error": None, "user": None})


@router.post("/invite/{token}")
def accept_invitation(request: Request, db: Db, now: Now, page: Page, token: str,
                      username: Annotated[str, Form()], password: Annotated[str, Form()]):
    try:
        session_token = auth.sign_up(db, token, username, password, now)
    except auth.AuthError as error:
        db.rollback()
        return page("invite.html", {"token": token, "role": "", "error": str(error), "user": None},
                    status_code=422)
    db.commit()
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, session_token, request.app.state.secure_cookies)
    return response


# ---------------------------------------------------------------- the annotator's own settings


@router.get("/me", response_class=HTMLResponse)
def me_page(db: Db, login: Login, now: Now, page: Page, saved: bool = False):
    return page("me.html", {"user": login.user, "csrf_token": login.csrf_token, "categories": CATEGORIES,
                            "saved": saved, "welfare": services.welfare_report(db, login.user, now)})


@router.post("/me")
def me_save(db: Db, user: FormUser, opt_out: Annotated[list[str], Form()] = ()):  # noqa: B006
    services.set_opt_outs(user, opt_out)
    db.commit()
    return RedirectResponse("/me?saved=1", status_code=303)


@router.get("/api/me/welfare")
def my_welfare(db: Db, user: ApiUser, now: Now):
    return services.welfare_report(db, user, now)


@router.post("/api/me/opt-outs")
def my_opt_outs(db: Db, user: ApiUser, body: dict):
    opted_out = services.set_opt_outs(user, services.parse_opt_outs(body.get("categories")))
    db.commit()
    return {"opted_out_categories": opted_out}
