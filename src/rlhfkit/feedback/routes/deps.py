"""What the routers ask FastAPI for: the database session, the signed-in user, the time, the page renderer.

Each dependency has an ``Annotated`` alias (``Db``, ``Login``, ``ApiUser``, ...) for the handlers'
parameters. The user aliases also check the CSRF token of state-changing requests (the
``X-CSRF-Token`` header for the API, the form's ``csrf_token`` field for pages) and the admin role.
They raise :class:`NotSignedIn` or :class:`Forbidden`; the app's exception handlers turn those into
a redirect to the login page, a page, or a JSON answer.

The POSTs that have no session yet, hence no CSRF token (logging in, accepting an invitation,
resetting a password), check the ``Origin`` header instead (:data:`SameOrigin`): one that is present
and names another site than the request's ``Host`` is refused with a 403, so a cross-site page
cannot sign a visitor into an account of its choosing. Browsers send ``Origin`` with every POST; a
reverse proxy must pass the ``Host`` header on (nginx: ``proxy_set_header Host $host``).

The session cookie is ``Secure`` as the app was told (``secure_cookies`` True or False), or by
default when the request came over HTTPS (:func:`cookies_secure`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, Form, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from rlhfkit.feedback import auth
from rlhfkit.feedback.db import LoginSession, User

SESSION_COOKIE = "rlhfkit_session"
DEFAULT_PORTS = {"http": 80, "https": 443}
T = TypeVar("T")


class NotSignedIn(Exception):
    """No valid session: pages redirect to the login page, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but not allowed (an annotator on an admin route, or a missing CSRF token)."""

    def __init__(self, message: str = "You are not allowed to do this."):
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------- database, time, pages


def database_turn(request: Request):
    """This request's turn at the database: an asyncio lock per event loop on SQLite, nothing elsewhere.

    SQLite admits one writer at a time anyway (every transaction here is BEGIN IMMEDIATE), and waiting
    on an asyncio lock wakes the next request at once, where SQLite's busy handler polls with growing
    sleeps (several times slower under load). Waiting here holds no worker thread, so the request
    whose turn it is always finds one. The lock is only for speed: SQLite's own locking keeps the
    data right, across processes too (there is one lock per event loop).
    """
    if request.app.state.engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    return request.app.state.database_turns.setdefault(asyncio.get_running_loop(), asyncio.Lock())


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One database session (and transaction) per request, in its turn (:func:`database_turn`); rolled
    back unless the handler commits."""
    sqlite = request.app.state.engine.dialect.name == "sqlite"
    async with database_turn(request):
        session = request.app.state.sessions()
        try:
            yield session
        finally:
            if sqlite:
                session.close()  # a local rollback at most, and this request holds the database anyway
            else:
                await run_in_threadpool(session.close)


async def in_transaction(request: Request, work: Callable[..., T], *args) -> T:
    """``work(session, *args)`` in a short transaction of its own, in its turn, committed after it.

    For handlers with slow steps (argon2) that must not hold the database: they call this for each
    step that needs it and run the slow one in between, outside any transaction.
    """
    async with database_turn(request):
        session = request.app.state.sessions()
        try:
            result = await run_in_threadpool(work, session, *args)
            await run_in_threadpool(session.commit)
            return result
        finally:
            await run_in_threadpool(session.close)


def now_of(request: Request) -> datetime:
    """The app's time (``app.state.clock``, naive UTC)."""
    return request.app.state.clock()


async def request_time(request: Request) -> datetime:
    """The time of this request, read once from the app's clock."""
    return now_of(request)


class PageRenderer:
    """Renders the app's Jinja2 templates (``app.state.templates``) for one request."""

    def __init__(self, request: Request):
        self.request = request

    def __call__(self, name: str, context: dict, status_code: int = 200) -> HTMLResponse:
        return self.request.app.state.templates.TemplateResponse(self.request, name, context,
                                                                 status_code=status_code)


async def page_renderer(request: Request) -> PageRenderer:
    return PageRenderer(request)


Db = Annotated[Session, Depends(get_db)]
Now = Annotated[datetime, Depends(request_time)]
Page = Annotated[PageRenderer, Depends(page_renderer)]


# ---------------------------------------------------------------- who is asking


def signed_in(request: Request, db: Db) -> LoginSession:
    login = auth.session_of_token(db, request.cookies.get(SESSION_COOKIE), now_of(request))
    if login is None:
        raise NotSignedIn
    return login


Login = Annotated[LoginSession, Depends(signed_in)]


async def api_user(request: Request, login: Login) -> User:
    """The signed-in user of an API call; POSTs must carry the CSRF token header."""
    if request.method not in ("GET", "HEAD") and not auth.csrf_matches(login, request.headers.get("x-csrf-token")):
        raise Forbidden("Missing or wrong CSRF token (send the X-CSRF-Token header).")
    return login.user


async def admin_api_user(user: Annotated[User, Depends(api_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("Admins only.")
    return user


async def form_user(login: Login, csrf_token: Annotated[str, Form()] = "") -> User:
    """The signed-in user of a form POST, after checking the form's CSRF field."""
    if not auth.csrf_matches(login, csrf_token):
        raise Forbidden("Missing or wrong CSRF token; reload the page and try again.")
    return login.user


async def admin_form_user(user: Annotated[User, Depends(form_user)]) -> User:
    if user.role != "admin":
        raise Forbidden("Admins only.")
    return user


async def admin_page_user(login: Login) -> User:
    if login.user.role != "admin":
        raise Forbidden("Admins only.")
    return login.user


ApiUser = Annotated[User, Depends(api_user)]
AdminApiUser = Annotated[User, Depends(admin_api_user)]
FormUser = Annotated[User, Depends(form_user)]
AdminFormUser = Annotated[User, Depends(admin_form_user)]
AdminPageUser = Annotated[User, Depends(admin_page_user)]


# ---------------------------------------------------------------- the Origin of sign-in forms


def host_and_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host in lower case, port) of ``host[:port]``, the port defaulting to the scheme's; None if malformed."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return (host, port) if host else None


def origin_matches_host(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header (``scheme://host[:port]``) names the site of a ``Host`` header."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment:
        return False
    sent = host_and_port(parts.netloc, parts.scheme)
    return sent is not None and sent == host_and_port(host, parts.scheme)


async def same_origin(request: Request) -> None:
    """Refuse (403) a request whose ``Origin`` header is present and names another site."""
    origin = request.headers.get("origin")
    if origin is not None and not origin_matches_host(origin, request.headers.get("host", "")):
        raise Forbidden("Refused: this form was sent from another site (its Origin header does not match this "
                        "server). Open the login page of this site and try again.")


SameOrigin = Annotated[None, Depends(same_origin)]


# ---------------------------------------------------------------- cookies


def cookies_secure(request: Request) -> bool:
    """Whether the session cookie is ``Secure``: as the app was told, else when this request came over
    HTTPS (the connection's scheme, or a trusted proxy's ``X-Forwarded-Proto``, see :mod:`..web`)."""
    setting = request.app.state.secure_cookies
    return request.url.scheme == "https" if setting is None else bool(setting)


def set_session_cookie(response: Response, token: str, request: Request) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=cookies_secure(request),
                        max_age=auth.SESSION_DAYS * 86400, path="/")


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=cookies_secure(request))
