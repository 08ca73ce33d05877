"""AI judges: position swap, the local model's log-prob choice, reward-model and function judges, the CLI."""

import json
import math
import random

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data import DataError, load_preferences
from rlhfkit.data.chat import render_messages
from rlhfkit.judge.backends import LocalModelJudge, ScoreJudge, judge_request
from rlhfkit.judge.base import Comparison, PositionSwap, Verdict
from rlhfkit.judge.constitution import DEFAULT_CONSTITUTION, Principle, load_constitution, principles_for
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.reward import RewardModel, load_reward_backbone
from rlhfkit.train.rm import load_comparison_groups


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


class PositionBiasedJudge:
    """Prefers answers that say 'thanks' (weight 2) but also the first position (bias 1.5)."""

    name = "biased"

    def judge(self, comparisons):
        return [Verdict(sigmoid(2 * (("thanks" in c.a) - ("thanks" in c.b)) + 1.5)) for c in comparisons]


def test_position_swap_turns_pure_position_preference_into_a_tie_and_keeps_real_ones():
    neutral = Comparison("p", "hello", "good day")
    real = Comparison("p", "hello", "thanks a lot")
    biased = PositionBiasedJudge()
    assert biased.judge([neutral])[0].winner == "a"  # the bias alone picks A
    swapped_neutral, swapped_real = PositionSwap(biased).judge([neutral, real])
    assert swapped_neutral.winner == "tie" and not swapped_neutral.consistent
    assert swapped_neutral.prob_a == pytest.approx(0.5)
    assert swapped_real.consistent and swapped_real.winner == "b"
    # forward: A wins with σ(-2+1.5); swapped: the thanks answer is first, σ(2+1.5)
    assert swapped_real.prob_a == pytest.approx((sigmoid(-0.5) + 1 - sigmoid(3.5)) / 2)
    assert 0 < swapped_real.confidence < 1


def test_local_judge_probability_equals_an_explicit_next_token_computation(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    principles = [Principle("helpful", "Be helpful.")]
    judge = LocalModelJudge(model, tokenizer, principles, batch_size=3)
    comparisons = [Comparison([{"role": "user", "content": "What colour is snow?"}], "Snow is white.", "Blue."),
                   Comparison("Say hi", "Hi", "Hello there, how are you doing today? " * 3),
                   Comparison("Capital of Peru?", "Lima.", "The capital of Peru is Lima.")]
    verdicts = judge.judge(comparisons)  # one left-padded batch of three different lengths
    a_id = tokenizer("A", add_special_tokens=False)["input_ids"][0]
    b_id = tokenizer("B", add_special_tokens=False)["input_ids"][0]
    for comparison, verdict in zip(comparisons, verdicts, strict=True):
        text = render_messages(tokenizer, [{"role": "user", "content": judge_request(comparison, principles)}],
                               add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            last = model(ids).logits[0, -1]
        expected = torch.softmax(last[[a_id, b_id]], dim=-1)[0].item()
        assert verdict.prob_a == pytest.approx(expected, abs=1e-5)


def test_reward_model_judge_is_bradley_terry_on_scores(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    load_reward_backbone(str(tiny_model_dir), tokenizer, seed=5).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    rm = RewardModel.from_pretrained(tmp_path / "rm", device="cpu")
    from rlhfkit.judge.backends import load_judge

    judge = load_judge(str(tmp_path / "rm"), device="cpu")
    comparison = Comparison("Hi", "Hello!", "Go away.")
    r_a, r_b = rm.score(["Hi", "Hi"], ["Hello!", "Go away."])
    assert judge.judge([comparison])[0].prob_a == pytest.approx(sigmoid(r_a - r_b), abs=1e-5)


def test_score_judge_ties_on_equal_scores():
    judge = ScoreJudge(lambda prompts, responses: [float(len(r)) for r in responses], "length")
    longer, tie = judge.judge([Comparison("p", "abc", "a"), Comparison("p", "ab", "cd")])
    assert longer.prob_a == pytest.approx(sigmoid(2)) and longer.winner == "a"
    assert tie.winner == "tie" and tie.confidence == 0.0


def test_score_judge_scores_each_answer_once_across_pairs_and_swaps():
    from rlhfkit.judge.run import judge_answer_sets

    scored = []

    def length(prompts, responses):
        scored.extend(zip(prompts, responses, strict=True))
        return [float(len(r)) for r in responses]

    records = [("p", ["a", "bbb", "cc", "dddd"], "f:1"), ([{"role": "user", "content": "q"}], ["x", "yy"], "f:2")]
    judged = judge_answer_sets(PositionSwap(ScoreJudge(length, "length")), records)
    assert len(scored) == 6  # 4 + 2 distinct answers, for 6 + 1 pairs asked in both orders
    assert judged[0].ranks() == [4, 2, 3, 1] and judged[1].ranks() == [2, 1]
    assert all(v.prob_a == pytest.approx(sigmoid(len(records[0][1][i]) - len(records[0][1][j])))
               for i, j, v in judged[0].verdicts)


def test_constitution_loading_errors_and_sampling(tmp_path):
    default = load_constitution(DEFAULT_CONSTITUTION)
    assert {p.name for p in default} >= {"helpful", "honest", "harmless", "not-over-refusing"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - name: kind\n    text: Be kind.\n  - name: x\n    weight: -1\n    text: t\n")
    with pytest.raises(DataError, match=r"principles\[1\]: field 'weight': expected a positive number"):
        load_constitution(bad)
    bad.write_text("principles:\n  - name: kind\n")
    with pytest.raises(DataError, match=r"principles\[0\]: field 'text'"):
        load_constitution(bad)
    rng = random.Random(0)
    heavy = [Principle("a", "A", 9.0), Principle("b", "B", 1.0)]
    draws = [principles_for(heavy, "sample", rng)[0].name for _ in range(2000)]
    assert 0.85 < draws.count("a") / 2000 < 0.95
    assert principles_for(heavy, "all", rng) == heavy


RULES = '''
def thanks(prompts, responses):
    return [float("thanks" in r) for r in responses]
'''


def test_cli_judges_pairs_and_rankings_into_files_rm_and_dpo_read(tmp_path):
    (tmp_path / "rules.py").write_text(RULES)
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Help me", "responses": ["no, I will not help you", "sure, thanks"]},
        {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["thanks!", "hello", "thanks, hi there"]},
        {"prompt": "Tie", "responses": ["same", "same too"]},
    ]))
    output = tmp_path / "judged.jsonl"
    main(["judge", "--judge", f"{tmp_path / 'rules.py'}:thanks", "--data", str(data), "--output", str(output)])
    pairs = load_preferences(output)
    assert len(pairs) == 3  # the pair record, and the ranking expanded (its two 'thanks' answers tie)
    assert pairs[0].chosen == "sure, thanks" and pairs[0].source.startswith("judge:function:")
    ranking = json.loads(output.read_text().splitlines()[1])
    assert ranking["ranks"] == [1, 2, 1] and ranking["responses"][1] == "hello"
    assert len(load_comparison_groups(str(output))) == 2
    report = json.loads((tmp_path / "judged.jsonl.report.json").read_text())
    assert report["records"] == 3 and report["written"] == 2 and report["all_ties"] == 1
    assert report["longer_answer_wins"] == pytest.approx(2 / 3)  # 3 decisive verdicts, the longer answer won 2
    verdicts = (tmp_path / "judged.jsonl.verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) == 1 + 3 + 1
    with pytest.raises(SystemExit):
        main(["judge", "--judge", "https://example.invalid/v1", "--data", str(data), "--output", str(output)])


def test_critique_and_revise_builds_the_conversations_and_writes_demonstrations(tmp_path, tiny_model_dir):
    from rlhfkit.data import load_demonstrations
    from rlhfkit.judge.revise import REVISION_REQUEST, revise

    seen = []

    def scripted(chats):  # a stand-in model whose replies we know
        seen.append(chats)
        return [f"reply {len(seen)}.{i}" for i in range(len(chats))]

    constitution = [Principle("kind", "Be kind.")]
    records = revise(scripted, [("Hi", "Go away."), ("Help?", "No.")], constitution, random.Random(0))
    critique_chats, revision_chats = seen
    assert "Be kind." in critique_chats[0][0]["content"] and "Go away." in critique_chats[0][0]["content"]
    assert revision_chats[1][1] == {"role": "assistant", "content": "reply 1.1"}
    assert revision_chats[1][2]["content"] == REVISION_REQUEST
    assert records[1] == {"prompt": "Help?", "completion": "reply 2.1", "critique": "reply 1.1", "principle": "kind",
                          "original": "No."}

    data = tmp_path / "answers.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi", "responses": ["hi", "go away"]}) + "\n")
    output = tmp_path / "revised.jsonl"
    main(["revise", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(output), "--device", "cpu",
          "--max-new-tokens", "8"])
    lines = output.read_text().splitlines()  # a random tiny model may revise to nothing: those are left out
    assert len(lines) <= 2 and {json.loads(line)["original"] for line in lines} <= {"hi", "go away"}
    if lines:
        assert len(load_demonstrations(output)) == len(lines)
