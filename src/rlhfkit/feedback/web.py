"""The FastAPI app: server-rendered pages (Jinja2, autoescaped) and a JSON API used by plain JavaScript.

Pages: ``/login``, ``/invite/TOKEN``, ``/`` (the annotator's projects), ``/projects/ID`` (labelling),
``/me`` (content opt-outs), ``/admin`` and ``/admin/projects/ID`` (admins only).

API (JSON; every POST needs the session's CSRF token in ``X-CSRF-Token``):

* ``POST /api/login`` ``{username, password}`` -> session cookie + ``{csrf_token}``; ``GET /api/session``
* ``POST /api/projects/ID/next`` -> the annotator's current or next task, ``{"task": null}`` when none
  is left, or **429** with ``{error, detail, resume_at}`` when a break or a daily cap applies
* ``POST /api/assignments/ID/reveal | skip | flag | label``
* ``GET /api/me/welfare``, ``POST /api/me/opt-outs``
* admins: ``POST /api/admin/projects`` (upload), ``GET /api/admin/projects/ID/stats``,
  ``GET /api/admin/projects/ID/export/KIND`` (JSONL), ``GET /api/admin/exposure``,
  ``POST /api/admin/invitations``, ``POST /api/admin/settings``

Every request runs in one database transaction (serialised on SQLite, see :mod:`.db`); a request
that changes anything commits before its response is returned. ``app.state.clock`` (a callable
returning naive UTC datetimes) is the app's only source of time, so tests can move it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders

from rlhfkit.data.errors import DataError
from rlhfkit.data.writers import to_jsonl
from rlhfkit.feedback import auth
from rlhfkit.feedback.assignment import FeedbackError, limits_of, next_assignment, user_welfare
from rlhfkit.feedback.db import (
    TASK_TYPES,
    Assignment,
    Item,
    Label,
    LoginSession,
    Project,
    User,
    make_engine,
    make_session_factory,
    migrate,
    settings_row,
    utcnow,
)
from rlhfkit.feedback.export import EXPORT_KINDS, export_records
from rlhfkit.feedback.importing import ProjectOptions, add_items, create_project, item_specs, rows_of_upload
from rlhfkit.feedback.labels import (
    ANNOTATOR_FLAG_CATEGORIES,
    flag,
    own_assignment,
    reveal,
    skip,
    submit_label,
)
from rlhfkit.feedback.lexicon import CATEGORIES
from rlhfkit.feedback.markdown_text import render_markdown
from rlhfkit.feedback.stats import exposure_rows, project_report

PACKAGE_DIR = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_session"
MAX_UPLOAD_BYTES = 200 * 1024 * 1024

SECURITY_HEADERS = {
    # No inline scripts or styles anywhere: data reaches the page only as text.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # invitation tokens live in URLs
}


class NotSignedIn(Exception):
    """No valid session: pages redirect to the login page, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but not allowed (an annotator on an admin route, or a missing CSRF token)."""

    def __init__(self, message: str = "You are not allowed to do this."):
        super().__init__(message)
        self.message = message


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


# ---------------------------------------------------------------- dependencies


async def get_db(request: Request) -> AsyncIterator[Session]:
    """One database session (and transaction) per request; rolled back unless the handler commits.

    On SQLite the requests of this process also take turns: SQLite admits one writer at a time anyway
    (every transaction here is BEGIN IMMEDIATE), and waiting on an asyncio lock wakes the next request
    at once, where SQLite's busy handler polls with growing sleeps (several times slower under load).
    Waiting here holds no worker thread, so the request whose turn it is always finds one. The lock
    is only for speed: SQLite's own locking keeps the data right, across processes too (there is one
    lock per event loop).
    """
    sqlite = request.app.state.engine.dialect.name == "sqlite"
    turn = contextlib.nullcontext()
    if sqlite:
        turn = request.app.state.database_turns.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with turn:
        session = request.app.state.sessions()
        try:
            yield session
        finally:
            if sqlite:
                session.close()  # a local rollback at most, and this request holds the database anyway
            else:
                await run_in_threadpool(session.close)


Db = Annotated[Session, Depends(get_db)]


def now_of(request: Request) -> datetime:
    return request.app.state.clock()


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


# ---------------------------------------------------------------- helpers


def get_project(db: Session, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise FeedbackError(404, "not_found", "No such project.")
    return project


def annotator_progress(db: Session, project: Project, user: User) -> dict:
    """The annotator's label count and the project's completed items, in one query."""
    mine = (select(func.count(Label.id)).where(Label.project_id == project.id, Label.user_id == user.id)
            .scalar_subquery())
    items, complete, my_labels = db.execute(
        select(func.count(Item.id), func.count(Item.id).filter(Item.done_count >= project.overlap), mine)
        .where(Item.project_id == project.id, Item.is_gold.is_(False))).one()
    return {"my_labels": my_labels, "items": items, "complete_items": complete}


def task_json(db: Session, assignment: Assignment, project: Project, user: User) -> dict:
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
        task["prompt"], task["responses"] = item.prompt, item.responses
    return {"task": task, "progress": annotator_progress(db, project, user)}


def welfare_json(db: Session, user: User, now: datetime) -> dict:
    settings = settings_row(db)
    status = user_welfare(db, user.id, now, limits_of(settings))
    return {"may_work": status.may_work, "reason": status.reason, "message": status.message(),
            "resume_at": status.resume_at.isoformat() + "Z" if status.resume_at else None,
            "sensitive_allowed": status.sensitive_allowed,
            "worked_today_minutes": round(status.worked_today_minutes, 1),
            "sensitive_today_minutes": round(status.sensitive_today_minutes, 1),
            "wellbeing_url": settings.wellbeing_url,
            "limits": {"break_after_minutes": settings.break_after_minutes, "break_minutes": settings.break_minutes,
                       "daily_cap_minutes": settings.daily_cap_minutes,
                       "daily_sensitive_cap_minutes": settings.daily_sensitive_cap_minutes}}


def commit(db: Session) -> None:
    """Commit, turning a lost race on a unique constraint (a double submit) into a 409."""
    try:
        db.commit()
    except IntegrityError as error:
        db.rollback()
        raise FeedbackError(409, "conflict", "This was already saved (a repeated request).") from error


def set_session_cookie(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=secure,
                        max_age=auth.SESSION_DAYS * 86400, path="/")


def safe_next(target: str | None) -> str:
    """A same-site path to go to after logging in (never another site)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def parse_bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "on", "yes")


# ---------------------------------------------------------------- the app


def create_app(database_url: str, *, clock: Callable[[], datetime] = utcnow, secure_cookies: bool = False,
               run_migrations: bool = True) -> FastAPI:
    """The app on the database at ``database_url`` (migrated to the newest schema unless told not to)."""
    engine = make_engine(database_url)
    if run_migrations:
        migrate(engine)
    app = FastAPI(title="rlhfkit feedback", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.database_turns = weakref.WeakKeyDictionary()
    app.state.clock = clock
    app.state.secure_cookies = secure_cookies
    templates = Jinja2Templates(directory=str(PACKAGE_DIR / "templates"))
    templates.env.autoescape = True
    app.mount("/static", StaticFiles(directory=str(PACKAGE_DIR / "static")), name="static")

    app.add_middleware(SecurityHeaders)

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def page(request: Request, name: str, context: dict, status_code: int = 200) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _error: NotSignedIn):
        if is_api(request):
            return JSONResponse({"error": "not_signed_in", "detail": "Sign in first."}, status_code=401)
        return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden):
        if is_api(request):
            return JSONResponse({"error": "forbidden", "detail": error.message}, status_code=403)
        return page(request, "message.html", {"title": "Not allowed", "message": error.message, "user": None},
                    status_code=403)

    @app.exception_handler(FeedbackError)
    async def feedback_error(request: Request, error: FeedbackError):
        headers = {}
        if error.status == 429 and "resume_at" in error.extra:
            resume = datetime.fromisoformat(error.extra["resume_at"].rstrip("Z"))
            headers["Retry-After"] = str(max(0, int((resume - now_of(request)).total_seconds())))
        if is_api(request):
            return JSONResponse(error.as_dict(), status_code=error.status, headers=headers)
        return page(request, "message.html", {"title": "Sorry", "message": error.message, "user": None},
                    status_code=error.status)

    # ------------------------------------------------------------ sign in, sign up

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/"):
        return page(request, "login.html", {"next": safe_next(next), "error": None, "user": None})

    @app.post("/login")
    def login_form(request: Request, db: Db, username: Annotated[str, Form()], password: Annotated[str, Form()],
                   next: Annotated[str, Form()] = "/"):
        try:
            user = auth.authenticate(db, username, password)
        except auth.AuthError as error:
            return page(request, "login.html", {"next": safe_next(next), "error": str(error), "user": None},
                        status_code=401)
        token, _ = auth.start_session(db, user, now_of(request))
        db.commit()
        response = RedirectResponse(safe_next(next), status_code=303)
        set_session_cookie(response, token, app.state.secure_cookies)
        return response

    @app.post("/api/login")
    def login_api(request: Request, db: Db, credentials: dict):
        try:
            user = auth.authenticate(db, str(credentials.get("username", "")), str(credentials.get("password", "")))
        except auth.AuthError as error:
            return JSONResponse({"error": "wrong_credentials", "detail": str(error)}, status_code=401)
        token, login = auth.start_session(db, user, now_of(request))
        db.commit()
        response = JSONResponse({"username": user.username, "role": user.role, "csrf_token": login.csrf_token})
        set_session_cookie(response, token, app.state.secure_cookies)
        return response

    @app.get("/api/session")
    def session_api(login: Login):
        return {"username": login.user.username, "role": login.user.role, "csrf_token": login.csrf_token}

    @app.post("/logout")
    def logout(db: Db, login: Login, user: FormUser):
        db.delete(login)
        db.commit()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/invite/{token}", response_class=HTMLResponse)
    def invitation_page(request: Request, db: Db, token: str):
        try:
            invitation = auth.open_invitation(db, token, now_of(request))
        except auth.AuthError as error:
            return page(request, "message.html", {"title": "Invitation", "message": str(error), "user": None},
                        status_code=404)
        return page(request, "invite.html", {"token": token, "role": invitation.role, "error": None, "user": None})

    @app.post("/invite/{token}")
    def accept_invitation(request: Request, db: Db, token: str, username: Annotated[str, Form()],
                          password: Annotated[str, Form()]):
        now = now_of(request)
        try:
            user = auth.accept_invitation(db, token, username, password, now)
        except auth.AuthError as error:
            db.rollback()
            return page(request, "invite.html", {"token": token, "role": "", "error": str(error), "user": None},
                        status_code=422)
        session_token, _ = auth.start_session(db, user, now)
        db.commit()
        response = RedirectResponse("/", status_code=303)
        set_session_cookie(response, session_token, app.state.secure_cookies)
        return response

    # ------------------------------------------------------------ annotator pages

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request, db: Db, login: Login):
        user = login.user
        projects = db.scalars(select(Project).order_by(Project.id)).all()
        rows = [(project, annotator_progress(db, project, user)) for project in projects]
        return page(request, "home.html", {"user": user, "csrf_token": login.csrf_token, "projects": rows,
                                           "welfare": welfare_json(db, user, now_of(request))})

    @app.get("/projects/{project_id}", response_class=HTMLResponse)
    def label_page(request: Request, db: Db, login: Login, project_id: int):
        project = get_project(db, project_id)
        config = {"project_id": project.id, "task_type": project.task_type, "csrf_token": login.csrf_token,
                  "flag_categories": list(ANNOTATOR_FLAG_CATEGORIES),
                  "wellbeing_url": settings_row(db).wellbeing_url}
        return page(request, "label.html", {"user": login.user, "csrf_token": login.csrf_token, "project": project,
                                            "guidelines": render_markdown(project.guidelines), "config": config})

    @app.get("/me", response_class=HTMLResponse)
    def me_page(request: Request, db: Db, login: Login, saved: bool = False):
        return page(request, "me.html", {"user": login.user, "csrf_token": login.csrf_token,
                                         "categories": CATEGORIES, "saved": saved,
                                         "welfare": welfare_json(db, login.user, now_of(request))})

    @app.post("/me")
    def me_save(db: Db, user: FormUser, opt_out: Annotated[list[str], Form()] = ()):  # noqa: B006
        user.opted_out_categories = [c for c in CATEGORIES if c in opt_out]
        db.commit()
        return RedirectResponse("/me?saved=1", status_code=303)

    # ------------------------------------------------------------ annotator API

    @app.post("/api/projects/{project_id}/next")
    def next_task(request: Request, db: Db, user: ApiUser, project_id: int):
        project = get_project(db, project_id)
        assignment = next_assignment(db, project, user, now_of(request), settings_row(db))
        if assignment is None:
            result = {"task": None, "message": "No more items for you in this project. Thank you!",
                      "progress": annotator_progress(db, project, user)}
            db.commit()
            return result
        result = task_json(db, assignment, project, user)
        db.commit()
        return result

    @app.post("/api/assignments/{assignment_id}/reveal")
    def reveal_task(request: Request, db: Db, user: ApiUser, assignment_id: int):
        assignment = own_assignment(db, assignment_id, user)
        reveal(db, assignment, now_of(request), settings_row(db))
        project = get_project(db, assignment.project_id)
        result = task_json(db, assignment, project, user)
        db.commit()
        return result

    @app.post("/api/assignments/{assignment_id}/skip")
    def skip_task(request: Request, db: Db, user: ApiUser, assignment_id: int):
        skip(own_assignment(db, assignment_id, user), now_of(request))
        db.commit()
        return {"ok": True}

    @app.post("/api/assignments/{assignment_id}/flag")
    def flag_task(db: Db, user: ApiUser, assignment_id: int, body: dict):
        categories = flag(db, own_assignment(db, assignment_id, user), user, str(body.get("category", "")))
        commit(db)
        return {"categories": categories}

    @app.post("/api/assignments/{assignment_id}/label")
    def label_task(request: Request, db: Db, user: ApiUser, assignment_id: int, body: dict):
        assignment = own_assignment(db, assignment_id, user)
        project = get_project(db, assignment.project_id)
        label = submit_label(db, assignment, project, body, now_of(request))
        commit(db)
        return {"label_id": label.id}  # the progress comes with the next task

    @app.get("/api/me/welfare")
    def my_welfare(request: Request, db: Db, user: ApiUser):
        return welfare_json(db, user, now_of(request))

    @app.post("/api/me/opt-outs")
    def my_opt_outs(db: Db, user: ApiUser, body: dict):
        chosen = body.get("categories")
        if not isinstance(chosen, list) or not all(c in CATEGORIES for c in chosen):
            raise FeedbackError(422, "invalid", f"field 'categories': expected a list of {', '.join(CATEGORIES)}")
        user.opted_out_categories = [c for c in CATEGORIES if c in chosen]
        db.commit()
        return {"opted_out_categories": user.opted_out_categories}

    # ------------------------------------------------------------ admin

    def options_from(task_type: str, guidelines: str, overlap: int, gold_rate: float, ask_rationale: str | None,
                     allow_edit: str | None, rating_scale: int) -> ProjectOptions:
        return ProjectOptions(task_type, guidelines, overlap, gold_rate, parse_bool(ask_rationale),
                              parse_bool(allow_edit), rating_scale)

    def import_upload(db: Session, name: str, options: ProjectOptions, upload: UploadFile, use_lexicon: bool):
        """Create the project from the upload, all or nothing; raises DataError or ValueError."""
        data = upload.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise DataError(f"{upload.filename}: the file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{upload.filename}: cannot read the file as UTF-8 text ({error})") from error
        options.check()
        specs = item_specs(rows_of_upload(upload.filename or "upload.jsonl", text), options, use_lexicon)
        project = create_project(db, name, options)
        count = add_items(db, project, specs)
        db.commit()
        return project, count

    @app.post("/api/admin/projects")
    def create_project_api(db: Db, user: AdminApiUser, file: Annotated[UploadFile, File()],
                           name: Annotated[str, Form()], task_type: Annotated[str, Form()] = "pairwise",
                           guidelines: Annotated[str, Form()] = "", overlap: Annotated[int, Form()] = 1,
                           gold_rate: Annotated[float, Form()] = 0.0,
                           ask_rationale: Annotated[str | None, Form()] = None,
                           allow_edit: Annotated[str | None, Form()] = None,
                           rating_scale: Annotated[int, Form()] = 5, use_lexicon: Annotated[str, Form()] = "1"):
        options = options_from(task_type, guidelines, overlap, gold_rate, ask_rationale, allow_edit, rating_scale)
        try:
            project, count = import_upload(db, name, options, file, parse_bool(use_lexicon))
        except (DataError, ValueError) as error:
            db.rollback()
            return JSONResponse({"error": "invalid_upload", "detail": str(error)}, status_code=422)
        return {"project_id": project.id, "items": count}

    @app.get("/api/admin/projects/{project_id}/stats")
    def project_stats_api(db: Db, user: AdminApiUser, project_id: int):
        return project_report(db, get_project(db, project_id), settings_row(db))

    @app.get("/api/admin/projects/{project_id}/export/{kind}")
    def export_api(db: Db, user: AdminApiUser, project_id: int, kind: str, aggregate: bool = True):
        if kind not in EXPORT_KINDS:
            raise FeedbackError(404, "not_found", f"Unknown export {kind!r}; one of {', '.join(EXPORT_KINDS)}.")
        project = get_project(db, project_id)
        records = export_records(db, project, aggregate)[kind]
        filename = f"{project.name}-{kind}.jsonl".replace('"', "").replace("/", "_")
        return PlainTextResponse(to_jsonl(records), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    @app.get("/api/admin/exposure")
    def exposure_api(request: Request, db: Db, user: AdminApiUser):
        return {"annotators": exposure_rows(db, now_of(request), settings_row(db))}

    @app.post("/api/admin/invitations")
    def invitation_api(request: Request, db: Db, user: AdminApiUser, body: dict):
        try:
            token = auth.create_invitation(db, user, str(body.get("role", "annotator")), now_of(request))
        except auth.AuthError as error:
            raise FeedbackError(422, "invalid", str(error)) from error
        db.commit()
        return {"token": token, "url": str(request.base_url) + f"invite/{token}"}

    def apply_settings(db: Session, values: dict) -> None:
        settings = settings_row(db)
        for name in ("break_after_minutes", "break_minutes", "daily_cap_minutes", "daily_sensitive_cap_minutes",
                     "too_fast_seconds"):
            if values.get(name) not in (None, ""):
                try:
                    number = float(values[name])
                except (TypeError, ValueError) as error:
                    raise FeedbackError(422, "invalid", f"field '{name}': expected a number") from error
                if not 0 < number <= 24 * 60:
                    raise FeedbackError(422, "invalid", f"field '{name}': expected a positive number of minutes")
                setattr(settings, name, number)
        if "wellbeing_url" in values:
            url = str(values["wellbeing_url"] or "").strip()
            if url and not url.startswith(("https://", "http://")):
                raise FeedbackError(422, "invalid", "field 'wellbeing_url': expected an http(s) link")
            settings.wellbeing_url = url

    @app.post("/api/admin/settings")
    def settings_api(db: Db, user: AdminApiUser, body: dict):
        apply_settings(db, body)
        db.commit()
        return {"ok": True}

    def admin_context(db: Session, login_user: User, csrf: str, now: datetime, **extra) -> dict:
        projects = db.scalars(select(Project).order_by(Project.id)).all()
        from rlhfkit.feedback.stats import project_progress

        return {"user": login_user, "csrf_token": csrf, "task_types": TASK_TYPES, "settings": settings_row(db),
                "projects": [(p, project_progress(db, p)) for p in projects],
                "exposure": exposure_rows(db, now, settings_row(db)), "error": None, "notice": None,
                "invitation_url": None, **extra}

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, db: Db, login: Login, user: AdminPageUser):
        return page(request, "admin.html", admin_context(db, user, login.csrf_token, now_of(request)))

    @app.post("/admin/projects")
    def create_project_form(request: Request, db: Db, login: Login, user: AdminFormUser,
                            file: Annotated[UploadFile, File()], name: Annotated[str, Form()],
                            task_type: Annotated[str, Form()] = "pairwise", guidelines: Annotated[str, Form()] = "",
                            overlap: Annotated[int, Form()] = 1, gold_rate: Annotated[float, Form()] = 0.0,
                            ask_rationale: Annotated[str | None, Form()] = None,
                            allow_edit: Annotated[str | None, Form()] = None,
                            rating_scale: Annotated[int, Form()] = 5,
                            use_lexicon: Annotated[str | None, Form()] = None):
        options = options_from(task_type, guidelines, overlap, gold_rate, ask_rationale, allow_edit, rating_scale)
        try:
            project, count = import_upload(db, name, options, file, parse_bool(use_lexicon))
        except (DataError, ValueError) as error:
            db.rollback()
            context = admin_context(db, user, login.csrf_token, now_of(request), error=f"Nothing imported: {error}")
            return page(request, "admin.html", context, status_code=422)
        context = admin_context(db, user, login.csrf_token, now_of(request),
                                notice=f"Project {project.name!r} created with {count} items.")
        return page(request, "admin.html", context)

    @app.post("/admin/invitations", response_class=HTMLResponse)
    def invitation_form(request: Request, db: Db, login: Login, user: AdminFormUser,
                        role: Annotated[str, Form()] = "annotator"):
        try:
            token = auth.create_invitation(db, user, role, now_of(request))
        except auth.AuthError as error:
            raise FeedbackError(422, "invalid", str(error)) from error
        db.commit()
        url = str(request.base_url) + f"invite/{token}"
        return page(request, "admin.html", admin_context(db, user, login.csrf_token, now_of(request),
                                                         invitation_url=url))

    @app.post("/admin/settings")
    def settings_form(db: Db, user: AdminFormUser, break_after_minutes: Annotated[str, Form()] = "",
                      break_minutes: Annotated[str, Form()] = "", daily_cap_minutes: Annotated[str, Form()] = "",
                      daily_sensitive_cap_minutes: Annotated[str, Form()] = "",
                      too_fast_seconds: Annotated[str, Form()] = "", wellbeing_url: Annotated[str, Form()] = ""):
        apply_settings(db, {"break_after_minutes": break_after_minutes, "break_minutes": break_minutes,
                            "daily_cap_minutes": daily_cap_minutes,
                            "daily_sensitive_cap_minutes": daily_sensitive_cap_minutes,
                            "too_fast_seconds": too_fast_seconds, "wellbeing_url": wellbeing_url})
        db.commit()
        return RedirectResponse("/admin", status_code=303)

    @app.get("/admin/projects/{project_id}", response_class=HTMLResponse)
    def project_admin_page(request: Request, db: Db, login: Login, user: AdminPageUser, project_id: int):
        project = get_project(db, project_id)
        report = project_report(db, project, settings_row(db))
        return page(request, "project_admin.html", {"user": user, "csrf_token": login.csrf_token, "project": project,
                                                    "report": report, "export_kinds": EXPORT_KINDS})

    return app
