"""Fixtures for the feedback app: an app on a real SQLite file with a movable clock, a live server, and a
real PostgreSQL server (see postgres_server.py) for the tests that run on both databases."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from feedback_helpers import FakeClock, LiveServer
from postgres_server import NoPostgres, postgres_required, start_postgres

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


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session; skipped where none can be had, failed under RLHFKIT_REQUIRE_POSTGRES=1."""
    try:
        server = start_postgres()
    except NoPostgres as error:
        if postgres_required():
            pytest.fail(f"RLHFKIT_REQUIRE_POSTGRES is set but no PostgreSQL server: {error}")
        pytest.skip(f"no PostgreSQL server: {error}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the PostgreSQL server, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request, tmp_path) -> str:
    """The test runs twice: on a SQLite file, and on a database of a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def app(db_url, clock):
    from rlhfkit.feedback.web import create_app

    application = create_app(db_url, clock=clock)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def any_db_app(any_db_url, clock):
    """The app on SQLite, then on PostgreSQL."""
    from rlhfkit.feedback.web import create_app

    application = create_app(any_db_url, clock=clock)
    yield application
    application.state.engine.dispose()


@pytest.fixture
def live_server(app):
    with LiveServer(app) as server:
        yield server
