"""Accounts under attack (issue 21, defects 2 and 4): throttled guessing, argon2 that holds up nobody,
no username enumeration by timing, one account per name whatever its case or look-alike letters,
and no common passwords."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from feedback_helpers import PASSWORD, add_user, api_client, upload_project
from sqlalchemy import text

from rlhfkit.feedback import auth
from rlhfkit.feedback.db import make_engine, migrate


def log_in(client, username: str, password: str = PASSWORD):
    return client.post("/api/login", json={"username": username, "password": password})


def test_wrong_passwords_are_throttled_per_username_with_retry_after(app, clock):
    add_user(app, "alice")
    client = TestClient(app)
    for attempt in range(5):
        assert log_in(client, "Alice" if attempt % 2 else "alice", "wrong password").status_code == 401
    throttled = log_in(client, "ALICE")  # the right password, but the name is throttled (by its key)
    assert throttled.status_code == 429 and throttled.json()["error"] == "too_many_attempts"
    assert 0 < int(throttled.headers["retry-after"]) <= 15 * 60
    other = TestClient(app, client=("10.0.0.7", 5000))
    assert log_in(other, "alice").status_code == 429  # per name, from anywhere
    page = client.post("/login", data={"username": "alice", "password": PASSWORD})
    assert page.status_code == 429 and "retry-after" in page.headers and "Too many" in page.text
    clock.advance(seconds=int(throttled.headers["retry-after"]))
    assert log_in(client, "alice").status_code == 200
    assert log_in(client, "alice", "wrong again").status_code == 401  # a success cleared the count
    assert log_in(client, "alice").status_code == 200


def test_a_client_guessing_many_names_is_throttled_and_others_are_not(app, clock):
    add_user(app, "bob")
    guesser = TestClient(app, client=("203.0.113.9", 4000))
    for index in range(30):
        assert log_in(guesser, f"user{index}", "password guess").status_code == 401
    assert log_in(guesser, "bob").status_code == 429
    assert log_in(TestClient(app, client=("198.51.100.2", 4000)), "bob").status_code == 200
    clock.advance(minutes=15, seconds=1)
    assert log_in(guesser, "bob").status_code == 200


class BlockingHasher(PasswordHasher):
    """Argon2 whose verify waits for a signal, to hold a login inside argon2 for as long as the test likes."""

    def __init__(self):
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.entered, self.release = threading.Event(), threading.Event()

    def verify(self, hash, password):  # noqa: A002 (argon2's own name)
        self.entered.set()
        assert self.release.wait(timeout=30)
        return super().verify(hash, password)


def test_a_login_in_argon2_holds_up_no_other_request(app, live_server, monkeypatch):
    add_user(app, "admin", "admin")
    add_user(app, "ann")
    add_user(app, "carol")
    upload_project(api_client(app, "admin"), "p", [{"prompt": "Hi?", "responses": ["Hello.", "Go away."]}],
                   members=["ann"])
    with httpx.Client(base_url=live_server.url, timeout=30) as ann:
        csrf = log_in(ann, "ann").json()["csrf_token"]
        hasher = BlockingHasher()
        monkeypatch.setattr(auth, "password_hasher", hasher)
        login = threading.Thread(target=lambda: httpx.post(live_server.url + "/api/login", timeout=30,
                                                           json={"username": "carol", "password": PASSWORD}))
        login.start()
        assert hasher.entered.wait(timeout=10)
        start = time.perf_counter()
        task = ann.post("/api/projects/1/next", headers={"X-CSRF-Token": csrf})  # while carol's login is in argon2
        seconds = time.perf_counter() - start
        hasher.release.set()
        login.join(timeout=30)
    assert task.status_code == 200 and task.json()["task"] is not None
    assert seconds < 5, f"a request waited {seconds:.1f} s for a login's argon2"


def test_an_unknown_username_costs_as_much_as_a_wrong_password(app, monkeypatch):
    """Real argon2 parameters (the library's defaults); before, unknown names answered 9x faster."""
    monkeypatch.setattr(auth, "password_hasher", PasswordHasher())
    add_user(app, "dana")
    client = TestClient(app)

    def seconds(username: str) -> float:
        start = time.perf_counter()
        assert log_in(client, username, "not the password").status_code == 401
        return time.perf_counter() - start

    seconds("nobody-0")  # the dummy hash is made once
    times = {"unknown": [], "wrong": []}
    for index in range(4):
        times["unknown"].append(seconds(f"nobody-{index + 1}"))
        times["wrong"].append(seconds("dana"))
    unknown, wrong = statistics.median(times["unknown"]), statistics.median(times["wrong"])
    assert unknown > 0.5 * wrong, f"unknown names {1000 * unknown:.0f} ms, wrong passwords {1000 * wrong:.0f} ms"


def sign_up(app, username: str, password: str):
    admin = api_client(app, "root")
    link = admin.post("/api/admin/invitations", json={"role": "annotator"}).json()["url"]
    return TestClient(app).post("/" + link.split("/", 3)[3], data={"username": username, "password": password},
                                follow_redirects=False)


def test_one_account_per_name_whatever_its_case_width_or_look_alike_letters(app):
    add_user(app, "root", "admin")
    add_user(app, "alice")
    for taken in ("Alice", "ALICE", "ａｌｉｃｅ", " alice "):
        response = sign_up(app, taken, "a long good password")
        assert response.status_code == 422 and "taken" in response.text, taken
    mixed = sign_up(app, "\u0430lice", "a long good password")  # a Cyrillic а, then Latin letters
    assert mixed.status_code == 422 and "one script" in mixed.text
    add_user(app, "ace")
    assert "taken" in sign_up(app, "\u0430\u0441\u0435", "a long good password").text  # all Cyrillic: асе
    assert sign_up(app, "Zoë", "a long good password").status_code == 303
    assert sign_up(app, "田中たなか", "a long good password").status_code == 303  # Japanese mixes scripts
    assert log_in(TestClient(app), "ALICE").json()["username"] == "alice"
    assert log_in(TestClient(app), "zoë", "a long good password").json()["username"] == "Zoë"


@pytest.mark.parametrize("password", ["12345678", "        ", "\t \t \t \t ", "Password1", "aaaaaaaaaa",
                                      "abababababab", "new-person"])
def test_common_blank_and_one_character_passwords_are_refused(app, password):
    add_user(app, "root", "admin")
    response = sign_up(app, "new-person", password)
    assert response.status_code == 422 and "password:" in response.text
    with pytest.raises(auth.AuthError, match="password"):
        add_user(app, "new-person", password=password)


def test_the_migration_keys_old_names_that_now_collide(any_db_url):
    """A database of revision 0001 with both alice and Alice: both still log in, each to its own account."""
    from alembic import command
    from alembic.config import Config

    from rlhfkit.feedback.db import MIGRATIONS_DIR
    from rlhfkit.feedback.web import create_app

    engine = make_engine(any_db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        for name in ("alice", "Alice"):
            connection.execute(text("INSERT INTO users (username, password_hash, role, opted_out_categories, "
                                    "created_at) VALUES (:name, :hash, 'annotator', '[]', '2025-01-01')"),
                               {"name": name, "hash": auth.password_hasher.hash(f"{name} password")})
    migrate(engine)
    with engine.connect() as connection:
        keys = connection.execute(text("SELECT username, username_key FROM users ORDER BY id")).all()
    engine.dispose()
    assert [tuple(row) for row in keys] == [("alice", "alice"), ("Alice", "alice#2")]
    app = create_app(any_db_url)
    try:
        client = TestClient(app)
        assert log_in(client, "Alice", "Alice password").json()["username"] == "Alice"
        assert log_in(client, "alice", "alice password").json()["username"] == "alice"
        assert log_in(client, "ALICE", "alice password").json()["username"] == "alice"
    finally:
        app.state.engine.dispose()
