"""Bad input is refused at the edge, with the field named, on SQLite and on PostgreSQL: never a 500.

Each case once answered 500 (issue 21, defect 3) or stopped all work: a lone surrogate or a NUL in
an upload or a label, JSON nested too deeply for the parser, ids past the database's integers, a
project name with CR/LF or 10,000 characters, an overlap of 10^12, a daily cap of 1e-300 minutes, and
a non-ASCII project name in the export's Content-Disposition header.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from feedback_helpers import PAIRWISE_RECORDS, add_user, api_client, upload_project

GOOD = json.dumps(PAIRWISE_RECORDS[0])


@pytest.fixture
def admin(any_db_app):
    add_user(any_db_app, "admin", "admin")
    return api_client(any_db_app, "admin")


@pytest.fixture
def annotator(any_db_app):
    add_user(any_db_app, "ann")
    return api_client(any_db_app, "ann")


def post_raw(client, path: str, body: str):
    """POST a JSON body as it is written (httpx would refuse to encode a lone surrogate itself)."""
    return client.post(path, content=body.encode("utf-8"), headers={"Content-Type": "application/json"})


def refused(response, *fragments: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    for fragment in fragments:
        assert fragment in text, (fragment, text)


def test_bad_characters_in_an_upload_are_refused_with_file_line_and_field(admin, annotator):
    cases = {
        "surrogate": ('{"prompt": "p", "responses": ["fine", "bad \\ud800 here"]}', "field 'responses[1]'"),
        "nul": ('{"prompt": "nul \\u0000 inside", "responses": ["a", "b"]}', "field 'prompt'"),
        "message": ('{"prompt": [{"role": "user", "content": "\\udfff"}], "responses": ["a", "b"]}',
                    "field 'prompt[0].content'"),
        "gold": ('{"prompt": "p", "responses": ["a", "b"], "gold": "\\ud800"}', "field 'gold'"),
    }
    for name, (line, field) in cases.items():
        refused(upload_project(admin, name, GOOD + "\n" + line), f"{name}.jsonl:2", field)
    assert admin.get("/api/admin/projects/1/stats").status_code == 404  # nothing was stored
    project = upload_project(admin, "fine", [PAIRWISE_RECORDS[0]], members=["ann"]).json()["project_id"]
    assert annotator.post(f"/api/projects/{project}/next").json()["task"]["prompt"] == PAIRWISE_RECORDS[0]["prompt"]


def test_json_nested_too_deeply_is_refused_with_its_line(admin):
    deep = '{"prompt": "p", "responses": ["a", "b"], "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(upload_project(admin, "deep", GOOD + "\n" + GOOD + "\n" + deep), "deep.jsonl:3", "nested")
    array = "[" + GOOD + ", " + deep + "]"
    refused(admin.post("/api/admin/projects", data={"name": "deep-array"},
                       files={"file": ("deep.json", array.encode(), "application/json")}), "deep.json", "nested")
    assert admin.get("/api/admin/projects/1/stats").status_code == 404


def test_bad_characters_in_a_label_are_refused_and_the_task_stays_usable(any_db_app, admin):
    add_user(any_db_app, "ann")
    project = upload_project(admin, "edit", [PAIRWISE_RECORDS[0]], allow_edit="1", ask_rationale="1", members=["ann"])
    ann = api_client(any_db_app, "ann")
    task = ann.post(f"/api/projects/{project.json()['project_id']}/next").json()["task"]
    path = f"/api/assignments/{task['assignment_id']}/label"
    refused(post_raw(ann, path, '{"choice": "A", "edited_response": "x\\udc00"}'), "field 'edited_response'")
    refused(post_raw(ann, path, '{"choice": "A", "rationale": "nul\\u0000"}'), "field 'rationale'")
    refused(post_raw(ann, path, '{"choice": "\\ud800"}'), "field 'choice'")
    assert ann.post(path, json={"choice": "A", "edited_response": "Lima, Peru."}).status_code == 200


def test_credentials_with_bad_characters_are_wrong_credentials_not_errors(any_db_app):
    add_user(any_db_app, "ann")
    from fastapi.testclient import TestClient

    client = TestClient(any_db_app)
    for body in ('{"username": "ann", "password": "\\ud800\\ud800\\ud800\\ud800"}',
                 '{"username": "a\\u0000nn", "password": "whatever you like"}',
                 '{"username": "' + "x" * 100_000 + '", "password": "p"}'):
        assert post_raw(client, "/api/login", body).status_code == 401
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # %ED%A0%80: a surrogate, as bad UTF-8
    assert client.post("/login", content=b"username=a%00nn&password=p%ED%A0%80xxxxxxxx", headers=form
                       ).status_code == 401


@pytest.mark.parametrize("number", [2**31, 2**63, 10**30])
def test_ids_past_the_database_integers_are_not_found_not_errors(admin, annotator, number):
    for path in (f"/api/projects/{number}/next", f"/api/assignments/{number}/label",
                 f"/api/assignments/{number}/skip", f"/api/assignments/{number}/reveal"):
        assert annotator.post(path, json={"choice": "A"}).status_code == 404, path
    for path in (f"/api/admin/projects/{number}/stats", f"/api/admin/projects/{number}/export/comparisons",
                 f"/admin/projects/{number}", f"/projects/{number}"):
        assert admin.get(path).status_code == 404, path


def test_project_names_and_options_out_of_bounds_are_refused(admin):
    for name, fragment in (("two\r\nlines", "control character"), ("nul\x00", "NUL character"),
                           ("x" * 10_000, "at most 200"), ("   ", "non-empty")):
        refused(upload_project(admin, name, [PAIRWISE_RECORDS[0]], filename="p.jsonl"), "project name", fragment)
    for option, value in (("overlap", 10**12), ("overlap", 0), ("rating_scale", 10**12), ("gold_rate", "nan"),
                          ("guidelines", "g" * 200_001), ("guidelines", "\x00")):
        refused(upload_project(admin, "options", [PAIRWISE_RECORDS[0]], **{option: value}), option.split("_")[0])
    assert admin.get("/api/admin/projects/1/stats").status_code == 404


def test_every_site_setting_is_bounded(admin, annotator):
    for name, value in (("daily_cap_minutes", "1e-300"), ("daily_cap_minutes", "1e400"), ("break_minutes", "nan"),
                        ("break_after_minutes", "0.001"), ("daily_sensitive_cap_minutes", "-5"),
                        ("too_fast_seconds", "1e308"), ("daily_cap_minutes", "\x00")):
        refused(admin.post("/api/admin/settings", json={name: value}), f"field '{name}'")
    refused(admin.post("/api/admin/settings", json={"wellbeing_url": "https://x.org/" + "a" * 600}),
            "field 'wellbeing_url'")
    refused(admin.post("/api/admin/settings", json={"wellbeing_url": "https://x.org/\r\nSet-Cookie: a"}),
            "field 'wellbeing_url'")
    assert annotator.get("/api/me/welfare").json()["limits"]["daily_cap_minutes"] == 360.0
    assert admin.post("/api/admin/settings", json={"daily_cap_minutes": "480"}).status_code == 200


def test_an_export_of_a_non_ascii_project_name_names_the_file_by_rfc_5987(admin):
    name = "日本語 проект 🚀"
    project = upload_project(admin, name, [PAIRWISE_RECORDS[0]]).json()["project_id"]
    response = admin.get(f"/api/admin/projects/{project}/export/preferences")
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    disposition.encode("ascii")  # a header is ASCII
    fallback, extended = disposition.split("; ")[1:]
    assert fallback.startswith('filename="') and fallback.endswith('-preferences.jsonl"')
    assert extended.startswith("filename*=UTF-8''")
    assert unquote(extended.removeprefix("filename*=UTF-8''")) == f"{name}-preferences.jsonl"
