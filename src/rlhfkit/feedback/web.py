"""The FastAPI app: server-rendered pages (Jinja2, autoescaped) and a JSON API used by plain JavaScript.

:func:`create_app` puts together the routers of :mod:`rlhfkit.feedback.routes`:

* :mod:`~rlhfkit.feedback.routes.accounts`: pages ``/login``, ``/invite/TOKEN``, ``/reset/TOKEN``,
  ``/me`` (content opt-outs); ``POST /api/login`` ``{username, password}`` -> session cookie +
  ``{csrf_token}``; ``GET /api/session``; ``GET /api/me/welfare``, ``POST /api/me/opt-outs``
* :mod:`~rlhfkit.feedback.routes.annotate`: pages ``/`` (the annotator's projects: those it is a
  member of) and ``/projects/ID`` (labelling); ``POST /api/projects/ID/next`` -> the annotator's current or next
  task, ``{"task": null}`` when none is left (with ``waiting_items`` and ``retry_after_seconds``
  while the last items are held by others, who may skip them), or **429** with
  ``{error, detail, resume_at}`` when a break or a daily cap applies (**503** with Retry-After in the
  rare moment every item left is locked by other requests); ``POST /api/assignments/ID/reveal | skip
  | flag | label``; all of them 403 in a project the user is not a member of
* :mod:`~rlhfkit.feedback.routes.review` (a project's reviewers, and admins): page
  ``/projects/ID/review``; ``GET /api/projects/ID/labels``, ``POST /api/labels/ID/reject | correct``
* :mod:`~rlhfkit.feedback.routes.admin` (admins only): pages ``/admin`` and ``/admin/projects/ID``;
  ``POST /api/admin/projects`` (upload), ``GET /api/admin/projects/ID/stats``,
  ``GET /api/admin/projects/ID/export/KIND`` (JSONL), ``GET /api/admin/exposure``,
  ``POST /api/admin/invitations``, ``POST /api/admin/settings``
* :mod:`~rlhfkit.feedback.routes.access` (admins only): accounts (``/api/admin/users``: disable,
  enable, end sessions, reset links) and project members (``/api/admin/projects/ID/members``)

Every API POST needs the session's CSRF token in ``X-CSRF-Token`` (forms send it as ``csrf_token``).
Every request runs in one database transaction (serialised on SQLite, see :mod:`.db` and
:func:`.routes.deps.get_db`); a request that changes anything commits before its response is
returned. ``app.state.clock`` (a callable returning naive UTC datetimes) is the app's only source of
time, so tests can move it.

Behind TLS: ``secure_cookies`` None (the default) marks the session cookie ``Secure`` on requests
that came over HTTPS; True always, False never. Behind a reverse proxy that ends TLS, pass
``trusted_proxies`` (addresses or networks, comma-separated, or ``*``): ``X-Forwarded-Proto`` and
``X-Forwarded-For`` are then believed from those addresses only (the scheme decides ``Secure``, the
client address is what the login throttle counts); without it they are ignored.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.db import make_engine, make_session_factory, migrate, utcnow
from rlhfkit.feedback.routes import access, accounts, admin, annotate, review
from rlhfkit.feedback.routes.deps import Forbidden, NotSignedIn, PageRenderer, now_of
from rlhfkit.feedback.throttle import LoginThrottle

PACKAGE_DIR = Path(__file__).parent

SECURITY_HEADERS = {
    # No inline scripts or styles anywhere: data reaches the page only as text.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Invitation and reset tokens live in URLs: no other site is told them. Not "no-referrer": under it
    # browsers send "Origin: null" with this site's own forms, and logins check their Origin.
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response (and no-store to API answers)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith("/api/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if is_api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------- errors: JSON for the API, pages otherwise


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def not_signed_in(request: Request, _error: NotSignedIn):
    if is_api(request):
        return JSONResponse({"error": "not_signed_in", "detail": "Sign in first."}, status_code=401)
    return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)


async def forbidden(request: Request, error: Forbidden):
    if is_api(request):
        return JSONResponse({"error": "forbidden", "detail": error.message}, status_code=403)
    return PageRenderer(request)("message.html", {"title": "Not allowed", "message": error.message, "user": None},
                                 status_code=403)


async def feedback_error(request: Request, error: FeedbackError):
    headers = {}
    if error.status == 429 and "resume_at" in error.extra:
        resume = datetime.fromisoformat(error.extra["resume_at"].rstrip("Z"))
        headers["Retry-After"] = str(max(0, int((resume - now_of(request)).total_seconds())))
    elif "retry_after" in error.extra:
        headers["Retry-After"] = str(error.extra["retry_after"])
    if is_api(request):
        return JSONResponse(error.as_dict(), status_code=error.status, headers=headers)
    return PageRenderer(request)("message.html", {"title": "Sorry", "message": error.message, "user": None},
                                 status_code=error.status)


# ---------------------------------------------------------------- the app


def create_app(database_url: str, *, clock: Callable[[], datetime] = utcnow, secure_cookies: bool | None = None,
               trusted_proxies: str | None = None, run_migrations: bool = True) -> FastAPI:
    """The app on the database at ``database_url`` (migrated to the newest schema unless told not to);
    ``secure_cookies`` and ``trusted_proxies``: see the module's docstring."""
    engine = make_engine(database_url)
    if run_migrations:
        migrate(engine)
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.database_turns = weakref.WeakKeyDictionary()
    app.state.clock = clock
    app.state.secure_cookies = secure_cookies
    app.state.login_throttle = LoginThrottle()
    templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    templates.env.autoescape = True
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static")

    app.add_middleware(SecurityHeaders)
    if trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted_proxies)
    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(Forbidden, forbidden)
    app.add_exception_handler(FeedbackError, feedback_error)

    for router in (accounts.router, annotate.router, review.router, admin.router, access.router):
        app.include_router(router)
    return app
