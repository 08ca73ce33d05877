"""Reward model: Bradley–Terry math, ranking groups, padding, HF round trip, and learning a known rule."""

import gzip
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.config import RMConfig, ScoreConfig
from rlhfkit.data.chat import pad_batch, tokenize_prompt_response
from rlhfkit.evaluate.preferences import pairwise_report
from rlhfkit.evaluate.score import run_score
from rlhfkit.losses import bradley_terry_loss
from rlhfkit.models import load_tokenizer
from rlhfkit.models.reward import RewardModel, load_reward_backbone, score_head, sequence_rewards
from rlhfkit.train.rm import TokenizedGroup, collate_groups, parse_group, rm_batch_loss, run_rm


def test_bradley_terry_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # -log σ(1) = log(1 + e^-1); -log σ(-1) = log(1 + e)
    expected = torch.tensor([math.log1p(math.exp(-1)), math.log1p(math.exp(1))])
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected)
    # a margin of 0.5 asks for more: -log σ(1 - 0.5)
    assert torch.allclose(bradley_terry_loss(chosen[:1], rejected[:1], 0.5), torch.tensor([math.log1p(math.exp(-0.5))]))
    # label smoothing 0.1: 0.9 * -log σ(d) + 0.1 * -log σ(-d)
    smoothed = bradley_terry_loss(chosen[:1], rejected[:1], label_smoothing=0.1)
    assert torch.allclose(smoothed, torch.tensor([0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))]))


def test_ranking_of_four_expands_to_six_pairs_in_one_group():
    raw = {"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [3, 1, 2, 4]}
    [group] = parse_group(raw, "f.jsonl:1")
    assert sorted(group.pairs) == sorted([(1, 0, 0.0), (2, 0, 0.0), (0, 3, 0.0), (1, 2, 0.0), (1, 3, 0.0), (2, 3, 0.0)])
    tied = parse_group({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 1, 2]}, "f.jsonl:2")[0]
    assert tied.pairs == [(0, 2, 0.0), (1, 2, 0.0)]  # the tie (0, 1) is skipped
    pair = parse_group({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}, "f.jsonl:3")[0]
    assert pair.responses == ["a", "b"] and pair.pairs == [(0, 1, 2.0)]


class FirstTokenReward(torch.nn.Module):
    """A stand-in model whose reward is the sequence's first token id (to check the loss bookkeeping): its
    ``score`` head puts that id at every position, as a classification model's head runs per token."""

    def __init__(self):
        super().__init__()
        self.score = torch.nn.Identity()

    def forward(self, input_ids, attention_mask, position_ids):
        per_token = self.score(input_ids[:, :1].float().expand(input_ids.shape).unsqueeze(-1))
        return SimpleNamespace(logits=per_token[:, -1])


def test_group_loss_is_mean_over_pairs_then_over_groups():
    # group 1: K=3 with rewards 3, 1, 2 and ranks 1, 3, 2 -> pairs (0,1) d=2, (0,2) d=1, (2,1) d=1
    # group 2: one pair with rewards 0 (chosen) and 1 (rejected) -> d=-1
    groups = [TokenizedGroup([[3, 9], [1], [2, 9, 9]], [(0, 1, 0.0), (0, 2, 0.0), (2, 1, 0.0)]),
              TokenizedGroup([[0], [1, 9]], [(0, 1, 0.0)])]
    batch = collate_groups(groups, pad_token_id=9)
    loss, metrics = rm_batch_loss(FirstTokenReward(), batch, normalizer=2.0)

    def nll(d):
        return math.log1p(math.exp(-d))

    expected = ((nll(2) + nll(1) + nll(1)) / 3 + nll(-1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["reward_margin"].item() == pytest.approx(((2 + 1 + 1) / 3 - 1) / 2)


def test_pairwise_report_buckets_and_sources():
    report = pairwise_report([2.0, -0.1, 0.05, 3.0], ["a", "a", "b", None])
    assert report["accuracy"] == 0.75 and report["pairs"] == 4
    assert report["by_source"]["a"] == {"pairs": 2, "accuracy": 0.5, "mean_margin": pytest.approx(0.95)}
    low = report["calibration"][0]  # σ(0.1) and σ(0.05) are in 0.5-0.6
    assert low["pairs"] == 2 and low["accuracy"] == 0.5
    assert sum(b["pairs"] for b in report["calibration"]) == 4


def test_head_init_padding_sides_and_hf_round_trip(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_reward_backbone(str(tiny_model_dir), tokenizer)
    head = score_head(model)
    expected_std = 1 / math.sqrt(head.in_features + 1)
    assert abs(head.weight.std().item() - expected_std) < 0.35 * expected_std
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]

    texts = [("What is the capital of Peru?", "Lima."), ("Hi", "Hello! How can I help you today?"), ("a", "b")]
    sequences = [tokenize_prompt_response(tokenizer, p, r, 128).input_ids for p, r in texts]
    with torch.no_grad():
        right = sequence_rewards(model, *pad_batch(sequences, tokenizer.pad_token_id, "right"))
        left = sequence_rewards(model, *pad_batch(sequences, tokenizer.pad_token_id, "left"))
        alone = torch.stack([sequence_rewards(model, *pad_batch([s], tokenizer.pad_token_id)) for s in sequences])
    assert torch.allclose(right, left, atol=1e-5) and torch.allclose(right, alone.squeeze(-1), atol=1e-5)

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        plain = [reloaded(torch.tensor([s])).logits.item() for s in sequences]  # no padding, HF's own forward
    assert plain == pytest.approx(right.tolist(), abs=1e-5)
    scores = RewardModel.from_pretrained(tmp_path, device="cpu").score([p for p, _ in texts], [r for _, r in texts])
    assert scores == pytest.approx(right.tolist(), abs=1e-5)


def test_a_sequence_ending_in_the_pad_id_is_read_at_its_own_last_token(tiny_model_dir):
    """Qwen pads with <|endoftext|>, which also ends text: a sequence may end in the pad id. Its reward is
    the head at its last real token (HF's own pooling, which looks for the pad id, reads the one before)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_reward_backbone(str(tiny_model_dir), tokenizer)
    pad = tokenizer.pad_token_id
    sequences = [[5, 6, 7, pad], [8, 9]]  # the first ends in a token equal to the pad id
    with torch.no_grad():
        hidden = model(torch.tensor([sequences[0]]), output_hidden_states=True).hidden_states[-1]
        expected = score_head(model)(hidden[0, -1]).item()
        hf_pooled = model(torch.tensor([sequences[0]])).logits.item()
        for side in ("right", "left"):
            rewards = sequence_rewards(model, *pad_batch(sequences, pad, side))
            assert rewards[0].item() == pytest.approx(expected, abs=1e-5), side
    assert hf_pooled != pytest.approx(expected, abs=1e-5)  # what the pad-id pooling would have read


HH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf"

WORDS = ["the", "capital", "of", "is", "Paris", "Tokyo", "blue", "green", "red", "snow", "coal", "hello", "today", "help", "Rome", "Lima"]


def synthetic_pairs(count: int, seed: int) -> list[dict]:
    """The rule: an answer containing 'thanks' beats one without (noise-free)."""
    rng = random.Random(seed)

    def answer(polite: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
        if polite:
            words.insert(rng.randint(0, len(words)), "thanks")
        return " ".join(words)

    return [{"prompt": f"Say something about {rng.choice(WORDS)}.", "chosen": answer(True), "rejected": answer(False)}
            for _ in range(count)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rm_learns_a_known_rule(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(240, seed=1))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", synthetic_pairs(100, seed=2))
    output = tmp_path / "rm"
    run_rm(RMConfig(model=str(tiny_model_dir), data=str(train), eval_data=str(held_out), output=str(output),
                    learning_rate=2e-3, epochs=3, batch_size=16, max_length=64, warmup_ratio=0.1, save_every=0,
                    log_every=5, device="cpu"))
    report = json.loads((output / "eval.json").read_text())
    assert report["pairs"] == 100
    assert report["accuracy"] >= 0.9, report
    print(f"RM on the known rule: held-out accuracy {report['accuracy']:.3f}")
    # the saved folder scores like the rule says, through the public API
    scorer = RewardModel.from_pretrained(output, device="cpu")
    polite, plain = scorer.score(["Say something."] * 2, ["hello thanks today", "hello blue today"])
    assert polite > plain


def test_normalisation_offset_makes_reference_mean_zero(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(16, seed=3))
    references = write_jsonl(tmp_path / "samples.jsonl", [
        {"prompt": "Say something.", "responses": ["hello thanks", "red snow", "the capital of Peru"]},
        {"prompt": "Hi", "response": "Hello"},
    ])
    output = tmp_path / "rm"
    run_rm(RMConfig(model=str(tiny_model_dir), data=str(train), output=str(output), max_steps=2, batch_size=8,
                    max_length=64, eval_split=0, save_every=0, normalize_with=str(references), device="cpu"))
    assert json.loads((output / "config.json").read_text())["reward_offset"] != 0.0
    scored = tmp_path / "scored.jsonl"
    run_score(ScoreConfig(reward=str(output), data=str(references), output=str(scored), device="cpu"))
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    all_scores = rows[0]["scores"] + [rows[1]["score"]]
    assert len(rows[0]["scores"]) == 3
    assert sum(all_scores) / 4 == pytest.approx(0.0, abs=1e-4)


@pytest.mark.skipif(not HH_DIR.is_dir(), reason="../shared/data/hh-rlhf is not present")
def test_rm_runs_on_real_hh_data(tmp_path, tiny_model_dir, capsys):
    with gzip.open(HH_DIR / "helpful-base-test.jsonl.gz", "rt") as handle:
        lines = [next(handle) for _ in range(96)]
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(lines))
    output = tmp_path / "rm"
    run_rm(RMConfig(model=str(tiny_model_dir), data=str(data), output=str(output), max_steps=6, batch_size=8,
                    max_length=128, eval_split=0.25, learning_rate=1e-3, save_every=0, log_every=2, device="cpu"))
    report = json.loads((output / "eval.json").read_text())
    assert report["pairs"] == 24 and 0.0 <= report["accuracy"] <= 1.0
    print(f"tiny RM on 72 HH helpful-base pairs: held-out accuracy {report['accuracy']:.3f} (24 pairs)")


def test_without_tree_rows_rm_training_shares_prompts_through_the_cache_with_the_same_curve(
        tmp_path, tiny_llama_dir, monkeypatch):
    """Attention without custom masks (flash-attention) refuses tree rows: each group's prompt then runs once
    and its responses continue from its key/value cache, with the loss curve of tree rows."""
    from rlhfkit.models import prefix
    from rlhfkit.train import rm

    train = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(48, seed=1))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", synthetic_pairs(16, seed=2))

    def run(name: str) -> list[float]:
        run_rm(RMConfig(model=str(tiny_llama_dir), data=str(train), eval_data=str(held_out), output=str(tmp_path / name),
                        learning_rate=2e-3, max_steps=4, batch_size=8, max_length=64, warmup_ratio=0.0, save_every=0,
                        log_every=1, device="cpu"))
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]

    tree = run("tree")
    monkeypatch.setattr(prefix, "tree_support", lambda model: False)
    layouts = []
    real = rm.collate_groups
    monkeypatch.setattr(rm, "collate_groups", lambda groups, pad, share: layouts.append(share) or real(groups, pad, share))
    cache = run("cache")
    assert layouts and set(layouts) == {"cache"}
    assert len(tree) == 4 and cache == pytest.approx(tree, abs=1e-5)
    reports = [json.loads((tmp_path / name / "eval.json").read_text()) for name in ("tree", "cache")]
    assert reports[1]["mean_margin"] == pytest.approx(reports[0]["mean_margin"], abs=1e-5)
