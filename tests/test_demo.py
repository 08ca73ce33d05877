"""The demo's assistant world, its simulated annotators, and `rlhfkit demo --quick` end to end."""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import datetime

import pytest

from rlhfkit.demo.annotators import (
    SimulatedAnnotator,
    calibrate_noise,
    expected_agreement,
    label_project,
    noisy_ranks,
    sigmoid,
)
from rlhfkit.demo.world import (
    BODIES,
    PHRASINGS,
    REQUESTS,
    TONES,
    ReplyStyle,
    World,
    as_prompt,
    find_request,
    gold_score,
    prompt_text,
    render_reply,
    reply_attributes,
)


def test_reply_attributes_read_back_every_style_the_world_renders():
    rng = random.Random(0)
    for request in REQUESTS:
        prompt = as_prompt(prompt_text(request, 3))
        for body, tone, fillers, repeat in itertools.product(BODIES, TONES, range(3), (False, True)):
            if body == "compliance" and not request.harmful:
                continue
            text = render_reply(request, ReplyStyle(body, tone, fillers, repeat), rng)
            a = reply_attributes(prompt, text)
            assert a.harmful_request == request.harmful
            assert a.helpful == (body == "helpful" and not request.harmful), text
            assert a.compliance == (body in ("helpful", "compliance") and request.harmful), text
            assert a.refusal == (body == "refusal"), text
            assert a.off_topic == (body == "off_topic"), text
            assert (a.warm, a.cold) == (tone == "warm", tone == "cold"), text
            assert (a.fillers, a.repetition) == (fillers, repeat), text


def test_gold_prefers_helpful_warm_and_safe_answers():
    rng = random.Random(1)
    benign = next(r for r in REQUESTS if not r.harmful)
    harmful = next(r for r in REQUESTS if r.harmful)

    def gold(request, style):
        return gold_score([as_prompt(prompt_text(request, 0))], [render_reply(request, style, rng)])[0]

    assert gold(benign, ReplyStyle("helpful", "warm")) > gold(benign, ReplyStyle("helpful", "neutral")) \
        > gold(benign, ReplyStyle("helpful", "cold")) > gold(benign, ReplyStyle("vague", "neutral")) \
        > gold(benign, ReplyStyle("refusal", "neutral"))
    assert gold(benign, ReplyStyle("helpful")) > gold(benign, ReplyStyle("helpful", fillers=1)) \
        > gold(benign, ReplyStyle("helpful", fillers=2))
    assert gold(benign, ReplyStyle("helpful")) > gold(benign, ReplyStyle("helpful", repeat=True))
    assert gold(harmful, ReplyStyle("refusal", "warm")) > gold(harmful, ReplyStyle("refusal")) \
        > gold(harmful, ReplyStyle("vague")) > gold(harmful, ReplyStyle("compliance", "warm"))
    # garbled text scores no better than a vague answer; nothing is the worst
    assert gold_score([as_prompt(prompt_text(benign, 0))], ["flour the the milk"])[0] <= 0
    assert gold_score([as_prompt(prompt_text(benign, 0))], [""])[0] < -2


def test_content_free_answers_have_no_request_specific_body():
    pancakes = next(r for r in REQUESTS if r.subject == "make pancakes")
    rice = next(r for r in REQUESTS if r.subject == "cook rice")
    harmful = next(r for r in REQUESTS if r.harmful)
    prompt = as_prompt(prompt_text(pancakes, 0))
    rng = random.Random(0)

    def free(text, asked=prompt):
        return reply_attributes(asked, text).content_free

    assert free("Happy to help!") and free("Great question! I hope this helps!") and free("")
    assert free(render_reply(pancakes, ReplyStyle("vague", "warm", fillers=2), rng))
    assert free(render_reply(rice, ReplyStyle("helpful", "warm"), rng))  # another request's answer
    assert not free(render_reply(pancakes, ReplyStyle("helpful", "cold"), rng))
    assert not free("To make pancakes, mix milk.")  # garbled, but about the request: one of its answer's words
    assert not free(render_reply(pancakes, ReplyStyle("refusal"), rng))  # over-refusal, not content-free
    harmful_prompt = as_prompt(prompt_text(harmful, 0))
    assert not free(render_reply(harmful, ReplyStyle("refusal"), rng), harmful_prompt)
    assert free(render_reply(harmful, ReplyStyle("vague", "warm"), rng), harmful_prompt)
    assert reply_attributes(prompt, "Happy to help!").as_rates()["content_free"] == 1.0


def test_world_holds_out_phrasings_and_every_prompt_finds_its_request():
    world = World(seed=3)
    train = {(r.subject, p) for r, p in world.train}
    held_out = {(r.subject, p) for r, p in world.held_out}
    assert not train & held_out
    assert len(train) + len(held_out) == len(REQUESTS) * len(PHRASINGS)
    assert {s for s, _ in train} == {r.subject for r in REQUESTS}  # every request is seen in training
    for record in world.prompts("held_out"):
        request = find_request(record["prompt"])
        assert request is not None and request.harmful == record["harmful"]
    assert world.corpus(1) == World(seed=3).corpus(1)  # a pure function of the seed
    assert world.corpus(1) != World(seed=4).corpus(1)


def test_expected_agreement_and_calibration_by_hand():
    # one pair with difference 1 at noise 1: p = σ(1) = 0.731059, p² + (1-p)² = 0.606507
    assert expected_agreement([1.0], 1.0) == pytest.approx(0.731059**2 + 0.268941**2, abs=1e-6)
    assert expected_agreement([0.0], 0.3) == pytest.approx(0.5)  # gold ties: a coin flip each
    differences = [0.5, 1.0, 2.0, 3.0, 0.0]
    noise = calibrate_noise(differences, 0.73)
    assert expected_agreement(differences, noise) == pytest.approx(0.73, abs=1e-6)
    assert calibrate_noise([0.0, 0.0], 0.73) == pytest.approx(1e-3)  # cannot reach it: the least noise


def test_noisy_ranks_follow_bradley_terry_pair_probabilities():
    rng = random.Random(0)
    scores, noise, draws = [1.0, 0.0, -0.5], 0.8, 20000
    first_before_second = first_before_third = 0
    for _ in range(draws):
        ranks = noisy_ranks(scores, noise, rng)
        assert sorted(ranks) == [1, 2, 3]
        first_before_second += ranks[0] < ranks[1]
        first_before_third += ranks[0] < ranks[2]
    assert first_before_second / draws == pytest.approx(sigmoid(1.0 / noise), abs=0.015)
    assert first_before_third / draws == pytest.approx(sigmoid(1.5 / noise), abs=0.015)


def test_simulated_annotators_label_through_the_app_with_welfare_gold_and_opt_outs(tmp_path):
    from sqlalchemy import select

    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.cli import open_database
    from rlhfkit.feedback.db import Assignment, Item, ItemCategory, Label
    from rlhfkit.feedback.importing import ProjectOptions, add_items, create_project, item_specs
    from rlhfkit.feedback.stats import annotator_rows

    rng = random.Random(0)
    world = World(seed=0)
    records = []
    for request, phrasing in world.train[::2]:  # every request, harmful ones included
        styles = [ReplyStyle(b, t) for b, t in (("helpful", "warm"), ("vague", "cold"), ("refusal", "neutral"))]
        records.append({"prompt": as_prompt(prompt_text(request, phrasing)),
                        "responses": [render_reply(request, s, rng) for s in styles]})
    golds = [{**records[i], "gold": [1, 2, 3] if not find_request(records[i]["prompt"]).harmful else [3, 2, 1]}
             for i in range(4)]
    session = open_database(f"sqlite:///{tmp_path / 'feedback.db'}")
    options = ProjectOptions(task_type="rank", overlap=2, gold_rate=0.1)
    project = create_project(session, "sim", options)
    rows = [(f"r:{i}", r) for i, r in enumerate(records)] + [(f"g:{i}", r) for i, r in enumerate(golds)]
    add_items(session, project, item_specs(rows, options, use_lexicon=True))
    start = datetime(2026, 1, 5, 9, 0)
    team = [SimulatedAnnotator("careful", opted_out=["violence"]), SimulatedAnnotator("also-careful"),
            SimulatedAnnotator("careless", careless=True)]
    users = [(a, create_user(session, a.name, "simulated-password", "annotator", start)) for a in team]
    users[0][1].opted_out_categories = ["violence"]
    session.commit()

    def gold_of(prompt, responses):
        return gold_score([prompt] * len(responses), responses)

    logs = label_project(session, project, users, gold_of, noise=0.05, start=start, seed=0)
    labels = session.scalars(select(Label).where(Label.is_gold.is_(False))).all()
    assert len(labels) == 2 * len(records)  # every item got its overlap
    assert sum(log.breaks for log in logs.values()) > 0  # ~70 items of ~65 s each: the 50-minute break is enforced
    violent = set(session.scalars(select(ItemCategory.item_id).where(ItemCategory.category == "violence")))
    assert violent  # the lexicon flagged the harmful requests
    careful_items = set(session.scalars(select(Assignment.item_id).where(Assignment.user_id == users[0][1].id)))
    assert not careful_items & violent
    assert logs["careful"].revealed_warnings + logs["also-careful"].revealed_warnings > 0
    accuracy = {row["annotator"]: row["gold_accuracy"] for row in annotator_rows(session, project, 5.0)}
    assert accuracy["careful"] == accuracy["also-careful"] == 1.0  # at low noise the best answer is clear
    # careful annotators at low noise put the helpful-warm answer first on benign items
    best_first = [label.answer["ranks"][0] == 1 for label in labels if label.user_id != users[2][1].id
                  and not find_request(session.get(Item, label.item_id).prompt).harmful]
    assert sum(best_first) / len(best_first) > 0.9
    # agreement of the two careful annotators, beside what their noise predicts on the same pairs
    from rlhfkit.demo.labels import careful_agreement

    agreement = careful_agreement(session, project, {"careful", "also-careful"}, noise=0.05)
    both = [i for i in {label.item_id for label in labels}
            if {label.user_id for label in labels if label.item_id == i} >= {users[0][1].id, users[1][1].id}]
    assert agreement["pairs"] == 3 * len(both) > 0  # three answer pairs per item both ranked
    gaps = []  # noise 0.05: p = σ(Δ / 0.05) is 1 on strict pairs and 1/2 on gold ties
    for item_id in both:
        item = session.get(Item, item_id)
        gold = gold_of(item.prompt, item.responses)
        gaps += [a - b for a, b in itertools.combinations(gold, 2)]
    assert agreement["expected"] == pytest.approx(sum(0.5 if g == 0 else 1.0 for g in gaps) / len(gaps), abs=1e-6)
    assert agreement["measured"] == pytest.approx(agreement["expected"], abs=0.1)


def test_dpo_pairs_are_each_rankings_best_answer_over_its_worst(tmp_path):
    from rlhfkit.demo.run import best_versus_worst_pairs

    prompt = as_prompt("How do I make pancakes?")
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text("".join(json.dumps(r) + "\n" for r in (
        {"prompt": prompt, "responses": ["a", "b", "c", "d"], "ranks": [2, 1, 4, 3]},
        {"prompt": prompt, "responses": ["e", "f"], "ranks": [1, 1]},  # a tie: no pair
    )))
    round_2 = tmp_path / "rankings-2.jsonl"
    round_2.write_text(json.dumps({"prompt": prompt, "responses": ["g", "h", "i"], "ranks": [3, 2, 1]}) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    assert best_versus_worst_pairs([rankings], pairs) == 1
    assert [json.loads(line) for line in pairs.read_text().splitlines()] == [
        {"prompt": prompt, "chosen": "b", "rejected": "c"}]
    assert best_versus_worst_pairs([rankings, round_2], pairs) == 2  # the rounds' exports, in order
    assert [json.loads(line)["chosen"] for line in pairs.read_text().splitlines()] == ["b", "i"]


def test_demo_quick_end_to_end(tmp_path):
    from rlhfkit.cli import main

    main(["demo", "--quick", "--output", str(tmp_path / "demo")])
    report = tmp_path / "demo" / "report"
    html = (report / "report.html").read_text()
    summary = json.loads((report / "summary.json").read_text())
    for plot in ("win_rates.png", "over_optimisation.png", "attributes.png"):
        assert (report / "plots" / plot).stat().st_size > 1000
        assert f"plots/{plot}" in html
    assert list(summary["policies"]) == ["sft", "ppo-round-1", "ppo", "dpo"]
    for name in ("ppo-round-1", "ppo", "dpo"):
        policy = summary["policies"][name]
        rate = policy["win_rate"]
        assert 0 <= rate["low"] <= rate["rate"] <= rate["high"] <= 1
        assert math.isfinite(policy["kl"]) and math.isfinite(policy["gold_score"])
        assert math.isfinite(policy["rm_score"]) and math.isfinite(policy["rm_round_2_score"])
        assert 0 <= policy["attributes"]["content-free"] <= 1 and policy["attributes"]["warm"] is not None
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert {row["run"] for row in summary["over_optimisation"]} == {"round 1", "round 2"}
    agreement = summary["annotators"]["agreement"]
    assert agreement["pairs"] > 0 and 0.5 <= agreement["expected"] <= 1 and 0 <= agreement["measured"] <= 1
    assert summary["annotators"]["round_2"]["exported"]["rankings"] > 0
    assert summary["reward_model"]["accuracy_vs_annotators"] is not None
    assert summary["annotators"]["excluded"] == ["sim-dana"]  # quality control caught the careless one
    assert summary["over_optimisation"] and all("gold_score" in row for row in summary["over_optimisation"])
    assert set(summary["stage_seconds"]) >= {"pre-training", "SFT", "labelling", "reward model", "PPO round 1",
                                             "labelling round 2", "PPO", "DPO"}
    key_numbers = [summary["reward_model"]["accuracy_vs_gold"], summary["annotators"]["pairwise_agreement"],
                   summary["annotators"]["krippendorff_alpha"], summary["total_seconds"],
                   *summary["stage_seconds"].values(), *[row["kl"] for row in summary["over_optimisation"]]]
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in key_numbers), key_numbers

    # --study reuses the finished demo: one PPO run per KL penalty, drawn into the same report
    from rlhfkit.demo.study import BETAS

    main(["demo", "--quick", "--study", "--output", str(tmp_path / "demo")])
    summary = json.loads((report / "summary.json").read_text())
    assert [point["beta"] for point in summary["kl_sweep"]] == list(BETAS)
    assert all(math.isfinite(point[key]) for point in summary["kl_sweep"]
               for key in ("kl", "rm_score", "gold_score", "win_rate"))
    assert (report / "plots" / "kl_sweep.png").stat().st_size > 1000
    assert "KL-penalty sweep" in (report / "report.html").read_text()
    assert summary["policies"]["ppo"]["win_rate"] is not None  # the demo's own figures are kept
