"""Per-project access and reviews (issue 21, "missing for teams"): annotators see and work on only
their projects, reviewers correct or reject the others' labels of theirs, rejected labels leave the
exports and their items are labelled again, exactly, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import threading
import time

import pytest
from feedback_helpers import PASSWORD, add_member, add_user, api_client, upload_project, write_jsonl
from sqlalchemy import func, select, text

from rlhfkit.data import load_preferences
from rlhfkit.feedback import review, services
from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.db import (
    Assignment,
    Item,
    Label,
    LabelReview,
    ProjectMember,
    User,
    make_engine,
    migrate,
)
from rlhfkit.feedback.importing import ItemSpec, ProjectOptions, add_items, create_project
from rlhfkit.feedback.membership import set_member

TWO = [{"prompt": "Which is kinder?", "responses": ["Thanks!", "Go away."]},
       {"prompt": "Which is right?", "responses": ["2 + 2 = 4", "2 + 2 = 5"]}]


@pytest.fixture
def admin(app):
    add_user(app, "admin", "admin")
    return api_client(app, "admin")


def jsonl(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def take_and_label(client, project_id: int, choice: str) -> int:
    """The client takes its next task of the project and labels it; returns the label id."""
    task = client.post(f"/api/projects/{project_id}/next").json()["task"]
    saved = client.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": choice})
    assert saved.status_code == 200, saved.text
    return saved.json()["label_id"]


def refused(response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    for fragment in fragments:
        assert fragment in response.json()["detail"], (fragment, response.text)


# ---------------------------------------------------------------- membership


def test_annotators_see_and_work_only_on_the_projects_they_are_members_of(app, admin):
    add_user(app, "ann")
    mine = upload_project(admin, "mine", TWO, members=["ann"]).json()["project_id"]
    other = upload_project(admin, "theirs", TWO).json()["project_id"]
    ann = api_client(app, "ann")
    home = ann.get("/").text
    assert "mine" in home and "theirs" not in home
    refused(ann.post(f"/api/projects/{other}/next"), 403, "not_a_member", "'theirs'", "ask an admin")
    page = ann.get(f"/projects/{other}")
    assert page.status_code == 403 and "not a member" in page.text
    assert ann.get(f"/projects/{mine}").status_code == 200
    task = ann.post(f"/api/projects/{mine}/next").json()["task"]
    assert task is not None
    admin_home = admin.get("/").text  # admins need no membership
    assert "mine" in admin_home and "theirs" in admin_home
    assert admin.post(f"/api/projects/{other}/next").json()["task"] is not None

    removed = admin.post(f"/api/admin/projects/{mine}/members/remove", json={"username": "ANN"})
    assert removed.json()["removed"] is True and removed.json()["members"] == []
    with app.state.sessions() as session:  # the open item went back to the pool at once
        assert session.get(Assignment, task["assignment_id"]).status == "expired"
        assert session.get(Item, session.get(Assignment, task["assignment_id"]).item_id).claimed_count == 0
    for action in ("label", "skip", "reveal", "flag"):
        response = ann.post(f"/api/assignments/{task['assignment_id']}/{action}",
                            json={"choice": "A", "category": "other"})
        refused(response, 403, "not_a_member")
    refused(ann.post(f"/api/projects/{mine}/next"), 403, "not_a_member")
    assert "You are not a member of any project" in ann.get("/").text


def test_admins_add_and_remove_members_and_bad_input_names_the_field(app, admin):
    add_user(app, "ann")
    project = upload_project(admin, "p", TWO).json()["project_id"]
    url = f"/api/admin/projects/{project}/members"
    refused(admin.post(url, json={"username": "nobody", "role": "annotator"}), 422, "invalid", "field 'username'")
    refused(admin.post(url, json={"username": "ann", "role": "boss"}), 422, "invalid", "field 'role'", "reviewer")
    refused(admin.post(url, json={"username": "admin"}), 422, "invalid", "field 'username'", "admin")
    refused(admin.post(url, json={"username": ["ann"]}), 422, "invalid", "field 'username'")
    assert admin.post(url, json={"username": "ann", "role": "reviewer"}).json()["members"][0]["role"] == "reviewer"
    assert admin.post(url, json={"username": "Ann"}).json()["members"][0]["role"] == "annotator"  # changed
    assert admin.get(url).json()["members"][0]["username"] == "ann"
    assert admin.get("/api/admin/projects/99999999999/members").status_code == 404
    ann = api_client(app, "ann")
    assert ann.get(url).status_code == 403
    assert ann.post(url, json={"username": "ann", "role": "reviewer"}).status_code == 403

    csrf = admin.headers["X-CSRF-Token"]
    page = admin.post(f"/admin/projects/{project}/members", data={"username": "ann", "role": "reviewer",
                                                                   "csrf_token": csrf})
    assert page.status_code == 200 and "&#39;ann&#39; is now reviewer" in page.text
    bad = admin.post(f"/admin/projects/{project}/members", data={"username": "ghost", "csrf_token": csrf})
    assert bad.status_code == 422 and "field &#39;username&#39;" in bad.text
    assert admin.post(f"/admin/projects/{project}/members", data={"username": "ann"}).status_code == 403  # no CSRF
    user_id = admin.get(url).json()["members"][0]["user_id"]
    gone = admin.post(f"/admin/projects/{project}/members/{user_id}/remove", data={"csrf_token": csrf})
    assert gone.status_code == 200 and "no longer a member" in gone.text
    assert admin.get(url).json()["members"] == []


def test_the_cli_adds_lists_and_removes_members(tmp_path, capsys):
    from rlhfkit.cli import main

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    main(["label", "init", "--db", db, "--admin", "boss", "--password", "long password"])
    main(["label", "import", "--db", db, "--project", "p", str(write_jsonl(tmp_path / "p.jsonl", TWO))])
    engine = make_engine(db)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users (username, username_key, password_hash, role, "
                                "opted_out_categories, created_at) VALUES ('ann', 'ann', 'x', 'annotator', '[]', "
                                "'2025-01-01'), ('bo', 'bo', 'x', 'annotator', '[]', '2025-01-01')"))
    engine.dispose()
    capsys.readouterr()
    main(["label", "member", "--db", db, "--project", "p", "--add", "ann", "BO", "--role", "reviewer"])
    assert "ann (reviewer), bo (reviewer)" in capsys.readouterr().err
    main(["label", "member", "--db", db, "--project", "p", "--remove", "bo"])
    assert "members of 'p': ann (reviewer)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "member", "--db", db, "--project", "p", "--add", "ghost"])
    assert exit_info.value.code == 2 and "field '--add': no account called 'ghost'" in capsys.readouterr().err


def test_the_migration_makes_everyone_who_worked_on_a_project_its_member(any_db_url):
    """A database of revision 0002: ann labelled, bob skipped, carol never took an item; then 0003."""
    from alembic import command
    from alembic.config import Config

    from rlhfkit.feedback.db import MIGRATIONS_DIR
    from rlhfkit.feedback.web import create_app

    engine = make_engine(any_db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    now = "2025-03-01 10:00:00"
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        from rlhfkit.feedback import auth

        for name, role in (("boss", "admin"), ("ann", "annotator"), ("bob", "annotator"), ("carol", "annotator")):
            connection.execute(text("INSERT INTO users (username, username_key, password_hash, role, "
                                    "opted_out_categories, created_at) VALUES (:n, :n, :h, :r, '[]', :t)"),
                               {"n": name, "h": auth.password_hasher.hash(PASSWORD), "r": role, "t": now})
        connection.execute(text("INSERT INTO projects (name, task_type, guidelines, overlap, gold_rate, ask_rationale, "
                                "allow_edit, rating_scale, shuffle_responses, created_at) VALUES ('old', 'pairwise', "
                                "'', 2, 0, false, false, 5, false, :t)"), {"t": now})
        connection.execute(text("INSERT INTO items (project_id, position, prompt, responses, source_location, "
                                "is_gold, claimed_count, done_count) VALUES (1, 0, '\"p\"', '[\"a\", \"b\"]', '', "
                                "false, 1, 1)"))
        for user_id, status in ((2, "done"), (3, "skipped"), (1, "done")):
            connection.execute(text("INSERT INTO assignments (item_id, user_id, project_id, status, sensitive, "
                                    "assigned_at, revealed_at, finished_at) VALUES (1, :u, 1, :s, false, :t, :t, :t)"),
                               {"u": user_id, "s": status, "t": now})
        connection.execute(text("INSERT INTO labels (assignment_id, item_id, user_id, project_id, answer, rationale, "
                                "duration_seconds, submitted_at, is_gold) VALUES (1, 1, 2, 1, '{\"choice\": \"A\"}', "
                                "'', 9.0, :t, false)"), {"t": now})
    migrate(engine)
    with engine.connect() as connection:
        members = connection.execute(text("SELECT user_id, role FROM project_members ORDER BY user_id")).all()
        statuses = connection.execute(text("SELECT review_status FROM labels")).scalars().all()
    engine.dispose()
    assert [tuple(row) for row in members] == [(2, "annotator"), (3, "annotator")]  # not the admin, not carol
    assert statuses == ["submitted"]
    app = create_app(any_db_url)
    try:
        assert "old" in api_client(app, "ann").get("/").text
        refused(api_client(app, "carol").post("/api/projects/1/next"), 403, "not_a_member")
        assert api_client(app, "bob").post("/api/projects/1/next").json()["task"] is None  # skipped: not again
    finally:
        app.state.engine.dispose()


# ---------------------------------------------------------------- reviews


@pytest.fixture
def team(app, admin):
    """Project 1 (pairwise, overlap 2) with annotators a1..a4 and reviewer rev; project 2 without rev."""
    for name in ("a1", "a2", "a3", "a4", "rev"):
        add_user(app, name)
    upload_project(admin, "reviewed", [TWO[0]], overlap=2, members=["a1", "a2", "a3", "a4"])
    upload_project(admin, "elsewhere", [TWO[1]], members=["a1"])
    add_member(app, 1, "rev", role="reviewer")
    return {name: api_client(app, name) for name in ("a1", "a2", "a3", "a4", "rev")}


def counters(app, item_id: int = 1) -> tuple[int, int]:
    with app.state.sessions() as session:
        item = session.get(Item, item_id)
        return item.claimed_count, item.done_count


def test_a_reviewer_sees_the_others_labels_of_its_projects_only(app, admin, team):
    first, second = take_and_label(team["a1"], 1, "A"), take_and_label(team["a2"], 1, "B")
    elsewhere = take_and_label(team["a1"], 2, "A")
    queue = team["rev"].get("/api/projects/1/labels").json()
    assert [(row["label_id"], row["annotator"]) for row in queue["labels"]] == [(second, "a2"), (first, "a1")]
    assert queue["labels"][0]["responses"] == TWO[0]["responses"] and queue["total"] == 2
    refused(team["a1"].get("/api/projects/1/labels"), 403, "not_a_reviewer")  # a plain annotator
    refused(team["rev"].get("/api/projects/2/labels"), 403, "not_a_member")
    refused(team["rev"].post(f"/api/labels/{elsewhere}/reject", json={}), 403, "not_a_member")
    refused(team["a2"].post(f"/api/labels/{first}/reject", json={}), 403, "not_a_reviewer")
    refused(team["rev"].get("/api/projects/1/labels?status=maybe"), 422, "invalid", "field 'status'")
    refused(team["rev"].get("/api/projects/1/labels?limit=100000"), 422, "invalid", "'limit'")
    refused(team["rev"].get("/api/projects/1/labels?offset=99999999999999"), 422, "invalid", "'offset'")
    assert team["rev"].post("/api/labels/99999999999/reject", json={}).status_code == 404
    add_member(app, 1, "a1", role="reviewer")
    mine = api_client(app, "a1")
    refused(mine.post(f"/api/labels/{first}/correct", json={"choice": "B"}), 403, "own_label")
    assert [row["annotator"] for row in mine.get("/api/projects/1/labels").json()["labels"]] == ["a2"]
    assert len(admin.get("/api/projects/1/labels").json()["labels"]) == 2  # admins review everything
    assert len(team["rev"].get("/api/projects/1/labels?status=rejected").json()["labels"]) == 0


def test_a_rejected_label_leaves_the_exports_and_its_item_is_labelled_again_within_the_overlap(
        app, admin, team, tmp_path):
    rejected = take_and_label(team["a1"], 1, "A")
    take_and_label(team["a2"], 1, "A")
    assert counters(app) == (2, 2) and team["a3"].post("/api/projects/1/next").json()["task"] is None
    answer = team["rev"].post(f"/api/labels/{rejected}/reject", json={"reason": "too fast"})
    assert answer.status_code == 200 and answer.json()["review_status"] == "rejected"
    assert counters(app) == (1, 1)
    refused(team["rev"].post(f"/api/labels/{rejected}/reject", json={}), 409, "already_rejected")
    refused(team["rev"].post(f"/api/labels/{rejected}/correct", json={"choice": "B"}), 409, "already_rejected")
    assert counters(app) == (1, 1)

    per_label = jsonl(admin.get("/api/admin/projects/1/export/preferences?aggregate=false"))
    assert [record["source"] for record in per_label] == ["rlhfkit-label:reviewed:a2"]
    raw = {row["annotator"]: row for row in jsonl(admin.get("/api/admin/projects/1/export/labels"))}
    assert raw["a1"]["review_status"] == "rejected" and raw["a2"]["review_status"] == "submitted"
    progress = admin.get("/api/admin/projects/1/stats").json()
    assert progress["progress"]["labels"] == 1 and progress["progress"]["rejected_labels"] == 1
    assert progress["progress"]["complete_items"] == 0
    assert {row["annotator"]: row["rejected"] for row in progress["annotators"]} == {"a1": 1, "a2": 0}

    assert team["a1"].post("/api/projects/1/next").json()["task"] is None  # not to the rejected annotator again
    take_and_label(team["a3"], 1, "B")  # the freed place
    assert team["a4"].post("/api/projects/1/next").json()["task"] is None  # the overlap holds
    assert counters(app) == (2, 2)
    assert admin.get("/api/admin/projects/1/export/preferences").text == ""  # A against B now: no majority
    take = team["rev"].post(f"/api/labels/{rejected + 2}/reject", json={})  # a3's label
    assert take.status_code == 200 and counters(app) == (1, 1)
    take_and_label(team["a4"], 1, "A")
    path = tmp_path / "preferences.jsonl"
    path.write_text(admin.get("/api/admin/projects/1/export/preferences").text)
    assert [(pair.chosen, pair.rejected) for pair in load_preferences(path)] == [("Thanks!", "Go away.")]
    with app.state.sessions() as session:
        statuses = session.scalars(select(Assignment.status).order_by(Assignment.id)).all()
        assert statuses == ["rejected", "done", "rejected", "done"]
        assert session.scalar(select(func.count(LabelReview.id))) == 2


def test_a_correction_keeps_the_annotators_answer_and_an_audit_trail(app, admin, team, clock):
    label_id = take_and_label(team["a1"], 1, "A")
    refused(team["rev"].post(f"/api/labels/{label_id}/correct", json={"choice": "C"}), 422, "invalid", "'choice'")
    unstorable = team["rev"].post(f"/api/labels/{label_id}/correct", headers={"Content-Type": "application/json"},
                                  content=b'{"choice": "B", "reason": "\\ud800"}')  # a lone surrogate, as JSON says it
    refused(unstorable, 422, "invalid", "'reason'")
    corrected = team["rev"].post(f"/api/labels/{label_id}/correct", json={"choice": "B", "reason": "B is kinder?"})
    assert corrected.json() == {"label_id": label_id, "review_status": "corrected", "answer": {"choice": "B"},
                                "original_answer": {"choice": "A"}}
    clock.advance(minutes=5)
    admin.post(f"/api/labels/{label_id}/correct", json={"choice": "tie"})
    assert counters(app) == (1, 1)
    [row] = team["rev"].get("/api/projects/1/labels?status=corrected").json()["labels"]
    assert row["answer"] == {"choice": "tie"} and row["original_answer"] == {"choice": "A"}
    assert [(r["reviewer"], r["action"], r["previous_answer"], r["new_answer"], r["reason"], r["at"])
            for r in row["reviews"]] == [
        ("rev", "corrected", {"choice": "A"}, {"choice": "B"}, "B is kinder?", "2025-03-03T09:00:00Z"),
        ("admin", "corrected", {"choice": "B"}, {"choice": "tie"}, "", "2025-03-03T09:05:00Z")]
    [raw] = jsonl(admin.get("/api/admin/projects/1/export/labels"))
    assert raw["answer"] == {"choice": "tie"} and raw["original_answer"] == {"choice": "A"}
    admin.post(f"/api/labels/{label_id}/correct", json={"choice": "B"})
    assert [r["chosen"] for r in jsonl(admin.get("/api/admin/projects/1/export/preferences"))] == ["Go away."]
    stats = {r["annotator"]: r for r in admin.get("/api/admin/projects/1/stats").json()["annotators"]}
    assert stats["a1"]["corrected"] == 1


def test_rank_corrections_are_checked_and_the_review_page_works_with_its_forms(app, admin):
    add_user(app, "ann")
    add_user(app, "rev")
    project = upload_project(admin, "ranked", [{"prompt": "Rank.", "responses": ["x", "y", "z"]}], task_type="rank",
                             members=["ann"]).json()["project_id"]
    add_member(app, project, "rev", role="reviewer")
    ann, rev = api_client(app, "ann"), api_client(app, "rev")
    task = ann.post(f"/api/projects/{project}/next").json()["task"]
    label_id = ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2, 3]}).json()["label_id"]
    refused(rev.post(f"/api/labels/{label_id}/correct", json={"ranks": [1, 1, 3]}), 422, "invalid", "'ranks'")
    csrf = rev.headers["X-CSRF-Token"]
    page = rev.get(f"/projects/{project}/review")
    assert page.status_code == 200 and "Label 1 by ann" in page.text and csrf in page.text
    assert "Review" in rev.get("/").text
    form = f"/projects/{project}/review/{label_id}/correct"
    assert rev.post(form, data={"values": "3, 2, 1"}).status_code == 403  # no CSRF token
    bad = rev.post(form, data={"values": "three", "csrf_token": csrf})
    assert bad.status_code == 422 and "ranks" in bad.text
    done = rev.post(form, data={"values": "3, 2, 1", "reason": "reversed", "csrf_token": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith(f"/projects/{project}/review?")
    assert "No labels to review here" in rev.get(done.headers["location"]).text  # no longer unreviewed
    shown = rev.get(f"/projects/{project}/review?status=corrected").text
    assert "(corrected" in shown and "ranks 3, 2, 1" in shown and "the annotator's: ranks 1, 2, 3" in shown
    rejected = rev.post(f"/projects/{project}/review/{label_id}/reject", data={"csrf_token": csrf, "status": "all"},
                        follow_redirects=True)
    assert rejected.status_code == 200 and "(rejected" in rejected.text and "Label 1 rejected" in rejected.text
    assert rev.post(f"/projects/{project + 1}/review/{label_id}/reject", data={"csrf_token": csrf}).status_code == 404
    assert ann.get(f"/projects/{project}/review").status_code == 403
    assert admin.get(f"/admin/projects/{project}").text.count("labels rejected by reviewers") == 1


# ---------------------------------------------------------------- the counters under concurrency (rule 16)


def reviewed_item(app, overlap: int) -> tuple[list[int], int]:
    """Project 1 of one item: annotators' ids (all labelled, each once) and the reviewer's id."""
    users = [add_user(app, f"annotator{i}") for i in range(overlap + 1)]
    reviewers = [add_user(app, f"reviewer{i}") for i in range(2)]
    now = app.state.clock()
    with app.state.sessions() as session:
        project = create_project(session, "race", ProjectOptions(task_type="pairwise", overlap=overlap))
        add_items(session, project, [ItemSpec("Which is kinder?", ["Thanks!", "Go away."], "race:1")])
        for user_id in users:
            set_member(session, project, session.get(User, user_id), "annotator", None, now)
        for user_id in reviewers:
            set_member(session, project, session.get(User, user_id), "reviewer", None, now)
        session.commit()
    for user_id in users[:overlap]:
        with app.state.sessions() as session:
            user = session.get(User, user_id)
            task = services.next_task(session, 1, user, now)["task"]
            services.label_task(session, task["assignment_id"], user, {"choice": "A"}, now)
            session.commit()
    return users, reviewers


def in_thread(app, work) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        with app.state.sessions() as session:
            try:
                outcome["result"] = work(session)
                session.commit()
            except FeedbackError as error:
                session.rollback()
                outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_two_reviewers_rejecting_one_label_at_once_lower_the_counters_once(any_db_app):
    """The first reject is saved while the second arrives: the second waits for the item, then finds the
    label rejected (without the item's lock, PostgreSQL would let both lower the counters)."""
    _, reviewers = reviewed_item(any_db_app, overlap=2)
    now = any_db_app.state.clock()
    with any_db_app.state.sessions() as first:
        review.reject_label(first, 1, first.get(User, reviewers[0]), {"reason": "first"}, now)
        thread, outcome = in_thread(any_db_app, lambda s: review.reject_label(s, 1, s.get(User, reviewers[1]),
                                                                              {"reason": "second"}, now))
        time.sleep(0.3)  # the second reject runs into the locked item (SQLite: the locked database)
        first.commit()
    thread.join(timeout=30)
    assert outcome["error"].code == "already_rejected"
    assert counters(any_db_app) == (1, 1)
    with any_db_app.state.sessions() as session:
        assert session.scalars(select(LabelReview.reason)).all() == ["first"]


def test_a_reject_racing_a_label_of_the_same_item_keeps_the_counters_exact(any_db_app):
    """The label being saved holds its item; the reject waits for it, then both count."""
    users, reviewers = reviewed_item(any_db_app, overlap=2)
    now = any_db_app.state.clock()
    with any_db_app.state.sessions() as session:  # the third annotator gets a place when one is freed
        review.reject_label(session, 1, session.get(User, reviewers[0]), {}, now)
        session.commit()
    with any_db_app.state.sessions() as session:
        task = services.next_task(session, 1, session.get(User, users[2]), now)["task"]
        session.commit()
    assert counters(any_db_app) == (2, 1)
    with any_db_app.state.sessions() as saving:
        services.label_task(saving, task["assignment_id"], saving.get(User, users[2]), {"choice": "B"}, now)
        thread, outcome = in_thread(any_db_app, lambda s: review.reject_label(s, 2, s.get(User, reviewers[1]), {},
                                                                              now))
        time.sleep(0.3)  # the reject runs into the locked item (SQLite: the locked database)
        saving.commit()
    thread.join(timeout=30)
    assert "error" not in outcome
    assert counters(any_db_app) == (1, 1)
    with any_db_app.state.sessions() as session:
        kept = session.scalars(select(Label.user_id).where(Label.review_status != "rejected")).all()
        assert kept == [users[2]]
        assert session.scalar(select(func.count(ProjectMember.id))) == 5
