"""The feedback app's tables, engines and sessions, and the Alembic upgrade run at start-up.

Times are stored as naive UTC datetimes (the app's clock returns them so), on SQLite and PostgreSQL
alike. JSON columns hold prompts, responses and answers exactly as they were given, so an export
writes back the same strings or message lists that were imported.

Serialisation: on SQLite every transaction starts with ``BEGIN IMMEDIATE`` (see :func:`make_engine`),
so two transactions never interleave their writes and a read-then-write (pick an item, then assign
it) cannot race; WAL mode lets the writer and readers of other connections overlap. On PostgreSQL row
locks do it instead: the assignment query locks its candidate with ``SKIP LOCKED``, and every change
of an assignment's status locks its item's row first (see :mod:`rlhfkit.feedback.assignment`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

ROLES = ("admin", "annotator")
MEMBER_ROLES = ("annotator", "reviewer")
"""What a person is in one project: an annotator labels; a reviewer labels and reviews others' labels."""
TASK_TYPES = ("pairwise", "rank", "rating")
ASSIGNMENT_STATUSES = ("active", "done", "skipped", "expired", "rejected")
REVIEW_STATUSES = ("submitted", "corrected", "rejected")
REVIEW_ACTIONS = ("corrected", "rejected")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    """The current time as a naive UTC datetime (the form every time column stores)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    """An account: an admin (manages projects, sees everything) or an annotator (labels the projects
    it is a member of, see :class:`ProjectMember`).

    ``username`` is shown as typed; ``username_key`` (unique) is what names are compared by, so that
    ``Alice`` and ``alice`` cannot both exist (see :mod:`rlhfkit.feedback.names`). ``disabled_at``
    set: the account cannot log in and none of its sessions work (see :mod:`.account_admin`).
    """

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("username_key", name="uq_users_username_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    username_key: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    opted_out_categories: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Invitation(Base):
    """A one-use link that lets a person create an account with the given role."""

    __tablename__ = "invitations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class LoginSession(Base):
    """A signed-in browser: the cookie holds a random token, the table only its SHA-256."""

    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    user: Mapped[User] = relationship()


class PasswordReset(Base):
    """A one-use link an admin made for a user to set a new password; the table keeps the token's hash."""

    __tablename__ = "password_resets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    user: Mapped[User] = relationship(foreign_keys=[user_id])


class SiteSettings(Base):
    """The one row of site-wide settings an admin edits: welfare limits and the resources link."""

    __tablename__ = "site_settings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    break_after_minutes: Mapped[float] = mapped_column(Float, default=50.0)
    break_minutes: Mapped[float] = mapped_column(Float, default=10.0)
    daily_cap_minutes: Mapped[float] = mapped_column(Float, default=360.0)
    daily_sensitive_cap_minutes: Mapped[float] = mapped_column(Float, default=120.0)
    wellbeing_url: Mapped[str] = mapped_column(String(500), default="")
    too_fast_seconds: Mapped[float] = mapped_column(Float, default=5.0)


class Project(Base):
    """A set of items to label with one task type and its options."""

    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_type: Mapped[str] = mapped_column(String(16))
    guidelines: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    ask_rationale: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_edit: Mapped[bool] = mapped_column(Boolean, default=False)
    rating_scale: Mapped[int] = mapped_column(Integer, default=5)
    shuffle_responses: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ProjectMember(Base):
    """A person's place in a project: only members (and admins) see a project and work on it.

    ``role`` is one of MEMBER_ROLES: an annotator labels; a reviewer also sees the others' labels of
    the project and corrects or rejects them (see :mod:`.review`).
    """

    __tablename__ = "project_members"
    __table_args__ = (UniqueConstraint("project_id", "user_id", name="uq_project_member"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    added_at: Mapped[datetime] = mapped_column(DateTime)
    added_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    user: Mapped[User] = relationship(foreign_keys=[user_id])


class Item(Base):
    """One prompt with the responses to judge (2 for pairwise, K for rank and rating).

    ``claimed_count`` counts the assignments that hold a place in the overlap (active or done, not
    rejected by a reviewer); the
    assignment query compares it with the project's overlap on the item's own row, so that a row lock
    (PostgreSQL) or the serialised transaction (SQLite) is all that keeps two annotators from taking
    the last place. ``done_count`` counts submitted labels that were not rejected. ``external_id`` and ``record_metadata``
    are the imported record's own ``id`` and ``metadata``, carried into every export.
    """

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[object] = mapped_column(JSON)
    responses: Mapped[list] = mapped_column(JSON)
    source_location: Mapped[str] = mapped_column(String(500), default="")
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    record_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[object | None] = mapped_column(JSON, nullable=True)
    claimed_count: Mapped[int] = mapped_column(Integer, default=0)
    done_count: Mapped[int] = mapped_column(Integer, default=0)
    categories: Mapped[list[ItemCategory]] = relationship(back_populates="item")

    @property
    def category_names(self) -> list[str]:
        return sorted({category.category for category in self.categories})


class ItemCategory(Base):
    """A sensitive-content category of an item, from the lexicon at import or flagged by an annotator."""

    __tablename__ = "item_categories"
    __table_args__ = (UniqueConstraint("item_id", "category", name="uq_item_category"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    category: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(16))  # "lexicon" or "annotator"
    flagged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    item: Mapped[Item] = relationship(back_populates="categories")


class Assignment(Base):
    """An item given to one annotator; at most one per (item, annotator).

    ``sensitive`` records whether the item carried a content warning when it was assigned; its
    content is sent only after ``revealed_at`` is set. ``finished_at`` is set by a label or a skip.
    ``status`` is ``rejected`` once a reviewer rejected its label: its place went back to the overlap.
    ``shown_order`` is the order the responses were shown in (item indices; None: the item's own
    order), drawn per assignment in projects that shuffle; labels are stored in the item's order.
    """

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),
        Index("ix_assignments_user_status", "user_id", "status"),
        Index("ix_assignments_project_status", "project_id", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    status: Mapped[str] = mapped_column(String(16), default="active")
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    assigned_at: Mapped[datetime] = mapped_column(DateTime)
    revealed_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    shown_order: Mapped[list | None] = mapped_column(JSON, nullable=True)
    item: Mapped[Item] = relationship()


class Label(Base):
    """One annotator's answer for one assignment (unique per assignment: never stored twice).

    ``answer`` is ``{"choice": "A"|"B"|"tie"|"both_bad"}``, ``{"ranks": [...]}`` (1 = best) or
    ``{"ratings": [...]}``, in the item's response order. ``review_status`` (REVIEW_STATUSES) is
    ``submitted`` until a reviewer corrects the answer (``corrected``: ``answer`` is the reviewer's,
    ``original_answer`` the annotator's own) or rejects it (``rejected``: left out of every training
    export). Each review is kept in :class:`LabelReview`.
    """

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_user_project", "user_id", "project_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    answer: Mapped[dict] = mapped_column(JSON)
    rationale: Mapped[str] = mapped_column(Text, default="")
    edited_response: Mapped[str | None] = mapped_column(Text, nullable=True)
    edited_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_seconds: Mapped[float] = mapped_column(Float)
    submitted_at: Mapped[datetime] = mapped_column(DateTime)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    review_status: Mapped[str] = mapped_column(String(16), default="submitted", server_default="submitted")
    original_answer: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class LabelReview(Base):
    """The audit trail of reviews: who corrected or rejected a label, when, and its answer before and after."""

    __tablename__ = "label_reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(16))
    previous_answer: Mapped[dict] = mapped_column(JSON)
    new_answer: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    reviewer: Mapped[User] = relationship()


# ---------------------------------------------------------------- engines and sessions


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL from what a person typed: a bare path is a SQLite file; PostgreSQL uses psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite: WAL, foreign keys, a busy timeout and BEGIN IMMEDIATE.

    pysqlite's own transaction handling is switched off (isolation_level None) so that the ``begin``
    event can start each transaction itself with BEGIN IMMEDIATE: the write lock is taken at the
    start, so a transaction never fails half-way on upgrading a read lock to a write lock.
    """
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=8, max_overflow=24,
        pool_timeout=60,
    )

    @event.listens_for(engine, "connect")
    def configure_sqlite(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker:
    """Sessions that keep loaded objects usable after commit (pages render them after committing)."""
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine) -> None:
    """Bring the database schema up to the newest Alembic revision (creating it when empty)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def committed(session) -> Iterator[None]:
    """Commit what the block wrote, once at its end; on any error roll all of it back (the database is
    left as it was) and re-raise."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def settings_row(session) -> SiteSettings:
    """The site settings row (the initial migration creates it)."""
    return session.get(SiteSettings, 1)
