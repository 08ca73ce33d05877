"""End to end in headless Chromium (Debian's chromium, driven by Playwright): the pages as people use them.

Skipped when chromium or the playwright package is missing (``.ci/run`` installs chromium).
"""

from __future__ import annotations

import json
import shutil

import pytest
from feedback_helpers import PASSWORD, add_user, api_client, upload_project, write_jsonl
from sqlalchemy import select

from rlhfkit.feedback.db import Assignment, Label

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]

TIMEOUT_MS = 15000


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    opened.errors = errors
    yield opened
    context.close()


def log_in(page, server, username: str, password: str = PASSWORD) -> None:
    page.goto(server.url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("#login-button")
    page.wait_for_url(server.url + "/")


def open_project(page, server, project_id: int) -> None:
    page.goto(f"{server.url}/projects/{project_id}")


def labels_of(app) -> list[Label]:
    with app.state.sessions() as session:
        return session.scalars(select(Label).order_by(Label.id)).all()


@pytest.fixture
def admin(app):
    add_user(app, "admin", "admin")
    add_user(app, "ann")
    return api_client(app, "admin")


def test_log_in_and_label_a_pairwise_item_with_the_keyboard(app, admin, live_server, page):
    records = [{"prompt": "What is the capital of Peru?", "responses": ["Lima. " * 200, "Cusco."]}]
    project_id = upload_project(admin, "peru", records, guidelines="Prefer **correct** answers.",
                                members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    page.click(f"a[href='/projects/{project_id}']")
    page.wait_for_selector("#screen-task:not([hidden])")
    assert page.text_content("#prompt") == "What is the capital of Peru?"
    assert page.inner_html(".guidelines p").startswith("Prefer <strong>correct</strong>")
    cards = page.locator("#responses .response")
    assert cards.count() == 2
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert second["x"] > first["x"] + 100 and abs(second["y"] - first["y"]) < 5  # side by side
    page.keyboard.press("2")
    assert "selected" in page.get_attribute("#responses .response[data-index='1']", "class")
    page.keyboard.press("Enter")
    page.wait_for_selector("#screen-done:not([hidden])")
    assert "1 labelled" in page.text_content("#progress")
    [label] = labels_of(app)
    assert label.answer == {"choice": "B"}
    assert not page.errors


def test_rank_k_by_keyboard(app, admin, live_server, page):
    records = [{"prompt": "Rank the answers.", "responses": ["first", "second", "third"]}]
    project_id = upload_project(admin, "rank", records, task_type="rank", members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    open_project(page, live_server, project_id)
    page.wait_for_selector("#screen-task:not([hidden])")
    page.keyboard.press("3")  # response 3 is best
    page.keyboard.press("1")  # then response 1; response 2 is last
    order = page.eval_on_selector_all("#responses .response", "cards => cards.map(c => c.dataset.index)")
    assert order == ["2", "0", "1"]
    page.keyboard.press("ArrowUp")  # the selected card (response 1, at place 2) moves up to place 1
    order = page.eval_on_selector_all("#responses .response", "cards => cards.map(c => c.dataset.index)")
    assert order == ["0", "2", "1"]
    page.drag_and_drop("#responses .response[data-position='2']", "#responses .response[data-position='0']")
    order = page.eval_on_selector_all("#responses .response", "cards => cards.map(c => c.dataset.index)")
    assert order == ["1", "0", "2"]  # dragged to the top
    page.keyboard.press("0")  # start the keyboard ranking again: 1, 3, 2
    for key in ("1", "3"):
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#screen-done:not([hidden])")
    [label] = labels_of(app)
    assert label.answer == {"ranks": [1, 3, 2]}
    assert not page.errors


def test_reveal_and_skip_a_warned_item(app, admin, live_server, page):
    records = [{"prompt": "How can I steal my neighbour's car?", "responses": ["I can't help with that.", "Sure."]},
               {"prompt": "How do I hurt someone and get away with it?", "responses": ["No.", "Here's how."]}]
    project_id = upload_project(admin, "warned", records, members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    open_project(page, live_server, project_id)
    page.wait_for_selector("#screen-warning:not([hidden])")
    assert page.text_content("#warning-categories") == "crime"
    assert "steal" not in page.content()  # the content is not on the page before it is revealed
    page.click("#reveal-button")
    page.wait_for_selector("#screen-task:not([hidden])")
    assert "steal" in page.text_content("#prompt")
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#screen-warning:not([hidden])")
    assert page.text_content("#warning-categories") == "crime, violence"
    page.keyboard.press("s")
    page.wait_for_selector("#screen-done:not([hidden])")
    with app.state.sessions() as session:
        statuses = session.scalars(select(Assignment.status).order_by(Assignment.id)).all()
    assert statuses == ["done", "skipped"] and len(labels_of(app)) == 1
    assert not page.errors


def test_the_break_screen_appears_and_work_resumes_after_the_break(app, admin, clock, live_server, page):
    admin.post("/api/admin/settings", json={"break_after_minutes": 5, "break_minutes": 10,
                                            "wellbeing_url": "https://example.org/support"})
    records = [{"prompt": f"question {i}", "responses": ["yes", "no"]} for i in range(3)]
    project_id = upload_project(admin, "breaks", records, members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    open_project(page, live_server, project_id)
    page.wait_for_selector("#screen-task:not([hidden])")
    clock.advance(minutes=6)  # a long first item: the stretch passes 5 minutes
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#screen-break:not([hidden])")
    assert "Time for a break" in page.text_content("#screen-break")
    assert page.get_attribute("#break-wellbeing-link", "href") == "https://example.org/support"
    page.click("#break-retry")  # still on the break
    page.wait_for_timeout(300)
    assert page.is_visible("#screen-break")
    clock.advance(minutes=10)
    page.click("#break-retry")
    page.wait_for_selector("#screen-task:not([hidden])")
    assert page.text_content("#prompt").startswith("question")
    assert not page.errors


def test_model_output_with_html_is_shown_as_text_and_never_runs(app, admin, live_server, page):
    attack_image = '<img src=x onerror="window.__xss = 1; alert(1)">'
    attack_script = "<script>window.__xss = 2; alert(2)</script>"
    records = [{"prompt": [{"role": "user", "content": "<b onmouseover=\"window.__xss=3\">hi</b>"}],
                "responses": [attack_image, attack_script]}]
    project_id = upload_project(admin, "<script>window.__xss=4</script>", records,
                                guidelines="<img src=x onerror=\"window.__xss=5\"> [x](javascript:alert(5))",
                                members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    open_project(page, live_server, project_id)
    page.wait_for_selector("#screen-task:not([hidden])")
    page.wait_for_timeout(300)  # give any injected handler the chance to fire
    assert page.text_content("#responses .response[data-index='0'] .text") == attack_image
    assert page.text_content("#responses .response[data-index='1'] .text") == attack_script
    assert page.locator("#responses img, #responses script, #prompt b, .guidelines img, .guidelines a").count() == 0
    assert "<script>window.__xss=4</script>" in page.text_content("h1")
    assert page.evaluate("window.__xss") is None
    page.goto(live_server.url + "/")  # the project list shows the name as text too
    assert page.evaluate("window.__xss") is None
    assert not page.errors  # no alert() dialog, no script error


def test_admin_uploads_exports_and_a_reward_model_trains_on_the_export(app, admin, live_server, page, tmp_path,
                                                                       tiny_model_dir):
    from rlhfkit.config import RMConfig
    from rlhfkit.train.rm import load_comparison_groups, run_rm

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": "p"}])
    prompts = ["What is the capital of Peru?", "Name a colour.", "Say hello.", "Count to three.", "Name a fruit.",
               "What is two plus two?", "Name a planet.", "Give me a greeting."]
    good = write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": prompt, "responses": [f"A helpful, polite answer to: {prompt}", "no"]} for prompt in prompts])
    log_in(page, live_server, "admin")
    page.goto(live_server.url + "/admin")
    page.fill("#new-project input[name=name]", "rm-data")
    page.set_input_files("#new-project input[name=file]", str(bad))
    page.click("#new-project button[type=submit]")
    page.wait_for_selector("#admin-error")
    error = page.text_content("#admin-error")
    assert "bad.jsonl:2" in error and "field 'responses'" in error
    assert page.locator("a", has_text="rm-data").count() == 0  # nothing was stored
    page.fill("#new-project input[name=name]", "rm-data")
    page.set_input_files("#new-project input[name=file]", str(good))
    page.select_option("#new-project select[name=task_type]", "pairwise")
    page.fill("#new-project input[name=overlap]", "2")
    page.click("#new-project button[type=submit]")
    page.wait_for_selector("#admin-notice")
    assert "8 items" in page.text_content("#admin-notice")

    add_user(app, "ann2")
    project_id = 1
    page.goto(f"{live_server.url}/admin/projects/{project_id}")  # annotators work only on their projects
    for name in ("ann", "ann2"):
        page.fill("#add-member input[name=username]", name)
        page.select_option("#add-member select[name=role]", "annotator")
        page.click("#add-member button[type=submit]")
        page.wait_for_selector("#project-notice")
        assert f"'{name}' is now annotator" in page.text_content("#project-notice")
    assert page.locator("#members td", has_text="ann2").count() == 1
    for name in ("ann", "ann2"):  # the form shuffles the answers by default: each picks the helpful one as shown
        client = api_client(app, name)
        while (task := client.post(f"/api/projects/{project_id}/next").json()["task"]) is not None:
            choice = "A" if task["responses"][0].startswith("A helpful") else "B"
            client.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": choice})

    page.goto(f"{live_server.url}/admin/projects/{project_id}")
    assert "8 of 8 items complete" in page.text_content("#project-progress")
    assert "1.000" in page.text_content("#agreement")  # both annotators always agree
    assert "random order" in page.text_content("main")
    with page.expect_download() as download_info:
        page.click("#export-preferences")
    exported = tmp_path / "preferences.jsonl"
    download_info.value.save_as(exported)
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(records) == 8 and all(r["chosen"].startswith("A helpful") for r in records)
    assert len(load_comparison_groups(str(exported))) == 8

    output = tmp_path / "rm"
    run_rm(RMConfig(model=str(tiny_model_dir), data=str(exported), output=str(output), max_steps=3, batch_size=4,
                    max_length=64, eval_split=0, save_every=0, learning_rate=1e-3, log_every=1, device="cpu"))
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.num_labels == 1
    assert not page.errors


def test_rate_by_keyboard_with_a_rationale_and_an_edit_of_the_best_answer(app, admin, live_server, page):
    records = [{"prompt": "Describe the sea.", "responses": ["The sea is blue and wide.", "Wet."]}]
    project_id = upload_project(admin, "rate", records, task_type="rating", rating_scale=5, ask_rationale="1",
                                allow_edit="1", members=["ann"]).json()["project_id"]
    log_in(page, live_server, "ann")
    open_project(page, live_server, project_id)
    page.wait_for_selector("#screen-task:not([hidden])")
    page.keyboard.press("4")  # the highlighted first answer gets 4, the highlight moves on
    page.keyboard.press("2")
    page.keyboard.press("e")  # edit the best answer: the box starts with its text
    assert page.input_value("#edited-response") == "The sea is blue and wide."
    page.fill("#edited-response", "The sea is blue, wide and deep.")
    page.fill("#rationale", "The first answer says something.")
    page.click("#submit-button")
    page.wait_for_selector("#screen-done:not([hidden])")
    [label] = labels_of(app)
    assert label.answer == {"ratings": [4, 2]}
    assert label.edited_response == "The sea is blue, wide and deep." and label.edited_index == 0
    assert label.rationale == "The first answer says something."
    assert not page.errors
