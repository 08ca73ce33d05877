"""Helpers of the load tests: the app server in a process of its own, simulated annotators, the checks.

The server runs in a subprocess (its own interpreter, so the clients' threads do not share its GIL) on
a loopback port; each simulated annotator is a thread with its own keep-alive connection and login
session that asks for tasks, skips some and labels the rest until none is left. A server can be
killed with SIGKILL and started again on the same port; annotators then reconnect and go on (their
cookie is still valid: sessions live in the database).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from feedback_helpers import PASSWORD, add_user, free_port
from sqlalchemy import select, text

SERVER = """
import sys, uvicorn
from rlhfkit.feedback.web import create_app
uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""

RETRY_SECONDS = 60.0
"""How long an annotator keeps trying to reach a server that is down (it is being restarted)."""


def seed(app, annotators: int, items: int, overlap: int) -> None:
    """An admin, the annotators and one pairwise project of ``items`` items; then closes the app's engine."""
    from rlhfkit.feedback.db import User
    from rlhfkit.feedback.importing import ItemSpec, ProjectOptions, add_items, create_project
    from rlhfkit.feedback.membership import set_member

    add_user(app, "admin", role="admin")
    for index in range(annotators):
        add_user(app, f"annotator{index:02d}")
    with app.state.sessions() as session:
        project = create_project(session, "load", ProjectOptions(task_type="pairwise", overlap=overlap))
        add_items(session, project, [ItemSpec(f"prompt {i}", [f"answer {i}a", f"answer {i}b"], f"load:{i}")
                                     for i in range(items)])
        for user in session.scalars(select(User).where(User.role == "annotator")):
            set_member(session, project, user, "annotator", None, app.state.clock())
        session.commit()
    if app.state.engine.dialect.name == "postgresql":
        with app.state.engine.connect() as connection:  # the planner's statistics, as autovacuum would soon
            connection.execute(text("ANALYZE"))
            connection.commit()
    app.state.engine.dispose()


class ServerProcess:
    """``rlhfkit.feedback.web`` under uvicorn in a subprocess, on one port across restarts."""

    def __init__(self, db_url: str):
        self.db_url, self.port = db_url, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, self.db_url, str(self.port)],
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read().decode()}")
            try:
                if httpx.get(self.url + "/login", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flushing; what was committed must be all that counts."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far, from /proc (NaN where there is no /proc)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Refused(RuntimeError):
    def __init__(self, status: int, data: dict):
        super().__init__(f"{status} {data}")
        self.status, self.data = status, data


class Annotator:
    """A simulated annotator on one keep-alive HTTP connection (http.client: light on the client's CPU).

    With ``reconnect``, a dropped connection (the server was killed) is retried on a new one until
    the server answers again; a 409 for a label or skip sent twice that way is the first one's echo.
    """

    def __init__(self, port: int, username: str, reconnect: bool = False):
        self.port, self.reconnect = port, reconnect
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json"}
        login = self.post("/api/login", {"username": username, "password": PASSWORD})
        self.headers["Cookie"] = login.pop("_cookie")
        self.headers["X-CSRF-Token"] = login["csrf_token"]

    def send(self, path: str, body: dict | None) -> tuple[int, dict, str | None]:
        self.connection.request("POST", path, body=json.dumps(body or {}), headers=self.headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("set-cookie")

    def post(self, path: str, body: dict | None = None) -> dict:
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            try:
                status, data, cookie = self.send(path, body)
                break
            except (OSError, http.client.HTTPException):
                if not self.reconnect or time.monotonic() > deadline:
                    raise
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                time.sleep(0.05)
        if status != 200:
            raise Refused(status, data)
        if cookie:
            data["_cookie"] = cookie.split(";", 1)[0]
        return data


@dataclass
class LoadLog:
    """What the annotators were told: acknowledged label ids, skips, and errors."""

    label_ids: list[int] = field(default_factory=list)
    skips: int = 0
    echoes: int = 0  # a resent label or skip answered 409: the first one had been committed
    waits: int = 0  # "the last items are held by others": asked again
    per_annotator: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def next_task(annotator: Annotator, log: LoadLog) -> dict | None:
    """The next task; while the last items are held by others (one may be skipped), ask again shortly."""
    while (reply := annotator.post("/api/projects/1/next"))["task"] is None and reply.get("waiting_items"):
        with log.lock:
            log.waits += 1
        time.sleep(0.2)
    return reply["task"]


def annotate_until_done(port: int, username: str, skip_rate: float, log: LoadLog, reconnect: bool = False) -> None:
    """Log in, then take tasks until none is left: skip each with probability ``skip_rate``, label the rest."""
    chooser = random.Random(username)
    try:
        annotator = Annotator(port, username, reconnect)
        done = 0
        while (task := next_task(annotator, log)) is not None:
            assignment = task["assignment_id"]
            skipping = chooser.random() < skip_rate
            try:
                if skipping:
                    annotator.post(f"/api/assignments/{assignment}/skip")
                else:
                    label_id = annotator.post(f"/api/assignments/{assignment}/label",
                                              {"choice": "A" if assignment % 3 else "B"})["label_id"]
            except Refused as refusal:
                if not (reconnect and refusal.status == 409):
                    raise
                with log.lock:
                    log.echoes += 1
                continue
            with log.lock:
                if skipping:
                    log.skips += 1
                else:
                    log.label_ids.append(label_id)
                    done += 1
        log.per_annotator[username] = done
    except Exception as error:  # reported by the test thread
        log.errors.append(f"{username}: {error!r}")


def run_annotators(port: int, count: int, skip_rate: float, log: LoadLog, reconnect: bool = False
                   ) -> list[threading.Thread]:
    threads = [threading.Thread(target=annotate_until_done,
                                args=(port, f"annotator{i:02d}", skip_rate, log, reconnect), daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def database_state(db_url: str) -> dict:
    """What the database holds after the load: labels, assignment statuses and the items' counters."""
    from rlhfkit.feedback.db import make_engine

    engine = make_engine(db_url)
    with engine.connect() as connection:
        labels = connection.execute(text("SELECT id, item_id, user_id, assignment_id FROM labels")).all()
        statuses = Counter(dict(connection.execute(
            text("SELECT status, count(*) FROM assignments GROUP BY status")).all()))
        items = connection.execute(text(
            "SELECT i.id, i.claimed_count, i.done_count, "
            "(SELECT count(*) FROM labels l WHERE l.item_id = i.id), "
            "(SELECT count(*) FROM assignments a WHERE a.item_id = i.id AND a.status IN ('active', 'done')) "
            "FROM items i")).all()
    engine.dispose()
    return {"labels": labels, "statuses": statuses, "items": items}


def dashboard_progress(port: int) -> dict:
    """The admin dashboard's progress figures of the project, over HTTP."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert client.post("/api/login", json={"username": "admin", "password": PASSWORD}).status_code == 200
        return client.get("/api/admin/projects/1/stats").json()["progress"]


def check_exact(state: dict, items: int, overlap: int) -> None:
    """Exactly ``overlap`` labels per item, by different annotators, and counters equal to the rows."""
    labels = state["labels"]
    per_item = Counter(item for _, item, _, _ in labels)
    over = sum(count > overlap for count in per_item.values())
    stranded = items - sum(count == overlap for count in per_item.values()) - over
    wrong_done = sum(done != label_rows for _, _, done, label_rows, _ in state["items"])
    wrong_claimed = sum(claimed != held for _, claimed, _, _, held in state["items"])
    summary = (f"{len(labels)} labels for {items * overlap} places; {over} items over the overlap "
               f"(most {max(per_item.values(), default=0)}), {stranded} short; done_count wrong on "
               f"{wrong_done}, claimed_count wrong on {wrong_claimed}")
    print(summary)
    assert (len(labels), over, stranded, wrong_done, wrong_claimed) == (items * overlap, 0, 0, 0, 0), summary
    assert len({(item, user) for _, item, user, _ in labels}) == len(labels)  # nobody labelled an item twice
    assert len({assignment for *_, assignment in labels}) == len(labels)
    assert state["statuses"].get("active", 0) == 0 and state["statuses"]["done"] == items * overlap
