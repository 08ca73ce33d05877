"""Races on one item or one annotator, each on SQLite and on a real PostgreSQL server (ARCHITECTURE.md rule 16).

Each test holds one transaction open at the moment that matters (a label being saved, a request in
flight) and sends the competing request from another thread, with its own session, as two web
requests would. The load test (test_feedback_load.py) covers the same races by weight of numbers.
"""

from __future__ import annotations

import threading
import time

from feedback_helpers import add_user
from sqlalchemy import func, select

from rlhfkit.feedback import services
from rlhfkit.feedback.assignment import FeedbackError
from rlhfkit.feedback.db import Assignment, Item, Label, User
from rlhfkit.feedback.importing import ItemSpec, ProjectOptions, add_items, create_project
from rlhfkit.feedback.membership import set_member


def one_item_project(app, overlap: int, annotators: int) -> list[int]:
    """A pairwise project (id 1) of one item and the annotators' ids."""
    users = [add_user(app, f"annotator{i}") for i in range(annotators)]
    with app.state.sessions() as session:
        project = create_project(session, "race", ProjectOptions(task_type="pairwise", overlap=overlap))
        add_items(session, project, [ItemSpec("Which is kinder?", ["Thanks!", "Go away."], "race:1")])
        for user_id in users:
            set_member(session, project, session.get(User, user_id), "annotator", None, app.state.clock())
        session.commit()
    return users


def in_thread(app, work) -> tuple[threading.Thread, dict]:
    """Run ``work(session)`` in a new thread with its own session, committing after it; its result or error."""
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


def take(app, user_id: int) -> dict:
    with app.state.sessions() as session:
        task = services.next_task(session, 1, session.get(User, user_id), app.state.clock())
        session.commit()
        return task


def counters(app) -> tuple[int, int, int]:
    with app.state.sessions() as session:
        item = session.scalars(select(Item)).one()
        return item.claimed_count, item.done_count, session.scalar(select(func.count(Label.id)))


def test_a_label_being_saved_does_not_hide_the_item_from_the_next_annotator(any_db_app):
    """While a label is saved its item is locked; another annotator waits for it, not "no more items"."""
    first, second = one_item_project(any_db_app, overlap=2, annotators=2)
    assignment_id = take(any_db_app, first)["task"]["assignment_id"]
    with any_db_app.state.sessions() as saving:
        services.label_task(saving, assignment_id, saving.get(User, first), {"choice": "A"},
                            any_db_app.state.clock())
        thread, outcome = in_thread(any_db_app, lambda s: services.next_task(s, 1, s.get(User, second),
                                                                            any_db_app.state.clock()))
        time.sleep(0.3)  # the other request runs into the locked item (SQLite: the locked database)
        saving.commit()
    thread.join(timeout=30)
    assert "error" not in outcome and outcome["result"]["task"] is not None
    assert counters(any_db_app) == (2, 1, 1)


def test_a_label_sent_twice_at_once_is_stored_once(any_db_app):
    (user,) = one_item_project(any_db_app, overlap=1, annotators=1)
    assignment_id = take(any_db_app, user)["task"]["assignment_id"]
    start = threading.Barrier(2)

    def label(session):
        start.wait()
        return services.label_task(session, assignment_id, session.get(User, user), {"choice": "B"},
                                   any_db_app.state.clock()).id

    runs = [in_thread(any_db_app, label) for _ in range(2)]
    for thread, _ in runs:
        thread.join(timeout=30)
    outcomes = sorted((outcome for _, outcome in runs), key=lambda o: "error" in o)
    assert "result" in outcomes[0] and outcomes[1]["error"].code == "already_done"
    assert counters(any_db_app) == (1, 1, 1)


def test_a_skip_racing_a_label_of_the_same_assignment_leaves_one_of_them(any_db_app):
    first, second = one_item_project(any_db_app, overlap=1, annotators=2)
    assignment_id = take(any_db_app, first)["task"]["assignment_id"]
    start = threading.Barrier(2)
    now = any_db_app.state.clock()

    def label(session):
        start.wait()
        return services.label_task(session, assignment_id, session.get(User, first), {"choice": "A"}, now)

    def skip(session):
        start.wait()
        return services.skip_task(session, assignment_id, session.get(User, first), now)

    runs = [in_thread(any_db_app, label), in_thread(any_db_app, skip)]
    for thread, _ in runs:
        thread.join(timeout=30)
    errors = [outcome["error"].code for _, outcome in runs if "error" in outcome]
    assert len(errors) == 1 and errors[0] in ("already_done", "already_skipped")
    claimed, done, labels = counters(any_db_app)
    label_won = errors[0] == "already_done"  # the skip came second
    assert (claimed, done, labels) == ((1, 1, 1) if label_won else (0, 0, 0))
    assert (take(any_db_app, second)["task"] is None) == label_won


def test_one_annotator_asking_twice_at_once_gets_one_assignment(any_db_app):
    (user,) = one_item_project(any_db_app, overlap=1, annotators=1)
    with any_db_app.state.sessions() as session:
        add_items(session, session.get(services.Project, 1), [ItemSpec("Another?", ["Yes.", "No."], "race:2")])
        session.commit()
    start = threading.Barrier(2)

    def ask(session):
        start.wait()
        return services.next_task(session, 1, session.get(User, user), any_db_app.state.clock())["task"]

    runs = [in_thread(any_db_app, ask) for _ in range(2)]
    for thread, _ in runs:
        thread.join(timeout=30)
    assert {outcome["result"]["assignment_id"] for _, outcome in runs} == {1}
    with any_db_app.state.sessions() as session:
        assert session.scalar(select(func.count(Assignment.id))) == 1
