"""Position bias control, Krippendorff's α for pairwise projects, and item identity (issue 21).

* A shuffling project shows each assignment its own order of the responses; answers (and an edit's
  index) are mapped back to the item's order; the stats give each annotator's share of A-or-B
  choices that went to the answer shown first.
* Pairwise agreement includes Krippendorff's α (nominal), equal to the ``krippendorff`` package's.
* An imported record's ``id`` and ``metadata`` reach every export record made from it.
"""

from __future__ import annotations

import json
import random

import pytest
from feedback_helpers import add_member, add_user, api_client, upload_project

from rlhfkit.feedback.agreement import krippendorff_alpha


@pytest.fixture
def admin(app):
    add_user(app, "admin", "admin")
    return api_client(app, "admin")


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_each_assignment_shows_its_own_order_and_labels_are_stored_in_the_items_order(app, admin):
    records = [{"prompt": f"q{i}", "responses": [f"good {i}", f"bad {i}"]} for i in range(30)]
    add_user(app, "careful")
    add_user(app, "presses-a")
    project = upload_project(admin, "shuffled", records, shuffle_responses="1", overlap=2,
                             members=["careful", "presses-a"]).json()["project_id"]
    careful, presses_a = api_client(app, "careful"), api_client(app, "presses-a")
    good_shown_first = 0
    while task := careful.post(f"/api/projects/{project}/next").json()["task"]:
        first_is_good = task["responses"][0].startswith("good")
        good_shown_first += first_is_good
        careful.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A" if first_is_good else "B"})
    while task := presses_a.post(f"/api/projects/{project}/next").json()["task"]:
        presses_a.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": "A"})
    assert 0 < good_shown_first < 30  # both orders were shown (a fixed order fails this with certainty)

    labels = jsonl(admin.get(f"/api/admin/projects/{project}/export/labels?aggregate=false").text)
    careful_labels = [label for label in labels if label["annotator"] == "careful"]
    assert {label["answer"]["choice"] for label in careful_labels} == {"A"}  # "good" is response 0 of every item
    assert {tuple(label["shown_order"]) for label in careful_labels} == {(0, 1), (1, 0)}
    preferences = jsonl(admin.get(f"/api/admin/projects/{project}/export/preferences?aggregate=false").text)
    assert all(p["chosen"].startswith("good") for p in preferences if p["source"].endswith(":careful"))
    rows = {row["annotator"]: row for row in admin.get(f"/api/admin/projects/{project}/stats").json()["annotators"]}
    assert rows["careful"]["first_shown_share"] == round(good_shown_first / 30, 3)
    assert rows["presses-a"]["first_shown_share"] == 1.0  # always the first shown: position bias
    presses_a_choices = {label["answer"]["choice"] for label in labels if label["annotator"] == "presses-a"}
    assert presses_a_choices == {"A", "B"}  # ... which, mapped back, is a mix of the items' A and B


def test_ranks_ratings_and_edits_given_over_a_shuffled_order_land_on_the_right_responses(app, admin):
    records = [{"prompt": f"q{i}", "responses": ["answer 1", "answer 2", "answer 3"]} for i in range(8)]
    add_user(app, "ann")
    ranked = upload_project(admin, "ranked", records, task_type="rank", shuffle_responses="1", allow_edit="1",
                            members=["ann"])
    rated = upload_project(admin, "rated", records, task_type="rating", shuffle_responses="1", members=["ann"])
    ann = api_client(app, "ann")
    for project in (ranked.json()["project_id"], rated.json()["project_id"]):
        while task := ann.post(f"/api/projects/{project}/next").json()["task"]:
            numbers = [int(text.split()[1]) for text in task["responses"]]  # answer N is the N-th best
            body = ({"ranks": numbers, "edited_response": f"better than {task['responses'][0]}", "edited_index": 0}
                    if task["task_type"] == "rank" else {"ratings": [6 - n for n in numbers]})
            assert ann.post(f"/api/assignments/{task['assignment_id']}/label", json=body).status_code == 200
    labels = jsonl(admin.get(f"/api/admin/projects/{ranked.json()['project_id']}/export/labels").text)
    assert {tuple(label["answer"]["ranks"]) for label in labels} == {(1, 2, 3)}
    for label in labels:  # the edit was of the response shown first
        assert label["edited_response"] == f"better than {label['responses'][label['edited_index']]}"
        assert label["edited_index"] == label["shown_order"][0]
    assert len({tuple(label["shown_order"]) for label in labels}) > 1
    rated_labels = jsonl(admin.get(f"/api/admin/projects/{rated.json()['project_id']}/export/labels").text)
    assert {tuple(label["answer"]["ratings"]) for label in rated_labels} == {(5, 4, 3)}


def test_krippendorff_alpha_for_pairwise_choices_equals_the_krippendorff_package():
    krippendorff = pytest.importorskip("krippendorff")
    import numpy as np

    rng = random.Random(7)
    choices = ["A", "B", "tie", "both_bad"]
    for trial in range(20):
        annotators, items = rng.randint(2, 6), rng.randint(3, 40)
        truth = [rng.choice(choices) for _ in range(items)]
        table = [[(truth[i] if rng.random() < 0.7 else rng.choice(choices)) if rng.random() < 0.8 else None
                  for i in range(items)] for _ in range(annotators)]
        units = [[row[i] for row in table if row[i] is not None] for i in range(items)]
        data = np.array([[np.nan if v is None else choices.index(v) for v in row] for row in table], dtype=float)
        if sum(len(u) for u in units if len(u) >= 2) < 2 or len({v for u in units for v in u}) < 2:
            continue
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
        assert krippendorff_alpha(units, "nominal") == pytest.approx(expected, abs=1e-9), trial


def test_pairwise_stats_report_krippendorff_alpha(app, admin):
    krippendorff = pytest.importorskip("krippendorff")
    import numpy as np

    records = [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(6)]
    project = upload_project(admin, "agree", records, overlap=3).json()["project_id"]
    answers = {"x": "AABBAt", "y": "ABBBAt", "z": "AAB" + "b" + "Bt"}
    names = {"A": "A", "B": "B", "t": "tie", "b": "both_bad"}
    given: dict[str, list[str]] = {}
    for annotator, plan in answers.items():
        add_user(app, annotator)
        add_member(app, project, annotator)
        client = api_client(app, annotator)
        while task := client.post(f"/api/projects/{project}/next").json()["task"]:
            index = int(task["prompt"][1:])
            client.post(f"/api/assignments/{task['assignment_id']}/label", json={"choice": names[plan[index]]})
            given.setdefault(annotator, [""] * 6)[index] = names[plan[index]]
    codes = ["A", "B", "tie", "both_bad"]
    data = np.array([[codes.index(c) for c in given[a]] for a in sorted(given)], dtype=float)
    agreement = admin.get(f"/api/admin/projects/{project}/stats").json()["agreement"]
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert agreement["krippendorff_alpha_nominal"] == pytest.approx(expected, abs=1e-9)
    assert "α (nominal)" in admin.get(f"/admin/projects/{project}").text


def test_record_ids_and_metadata_reach_every_export(app, admin, tmp_path):
    meta = {"source": "red-team", "batch": 7, "tags": ["a", "b"]}
    pairs = [{"id": "r1", "metadata": meta, "prompt": "p1", "responses": ["x", "y"]},
             {"id": 2, "prompt": "p2", "responses": ["x", "y", "z"]},  # two pair items, one id
             {"prompt": "p3", "responses": ["x", "y"]}]
    add_user(app, "ann")
    project = upload_project(admin, "ids", pairs, allow_edit="1", members=["ann"]).json()["project_id"]
    ann = api_client(app, "ann")
    while task := ann.post(f"/api/projects/{project}/next").json()["task"]:
        body = {"choice": "both_bad"} if task["prompt"] == "p2" else {"choice": "A", "edited_response": "better"}
        ann.post(f"/api/assignments/{task['assignment_id']}/label", json=body)
    exported = {kind: jsonl(admin.get(f"/api/admin/projects/{project}/export/{kind}").text)
                for kind in ("preferences", "kto", "sft", "labels")}
    assert [(r.get("id"), r.get("metadata")) for r in exported["preferences"]] == [("r1", meta), (None, None)]
    assert {r["id"] for r in exported["kto"]} == {"2"} and len(exported["kto"]) == 4
    assert [r.get("id") for r in exported["sft"]] == ["r1", None]
    assert [(r["id"], r["metadata"]) for r in exported["labels"]] == [("r1", meta), ("2", None), ("2", None),
                                                                      (None, None)]
    ranked = upload_project(admin, "ids-ranked", [{"id": "k", "metadata": {"m": 1}, "prompt": "p",
                                                   "responses": ["1", "2", "3"]}], task_type="rank",
                            members=["ann"])
    task = ann.post(f"/api/projects/{ranked.json()['project_id']}/next").json()["task"]
    ann.post(f"/api/assignments/{task['assignment_id']}/label", json={"ranks": [1, 2, 3]})
    rankings = jsonl(admin.get(f"/api/admin/projects/{ranked.json()['project_id']}/export/rankings").text)
    assert [(r["id"], r["metadata"]) for r in rankings] == [("k", {"m": 1})]


def test_bad_or_repeated_record_ids_are_refused_with_line_and_field(admin):
    good = {"prompt": "p", "responses": ["a", "b"]}
    for records, fragments in (
        ([{**good, "id": "same"}, {**good, "id": "same"}], ["dup.jsonl:2", "field 'id'", "already used", ":1"]),
        ([good, {**good, "id": True}], ["dup.jsonl:2", "field 'id'", "a string or an integer"]),
        ([{**good, "id": "two\nlines"}], ["dup.jsonl:1", "field 'id'", "control character"]),
        ([{**good, "metadata": ["not", "an", "object"]}], ["dup.jsonl:1", "field 'metadata'", "an object"]),
        ([{**good, "metadata": {"note": "\ud800"}}], ["dup.jsonl:1", "field 'metadata.note'", "surrogate"]),
    ):
        text = "".join(json.dumps(r) + "\n" for r in records)
        response = upload_project(admin, "dup", text)
        assert response.status_code == 422, response.text
        for fragment in fragments:
            assert fragment in response.json()["detail"], (fragment, response.json()["detail"])


def test_an_import_into_a_project_refuses_ids_it_already_has(tmp_path, capsys):
    from rlhfkit.cli import main

    db = f"sqlite:///{tmp_path / 'f.db'}"
    first, again = tmp_path / "first.jsonl", tmp_path / "again.jsonl"
    first.write_text(json.dumps({"id": "a1", "prompt": "p", "responses": ["x", "y"]}) + "\n")
    again.write_text(json.dumps({"id": "a2", "prompt": "q", "responses": ["x", "y"]}) + "\n"
                     + json.dumps({"id": "a1", "prompt": "p", "responses": ["x", "y"]}) + "\n")
    main(["label", "import", "--db", db, "--project", "p", "--shuffle", str(first)])
    with pytest.raises(SystemExit):
        main(["label", "import", "--db", db, "--project", "p", str(again)])
    assert "again.jsonl:2: field 'id': 'a1' is already used (the project)" in capsys.readouterr().err
