"""Accounts: logging in and out, invitations, password resets, the session, and the annotator's own page.

Pages: ``/login``, ``/invite/TOKEN``, ``/reset/TOKEN`` (a new password from an admin's one-use link),
``/me``. API: ``POST /api/login`` (429 with Retry-After while throttled, see :mod:`..throttle`),
``GET /api/session``, ``GET /api/me/welfare``, ``POST /api/me/opt-outs``. The POSTs of logging in,
signing up and resetting a password are refused (403) when their ``Origin`` names another site.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from rlhfkit.feedback import account_admin, auth, names, services
from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.db import LoginSession, User
from rlhfkit.feedback.lexicon import CATEGORIES
from rlhfkit.feedback.routes.deps import (
    ApiUser,
    Db,
    FormUser,
    Login,
    Now,
    Page,
    SameOrigin,
    clear_session_cookie,
    in_transaction,
    now_of,
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


async def sign_in(request: Request, username: object, password: object) -> tuple[User, str, LoginSession]:
    """Log in: the throttle first, then argon2 with no transaction open (see :mod:`..auth`).

    Raises a 429 FeedbackError while throttled, AuthError for wrong credentials (the same for an
    unknown name); every failure counts against the name and the client address.
    """
    now, throttle = now_of(request), request.app.state.login_throttle
    username = username if isinstance(username, str) else ""
    key, client = names.username_key(username), request.client.host if request.client else "unknown"
    throttle.check(key, client, now)
    record = await in_transaction(request, auth.password_record, username)
    right, new_hash = await run_in_threadpool(auth.check_password, record, password)
    if not right:
        throttle.failed(key, client, now)
        raise auth.AuthError("Wrong username or password.")
    throttle.succeeded(key)
    return await in_transaction(request, auth.open_session, record[0], new_hash, now)


@router.post("/login")
async def login_form(request: Request, page: Page, _origin: SameOrigin, username: Annotated[str, Form()],
                     password: Annotated[str, Form()], next: Annotated[str, Form()] = "/"):
    try:
        _, token, _ = await sign_in(request, username, password)
    except (auth.AuthError, FeedbackError) as error:
        status = error.status if isinstance(error, FeedbackError) else 401
        response = page("login.html", {"next": safe_next(next), "error": str(error), "user": None}, status_code=status)
        if isinstance(error, FeedbackError) and "retry_after" in error.extra:
            response.headers["Retry-After"] = str(error.extra["retry_after"])
        return response
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(response, token, request)
    return response


@router.post("/api/login")
async def login_api(request: Request, _origin: SameOrigin, credentials: dict):
    try:
        user, token, login = await sign_in(request, credentials.get("username"), credentials.get("password"))
    except auth.AuthError as error:
        return JSONResponse({"error": "wrong_credentials", "detail": str(error)}, status_code=401)
    response = JSONResponse({"username": user.username, "role": user.role, "csrf_token": login.csrf_token})
    set_session_cookie(response, token, request)
    return response


@router.get("/api/session")
def session_api(login: Login):
    return {"username": login.user.username, "role": login.user.role, "csrf_token": login.csrf_token}


@router.post("/logout")
def logout(request: Request, db: Db, login: Login, user: FormUser):
    db.delete(login)
    db.commit()
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, request)
    return response


@router.get("/invite/{token}", response_class=HTMLResponse)
def invitation_page(db: Db, now: Now, page: Page, token: str):
    try:
        invitation = auth.open_invitation(db, token, now)
    except auth.AuthError as error:
        return page("message.html", {"title": "Invitation", "message": str(error), "user": None}, status_code=404)
    return page("invite.html", {"token": token, "role": invitation.role, "error": None, "user": None})


@router.post("/invite/{token}")
async def accept_invitation(request: Request, page: Page, _origin: SameOrigin, token: str,
                            username: Annotated[str, Form()], password: Annotated[str, Form()]):
    try:
        name, password_hash = await run_in_threadpool(auth.prepare_account, username, password)  # argon2
        session_token = await in_transaction(request, auth.sign_up, token, name, password_hash, now_of(request))
    except (auth.AuthError, IntegrityError) as error:  # IntegrityError: the same name signed up just now
        message = str(error) if isinstance(error, auth.AuthError) else "username: this name was just taken"
        return page("invite.html", {"token": token, "role": "", "error": message, "user": None}, status_code=422)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, session_token, request)
    return response


@router.get("/reset/{token}", response_class=HTMLResponse)
def reset_page(db: Db, now: Now, page: Page, token: str):
    try:
        username = account_admin.reset_username(db, token, now)
    except auth.AuthError as error:
        return page("message.html", {"title": "Password reset", "message": str(error), "user": None}, status_code=404)
    return page("reset.html", {"token": token, "username": username, "error": None, "user": None})


@router.post("/reset/{token}")
async def reset_password(request: Request, page: Page, _origin: SameOrigin, token: str,
                         password: Annotated[str, Form()]):
    """Set a new password through a reset link: the rules of sign-up, argon2 outside any transaction,
    then the link is used up and the user's sessions end; the user logs in again."""
    username = ""
    try:
        username = await in_transaction(request, account_admin.reset_username, token, now_of(request))
        password_hash = await run_in_threadpool(auth.prepare_password, password, username)  # argon2
        await in_transaction(request, account_admin.use_reset, token, password_hash, now_of(request))
    except auth.AuthError as error:
        if not username:  # the link itself is not valid
            return page("message.html", {"title": "Password reset", "message": str(error), "user": None},
                        status_code=404)
        return page("reset.html", {"token": token, "username": username, "error": str(error), "user": None},
                    status_code=422)
    return page("message.html", {"title": "Password changed", "user": None,
                                 "message": f"The password of {username!r} is changed. Log in with it now."})


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
