"""Load: 20 annotators at once over real HTTP to a uvicorn server in another process, 2,000 labels.

The server runs in a subprocess (its own interpreter, so the clients' threads do not share its GIL) on
a loopback port; each simulated annotator is a thread with its own keep-alive connection and login
session that asks for tasks and labels them until none is left. 1,000 items with overlap 2 must end with exactly
2,000 label rows: none lost, none duplicated, no item over its overlap, nobody on an item twice.
"""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from feedback_helpers import PASSWORD, add_user, free_port

ANNOTATORS = 20
ITEMS = 1000
OVERLAP = 2

SERVER = """
import sys, uvicorn
from rlhfkit.feedback.web import create_app
uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()}")
        try:
            if httpx.get(url + "/login", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


class Annotator:
    """A simulated annotator on one keep-alive HTTP connection (http.client: light on the client's CPU)."""

    def __init__(self, port: int, username: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Content-Type": "application/json"}
        login = self.post("/api/login", {"username": username, "password": PASSWORD})
        self.headers["Cookie"] = login.pop("_cookie")
        self.headers["X-CSRF-Token"] = login["csrf_token"]

    def post(self, path: str, body: dict | None = None) -> dict:
        self.connection.request("POST", path, body=json.dumps(body or {}), headers=self.headers)
        response = self.connection.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {data}")
        cookie = response.getheader("set-cookie")
        if cookie:
            data["_cookie"] = cookie.split(";", 1)[0]
        return data


def annotate_until_done(port: int, username: str, results: dict, errors: list) -> None:
    """Log in, then take and label tasks until none is left."""
    try:
        annotator = Annotator(port, username)
        done = 0
        while (task := annotator.post("/api/projects/1/next")["task"]) is not None:
            choice = "A" if task["assignment_id"] % 3 else "B"
            annotator.post(f"/api/assignments/{task['assignment_id']}/label", {"choice": choice})
            done += 1
        results[username] = done
    except Exception as error:  # reported by the test thread
        errors.append(f"{username}: {error!r}")


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (NaN where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_20_concurrent_annotators_submit_2000_labels_none_lost_or_duplicated(app, db_url):
    from rlhfkit.feedback.importing import ItemSpec, ProjectOptions, add_items, create_project

    for index in range(ANNOTATORS):
        add_user(app, f"annotator{index:02d}")
    with app.state.sessions() as session:
        project = create_project(session, "load", ProjectOptions(task_type="pairwise", overlap=OVERLAP))
        add_items(session, project, [ItemSpec(f"prompt {i}", [f"answer {i}a", f"answer {i}b"], f"load:{i}")
                                     for i in range(ITEMS)])
        session.commit()
    app.state.engine.dispose()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, db_url, str(port)], stderr=subprocess.PIPE)
    try:
        wait_until_serving(url, server)
        results: dict[str, int] = {}
        errors: list[str] = []
        threads = [threading.Thread(target=annotate_until_done, args=(port, f"annotator{i:02d}", results, errors))
                   for i in range(ANNOTATORS)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        seconds = time.perf_counter() - start
        server_cpu_seconds = process_cpu_seconds(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert not errors, errors[:5]
    assert sum(results.values()) == ITEMS * OVERLAP and len(results) == ANNOTATORS
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as connection:
        rows = connection.execute("SELECT item_id, user_id, assignment_id FROM labels").fetchall()
        assignment_statuses = Counter(s for (s,) in connection.execute("SELECT status FROM assignments"))
        counters = connection.execute("SELECT min(done_count), max(done_count), max(claimed_count) FROM items"
                                      ).fetchone()
    assert len(rows) == ITEMS * OVERLAP
    assert len({(item, user) for item, user, _ in rows}) == len(rows)  # nobody labelled an item twice
    assert len({assignment for _, _, assignment in rows}) == len(rows)
    per_item = Counter(item for item, _, _ in rows)
    assert len(per_item) == ITEMS and set(per_item.values()) == {OVERLAP}
    assert assignment_statuses == {"done": ITEMS * OVERLAP}
    assert counters == (OVERLAP, OVERLAP, OVERLAP)
    print(f"load: {ANNOTATORS} annotators, {len(rows)} labels in {seconds:.1f} s "
          f"({len(rows) / seconds:.0f} labels/s, {2 * len(rows) / seconds:.0f} requests/s); "
          f"per annotator {min(results.values())}..{max(results.values())}; "
          f"server CPU {server_cpu_seconds:.1f} s ({1000 * server_cpu_seconds / (2 * len(rows)):.1f} ms per request)")
