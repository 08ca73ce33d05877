"""DPO trainer: log-probs over answers only, cached vs live reference, learning a known rule, every
loss end to end, KTO data, online DPO with resume, and the command line."""

import json
import random

import pytest
import torch

from rlhfkit.cli import main as cli_main
from rlhfkit.config import DPOConfig
from rlhfkit.data import DataError, load_binary_feedback, load_preferences
from rlhfkit.models import LoraSettings, load_causal_lm, load_tokenizer
from rlhfkit.rollout.generate import sample_responses
from rlhfkit.train.dpo import (
    LOSS_NAMES,
    LikelihoodWatch,
    PreferenceExample,
    Reference,
    best_and_worst_pairs,
    collate_examples,
    precompute_reference,
    run_dpo,
    sequence_logps,
    supports_logit_mask,
    tokenize_pairs,
    training_loss,
)

WORDS = ["the", "capital", "of", "is", "Paris", "Tokyo", "green", "red", "snow", "coal", "hello", "today", "help",
         "Rome", "Lima", "Japan", "Peru", "orange", "a", "plum"]
TARGET = "blue"
PROMPTS = ["Say something:", "Tell me a thing:", "Answer me:", "Speak:"]


pytestmark = pytest.mark.usefixtures("one_thread")


def rule_pairs(count: int, seed: int) -> list[dict]:
    """The rule: an answer containing 'blue' beats one without it (noise-free)."""
    rng = random.Random(seed)

    def answer(with_target: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        if with_target:
            words.insert(rng.randint(0, len(words)), TARGET)
        return " " + " ".join(words)

    return [{"prompt": rng.choice(PROMPTS), "chosen": answer(True), "rejected": answer(False)} for _ in range(count)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_config(model_dir, data, output, **overrides) -> DPOConfig:
    settings = dict(model=str(model_dir), data=str(data), output=str(output), learning_rate=1e-3, batch_size=8,
                    max_length=64, eval_split=0.0, warmup_ratio=0.0, log_every=1, save_every=0, device="cpu",
                    max_new_tokens=8, eval_kl_prompts=4)
    settings.update(overrides)
    return DPOConfig(**settings)


def metrics(output) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


class _Accelerator:  # single process stand-in
    process_index, num_processes, device = 0, 1, torch.device("cpu")


def target_rate(model, tokenizer, samples: int = 12) -> float:
    """Share of sampled answers (T=1) that contain the target word."""
    torch.manual_seed(0)
    answers = sample_responses(model, tokenizer, PROMPTS, num_samples=samples, max_new_tokens=10, temperature=1.0,
                               show_progress=False)
    texts = [s.text for per_prompt in answers for s in per_prompt]
    return sum(TARGET in t for t in texts) / len(texts)


def test_answer_logps_with_logit_mask_equal_full_logits_and_unpadded(tmp_path, tokenizer, tiny_model_dir):
    model = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    pairs = preferences(tmp_path, [
        {"prompt": "What is the capital of Peru?", "chosen": " Lima.", "rejected": " The capital of Peru is Rome."},
        {"prompt": "Hi", "chosen": " Hello! How can I help you today?", "rejected": " Snow."},
    ])
    examples = tokenize_pairs(tokenizer, pairs, 64, "test")
    batch = collate_examples(examples, tokenizer.pad_token_id)
    assert supports_logit_mask(model)
    with torch.no_grad():
        masked, counts = sequence_logps(model, batch, logit_mask=True)
        full, _ = sequence_logps(model, batch, logit_mask=False)
        # one sequence at a time, no padding, computed by hand from HF's logits
        alone = []
        for sequence in [e.first for e in examples] + [e.second for e in examples]:
            logits = model(torch.tensor([sequence.input_ids])).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            alone.append(sum(logprobs[t - 1, sequence.input_ids[t]].item() for t, label in
                             enumerate(sequence.labels) if label != -100))
    assert torch.allclose(masked, full, atol=1e-5)
    assert masked.tolist() == pytest.approx(alone, abs=1e-4)
    # counts are the answer tokens (EOS included), never prompt or padding tokens
    assert counts.tolist() == [e.num_target_tokens for e in [x.first for x in examples] + [x.second for x in examples]]


def preferences(folder, rows):
    return load_preferences(write_jsonl(folder / "pairs.jsonl", rows))


def test_cached_and_live_reference_give_the_same_loss_and_lora_base_is_the_reference(tmp_path, tiny_llama_dir):
    tok = load_tokenizer(str(tiny_llama_dir))
    examples = tokenize_pairs(tok, preferences(tmp_path, rule_pairs(6, seed=5)), 64, "test")
    reference = Reference(str(tiny_llama_dir), tok, torch.float32, torch.device("cpu"), keep=True)
    cached = [PreferenceExample(e.first, e.second, e.prompt) for e in examples]
    precompute_reference(cached, reference, tok.pad_token_id, 4, _Accelerator(), logit_mask=True)
    assert all(e.reference is not None for e in cached)

    policy = load_causal_lm(str(tiny_llama_dir), tok)
    with torch.no_grad():  # move the policy away from the reference so the loss is not just log 2
        for parameter in policy.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    config = DPOConfig(model=str(tiny_llama_dir), data="x", output="y", beta=0.5)
    watch = LikelihoodWatch(enabled=False)
    live_loss, live_metrics = training_loss(policy, collate_examples(examples, tok.pad_token_id), 6.0, config,
                                            reference, True, watch)
    cached_loss, cached_metrics = training_loss(policy, collate_examples(cached, tok.pad_token_id), 6.0, config,
                                                None, True, watch)
    assert abs(live_loss.item() - 0.6931) > 1e-3
    assert cached_loss.item() == pytest.approx(live_loss.item(), abs=1e-5)
    assert cached_metrics["reward_margin"].item() == pytest.approx(live_metrics["reward_margin"].item(), abs=1e-5)

    # LoRA: with adapters disabled the policy is its base model, whose log-probs are the reference's
    lora_policy = load_causal_lm(str(tiny_llama_dir), tok, lora=LoraSettings(r=4))
    with torch.no_grad():
        for name, parameter in lora_policy.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))  # adapters that change the outputs
    batch = collate_examples(examples, tok.pad_token_id)
    lora_reference = Reference(str(tiny_llama_dir), tok, torch.float32, torch.device("cpu"), lora_policy=lora_policy)
    base = reference.logps(batch, logit_mask=True)
    with torch.no_grad():
        adapted, _ = sequence_logps(lora_policy, batch, logit_mask=True)
    assert torch.allclose(lora_reference.logps(batch, logit_mask=True), base, atol=1e-5)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with torch.no_grad():  # and the adapters are back on afterwards
        assert torch.allclose(sequence_logps(lora_policy, batch, logit_mask=True)[0], adapted)


def test_dpo_learns_a_known_rule(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", rule_pairs(160, seed=1))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", rule_pairs(60, seed=2))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    before = target_rate(load_causal_lm(str(tiny_model_dir), tokenizer), tokenizer)

    output = tmp_path / "dpo"
    run = dpo_config(tiny_model_dir, train, output, eval_data=str(held_out), epochs=5, batch_size=16,
                     learning_rate=5e-3)
    run_dpo(run)
    report = json.loads((output / "eval.json").read_text())
    assert report["eval_accuracy"] >= 0.9, report
    assert report["eval_reward_margin"] > 0
    assert report["eval_kl"] > 0  # the policy has moved away from the reference
    curve = [r for r in metrics(output) if "loss" in r]
    assert curve[-1]["loss"] < curve[0]["loss"] and curve[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert {"rewards_chosen", "rewards_rejected", "reward_margin", "accuracy", "logps_chosen",
            "logps_rejected"} <= set(curve[0])

    model = load_causal_lm(str(output), load_tokenizer(str(output)))
    after = target_rate(model, tokenizer)
    print(f"DPO on the known rule: held-out accuracy {report['eval_accuracy']:.3f}, margin "
          f"{report['eval_reward_margin']:.3f}, KL {report['eval_kl']:.3f}; 'blue' in samples {before:.2f} -> {after:.2f}")
    assert after >= before + 0.3, (before, after)


@pytest.mark.parametrize("loss", [name for name in LOSS_NAMES if name != "dpo"])
def test_each_loss_trains_end_to_end(tmp_path, tiny_model_dir, loss):
    rows = rule_pairs(24, seed=3)
    if loss == "kto":  # unpaired records, plus pairs (split into a desirable and an undesirable answer)
        rows = [{"prompt": r["prompt"], "completion": r["chosen"], "label": True} for r in rows[:8]] + \
               [{"prompt": r["prompt"], "completion": r["rejected"], "label": False} for r in rows[8:16]] + rows[16:]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    output = tmp_path / loss
    beta = 2.0 if loss == "simpo" else 0.1
    run_dpo(dpo_config(tiny_model_dir, data, output, loss=loss, beta=beta, label_smoothing=0.1, max_steps=6,
                       eval_split=0.25, eval_kl_prompts=2))
    curve = [r["loss"] for r in metrics(output) if "loss" in r]
    assert len(curve) == 6 and all(map(lambda v: v == v, curve))  # finite (NaN != NaN)
    assert curve[-1] < curve[0], curve
    report = json.loads((output / "eval.json").read_text())
    assert 0.0 <= report["eval_accuracy"] <= 1.0 and "eval_kl" in report


def test_binary_feedback_records_and_errors(tmp_path):
    data = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "Hi", "completion": " Hello!", "label": True},
        {"prompt": "Hi", "chosen": " Hello!", "rejected": " Go away."},
    ])
    records = load_binary_feedback(data)
    assert [(r.completion, r.desirable) for r in records] == [(" Hello!", True), (" Hello!", True),
                                                               (" Go away.", False)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Hi", "completion": " Hello!", "label": True},
                                               {"prompt": "Hi", "completion": " x", "label": "yes"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'label': expected true"):
        load_binary_feedback(bad)


def test_best_and_worst_pairs_skip_ties():
    pairs, skipped = best_and_worst_pairs(["p", "q"], [["a", "b", "c"], ["d", "e"]], [[0.5, 2.0, -1.0], [1.0, 1.0]])
    assert skipped == 1
    assert pairs == [{"prompt": "p", "chosen": "b", "rejected": "c", "chosen_score": 2.0, "rejected_score": -1.0}]


def letter_a_reward(prompts, responses):
    """Test reward for online DPO: the share of the letter 'a' among the answer's characters."""
    return [response.count("a") / max(len(response), 1) for response in responses]


def test_online_dpo_raises_the_reward_and_resumes_between_rounds(tmp_path, tiny_model_dir):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS * 8])
    def config(output, **overrides):
        settings = dict(online=True, prompts=str(prompts), reward="test_dpo:letter_a_reward", rounds=3,
                        samples_per_prompt=4, max_new_tokens=8, epochs=4, batch_size=8, learning_rate=6e-3,
                        eval_kl_prompts=0)
        return dpo_config(tiny_model_dir, "", output, **{**settings, **overrides})

    output = tmp_path / "online"
    run_dpo(config(output))
    rounds = [json.loads(line) for line in (output / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, "final"]  # numbered as `rlhfkit loop` numbers rounds
    assert all((output / f"round-{i:03d}" / name).exists() for i in range(1, 4)
               for name in ("pairs.jsonl", "metrics.jsonl", "model.safetensors", "round.json"))
    assert len(load_preferences(output / "round-001" / "pairs.jsonl")) == rounds[0]["pairs"] > 0
    print("online DPO mean reward by round:", [round(r["mean_reward"], 3) for r in rounds])
    assert rounds[-1]["mean_reward"] > rounds[0]["mean_reward"] + 0.05

    # interrupted after round 1: --resume redoes rounds 2-3 only, and ends where the straight run did
    interrupted = tmp_path / "interrupted"
    run_dpo(config(interrupted, rounds=1))
    first_pairs = (interrupted / "round-001" / "pairs.jsonl").read_text()
    run_dpo(config(interrupted, resume=True))
    assert (interrupted / "round-001" / "pairs.jsonl").read_text() == first_pairs  # not resampled
    resumed = [json.loads(line) for line in (interrupted / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in resumed] == [1, "final", 2, 3, "final"]
    assert resumed[-1]["mean_reward"] == pytest.approx(rounds[-1]["mean_reward"], abs=1e-6)


def test_dpo_command_line_smoke_and_resume(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prefs.jsonl", rule_pairs(16, seed=4)
                       + [{"prompt": "Speak:", "responses": [" blue sky", " snow", " coal"], "ranks": [1, 2, 2]}])
    output = tmp_path / "cli"
    args = ["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(output), "--max-steps", "4",
            "--batch-size", "4", "--learning-rate", "1e-3", "--max-length", "64", "--eval-split", "0",
            "--save-every", "2", "--log-every", "1", "--device", "cpu"]
    cli_main(args)
    assert (output / "model.safetensors").exists() and (output / "reference_logps.json").exists()
    assert len([r for r in metrics(output) if "loss" in r]) == 4
    cli_main([*args, "--max-steps", "6", "--resume"])  # continues from the step-4 checkpoint
    steps = [r["step"] for r in metrics(output) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    with pytest.raises(SystemExit):
        cli_main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(output),
                  "--loss", "nope"])


def _watched(chosen: float, rejected: float, relative: bool) -> dict:
    values = {"per_token_chosen": torch.tensor([chosen, chosen]), "per_token_rejected": torch.tensor([rejected] * 2)}
    shifts = (values["per_token_chosen"], values["per_token_rejected"]) if relative else (None, None)
    return {**values, "shift_chosen": shifts[0], "shift_rejected": shifts[1]}


def test_likelihood_watch_warns_once_when_chosen_and_rejected_both_fall(capsys):
    """ARCHITECTURE.md rule 11: both log-probs falling (relative to the reference) is flagged, once; one falling is not."""
    watch = LikelihoodWatch(window=2, tolerance=0.05)
    for step, (chosen, rejected) in enumerate([(0.1, -0.3), (0.0, -0.4), (-0.2, -0.1), (-0.3, -0.2)], start=1):
        watch.record(_watched(chosen, rejected, relative=True))
        watch.on_step(step)
        if step == 2:  # the rejected answers fell, the chosen did not: the intended DPO behaviour
            assert not watch.warned
    assert watch.warned  # window 2: chosen -0.25, rejected -0.15 nats/token below the reference
    assert "below where they started" in " ".join(capsys.readouterr().err.split())  # rich wraps lines
    watch.record(_watched(-1.0, -1.0, relative=True))
    watch.on_step(6)
    assert "below where they started" not in " ".join(capsys.readouterr().err.split())  # once

    # no reference (SimPO, ORPO): the first window is the baseline
    free = LikelihoodWatch(window=1, tolerance=0.05, enabled=False)
    for step, value in enumerate([-2.0, -2.02, -2.2], start=1):
        free.record(_watched(value, value, relative=False))
        free.on_step(step)
        assert free.warned == (step == 3)


def test_without_tree_rows_dpo_shares_prompts_through_the_cache_with_the_same_curve(tmp_path, tiny_llama_dir,
                                                                                     monkeypatch):
    """Attention without custom masks (flash-attention) refuses tree rows: a pair's prompt then runs once
    and both answers continue from its key/value cache, with the loss curve of tree rows."""
    from rlhfkit.models import prefix
    from rlhfkit.train import dpo_offline

    data = write_jsonl(tmp_path / "pairs.jsonl", rule_pairs(16, seed=2))
    run_dpo(dpo_config(tiny_llama_dir, data, tmp_path / "tree", max_steps=4, eval_kl_prompts=0))
    monkeypatch.setattr(prefix, "tree_support", lambda model: False)
    layouts = []
    real = dpo_offline.collate_examples
    monkeypatch.setattr(dpo_offline, "collate_examples",
                        lambda batch, pad, share: layouts.append(share) or real(batch, pad, share))
    run_dpo(dpo_config(tiny_llama_dir, data, tmp_path / "cache", max_steps=4, eval_kl_prompts=0))
    assert layouts and set(layouts) == {"cache"}
    tree, cache = ([r["loss"] for r in metrics(tmp_path / name) if "loss" in r] for name in ("tree", "cache"))
    assert len(tree) == 4 and cache == pytest.approx(tree, abs=1e-5)
