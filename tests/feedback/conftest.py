"""Fixtures for the feedback app: an app on a real SQLite file with a movable clock, a live server."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from feedback_helpers import FakeClock, LiveServer

from rlhfkit.feedback import auth


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch):
    """Argon2id with small parameters, so that tests with many accounts stay fast (still argon2)."""
    monkeypatch.setattr(auth, "password_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def app(db_url, clock):
    from rlhfkit.feedback.web import create_app

    application = create_app(db_url, clock=clock)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def live_server(app):
    with LiveServer(app) as server:
        yield server
