"""Welfare limits: the pure rules, and the API refusing work past a break or a cap (with a moved clock)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from feedback_helpers import add_user, api_client, upload_project

from rlhfkit.feedback.welfare import WelfareLimits, WorkInterval, assignment_intervals, welfare_status

T0 = datetime(2025, 3, 3, 9, 0, 0)


def minutes(start: float, end: float, sensitive: bool = False) -> WorkInterval:
    return WorkInterval(T0 + timedelta(minutes=start), T0 + timedelta(minutes=end), sensitive)


def test_a_stretch_of_50_minutes_requires_a_10_minute_break():
    limits = WelfareLimits()
    # items of 4 minutes with 1-minute pauses: the stretch spans 0..49 after ten items
    work = [minutes(5 * i, 5 * i + 4) for i in range(10)]
    status = welfare_status(work, T0 + timedelta(minutes=49.5), limits)
    assert status.may_work and status.stretch_minutes == pytest.approx(49)
    work.append(minutes(50, 51))
    status = welfare_status(work, T0 + timedelta(minutes=51), limits)
    assert status.reason == "break" and status.resume_at == T0 + timedelta(minutes=61)
    assert "resume at 10:01 UTC" in status.message()
    assert welfare_status(work, T0 + timedelta(minutes=60, seconds=59), limits).reason == "break"
    assert welfare_status(work, T0 + timedelta(minutes=61), limits).may_work  # the pause ended the stretch


def test_pauses_shorter_than_the_break_do_not_reset_the_stretch():
    limits = WelfareLimits(break_after_minutes=50, break_minutes=10)
    work = [minutes(0, 20), minutes(29, 40), minutes(49, 52)]  # 9-minute pauses: one stretch of 52 minutes
    assert welfare_status(work, T0 + timedelta(minutes=53), limits).reason == "break"
    work = [minutes(0, 20), minutes(30, 40), minutes(49, 52)]  # a 10-minute pause: the stretch starts at 30
    status = welfare_status(work, T0 + timedelta(minutes=53), limits)
    assert status.may_work and status.stretch_minutes == pytest.approx(22)


def test_daily_caps_count_the_utc_day_and_overlapping_work_once():
    limits = WelfareLimits(break_after_minutes=1000, daily_cap_minutes=60, daily_sensitive_cap_minutes=20)
    work = [minutes(0, 30), minutes(20, 40), minutes(100, 120, sensitive=True), minutes(100, 120)]
    status = welfare_status(work, T0 + timedelta(minutes=121), limits)
    assert status.reason == "daily_cap" and status.worked_today_minutes == pytest.approx(60)
    assert status.resume_at == datetime(2025, 3, 4) and not status.sensitive_allowed
    yesterday = [WorkInterval(T0 - timedelta(days=1), T0 - timedelta(hours=20), True)]
    assert welfare_status(yesterday, T0, limits).may_work and welfare_status(yesterday, T0, limits).sensitive_allowed


def test_an_item_left_open_counts_at_most_20_minutes_and_sensitive_time_starts_at_reveal():
    intervals = assignment_intervals(T0, T0 + timedelta(minutes=2), T0 + timedelta(hours=3), sensitive=True)
    assert [(i.end - i.start, i.sensitive) for i in intervals] == [(timedelta(minutes=20), False),
                                                                   (timedelta(minutes=20), True)]
    intervals = assignment_intervals(T0, T0 + timedelta(minutes=2), T0 + timedelta(minutes=5), sensitive=True)
    assert [i.end - i.start for i in intervals] == [timedelta(minutes=5), timedelta(minutes=3)]


# ---------------------------------------------------------------- enforced by the API


@pytest.fixture
def annotator(app):
    add_user(app, "admin", "admin")
    add_user(app, "ann")
    return api_client(app, "admin"), api_client(app, "ann")


def work_one(client, project_id: int, clock, minutes_per_item: float) -> dict:
    task = client.post(f"/api/projects/{project_id}/next").json()["task"]
    if not task["revealed"]:
        assert client.post(f"/api/assignments/{task['assignment_id']}/reveal").status_code == 200
    clock.advance(minutes=minutes_per_item)
    response = client.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"})
    assert response.status_code == 200, response.text
    return task


def test_the_api_refuses_work_after_50_minutes_until_the_break_is_over(app, clock, annotator):
    admin, ann = annotator
    records = [{"prompt": f"question {i}", "responses": ["a", "b"]} for i in range(30)]
    project_id = upload_project(admin, "long", records, members=["ann"]).json()["project_id"]
    for _ in range(10):  # 10 items of 5 minutes, back to back: a 50-minute stretch
        work_one(ann, project_id, clock, 5)
    refused = ann.post(f"/api/projects/{project_id}/next")
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"] == "break" and body["resume_at"] == "2025-03-03T10:00:00Z"
    assert "break" in body["detail"] and int(refused.headers["retry-after"]) == 600
    assert ann.get("/api/me/welfare").json()["reason"] == "break"
    clock.advance(minutes=9)
    assert ann.post(f"/api/projects/{project_id}/next").status_code == 429
    clock.advance(minutes=1)
    assert ann.post(f"/api/projects/{project_id}/next").status_code == 200


def test_the_api_enforces_the_daily_cap_and_admins_set_the_limits(app, clock, annotator):
    admin, ann = annotator
    settings = {"daily_cap_minutes": 30, "break_after_minutes": 600, "wellbeing_url": "https://example.org/care"}
    assert admin.post("/api/admin/settings", json=settings).status_code == 200
    assert admin.post("/api/admin/settings", json={"daily_cap_minutes": -5}).status_code == 422
    assert admin.post("/api/admin/settings", json={"wellbeing_url": "javascript:alert(1)"}).status_code == 422
    assert ann.post("/api/admin/settings", json={"daily_cap_minutes": 9999}).status_code == 403
    records = [{"prompt": f"question {i}", "responses": ["a", "b"]} for i in range(10)]
    project_id = upload_project(admin, "capped", records, members=["ann"]).json()["project_id"]
    for _ in range(3):
        work_one(ann, project_id, clock, 10)
    refused = ann.post(f"/api/projects/{project_id}/next")
    assert refused.status_code == 429
    assert refused.json()["error"] == "daily_cap" and refused.json()["resume_at"] == "2025-03-04T00:00:00Z"
    assert refused.json()["wellbeing_url"] == "https://example.org/care"
    exposure = {row["annotator"]: row for row in admin.get("/api/admin/exposure").json()["annotators"]}
    assert exposure["ann"]["worked_today_minutes"] == 30 and exposure["ann"]["status"] == "daily_cap"
    clock.now = datetime(2025, 3, 4, 8, 0)
    assert ann.post(f"/api/projects/{project_id}/next").status_code == 200


def test_the_sensitive_cap_stops_sensitive_items_but_not_others(app, clock, annotator):
    admin, ann = annotator
    admin.post("/api/admin/settings", json={"daily_sensitive_cap_minutes": 10, "break_after_minutes": 600})
    records = [{"prompt": f"How do I steal car number {i}?", "responses": ["No.", "Sure."]} for i in range(3)]
    records.append({"prompt": "What is the weather like?", "responses": ["Sunny.", "Rainy."]})
    project_id = upload_project(admin, "mixed", records, members=["ann"]).json()["project_id"]
    first = work_one(ann, project_id, clock, 10)  # 10 minutes with a revealed sensitive item
    assert first["sensitive"]
    held = ann.post(f"/api/projects/{project_id}/next").json()["task"]
    assert held["prompt"] == "What is the weather like?"  # past the cap, only the harmless item comes
    ann.post(f"/api/assignments/{held['assignment_id']}/label", json={"choice": "B"})
    refused = ann.post(f"/api/projects/{project_id}/next")
    assert refused.status_code == 429 and refused.json()["error"] == "sensitive_cap"
    exposure = {row["annotator"]: row for row in admin.get("/api/admin/exposure").json()["annotators"]}
    assert exposure["ann"]["sensitive_today_minutes"] == 10 and exposure["ann"]["sensitive_items_revealed"] == 1


def test_a_task_under_way_can_be_finished_and_skips_cost_nothing(app, clock, annotator):
    admin, ann = annotator
    admin.post("/api/admin/settings", json={"break_after_minutes": 20})
    records = [{"prompt": f"q{i}", "responses": ["a", "b"]} for i in range(5)]
    project_id = upload_project(admin, "underway", records, members=["ann"]).json()["project_id"]
    task = ann.post(f"/api/projects/{project_id}/next").json()["task"]
    clock.advance(minutes=19)
    assert ann.post(f"/api/assignments/{task['assignment_id']}/skip").status_code == 200
    task = ann.post(f"/api/projects/{project_id}/next").json()["task"]  # 19 minutes < 20: still allowed
    clock.advance(minutes=5)
    assert ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"}).status_code == 200
    assert ann.post(f"/api/projects/{project_id}/next").status_code == 429
    row = admin.get(f"/api/admin/projects/{project_id}/stats").json()["annotators"][0]
    assert row["labels"] == 1 and row["skips"] == 1 and row["too_fast"] == 0
