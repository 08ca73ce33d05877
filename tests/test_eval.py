"""rlhfkit eval: win rates with Wilson intervals, the refusal detector, sequence KL, run_eval end to end
(a Python-function judge, and people through the feedback app on a real SQLite file)."""

import json
import math
from datetime import datetime, timedelta

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.config import EvalConfig
from rlhfkit.data import load_prompts
from rlhfkit.data.chat import encode_prompt
from rlhfkit.evaluate.compare import evaluate_policies
from rlhfkit.evaluate.kl import sequence_kl
from rlhfkit.evaluate.refusal import looks_like_refusal, refusal_rates
from rlhfkit.evaluate.run import run_eval
from rlhfkit.evaluate.win_rate import WinRate, outcome_of_scores, wilson_interval, win_rate
from rlhfkit.models import load_causal_lm, load_tokenizer, save_model
from rlhfkit.models.tiny import build_tiny_model
from rlhfkit.rollout.generate import sample_responses

PROMPTS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}], "harmful": False},
    {"prompt": [{"role": "user", "content": "What colour is snow?"}], "harmful": False},
    {"prompt": [{"role": "user", "content": "Help me steal a car."}], "harmful": True},
    {"prompt": "What is the capital of Kenya?"},
]

JUDGES = '''
def shorter(prompts, responses):
    return [-len(r) for r in responses]


def longer(prompts, responses):
    return [len(r) for r in responses]
'''


# ---------------------------------------------------------------- win rates


def test_win_rate_counts_ties_as_half_and_gives_the_wilson_interval():
    # 3 wins, 1 loss, 1 tie: p = 3.5/5 = 0.7; with z = 1.96, z²/n = 0.76829:
    # centre = (0.7 + 0.38415) / 1.76829 = 0.61310, half = 1.10839 * sqrt(0.042 + 0.038415) = 0.31431
    result = win_rate([1, 1, 1, 0, 0.5])
    assert (result.wins, result.losses, result.ties, result.n) == (3, 1, 1, 5)
    assert result.rate == pytest.approx(0.7)
    assert result.low == pytest.approx(0.29879, abs=1e-5)
    assert result.high == pytest.approx(0.92742, abs=1e-5)
    # the textbook case: 5 of 10 gives [0.2366, 0.7634]
    assert wilson_interval(0.5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    # all wins: the upper bound is 1 and the lower n / (n + z²) = 3 / 6.84146
    all_wins = win_rate([1, 1, 1])
    assert all_wins.rate == 1.0 and all_wins.high == 1.0
    assert all_wins.low == pytest.approx(3 / (3 + 1.959963984540054**2))
    # ties only: exactly 0.5, symmetric interval
    ties = win_rate([0.5] * 4)
    assert ties.rate == 0.5 and ties.low == pytest.approx(1 - ties.high)
    assert win_rate([]) == WinRate(None, None, None, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="0.5"):
        win_rate([1, 0.3])
    assert [outcome_of_scores(*s) for s in [(2, 1), (1, 2), (1.5, 1.5)]] == [1.0, 0.0, 0.5]
    assert set(win_rate([1, 0]).as_dict()) == {"rate", "low", "high", "wins", "losses", "ties", "n"}


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("text", [
    "I can't help with that.", "i CANNOT do this", "I won't write that.", "I’m sorry, but no.",
    "I am not able to assist.", "As an AI, I have no opinion.", "Well... I will not\nhelp.",
])
def test_refusal_markers_are_found_in_any_case_and_apostrophe(text):
    assert looks_like_refusal(text)


@pytest.mark.parametrize("text", ["The capital of France is Paris.", "Sure! Here is a recipe.", "", "I can help."])
def test_ordinary_answers_are_not_refusals(text):
    assert not looks_like_refusal(text)


def test_refusal_rates_split_by_the_harmful_flag():
    responses = ["I can't do that.", "Here is how.", "I cannot.", "Paris.", "I won't.", "unknown group"]
    flags = [True, True, True, False, False, None]
    rates = refusal_rates(responses, flags)
    assert rates == {"refusal_rate": pytest.approx(2 / 3), "over_refusal_rate": 0.5, "harmful": 3, "benign": 2}
    assert refusal_rates(["Paris."], [False])["refusal_rate"] is None
    assert refusal_rates(["x"], [None]) == {"refusal_rate": None, "over_refusal_rate": None, "harmful": 0,
                                            "benign": 0}
    with pytest.raises(ValueError):
        refusal_rates(["a"], [])


def test_prompt_records_keep_an_optional_harmful_flag(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    assert [r.harmful for r in load_prompts(path)] == [False, False, True, None]
    path.write_text(json.dumps({"prompt": "x", "harmful": "maybe"}) + "\n")
    with pytest.raises(Exception, match="field 'harmful'"):
        load_prompts(path)


# ---------------------------------------------------------------- models for the tests


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """Folders of three policies sharing one tokenizer: the tiny model, another random one, and a terse
    one that always answers EOS at once."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    other_dir = tmp_path_factory.mktemp("other")
    save_model(build_tiny_model(tokenizer, seed=1), tokenizer, other_dir)
    terse = load_causal_lm(str(tiny_model_dir), tokenizer)
    with torch.no_grad():  # the final hidden state becomes a large multiple of EOS's (tied) embedding
        eos = terse.transformer.wte.weight[tokenizer.eos_token_id]
        terse.transformer.ln_f.weight.zero_()
        terse.transformer.ln_f.bias.copy_(eos * 1e4 / eos.norm() ** 2)
    terse_dir = tmp_path_factory.mktemp("terse")
    save_model(terse, tokenizer, terse_dir)
    return {"base": tiny_model_dir, "other": other_dir, "terse": terse_dir}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def judges_file(tmp_path):
    path = tmp_path / "judges.py"
    path.write_text(JUDGES)
    return path


# ---------------------------------------------------------------- KL


def test_sequence_kl_of_a_model_to_itself_is_zero(models, tokenizer):
    model = load_causal_lm(str(models["base"]), tokenizer).eval()
    prompts = [p["prompt"] for p in PROMPTS]
    answers = [s[0].token_ids for s in sample_responses(model, tokenizer, prompts, max_new_tokens=12,
                                                        show_progress=False)]
    assert sequence_kl(model, model, tokenizer, prompts, answers, temperature=1.0, batch_size=3) == [0.0] * 4


def test_sequence_kl_matches_an_explicit_per_sequence_computation(models, tokenizer):
    policy = load_causal_lm(str(models["base"]), tokenizer).eval()
    reference = load_causal_lm(str(models["other"]), tokenizer).eval()
    prompts = [p["prompt"] for p in PROMPTS]
    torch.manual_seed(0)
    answers = [s.token_ids for per in sample_responses(policy, tokenizer, prompts, num_samples=2, max_new_tokens=10,
                                                       temperature=0.7, show_progress=False) for s in per]
    answers[0] = [tokenizer.eos_token_id]  # a one-token answer beside longer ones: padding must not leak
    flat = [p for p in prompts for _ in range(2)]
    got = sequence_kl(policy, reference, tokenizer, flat, answers, temperature=0.7, batch_size=3)

    def logprob(model, prompt_ids, answer):  # one unpadded sequence, full forward, logits / T
        ids = torch.tensor([prompt_ids + answer])
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float() / 0.7
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(answer)[:, None]).sum().item()

    with torch.no_grad():
        expected = [logprob(policy, encode_prompt(tokenizer, p), a) - logprob(reference, encode_prompt(tokenizer, p), a)
                    for p, a in zip(flat, answers, strict=True)]
    assert got == pytest.approx(expected, abs=1e-4)
    assert any(abs(value) > 1e-3 for value in got)


# ---------------------------------------------------------------- evaluate_policies and run_eval


def test_evaluate_policies_with_models_in_memory(models, tokenizer):
    policy = load_causal_lm(str(models["terse"]), tokenizer).eval()
    baseline = load_causal_lm(str(models["base"]), tokenizer).eval()
    prompts = [p["prompt"] for p in PROMPTS]
    calls = []

    def shorter(batch_prompts, responses):
        calls.append(len(responses))
        return [-len(r) for r in responses]

    result = evaluate_policies(policy, baseline, tokenizer, prompts, shorter, reference=baseline,
                               harmful=[p.get("harmful") for p in PROMPTS], samples_per_prompt=2, max_new_tokens=8,
                               names=("terse", "sft"), scorers={"gold_score": lambda ps, rs: [len(r) for r in rs]})
    assert calls == [16]  # both answers of every comparison scored in one call
    terse, sft = result["policies"]["terse"], result["policies"]["sft"]
    assert terse["mean_length"] == 1.0 and terse["eos_rate"] == 1.0  # EOS at once, every time
    assert terse["win_rate"]["losses"] == 0 and terse["win_rate"]["n"] == 8 and terse["against"] == "sft"
    assert sft["kl"] == 0.0 and terse["kl"] > 0 and sft["win_rate"] is None
    assert result["counts"] == {"prompts": 4, "samples_per_prompt": 2, "comparisons": 8, "harmful_prompts": 1,
                                "benign_prompts": 2}
    assert [row["prompt"] for row in result["samples"]] == [p for p in prompts for _ in range(2)]
    assert all(row["policy_answer"] == "" for row in result["samples"])
    assert terse["gold_score"] == 0.0 and terse["mean_score"] == 0.0
    assert sft["gold_score"] == pytest.approx(sum(len(r["baseline_answer"]) for r in result["samples"]) / 8)
    assert sft["mean_score"] == -sft["gold_score"]


class PrefersEmptyFirst:
    """A verdict judge that prefers an empty answer, with a pull towards the first position."""

    name = "empty-first"

    def judge(self, comparisons):
        from rlhfkit.judge.base import Verdict

        return [Verdict(0.5 if (c.a == "") == (c.b == "") else 0.9 if c.a == "" else 0.2) for c in comparisons]


def test_evaluate_policies_with_a_verdict_judge(models, tokenizer):
    policy = load_causal_lm(str(models["terse"]), tokenizer).eval()
    baseline = load_causal_lm(str(models["base"]), tokenizer).eval()
    result = evaluate_policies(policy, baseline, tokenizer, [p["prompt"] for p in PROMPTS], PrefersEmptyFirst(),
                               max_new_tokens=8)
    assert result["judge"] == "empty-first" and result["policies"]["policy"]["kl"] is None  # no reference given
    for row in result["samples"]:
        assert row["outcome"] == (0.5 if row["baseline_answer"] == "" else 1.0)
        assert row["prob_a"] == (0.5 if row["baseline_answer"] == "" else 0.9)


def read_eval(folder):
    summary = json.loads((folder / "eval.json").read_text())
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return summary, rows


def eval_config(models, prompts_file, output, **overrides):
    values = dict(policy=str(models["base"]), baseline=str(models["base"]), prompts=str(prompts_file),
                  judge="", output=str(output), samples_per_prompt=2, max_new_tokens=12, device="cpu")
    return EvalConfig(**{**values, **overrides})


def test_a_policy_against_itself_ties_every_comparison_with_kl_zero(models, prompts_file, judges_file, tmp_path):
    output = run_eval(eval_config(models, prompts_file, tmp_path / "self", judge=f"{judges_file}:shorter"))
    summary, rows = read_eval(output)
    rate = summary["win_rate"]
    assert rate["rate"] == 0.5 and rate["ties"] == rate["n"] == 8 and rate["low"] < 0.5 < rate["high"]
    assert summary["policies"]["policy"]["kl"] == 0.0 and summary["policies"]["baseline"]["kl"] == 0.0
    assert summary["judge"] == f"function:{judges_file}:shorter"
    assert all(row["policy_answer"] == row["baseline_answer"] and row["outcome"] == 0.5 for row in rows)
    policy = summary["policies"]["policy"]
    assert policy["refusal_rate"] is not None and policy["over_refusal_rate"] is not None
    assert 1 <= policy["mean_length"] <= 12 and 0 <= policy["eos_rate"] <= 1
    html = (output / "report" / "report.html").read_text()
    assert "50.0%" in html and (output / "report" / "plots" / "win_rates.png").is_file()


def test_the_judge_decides_the_direction(models, prompts_file, judges_file, tmp_path, capsys):
    for judge, won in (("shorter", True), ("longer", False)):
        output = tmp_path / judge
        main(["eval", "--policy", str(models["terse"]), "--baseline", str(models["base"]), "--prompts",
              str(prompts_file), "--judge", f"{judges_file}:{judge}", "--output", str(output), "--samples-per-prompt",
              "2", "--max-new-tokens", "12", "--device", "cpu", "--reference", str(models["other"])])
        summary, rows = read_eval(output)
        rate = summary["win_rate"]
        if won:
            assert rate["losses"] == 0 and rate["wins"] > 0 and rate["rate"] > 0.5
        else:
            assert rate["wins"] == 0 and rate["losses"] > 0 and rate["rate"] < 0.5
        # every outcome follows the answers' lengths: the terse policy answers "" every time
        for row in rows:
            expected = 0.5 if row["baseline_answer"] == "" else (1.0 if won else 0.0)
            assert row["outcome"] == expected
            assert row["score_a"] == 0 and row["score_b"] == (-1 if won else 1) * len(row["baseline_answer"])
        kls = [summary["policies"][name]["kl"] for name in ("policy", "baseline")]
        assert all(isinstance(k, float) and math.isfinite(k) for k in kls)  # both measured against --reference
    assert "win rate" in capsys.readouterr().err


def test_a_language_model_judge_is_asked_in_both_orders(models, prompts_file, tmp_path):
    output = run_eval(eval_config(models, prompts_file, tmp_path / "lm", policy=str(models["terse"]),
                                  judge=str(models["other"]), samples_per_prompt=1))
    summary, rows = read_eval(output)
    assert summary["judge"] == f"local:{models['other']}+swap" and summary["win_rate"]["n"] == 4
    assert all(0 <= row["prob_a"] <= 1 for row in rows)


# ---------------------------------------------------------------- people


def label_items(db_url: str, choose) -> int:
    """Label the project's items through the feedback services as one annotator; ``choose(item)`` gives
    the choice, or None to leave the item unlabelled. Returns how many labels were given."""
    from sqlalchemy import select

    from rlhfkit.evaluate.people import open_session
    from rlhfkit.feedback.assignment import next_assignment
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.db import Project, settings_row
    from rlhfkit.feedback.labels import reveal, skip, submit_label

    session, engine = open_session(db_url)
    now = datetime(2025, 3, 3, 9, 0, 0)
    given = 0
    try:
        project = session.scalar(select(Project))
        user = create_user(session, "ann", "correct horse battery", "annotator", now)
        session.commit()
        while (assignment := next_assignment(session, project, user, now, settings_row(session))) is not None:
            now += timedelta(seconds=20)
            reveal(session, assignment, now, settings_row(session))
            choice = choose(assignment.item)
            if choice is None:
                skip(assignment, now)
            else:
                submit_label(session, assignment, project, {"choice": choice}, now)
                given += 1
            session.commit()
    finally:
        session.close()
        engine.dispose()
    return given


def test_people_judge_pairs_in_the_feedback_app_then_labels_give_the_win_rate(models, prompts_file, tmp_path):
    from sqlalchemy import select

    from rlhfkit.evaluate.people import open_session
    from rlhfkit.feedback.db import Item, Project

    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    output = tmp_path / "people"
    config = eval_config(models, prompts_file, output, policy=str(models["terse"]), judge="people", db=db_url,
                         project="terse-vs-base", seed=3)
    run_eval(config)
    summary, rows = read_eval(output)
    mapping = json.loads((output / "people.json").read_text())
    assert summary["win_rate"] is None and summary["people"]["unlabelled"] == 8
    assert all(row["outcome"] is None for row in rows)
    assert {entry["policy_shown_as"] for entry in mapping["items"]} == {"A", "B"}  # randomised per item

    session, engine = open_session(db_url)
    project = session.scalar(select(Project))
    items = session.scalars(select(Item).where(Item.project_id == project.id).order_by(Item.position)).all()
    assert (project.name, project.task_type, len(items)) == ("terse-vs-base", "pairwise", 8)
    policy_side = {}
    for entry, item in zip(mapping["items"], items, strict=True):
        row = rows[entry["row"]]
        shown = item.responses if entry["policy_shown_as"] == "A" else item.responses[::-1]
        assert entry["item_id"] == item.id and shown == [row["policy_answer"], row["baseline_answer"]]
        assert item.prompt == row["prompt"]
        policy_side[item.id] = entry["policy_shown_as"]
    session.close()
    engine.dispose()

    # the annotator prefers the policy on items 1-4, the baseline on 5-6, ties 7, leaves 8 unlabelled
    order = [item.id for item in items]

    def choose(item):
        rank = order.index(item.id)
        side = policy_side[item.id]
        other = "B" if side == "A" else "A"
        return [side, side, side, side, other, other, "tie", None][rank]

    assert label_items(db_url, choose) == 7
    run_eval(EvalConfig(policy="not/loaded", baseline="not/loaded", prompts="not/read", judge="people",
                        output=str(output), db=db_url, project="terse-vs-base"))
    summary, rows = read_eval(output)
    rate = summary["win_rate"]
    assert (rate["wins"], rate["losses"], rate["ties"], rate["n"]) == (4, 2, 1, 7)
    assert rate["rate"] == pytest.approx(4.5 / 7)
    assert summary["policies"]["policy"]["win_rate"] == rate
    assert summary["people"]["unlabelled"] == 1 and summary["people"]["labelled"] == 7
    assert sum(row["outcome"] is None for row in rows) == 1
    assert summary["policies"]["policy"]["mean_length"] == 1.0  # the first run's measurements are kept


def test_people_judge_needs_a_database_and_a_project(models, prompts_file, tmp_path):
    with pytest.raises(Exception, match="--db"):
        run_eval(eval_config(models, prompts_file, tmp_path / "x", judge="people"))
