"""Accounts: argon2 password hashes, login sessions with CSRF tokens, and invitations.

A login gives the browser a random session token in an httpOnly cookie; the database keeps only its
SHA-256, so a copy of the database opens no session. Each session has a CSRF token that every
state-changing request must echo (a form field or the ``X-CSRF-Token`` header): a cross-site page can
make the browser send the cookie, but cannot read the token. Invitation links work the same way:
the link holds the token, the database its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from rlhfkit.feedback.db import ROLES, Invitation, LoginSession, User

SESSION_DAYS = 7
INVITATION_DAYS = 14
MIN_PASSWORD_LENGTH = 8

password_hasher = PasswordHasher()


class AuthError(ValueError):
    """A login, sign-up or invitation that is refused; the message is safe to show."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_new_account(session: Session, username: str, password: str, role: str) -> str:
    """The cleaned username after checking the account can be created."""
    username = username.strip()
    if not 1 <= len(username) <= 80 or not all(c.isalnum() or c in "._-@" for c in username):
        raise AuthError("username: use 1 to 80 letters, digits or . _ - @")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password: use at least {MIN_PASSWORD_LENGTH} characters")
    if role not in ROLES:
        raise AuthError(f"role: expected one of {', '.join(ROLES)}")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AuthError(f"username: {username!r} is taken")
    return username


def create_user(session: Session, username: str, password: str, role: str, now: datetime) -> User:
    """A new account (flushed, not committed)."""
    username = check_new_account(session, username, password, role)
    user = User(username=username, password_hash=password_hasher.hash(password), role=role,
                opted_out_categories=[], created_at=now)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User:
    """The user with these credentials, or AuthError (the same message whichever part was wrong)."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    try:
        if user is None:
            raise VerificationError
        password_hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError) as error:
        raise AuthError("Wrong username or password.") from error
    if password_hasher.check_needs_rehash(user.password_hash):
        user.password_hash = password_hasher.hash(password)
    return user


def start_session(session: Session, user: User, now: datetime) -> tuple[str, LoginSession]:
    """(cookie token, session row) for a user who just logged in."""
    token = secrets.token_urlsafe(32)
    login = LoginSession(token_hash=token_hash(token), user_id=user.id, csrf_token=secrets.token_urlsafe(32),
                         created_at=now, expires_at=now + timedelta(days=SESSION_DAYS))
    session.add(login)
    session.flush()
    return token, login


def session_of_token(session: Session, token: str | None, now: datetime) -> LoginSession | None:
    """The live login session for a cookie token, or None."""
    if not token:
        return None
    login = session.scalar(select(LoginSession).options(joinedload(LoginSession.user))
                           .where(LoginSession.token_hash == token_hash(token)))
    if login is None or login.expires_at <= now:
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


def accept_invitation(session: Session, token: str, username: str, password: str, now: datetime) -> User:
    """The account created through an invitation, which is then used up."""
    invitation = open_invitation(session, token, now)
    user = create_user(session, username, password, invitation.role, now)
    invitation.used_by_id, invitation.used_at = user.id, now
    return user


def log_in(session: Session, username: str, password: str, now: datetime) -> tuple[User, str, LoginSession]:
    """(user, cookie token, session row) for the right credentials; AuthError otherwise."""
    user = authenticate(session, username, password)
    token, login = start_session(session, user, now)
    return user, token, login


def sign_up(session: Session, invitation_token: str, username: str, password: str, now: datetime) -> str:
    """Create the account of an invitation and log it in; returns the new session's cookie token."""
    user = accept_invitation(session, invitation_token, username, password, now)
    token, _ = start_session(session, user, now)
    return token
