"""Helpers for the feedback app's tests: a movable clock, accounts, logged-in clients, a live server.

(A module of its own, not conftest.py: test modules import from it by a name no other folder uses.)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

PASSWORD = "correct horse battery"


class FakeClock:
    """The app's clock in tests: a naive UTC time that only moves when told to."""

    def __init__(self, start: datetime = datetime(2025, 3, 3, 9, 0, 0)):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def add_user(app, username: str, role: str = "annotator", password: str = PASSWORD) -> int:
    """Create an account straight in the database; returns its id."""
    from rlhfkit.feedback.auth import create_user

    with app.state.sessions() as session:
        user = create_user(session, username, password, role, app.state.clock())
        session.commit()
        return user.id


def add_member(app, project_id: int, *usernames: str, role: str = "annotator") -> None:
    """Make accounts members of a project straight in the database (annotators see only their projects)."""
    from sqlalchemy import select

    from rlhfkit.feedback.db import Project, User
    from rlhfkit.feedback.membership import set_member

    with app.state.sessions() as session:
        project = session.get(Project, project_id)
        for username in usernames:
            user = session.scalar(select(User).where(User.username == username))
            set_member(session, project, user, role, None, app.state.clock())
        session.commit()


def api_client(app, username: str, password: str = PASSWORD):
    """A TestClient logged in through the API, sending the session's CSRF token on every request."""
    from fastapi.testclient import TestClient

    client = TestClient(app)
    response = client.post("/api/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def upload_project(client, name: str, records: list[dict] | str, filename: str | None = None,
                   members: tuple[str, ...] | list[str] = (), **fields):
    """POST a project upload as an admin (the file named after the project unless told); returns the
    response. ``members``: accounts made annotators of the new project (straight in the database)."""
    text = records if isinstance(records, str) else "".join(json.dumps(r) + "\n" for r in records)
    data = {"name": name, **{key: str(value) for key, value in fields.items()}}
    response = client.post("/api/admin/projects", data=data,
                           files={"file": (filename or f"{name}.jsonl", text.encode("utf-8"), "application/x-ndjson")})
    if members and response.status_code == 200:
        add_member(client.app, response.json()["project_id"], *members)
    return response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real uvicorn server for an app, in a background thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


PAIRWISE_RECORDS = [
    {"prompt": "What is the capital of Peru?", "responses": ["Lima.", "Cusco, I think."]},
    {"prompt": "Name a prime number.", "responses": ["7", "9", "11"]},  # 2 pairs: (0,1), (2,0)
    {"prompt": [{"role": "user", "content": "Say hello."}], "responses": ["Hello!", "Go away."]},
]
