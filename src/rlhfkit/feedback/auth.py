"""Accounts: argon2 password hashes, login sessions with CSRF tokens, and invitations.

A login gives the browser a random session token in an httpOnly cookie; the database keeps only its
SHA-256, so a copy of the database opens no session. Each session has a CSRF token that every
state-changing request must echo (a form field or the ``X-CSRF-Token`` header): a cross-site page can
make the browser send the cookie, but cannot read the token. Invitation links work the same way:
the link holds the token, the database its hash.

Logging in takes three steps so that argon2, slow on purpose, never runs inside a transaction (on
SQLite that would hold up every other request): read the account's hash (:func:`password_record`),
verify it with no database held (:func:`check_password`; an unknown name verifies a dummy hash, so
it takes as long as a wrong password), then open the session (:func:`open_session`). Sign-up hashes
first (:func:`prepare_account`), then stores. Usernames are compared by key (see :mod:`.names`).
A disabled account (``User.disabled_at``) opens no session and keeps none working; what admins do
to accounts (disable, end sessions, reset links) is in :mod:`.account_admin`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, joinedload

from rlhfkit.feedback import names
from rlhfkit.feedback.checks import text_problem
from rlhfkit.feedback.db import ROLES, Invitation, LoginSession, User

SESSION_DAYS = 7
INVITATION_DAYS = 14
MIN_PASSWORD_LENGTH = names.MIN_PASSWORD_LENGTH
DISABLED = "This account is disabled; ask an admin."

password_hasher = PasswordHasher()
_dummy_hashes: dict = {}


class AuthError(ValueError):
    """A login, sign-up or invitation that is refused; the message is safe to show."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="replace")).hexdigest()


# ---------------------------------------------------------------- accounts


def prepare_account(username: str, password: str) -> tuple[str, str]:
    """(username to store, password hash) after checking both; no database needed, so the slow hashing
    can run outside any transaction. AuthError says what is wrong."""
    try:
        username = names.clean_username(username)
    except ValueError as error:
        raise AuthError(str(error)) from error
    return username, prepare_password(password, username)


def prepare_password(password: str, username: str) -> str:
    """The hash of a new password after checking it against the rules (AuthError says what is wrong);
    slow on purpose, so called outside any transaction."""
    if (problem := names.password_problem(password, username)) is not None:
        raise AuthError(problem)
    return password_hasher.hash(password)


def add_account(session: Session, username: str, password_hash: str, role: str, now: datetime) -> User:
    """A new account from :func:`prepare_account`'s output (flushed); AuthError when the name is taken,
    also by another spelling of it (``Alice`` for ``alice``, a Cyrillic look-alike)."""
    if role not in ROLES:
        raise AuthError(f"role: expected one of {', '.join(ROLES)}")
    key = names.username_key(username)
    taken = session.scalar(select(User.username).where(User.username_key == key))
    if taken is not None:
        raise AuthError(f"username: {username!r} is taken" + (f" (as {taken!r})" if taken != username else ""))
    user = User(username=username, username_key=key, password_hash=password_hash, role=role,
                opted_out_categories=[], created_at=now)
    session.add(user)
    session.flush()
    return user


def create_user(session: Session, username: str, password: str, role: str, now: datetime) -> User:
    """A new account (flushed, not committed)."""
    if role not in ROLES:
        raise AuthError(f"role: expected one of {', '.join(ROLES)}")
    username, password_hash = prepare_account(username, password)
    return add_account(session, username, password_hash, role, now)


# ---------------------------------------------------------------- logging in, in three steps


def password_record(session: Session, typed_username: str) -> tuple[int, str] | None:
    """Step 1, in a short transaction: (user id, password hash) of the account a username names, or None.

    The exact stored name wins over another spelling (an old database may hold both ``Alice`` and
    ``alice``; the migration gave the later one a key of its own).
    """
    key = names.username_key(typed_username)
    if key == names.NO_KEY:
        return None
    typed = unicodedata.normalize("NFKC", typed_username).strip()
    rows = session.execute(select(User.id, User.username, User.password_hash)
                           .where(or_(User.username_key == key, User.username == typed))).all()
    rows.sort(key=lambda row: row.username != typed)
    return (rows[0].id, rows[0].password_hash) if rows else None


def dummy_hash() -> str:
    """A hash of a random password with the current hasher's cost, verified for unknown usernames."""
    if _dummy_hashes.get("hasher") is not password_hasher:
        _dummy_hashes.update(hasher=password_hasher, hash=password_hasher.hash(secrets.token_urlsafe(16)))
    return _dummy_hashes["hash"]


def check_password(record: tuple[int, str] | None, password: str) -> tuple[bool, str | None]:
    """Step 2, outside any transaction (argon2 is slow on purpose): whether the password is right, and
    a new hash where the stored one has old parameters. An unknown user costs the same as a wrong
    password (a dummy hash is verified), so the time taken does not tell which usernames exist."""
    stored = record[1] if record is not None else dummy_hash()
    usable = isinstance(password, str) and len(password) <= names.MAX_PASSWORD_CHARS and not text_problem(password)
    try:
        password_hasher.verify(stored, password if usable else "-")
    except (VerificationError, InvalidHashError):
        return False, None
    if record is None or not usable:
        return False, None
    return True, password_hasher.hash(password) if password_hasher.check_needs_rehash(stored) else None


def open_session(session: Session, user_id: int, new_hash: str | None, now: datetime
                 ) -> tuple[User, str, LoginSession]:
    """Step 3, in a short transaction: (user, cookie token, session row) for a verified user; AuthError
    for a disabled account (said only to whoever knows its password)."""
    user = session.get(User, user_id)
    if user.disabled_at is not None:
        raise AuthError(DISABLED)
    if new_hash is not None:
        user.password_hash = new_hash
    token, login = start_session(session, user, now)
    return user, token, login


def start_session(session: Session, user: User, now: datetime) -> tuple[str, LoginSession]:
    """(cookie token, session row) for a user who just logged in."""
    token = secrets.token_urlsafe(32)
    login = LoginSession(token_hash=token_hash(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                         created_at=now, expires_at=now + timedelta(days=SESSION_DAYS))
    session.add(login)
    session.flush()
    return token, login


def session_of_token(session: Session, token: str | None, now: datetime) -> LoginSession | None:
    """The live login session for a cookie token, or None (also for the session of a disabled account)."""
    if not token:
        return None
    login = session.scalar(select(LoginSession).options(joinedload(LoginSession.user))
                           .where(LoginSession.token_hash == token_hash(token)))
    if login is None or login.expires_at <= now or login.user.disabled_at is not None:
        return None
    return login


def csrf_matches(login: LoginSession, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(login.csrf_token, sent)


def create_invitation(session: Session, creator: User, role: str, now: datetime) -> str:
    """A new invitation; returns its token (shown once, inside the link)."""
    if role not in ROLES:
        raise AuthError(f"role: expected one of {', '.join(ROLES)}")
    token = secrets.token_urlsafe(24)
    session.add(Invitation(token_hash=token_hash(token), role=role, created_by_id=creator.id, created_at=now,
                           expires_at=now + timedelta(days=INVITATION_DAYS)))
    session.flush()
    return token


def open_invitation(session: Session, token: str, now: datetime) -> Invitation:
    """The unused, unexpired invitation of a token, or AuthError."""
    invitation = session.scalar(select(Invitation).where(Invitation.token_hash == token_hash(token)))
    if invitation is None or invitation.used_at is not None or invitation.expires_at <= now:
        raise AuthError("This invitation link is not valid (used, expired or mistyped).")
    return invitation


def accept_invitation(session: Session, token: str, username: str, password_hash: str, now: datetime) -> User:
    """The account created through an invitation (from :func:`prepare_account`), which is then used up."""
    invitation = open_invitation(session, token, now)
    user = add_account(session, username, password_hash, invitation.role, now)
    invitation.used_by_id, invitation.used_at = user.id, now
    return user


def sign_up(session: Session, invitation_token: str, username: str, password_hash: str, now: datetime) -> str:
    """Create the account of an invitation and log it in; returns the new session's cookie token."""
    user = accept_invitation(session, invitation_token, username, password_hash, now)
    token, _ = start_session(session, user, now)
    return token
