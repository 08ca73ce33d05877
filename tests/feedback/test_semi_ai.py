"""Semi-AI labelling: a function judge labels everything, its share reaches annotators, the merge prefers people."""

from __future__ import annotations

import json
import math
import random

import pytest
from feedback_helpers import PASSWORD, FakeClock, write_jsonl
from sqlalchemy import select

from rlhfkit.cli import main
from rlhfkit.config import JudgeConfig
from rlhfkit.data import DataError, load_preferences
from rlhfkit.feedback import semi_ai
from rlhfkit.feedback.assignment import next_assignment
from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.db import Item, Project, User, make_engine, make_session_factory, migrate, settings_row
from rlhfkit.feedback.labels import reveal, skip, submit_label
from rlhfkit.train.rm import load_comparison_groups

SCORES = '''
def score(prompts, responses):
    """An answer's score is its last word: 'first answer 3.0' scores 3."""
    return [float(r.rsplit(" ", 1)[1]) for r in responses]
'''

# score(A) - score(B) per record; the judge's P(A) = sigmoid(d) (position swap keeps it), confidence tanh(d / 2)
DIFFERENCES = [3.0, 0.0, 2.0, -0.5, 4.0, 1.0, 5.0, 2.5, 3.5, 6.0]
LOWEST = [1, 3, 5]  # confidences 0 (a tie), tanh(0.25), tanh(0.5)
PROMPTS = {1: "How do I kill a stuck process?"}  # the lexicon flags it: annotators see a content warning


def pair_records(differences=DIFFERENCES) -> list[dict]:
    return [{"prompt": PROMPTS.get(n, f"Question {n}?"), "responses": [f"first answer {d}", "second answer 0.0"]}
            for n, d in enumerate(differences)]


@pytest.fixture
def judge_spec(tmp_path) -> str:
    (tmp_path / "scores.py").write_text(SCORES)
    return f"{tmp_path / 'scores.py'}:score"


@pytest.fixture
def sessions(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def judge_config(spec: str, output) -> JudgeConfig:
    return JudgeConfig(judge=spec, data="unused", output=str(output / semi_ai.JUDGE_FILE))


def send(sessions, spec, data, output, **options) -> semi_ai.SendSummary:
    with sessions() as session:
        return semi_ai.send_for_review(session, judge_config(spec, output), data, output, "round1", **options)


def add_annotator(sessions, name: str, clock: FakeClock) -> None:
    with sessions() as session:
        create_user(session, name, PASSWORD, "annotator", clock())
        session.commit()


def work_through(sessions, name: str, clock: FakeClock, answer_for) -> list[int]:
    """The annotator takes every item the assignment code offers: ``answer_for(item)`` is a label
    payload, or None to skip. Returns the item ids offered, in order."""
    offered = []
    with sessions() as session:
        project = session.scalar(select(Project).where(Project.name == "round1"))
        user = session.scalar(select(User).where(User.username == name))
        settings = settings_row(session)
        while (assignment := next_assignment(session, project, user, clock(), settings)) is not None:
            offered.append(assignment.item_id)
            if assignment.revealed_at is None:  # a content warning: reveal first
                reveal(session, assignment, clock(), settings)
            clock.advance(seconds=20)
            payload = answer_for(assignment.item)
            if payload is None:
                skip(assignment, clock())
            else:
                submit_label(session, assignment, project, payload, clock())
            session.commit()
    return offered


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_send_pushes_the_least_confident_and_a_seeded_random_share_once(sessions, judge_spec, tmp_path):
    data = write_jsonl(tmp_path / "answers.jsonl", pair_records())
    output = tmp_path / "semi"
    summary = send(sessions, judge_spec, data, output, human_share=0.4, random_fraction=0.25, seed=3)
    assert (summary.task_type, summary.items, summary.target, summary.added, summary.sent) == ("pairwise", 10, 4, 4, 4)

    judged = read_jsonl(output / "judge.jsonl")
    assert [row["confidence"] for row in judged] == pytest.approx([math.tanh(abs(d) / 2) for d in DIFFERENCES])
    assert judged[3]["ranks"] == [2, 1] and judged[1]["ranks"] == [1, 1]  # B better; a tie
    assert judged[0]["source"].startswith("judge:function:") and judged[0]["location"].endswith("answers.jsonl:1")

    rest = [n for n in range(10) if n not in LOWEST]  # ceil(0.75 * 4) = 3 lowest, then 1 drawn from the rest
    drawn = random.Random(3).sample([judged[n]["key"] for n in rest], 1)
    selection = read_jsonl(output / "selection.jsonl")
    by_key = {row["key"]: row for row in selection}
    assert set(by_key) == {judged[n]["key"] for n in LOWEST} | set(drawn)
    assert [by_key[judged[n]["key"]]["reason"] for n in LOWEST] == ["low-confidence"] * 3
    assert by_key[drawn[0]]["reason"] == "random"

    with sessions() as session:  # the items are in the project with the data's prompts and answers
        items = session.scalars(select(Item).order_by(Item.position)).all()
        assert {item.id for item in items} == {row["item_id"] for row in selection}
        flagged = next(item for item in items if item.prompt == PROMPTS[1])
        assert flagged.category_names == ["violence"]

    clock = FakeClock()
    add_annotator(sessions, "ann", clock)
    offered = work_through(sessions, "ann", clock, lambda item: {"choice": "A"})
    assert sorted(offered) == sorted(row["item_id"] for row in selection)

    again = send(sessions, judge_spec, data, output, human_share=0.4, random_fraction=0.25, seed=3)
    assert (again.added, again.sent) == (0, 4)
    assert read_jsonl(output / "selection.jsonl") == selection
    with sessions() as session:
        assert len(session.scalars(select(Item)).all()) == 4
        assert semi_ai.review_progress(session, "round1", output) == semi_ai.ReviewProgress(4, 4)

    more = write_jsonl(tmp_path / "more.jsonl", pair_records() + pair_records([0.1, 7.0]))
    topped = send(sessions, judge_spec, more, output, human_share=0.4, random_fraction=0.25, seed=3)
    assert (topped.target, topped.added, topped.sent) == (5, 1, 5)  # ceil(0.4 * 12): one more low-confidence
    newest = read_jsonl(output / "selection.jsonl")[-1]
    assert newest["reason"] == "low-confidence" and newest["confidence"] == pytest.approx(math.tanh(0.05))


def test_merge_prefers_human_labels_and_reports_agreement(sessions, judge_spec, tmp_path):
    data = write_jsonl(tmp_path / "answers.jsonl", pair_records())
    output = tmp_path / "semi"
    send(sessions, judge_spec, data, output, human_share=0.4, random_fraction=0.25, seed=3)
    judged = read_jsonl(output / "judge.jsonl")
    sent = {row["item_id"]: row for row in read_jsonl(output / "selection.jsonl")}
    record_of = {row["key"]: n for n, row in enumerate(judged)}
    drawn = next(record_of[row["key"]] for row in sent.values() if row["reason"] == "random")
    # people: the judge's tie (1) gets A; the judge's B (3) gets A: a disagreement; 5 is skipped (still
    # waiting); the random item gets A, as the judge said
    answers = {1: "A", 3: "A", 5: None, drawn: "A"}

    clock = FakeClock()
    add_annotator(sessions, "ann", clock)
    with sessions() as session:
        assert semi_ai.review_progress(session, "round1", output) == semi_ai.ReviewProgress(4, 0)

    def answer(item):
        choice = answers[record_of[sent[item.id]["key"]]]
        return None if choice is None else {"choice": choice}

    work_through(sessions, "ann", clock, answer)
    with sessions() as session:
        assert semi_ai.review_progress(session, "round1", output).waiting == 1
        report = semi_ai.merge_reviews(session, "round1", output)

    merged = read_jsonl(output / "merged.jsonl")
    assert len(merged) == 10
    by_record = {record_of[row["key"]]: row for row in merged}
    assert by_record[3]["source"] == "human" and by_record[3]["chosen"] == "first answer -0.5"  # the human's order
    assert by_record[1]["source"] == "human" and by_record[1]["chosen"] == "first answer 0.0"
    assert by_record[5]["source"].startswith("judge:") and by_record[5]["chosen"] == "first answer 1.0"
    assert {n for n, row in by_record.items() if row["source"] == "human"} == {1, 3, drawn}
    assert by_record[0]["confidence"] == pytest.approx(math.tanh(1.5), abs=1e-6)
    assert len(load_preferences(output / "merged.jsonl")) == 10

    assert report == json.loads((output / "agreement.json").read_text())
    assert (report["items"], report["sent"], report["labelled"], report["waiting"]) == (10, 4, 3, 1)
    assert report["agreement"]["low-confidence"] == {"sent": 3, "labelled": 2, "pairs_compared": 2,
                                                     "pairs_agreed": 0, "agreement": 0.0}
    assert report["agreement"]["random"]["agreement"] == 1.0
    assert report["agreement"]["all"]["pairs_compared"] == 3 and report["agreement"]["all"]["pairs_agreed"] == 1
    assert report["estimated_judge_accuracy"] == pytest.approx((3 * 0.0 + 7 * 1.0) / 10)
    assert report["records"] == {"written": 10, "human": 3, "judge": 7, "left_out_human_no_preference": 0,
                                 "left_out_judge_no_preference": 0}
    assert "unbiased" in report["note"]


def test_rank_items_merge_human_rankings_and_compare_expanded_pairs(sessions, judge_spec, tmp_path):
    records = [{"prompt": f"Rank {n}", "responses": ["best 3.0", f"middle {middle}", "worst 1.0"]}
               for n, middle in enumerate([2.5, 2.4, 2.0])]
    data = write_jsonl(tmp_path / "answers.jsonl", [*records, {"prompt": "Pair", "responses": ["x 2.0", "y 0.0"]}])
    output = tmp_path / "semi"
    summary = send(sessions, judge_spec, data, output, human_share=0.5, random_fraction=0.0)
    assert (summary.task_type, summary.sent) == ("rank", 2)
    judged = read_jsonl(output / "judge.jsonl")
    # an item is as confident as its least confident pair: record 0's best and middle answers are 0.5 apart
    assert [row["confidence"] for row in judged] == pytest.approx([math.tanh(d / 2) for d in (0.5, 0.6, 1.0, 2.0)])
    assert judged[2]["ranks"] == [1, 2, 3]
    sent = {row["item_id"]: row["key"] for row in read_jsonl(output / "selection.jsonl")}
    assert set(sent.values()) == {judged[0]["key"], judged[1]["key"]}

    human = {judged[0]["key"]: [3, 2, 1], judged[1]["key"]: [1, 3, 2]}  # reversed: 0 of 3 pairs agree; 2 of 3
    clock = FakeClock()
    add_annotator(sessions, "ann", clock)
    work_through(sessions, "ann", clock, lambda item: {"ranks": human[sent[item.id]]})
    with sessions() as session:
        report = semi_ai.merge_reviews(session, "round1", output)

    rankings = {row["key"]: row for row in read_jsonl(output / "merged.jsonl")}
    assert rankings[judged[0]["key"]]["ranks"] == [3, 2, 1] and rankings[judged[0]["key"]]["source"] == "human"
    assert rankings[judged[2]["key"]]["ranks"] == [1, 2, 3] and rankings[judged[2]["key"]]["source"] != "human"
    assert rankings[judged[3]["key"]]["chosen"] == "x 2.0"
    assert len(load_preferences(output / "merged.jsonl")) == 3 * 3 + 1  # rankings expanded, and the pair
    assert len(load_comparison_groups(str(output / "merged.jsonl"))) == 4
    assert report["agreement"]["low-confidence"]["pairs_compared"] == 6
    assert report["agreement"]["low-confidence"]["pairs_agreed"] == 2


def test_cli_sends_shows_progress_and_merges(sessions, judge_spec, tmp_path, db_url, capsys):
    data = write_jsonl(tmp_path / "answers.jsonl", pair_records())
    output = tmp_path / "semi"
    common = ["--db", db_url, "--project", "round1", "--output", str(output)]
    main(["label", "semi-ai", "send", *common, "--judge", judge_spec, "--data", str(data),
          "--human-share", "0.3", "--random-fraction", "0", "--no-swap"])
    selection = read_jsonl(output / "selection.jsonl")
    assert [row["reason"] for row in selection] == ["low-confidence"] * 3

    clock = FakeClock()
    add_annotator(sessions, "ann", clock)
    work_through(sessions, "ann", clock, lambda item: {"choice": "B"})
    main(["label", "semi-ai", "progress", *common])
    main(["label", "semi-ai", "merge", *common])
    err = " ".join(capsys.readouterr().err.split())
    assert "3 of 3 sent items labelled" in err and "Judge–human agreement" in err
    pairs = load_preferences(output / "merged.jsonl")
    assert sum(pair.source == "human" for pair in pairs) == 3 and len(pairs) == 10
    # people said B on records 1 (the judge: a tie), 3 (the judge: B) and 5 (the judge: A)
    assert json.loads((output / "agreement.json").read_text())["agreement"]["all"]["pairs_agreed"] == 1


def test_bad_input_names_the_file_line_and_field(sessions, judge_spec, tmp_path, db_url, capsys):
    output = tmp_path / "semi"
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        send(sessions, judge_spec, missing, output)
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair_records()[0], {"prompt": "No answers"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'responses'"):
        send(sessions, judge_spec, bad, output)
    for share, name in ((1.5, "human share"), (-0.1, "human share")):
        with pytest.raises(ValueError, match=f"{name}: expected a fraction in \\[0, 1\\], got {share}"):
            send(sessions, judge_spec, tmp_path / "unused.jsonl", output, human_share=share)
    with pytest.raises(ValueError, match="random fraction"):
        send(sessions, judge_spec, tmp_path / "unused.jsonl", output, random_fraction=2)
    with sessions() as session:
        assert session.scalars(select(Project)).all() == []  # nothing stored

    common = ["--db", db_url, "--project", "round1", "--output", str(output), "--judge", judge_spec]
    for extra, message in ((["--data", str(bad)], "bad.jsonl:2: field 'responses'"),
                           (["--data", str(missing)], "nope.jsonl: no such file"),
                           (["--data", str(bad), "--human-share", "1.5"], "human share: expected a fraction")):
        with pytest.raises(SystemExit) as exit_info:
            main(["label", "semi-ai", "send", *common, *extra])
        assert exit_info.value.code == 2
        assert message in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit):
        main(["label", "semi-ai", "merge", "--db", db_url, "--project", "round1", "--output", str(tmp_path / "x")])
    assert "run 'rlhfkit label semi-ai send'" in " ".join(capsys.readouterr().err.split())
