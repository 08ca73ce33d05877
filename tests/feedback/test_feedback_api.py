"""The feedback app's API on a real SQLite file: import, assignment, labels, security, export, migrations."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import (
    PAIRWISE_RECORDS,
    PASSWORD,
    add_member,
    add_user,
    api_client,
    upload_project,
    write_jsonl,
)
from sqlalchemy import select

from rlhfkit.data import load_demonstrations, load_preferences, load_rankings
from rlhfkit.feedback.db import Assignment, Item, Label, Project, User, make_engine, migrate
from rlhfkit.train.rm import load_comparison_groups

HARMLESS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def db_file(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def count_rows(db_url: str, table: str) -> int:
    """Rows of a table read through a separate sqlite3 connection: only committed data is visible."""
    with sqlite3.connect(db_file(db_url)) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def admin(app):
    add_user(app, "admin", "admin")
    return api_client(app, "admin")


def label_all(client, project_id: int, answer: dict, limit: int = 100) -> int:
    """Label every item the client is given with the same answer; returns how many."""
    for done in range(limit):
        task = client.post(f"/api/projects/{project_id}/next").json()["task"]
        if task is None:
            return done
        if not task["revealed"]:
            assert client.post(f"/api/assignments/{task['assignment_id']}/reveal").status_code == 200
        response = client.post(f"/api/assignments/{task['assignment_id']}/label", json=answer)
        assert response.status_code == 200, response.text
    raise AssertionError("more tasks than expected")


# ---------------------------------------------------------------- schema


def test_alembic_migration_matches_the_models_and_is_idempotent(any_db_url):
    """On SQLite and on a real PostgreSQL server."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from rlhfkit.feedback.db import Base

    engine = make_engine(any_db_url)
    migrate(engine)
    migrate(engine)  # a second upgrade is a no-op
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0003"
        assert connection.exec_driver_sql("SELECT break_after_minutes, daily_cap_minutes FROM site_settings"
                                          ).one() == (50.0, 360.0)
    engine.dispose()


# ---------------------------------------------------------------- import and pairwise labelling


def test_pairwise_project_label_commit_and_export(app, admin, db_url, tmp_path):
    response = upload_project(admin, "peru", PAIRWISE_RECORDS, task_type="pairwise", guidelines="# Be kind")
    assert response.status_code == 200, response.text
    project_id = response.json()["project_id"]
    assert response.json()["items"] == 4  # 1 + 2 pairs from the K=3 record + 1

    add_user(app, "ann")
    add_member(app, project_id, "ann")
    ann = api_client(app, "ann")
    first = ann.post(f"/api/projects/{project_id}/next")
    assert first.status_code == 200
    task = first.json()["task"]
    assert task["task_type"] == "pairwise" and task["revealed"] and task["prompt"] == "What is the capital of Peru?"
    assert task["responses"] == ["Lima.", "Cusco, I think."]
    assert "gold" not in json.dumps(task)
    # asking again returns the same open assignment, not a second one
    assert ann.post(f"/api/projects/{project_id}/next").json()["task"]["assignment_id"] == task["assignment_id"]

    saved = ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"})
    assert saved.status_code == 200
    assert ann.post(f"/api/projects/{project_id}/next").json()["progress"]["my_labels"] == 1
    assert count_rows(db_url, "labels") == 1  # committed before the response came back
    again = ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "B"})
    assert again.status_code == 409 and count_rows(db_url, "labels") == 1

    choices = iter(["B", "tie", "both_bad"])
    for _ in range(3):
        task = ann.post(f"/api/projects/{project_id}/next").json()["task"]
        assert ann.post(f"/api/assignments/{task['assignment_id']}/label",
                        json={"choice": next(choices)}).status_code == 200
    assert ann.post(f"/api/projects/{project_id}/next").json()["task"] is None

    preferences = admin.get(f"/api/admin/projects/{project_id}/export/preferences")
    assert preferences.status_code == 200
    path = tmp_path / "preferences.jsonl"
    path.write_text(preferences.text)
    pairs = load_preferences(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("Lima.", "Cusco, I think."), ("9", "7")]  # tie: no pair
    assert len(load_comparison_groups(str(path))) == 2
    kto = [json.loads(line) for line in admin.get(f"/api/admin/projects/{project_id}/export/kto").text.splitlines()]
    assert [(r["completion"], r["label"]) for r in kto] == [("Hello!", False), ("Go away.", False)]  # both bad
    raw = [json.loads(line) for line in admin.get(f"/api/admin/projects/{project_id}/export/labels").text.splitlines()]
    assert [r["answer"]["choice"] for r in raw] == ["A", "B", "tie", "both_bad"]
    assert {r["annotator"] for r in raw} == {"ann"}


def test_bad_uploads_are_refused_with_line_and_field_and_store_nothing(app, admin, db_url):
    good = json.dumps(PAIRWISE_RECORDS[0])
    cases = {
        "missing-field": (good + "\n" + good + "\n" + json.dumps({"prompt": "p", "answers": ["a", "b"]}),
                          ["missing-field.jsonl:3", "field 'responses'", "missing"]),
        "wrong-type": (good + "\n" + json.dumps({"prompt": "p", "responses": "a, b"}),
                       ["wrong-type.jsonl:2", "field 'responses'", "got str"]),
        "bad-json": (good + "\n\n" + '{"prompt": "p", "responses": ["a", "b"]', ["bad-json.jsonl:3", "invalid JSON"]),
        "bad-response": (json.dumps({"prompt": "p", "responses": ["a", 42]}),
                         ["bad-response.jsonl:1", "field 'responses[1]'", "got int (42)"]),
        "bad-gold": (json.dumps({"prompt": "p", "responses": ["a", "b"], "gold": "C"}),
                     ["bad-gold.jsonl:1", "field 'gold'"]),
        "one-response": (json.dumps({"prompt": "p", "responses": ["a"]}),
                         ["one-response.jsonl:1", "at least 2 responses"]),
    }
    for name, (text, expected) in cases.items():
        response = upload_project(admin, name, text)
        assert response.status_code == 422, (name, response.text)
        detail = response.json()["detail"]
        for fragment in expected:
            assert fragment in detail, (name, detail)
    assert count_rows(db_url, "projects") == 0 and count_rows(db_url, "items") == 0
    bad_option = upload_project(admin, "opt", [PAIRWISE_RECORDS[0]], overlap=0)
    assert bad_option.status_code == 422 and "overlap" in bad_option.json()["detail"]
    assert count_rows(db_url, "projects") == 0


def test_overlap_is_respected_and_nobody_gets_an_item_twice(app, admin):
    records = [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(3)]
    project_id = upload_project(admin, "overlap", records, overlap=2).json()["project_id"]
    clients = {}
    for name in ("u1", "u2", "u3"):
        add_user(app, name)
        add_member(app, project_id, name)
        clients[name] = api_client(app, name)

    assert label_all(clients["u1"], project_id, {"choice": "A"}) == 3
    # u2 skips the first item it gets: the place goes back to the pool, and u2 never sees it again
    skipped = clients["u2"].post(f"/api/projects/{project_id}/next").json()["task"]
    assert clients["u2"].post(f"/api/assignments/{skipped['assignment_id']}/skip").status_code == 200
    assert label_all(clients["u2"], project_id, {"choice": "B"}) == 2
    assert label_all(clients["u3"], project_id, {"choice": "A"}) == 1  # only the skipped item has a place left
    with app.state.sessions() as session:
        items = session.scalars(select(Item).where(Item.project_id == project_id)).all()
        assert all(item.done_count == 2 and item.claimed_count == 2 for item in items)
        pairs = session.execute(select(Label.item_id, Label.user_id)).all()
        assert len(pairs) == len(set(pairs)) == 6
        skipper = session.scalar(select(User.id).where(User.username == "u2"))
        skipped_item = session.get(Assignment, skipped["assignment_id"]).item_id
        assert (skipped_item, skipper) not in pairs
    stats = admin.get(f"/api/admin/projects/{project_id}/stats").json()
    rows = {row["annotator"]: row for row in stats["annotators"]}
    assert rows["u2"]["skips"] == 1 and rows["u2"]["labels"] == 2
    assert stats["progress"]["complete_items"] == 3 and stats["progress"]["skips"] == 1
    # aggregated export: each item has 2 votes; u1 says A everywhere
    pairs = admin.get(f"/api/admin/projects/{project_id}/export/preferences").text.splitlines()
    per_label = admin.get(f"/api/admin/projects/{project_id}/export/preferences?aggregate=false").text.splitlines()
    assert len(per_label) == 6 and len(pairs) == 1  # two items are A-vs-B splits (no majority), one A+A


def test_annotators_see_only_their_own_work_and_never_admin_routes(app, admin, db_url):
    project_id = upload_project(admin, "private", PAIRWISE_RECORDS).json()["project_id"]
    add_user(app, "ann")
    add_user(app, "eve")
    add_member(app, project_id, "ann")
    ann, eve = api_client(app, "ann"), api_client(app, "eve")
    task = ann.post(f"/api/projects/{project_id}/next").json()["task"]

    for path in (f"/api/admin/projects/{project_id}/stats", f"/api/admin/projects/{project_id}/export/labels",
                 "/api/admin/exposure"):
        assert eve.get(path).status_code == 403
    assert eve.post("/api/admin/invitations", json={"role": "admin"}).status_code == 403
    assert upload_project(eve, "mine", PAIRWISE_RECORDS).status_code == 403
    assert eve.get("/admin").status_code == 403
    assert eve.get(f"/admin/projects/{project_id}").status_code == 403
    for action in ("label", "skip", "reveal"):
        response = eve.post(f"/api/assignments/{task['assignment_id']}/{action}", json={"choice": "A"})
        assert response.status_code == 404, action
    assert count_rows(db_url, "labels") == 0

    anonymous = TestClient(app)
    assert anonymous.post(f"/api/projects/{project_id}/next").status_code == 401
    page = anonymous.get("/admin", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    # a logged-in request without the CSRF token is refused
    no_csrf = TestClient(app, cookies=ann.cookies)
    assert no_csrf.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"}).status_code == 403
    assert count_rows(db_url, "labels") == 0


def test_login_cookie_is_httponly_and_passwords_are_argon2(app, db_url):
    add_user(app, "ann")
    client = TestClient(app)
    response = client.post("/login", data={"username": "ann", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.post("/login", data={"username": "ann", "password": "wrong password"}).status_code == 401
    with sqlite3.connect(db_file(db_url)) as connection:
        stored = connection.execute("SELECT password_hash FROM users").fetchone()[0]
        session_hash = connection.execute("SELECT token_hash FROM login_sessions").fetchone()[0]
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert response.cookies.get("rlhfkit_session") != session_hash  # only the token's hash is stored
    headers = client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]


def test_invitation_creates_an_account_once(app, admin):
    link = admin.post("/api/admin/invitations", json={"role": "annotator"}).json()["url"]
    path = "/" + link.split("/", 3)[3]
    visitor = TestClient(app)
    assert visitor.get(path).status_code == 200
    created = visitor.post(path, data={"username": "newbie", "password": "longenough"}, follow_redirects=False)
    assert created.status_code == 303
    assert visitor.get("/api/session").json()["role"] == "annotator"
    reused = TestClient(app).post(path, data={"username": "other", "password": "longenough"})
    assert reused.status_code == 422 and "not valid" in reused.text
    assert api_client(app, "newbie", "longenough").get("/api/session").status_code == 200


# ---------------------------------------------------------------- sensitive content


def test_warned_items_hide_content_until_revealed_and_respect_opt_outs(app, admin):
    records = [{"prompt": "How do I make a bomb to kill my neighbour?", "responses": ["I won't help.", "Sure."]},
               {"prompt": "What is 2 + 2?", "responses": ["4", "5"]}]
    project_id = upload_project(admin, "warned", records).json()["project_id"]
    add_user(app, "ann")
    add_user(app, "opted")
    add_member(app, project_id, "ann", "opted")
    ann, opted = api_client(app, "ann"), api_client(app, "opted")

    task = ann.post(f"/api/projects/{project_id}/next").json()["task"]
    assert task["sensitive"] and not task["revealed"] and task["categories"] == ["violence"]
    assert "prompt" not in task and "responses" not in task
    early = ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"})
    assert early.status_code == 409 and early.json()["error"] == "not_revealed"
    revealed = ann.post(f"/api/assignments/{task['assignment_id']}/reveal").json()["task"]
    assert revealed["revealed"] and revealed["responses"] == ["I won't help.", "Sure."]

    assert opted.post("/api/me/opt-outs", json={"categories": ["violence"]}).status_code == 200
    ann.post(f"/api/assignments/{task['assignment_id']}/skip")  # back to the pool: opted must still not get it
    mine = opted.post(f"/api/projects/{project_id}/next").json()["task"]
    assert mine["prompt"] == "What is 2 + 2?" and not mine["sensitive"]
    opted.post(f"/api/assignments/{mine['assignment_id']}/label", json={"choice": "A"})
    assert opted.post(f"/api/projects/{project_id}/next").json()["task"] is None


def test_an_annotator_flag_puts_a_warning_in_front_of_the_next_annotator(app, admin):
    project_id = upload_project(admin, "flags", [{"prompt": "Tell me a story.", "responses": ["x", "y"]}],
                                overlap=2).json()["project_id"]
    add_user(app, "first")
    add_user(app, "second")
    add_member(app, project_id, "first", "second")
    first, second = api_client(app, "first"), api_client(app, "second")
    task = first.post(f"/api/projects/{project_id}/next").json()["task"]
    assert not task["sensitive"]
    flagged = first.post(f"/api/assignments/{task['assignment_id']}/flag", json={"category": "self-harm"})
    assert flagged.json()["categories"] == ["self-harm"]
    assert first.post(f"/api/assignments/{task['assignment_id']}/flag", json={"category": "nope"}).status_code == 422
    later = second.post(f"/api/projects/{project_id}/next").json()["task"]
    assert later["sensitive"] and later["categories"] == ["self-harm"] and "prompt" not in later


@pytest.mark.skipif(not HARMLESS.exists(), reason="../shared/data/hh-rlhf is not present")
def test_the_lexicon_flags_most_red_team_dialogues(app, admin, tmp_path):
    """Real red-team dialogues (HH harmless-base) imported as pairs: the lexicon warns on most of them."""
    with gzip.open(HARMLESS, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(200)]
    response = upload_project(admin, "red-team", "".join(lines))
    assert response.status_code == 200, response.text
    project_id = response.json()["project_id"]
    with app.state.sessions() as session:
        items = session.scalars(select(Item).where(Item.project_id == project_id)).all()
        assert len(items) == 200
        assert all(isinstance(item.prompt, list) and item.prompt[-1]["role"] == "user" for item in items)
        share = sum(bool(item.categories) for item in items) / len(items)
        by_category = {c for item in items for c in item.category_names}
    print(f"lexicon: {share:.0%} of 200 harmless-base dialogues flagged; categories {sorted(by_category)}")
    assert share >= 0.5
    assert {"violence", "crime", "hate"} <= by_category
    stats = admin.get(f"/api/admin/projects/{project_id}/stats").json()
    assert stats["progress"]["items"] == 200


# ---------------------------------------------------------------- gold, rank, rating, edits


def test_gold_items_are_mixed_in_at_the_rate_and_scored(app, admin):
    records = [{"prompt": f"q{i}", "responses": ["good", "bad"]} for i in range(8)]
    records += [{"prompt": f"gold{i}", "responses": ["right", "wrong"], "gold": "A"} for i in range(4)]
    project_id = upload_project(admin, "gold", records, gold_rate=0.25).json()["project_id"]
    add_user(app, "ann")
    add_member(app, project_id, "ann")
    ann = api_client(app, "ann")
    sequence = []
    while True:
        task = ann.post(f"/api/projects/{project_id}/next").json()["task"]
        if task is None:
            break
        gold = task["prompt"].startswith("gold")
        sequence.append(gold)
        answer = "B" if task["prompt"] == "gold1" else "A"  # one gold answer wrong
        ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": answer})
    assert len(sequence) == 8 + sum(sequence)
    assert 2 <= sum(sequence) <= 4  # about a quarter of the labels are gold
    row = admin.get(f"/api/admin/projects/{project_id}/stats").json()["annotators"][0]
    assert row["gold_answered"] == sum(sequence)
    assert row["gold_accuracy"] == pytest.approx((sum(sequence) - 1) / sum(sequence), abs=1e-3)
    exported = admin.get(f"/api/admin/projects/{project_id}/export/preferences").text
    assert "right" not in exported and len(exported.splitlines()) == 8


def test_rank_rating_and_edit_exports_load_in_the_trainers(app, admin, tmp_path):
    ranking = [{"prompt": "Rank these.", "responses": ["best", "middle", "worst"]},
               {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["one", "two", "three"]}]
    rank_id = upload_project(admin, "ranks", ranking, task_type="rank", overlap=2,
                             allow_edit="1").json()["project_id"]
    rating_id = upload_project(admin, "ratings", ranking, task_type="rating", rating_scale=5).json()["project_id"]
    add_user(app, "r1")
    add_user(app, "r2")
    add_member(app, rank_id, "r1", "r2")
    add_member(app, rating_id, "r1", "r2")
    r1, r2 = api_client(app, "r1"), api_client(app, "r2")
    bad = r1.post(f"/api/assignments/{r1.post(f'/api/projects/{rank_id}/next').json()['task']['assignment_id']}/label",
                  json={"ranks": [1, 1, 2]})
    assert bad.status_code == 422 and "ranks" in bad.json()["detail"]
    label_all(r1, rank_id, {"ranks": [1, 2, 3], "edited_response": "the very best"})
    label_all(r2, rank_id, {"ranks": [1, 3, 2]})
    label_all(r1, rating_id, {"ratings": [5, 3, 1]})

    folder = tmp_path / "export"
    from rlhfkit.feedback.export import write_exports

    with app.state.sessions() as session:
        rank_written = write_exports(session, session.get(Project, rank_id), folder / "rank")
        rating_written = write_exports(session, session.get(Project, rating_id), folder / "rating")
    assert rank_written == {"preferences": 4, "rankings": 2, "sft": 2, "labels": 4}
    rankings = load_rankings(folder / "rank" / "rankings.jsonl")
    assert [r.ranks for r in rankings] == [[1, 2, 2], [1, 2, 2]]  # mean ranks 1, 2.5, 2.5: a tie
    groups = load_comparison_groups(str(folder / "rank" / "rankings.jsonl"))
    assert [len(g.pairs) for g in groups] == [2, 2]  # the tie is skipped
    assert len(load_preferences(folder / "rank" / "preferences.jsonl")) == 4
    demos = load_demonstrations(folder / "rank" / "sft.jsonl")
    assert [d.completion for d in demos if not d.is_chat] == ["the very best"] and len(demos) == 2
    assert rating_written == {"kto": 4, "labels": 2}  # rating 3 is the midpoint: no record
    kto = [json.loads(line) for line in (folder / "rating" / "kto.jsonl").read_text().splitlines()]
    assert [(r["completion"], r["label"]) for r in kto] == [("best", True), ("worst", False), ("one", True),
                                                            ("three", False)]
    try:
        from rlhfkit.data.readers import load_binary_feedback
    except ImportError:
        return
    assert [f.desirable for f in load_binary_feedback(folder / "rating" / "kto.jsonl")] == [True, False, True, False]


def test_cli_import_refuses_a_bad_file_and_export_writes_files(tmp_path, capsys):
    from rlhfkit.cli import main

    db = f"sqlite:///{tmp_path / 'cli.db'}"
    main(["label", "init", "--db", db, "--admin", "boss", "--password", "long password"])
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRWISE_RECORDS[0], {"prompt": "p", "responses": [1, 2]}])
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "import", "--db", db, "--project", "p", str(bad)])
    assert exit_info.value.code == 2
    assert "bad.jsonl:2: field 'responses[0]'" in capsys.readouterr().err.replace("\n", "")
    good = write_jsonl(tmp_path / "good.jsonl", PAIRWISE_RECORDS)
    main(["label", "import", "--db", db, "--project", "p", "--task", "rank", str(good)])
    capsys.readouterr()
    main(["label", "stats", "--db", db, "--project", "p", "--json"])
    assert json.loads(capsys.readouterr().out)["progress"]["items"] == 3
    main(["label", "export", "--db", db, "--project", "p", "--output", str(tmp_path / "out")])
    assert (tmp_path / "out" / "labels.jsonl").read_text() == ""
    with sqlite3.connect(tmp_path / "cli.db") as connection:
        assert connection.execute("SELECT count(*) FROM projects").fetchone()[0] == 1


def test_every_page_renders_and_forms_need_the_csrf_token(app, admin, db_url):
    project_id = upload_project(admin, "pages", PAIRWISE_RECORDS,
                                guidelines="# Rules\n- be **fair**").json()["project_id"]
    add_user(app, "ann")
    add_member(app, project_id, "ann")
    ann = api_client(app, "ann")
    csrf = ann.headers["X-CSRF-Token"]
    for path in ("/", "/me", f"/projects/{project_id}"):
        response = ann.get(path)
        assert response.status_code == 200, path
        assert csrf in response.text  # forms and the page script carry the session's CSRF token
    assert "<strong>fair</strong>" in ann.get(f"/projects/{project_id}").text
    for path in ("/admin", f"/admin/projects/{project_id}"):
        assert admin.get(path).status_code == 200, path
    refused = ann.post("/me", data={"opt_out": ["hate"]})  # no csrf_token field
    assert refused.status_code == 403
    saved = ann.post("/me", data={"opt_out": ["hate", "crime", "unknown"], "csrf_token": csrf}, follow_redirects=False)
    assert saved.status_code == 303
    with sqlite3.connect(db_file(db_url)) as connection:
        opted = connection.execute("SELECT opted_out_categories FROM users WHERE username = 'ann'").fetchone()[0]
    assert json.loads(opted) == ["hate", "crime"]
    admin_csrf = admin.headers["X-CSRF-Token"]
    settings = admin.post("/admin/settings", data={"break_minutes": "15", "csrf_token": admin_csrf},
                          follow_redirects=False)
    assert settings.status_code == 303
    assert ann.get("/api/me/welfare").json()["limits"]["break_minutes"] == 15
    invitation = admin.post("/admin/invitations", data={"role": "annotator", "csrf_token": admin_csrf})
    assert invitation.status_code == 200 and "/invite/" in invitation.text


def test_postgresql_assignment_locks_its_candidate_with_skip_locked():
    """No PostgreSQL server here: check the SQL the assignment sends to one."""
    from sqlalchemy.dialects import postgresql

    from rlhfkit.feedback.assignment import candidate_query

    project = Project(id=1, overlap=2)
    user = User(id=7, opted_out_categories=["hate"])
    query = candidate_query(project, user, gold=False, sensitive_allowed=True, dialect="postgresql")
    sql = str(query.compile(dialect=postgresql.dialect())).replace("\n", " ")
    assert sql.endswith("FOR NO KEY UPDATE OF items SKIP LOCKED")
    assert "items.claimed_count <" in sql and "NOT (EXISTS" in sql
    sqlite_sql = str(candidate_query(project, user, gold=False, sensitive_allowed=True, dialect="sqlite"))
    assert "FOR UPDATE" not in sqlite_sql
