"""What admins do to accounts: disable and enable them, end their sessions, make password-reset links.

* **Disable**: the account cannot log in (the right password is answered "disabled") and every one
  of its sessions stops working at once: they are deleted, and a session of a disabled account is
  refused anyway (:func:`.auth.session_of_token`). Its open assignments go back to the pool. An admin
  cannot disable its own account (nobody would be left to undo it). **Enable** undoes it.
* **End sessions**: every browser signed in as the user is signed out.
* **Password reset**: a one-use link (a random token; the table keeps only its SHA-256) that expires
  after RESET_HOURS; making a new one cancels the user's unused ones. The page it opens sets a new
  password under the same rules as sign-up (:func:`.names.password_problem`), ends the user's
  sessions, and uses the link up: two uses at once cannot both succeed (the link is taken by one
  conditional UPDATE). A reset does not enable a disabled account.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.auth import AuthError, token_hash
from rlhfkit.feedback.checks import MAX_ID
from rlhfkit.feedback.db import LoginSession, PasswordReset, User
from rlhfkit.feedback.membership import give_back_open_work

RESET_HOURS = 24
"""How long a password-reset link works."""
INVALID_RESET = "This password-reset link is not valid (used, expired, replaced by a newer one, or mistyped)."


def get_user(session: Session, user_id: int) -> User:
    """The account, or a 404."""
    user = session.get(User, user_id) if 1 <= user_id <= MAX_ID else None
    if user is None:
        raise FeedbackError(404, "not_found", "No such account.")
    return user


def end_sessions(session: Session, user: User) -> int:
    """Sign the user out everywhere; how many sessions were ended."""
    result = session.execute(delete(LoginSession).where(LoginSession.user_id == user.id)
                             .execution_options(synchronize_session=False))
    return result.rowcount


def disable_account(session: Session, admin: User | None, user: User, now: datetime) -> int:
    """Disable the account, end its sessions and give back its open work; how many sessions were ended.
    ``admin``: who does it (None: the command line, run by whoever holds the database)."""
    if admin is not None and user.id == admin.id:
        raise FeedbackError(409, "own_account", "You cannot disable your own account.")
    if user.disabled_at is None:
        user.disabled_at = now
    ended = end_sessions(session, user)
    give_back_open_work(session, user, now)
    session.flush()
    return ended


def enable_account(session: Session, user: User) -> None:
    user.disabled_at = None
    session.flush()


def create_reset_link(session: Session, admin: User | None, user: User, now: datetime) -> str:
    """A new password-reset token for the user (shown once, inside the link); older unused ones stop working."""
    session.execute(update(PasswordReset).where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None),
                                                PasswordReset.expires_at > now).values(expires_at=now)
                    .execution_options(synchronize_session=False))
    token = secrets.token_urlsafe(32)
    session.add(PasswordReset(token_hash=token_hash(token), user_id=user.id, created_by_id=admin.id if admin else None,
                              created_at=now, expires_at=now + timedelta(hours=RESET_HOURS)))
    session.flush()
    return token


def open_reset(session: Session, token: str, now: datetime) -> PasswordReset:
    """The unused, unexpired reset of a token, or AuthError."""
    reset = session.scalar(select(PasswordReset).where(PasswordReset.token_hash == token_hash(token)))
    if reset is None or reset.used_at is not None or reset.expires_at <= now:
        raise AuthError(INVALID_RESET)
    return reset


def reset_username(session: Session, token: str, now: datetime) -> str:
    """The username a valid reset link is for (for the page, and for the password rules)."""
    return session.get(User, open_reset(session, token, now).user_id).username


def use_reset(session: Session, token: str, password_hash: str, now: datetime) -> User:
    """Set the new password (hashed beforehand, outside any transaction) and use the link up; the
    user's sessions end. The link is taken by one conditional UPDATE, so it works once even when
    two requests use it at the same moment."""
    reset = open_reset(session, token, now)
    taken = session.execute(update(PasswordReset).where(PasswordReset.id == reset.id, PasswordReset.used_at.is_(None),
                                                        PasswordReset.expires_at > now).values(used_at=now)
                            .execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        raise AuthError(INVALID_RESET)
    user = session.get(User, reset.user_id)
    user.password_hash = password_hash
    end_sessions(session, user)
    session.flush()
    return user


def account_rows(session: Session, now: datetime) -> list[dict]:
    """Every account, by username: role, disabled or not, live sessions, when it was created."""
    live = dict(session.execute(select(LoginSession.user_id, func.count(LoginSession.id))
                                .where(LoginSession.expires_at > now).group_by(LoginSession.user_id)).all())
    return [{"user_id": user.id, "username": user.username, "role": user.role,
             "disabled": user.disabled_at is not None,
             "disabled_at": user.disabled_at.isoformat() + "Z" if user.disabled_at else None,
             "sessions": live.get(user.id, 0), "created_at": user.created_at.isoformat() + "Z"}
            for user in session.scalars(select(User).order_by(User.username))]
