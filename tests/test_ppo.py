"""PPO and the critic-free estimators raise a known reward with bounded KL, mask what they must, and resume."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.reward import RewardModel, load_reward_backbone
from rlhfkit.rewards import RewardSpecError, load_reward_function
from rlhfkit.train.optimizer import TrainingError
from rlhfkit.train.ppo import (
    Rollout,
    ValueModel,
    compute_advantages,
    load_critic,
    response_logprobs,
    response_values,
    run_ppo,
)


def ppo_config(model_dir, rl_files, output, **overrides):
    settings = dict(policy=str(model_dir), reward=f"{rl_files / 'rewards.py'}:blue", prompts=str(rl_files / "prompts.jsonl"),
                    output=str(output), device="cpu", prompts_per_step=16, samples_per_prompt=4, max_new_tokens=8,
                    learning_rate=1e-2, batch_size=64, log_every=1, eval_split=0.0, save_every=0, warmup_ratio=0.0,
                    beta=0.2, sample_every=0, max_steps=20)
    settings.update(overrides)
    return PPOConfig(**settings)


def metrics(output):
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "score" in r]


@pytest.mark.parametrize("estimator", ["gae", "grpo", "rloo", "reinforce++"])
def test_each_estimator_raises_a_known_reward_with_bounded_kl(tmp_path, tiny_model_dir, rl_files, estimator):
    output = tmp_path / estimator
    run_ppo(ppo_config(tiny_model_dir, rl_files, output, estimator=estimator))
    history = metrics(output)
    first, last = history[0], history[-5:]
    final_score = sum(r["score"] for r in last) / len(last)
    assert first["kl_k1"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert final_score > max(0.5, 10 * first["score"]), [round(r["score"], 3) for r in history]
    # 8 tokens of 'blue' (the unpenalised optimum) is ~45 nats from the reference; β=0.2 keeps the policy
    # well inside that
    assert last[-1]["kl_k1"] < 35, [round(r["kl_k1"], 2) for r in history]
    assert all(0 <= r["eos_rate"] <= 1 and r["response_length"] <= 8 for r in history)
    if estimator == "gae":
        assert "explained_variance" in last[-1] and "value_loss" in last[-1]
        assert (output / "critic" / "config.json").exists()
    assert (output / "model.safetensors").exists()


@pytest.mark.parametrize("recipe", ["dapo", "dr_grpo", "gspo", "cispo"])
def test_each_recipe_raises_a_known_reward_with_bounded_kl(tmp_path, tiny_model_dir, rl_files, recipe):
    """DAPO, Dr. GRPO, GSPO and CISPO as --recipe sets them (β stays 0.2 here, given explicitly)."""
    output = tmp_path / recipe
    run_ppo(ppo_config(tiny_model_dir, rl_files, output, recipe=recipe, max_sampling_rounds=1))
    history = metrics(output)
    first, last = history[0], history[-5:]
    final_score = sum(r["score"] for r in last) / len(last)
    assert first["kl_k1"] == pytest.approx(0.0, abs=1e-5)
    assert final_score > max(0.5, 10 * first["score"]), [round(r["score"], 3) for r in history]
    assert last[-1]["kl_k1"] < 35, [round(r["kl_k1"], 2) for r in history]
    if recipe == "dapo":  # dynamic sampling ran and reported what it dropped
        assert all("dropped_groups" in r and r["sampling_rounds"] <= 2 for r in history)


@pytest.mark.parametrize(("estimator", "kl_penalty"), [("rloo", "reward"), ("grpo", "loss")])
def test_a_very_large_beta_keeps_the_policy_at_the_reference(tmp_path, tiny_model_dir, rl_files, estimator,
                                                               kl_penalty):
    output = tmp_path / "large-beta"
    run_ppo(ppo_config(tiny_model_dir, rl_files, output, estimator=estimator, kl_penalty=kl_penalty, beta=100.0,
                       max_steps=12, learning_rate=1e-3))
    history = metrics(output)
    # the same settings with β=0.2 move ~15 nats away (test above); sampling noise alone moves a few tenths
    assert max(r["kl_k1"] for r in history[-4:]) < 0.6, [round(r["kl_k1"], 3) for r in history]
    assert max(r["score"] for r in history[-4:]) < 0.3


def test_adaptive_kl_controller_moves_beta(tmp_path, tiny_model_dir, rl_files):
    output = tmp_path / "adaptive"
    run_ppo(ppo_config(tiny_model_dir, rl_files, output, estimator="grpo", max_steps=6, beta=0.05, target_kl=0.1,
                       kl_horizon=100))
    betas = [r["beta"] for r in metrics(output)]
    assert betas[0] == pytest.approx(0.05) and betas[-1] > betas[0]  # KL above target raises β


def _rollout(tokenizer, prompt_ids, answers, pad_after_eos):
    from rlhfkit.data.chat import pad_batch

    query, query_mask = pad_batch(prompt_ids, tokenizer.pad_token_id, side="left")
    padded = [a + [pad_after_eos] * (6 - len(a)) for a in answers]
    mask = torch.tensor([[1.0] * len(a) + [0.0] * (6 - len(a)) for a in answers])
    return Rollout(query, query_mask, torch.tensor(padded), mask, torch.ones(len(answers), dtype=torch.bool),
                   ["p"] * len(answers), ["a"] * len(answers))


def test_tokens_after_eos_change_no_logprob_value_or_advantage(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    critic = ValueModel(load_reward_backbone(str(tiny_model_dir), tokenizer, seed=1)).eval()
    prompt_ids = [tokenizer.encode("What colour is snow?"), tokenizer.encode("Hello")]
    eos = tokenizer.eos_token_id
    answers = [[11, 12, eos], [13, 14, 15, 16, eos]]
    a = _rollout(tokenizer, prompt_ids, answers, tokenizer.pad_token_id)
    b = _rollout(tokenizer, prompt_ids, answers, 42)  # garbage after EOS instead of padding
    b.response[0, 3:] = torch.tensor([7, 8, 9])
    with torch.no_grad():
        logprobs_a, entropy_a = response_logprobs(policy, a, temperature=0.7, with_entropy=True)
        logprobs_b, entropy_b = response_logprobs(policy, b, temperature=0.7, with_entropy=True)
        values_a, values_b = response_values(critic, a), response_values(critic, b)
    assert torch.allclose(logprobs_a, logprobs_b) and torch.allclose(entropy_a, entropy_b)
    assert torch.allclose(values_a, values_b)
    assert (logprobs_a[0, 3:] == 0).all() and (values_a[0, 3:] == 0).all()
    kl = torch.zeros_like(logprobs_a)
    for estimator in ("gae", "reinforce++"):
        adv_a, _ = compute_advantages(estimator, torch.tensor([1.0, 0.0]), kl, values_a, a.mask, 0.1, 1, 1.0, 0.95,
                                      True)
        adv_b, _ = compute_advantages(estimator, torch.tensor([1.0, 0.0]), kl, values_b, b.mask, 0.1, 1, 1.0, 0.95,
                                      True)
        assert torch.allclose(adv_a, adv_b)


def test_response_logprobs_use_the_sampling_temperature(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    rollout = _rollout(tokenizer, [tokenizer.encode("Hi")], [[20, 21, tokenizer.eos_token_id]], tokenizer.pad_token_id)
    with torch.no_grad():
        got, _ = response_logprobs(policy, rollout, temperature=0.5)
        ids = torch.cat([rollout.query, rollout.response], 1)
        logits = policy(ids).logits[0, rollout.query.shape[1] - 1 : -1][:3] / 0.5
        expected = torch.log_softmax(logits, -1).gather(-1, rollout.response[0, :3, None]).squeeze(-1)
    assert torch.allclose(got[0, :3], expected, atol=1e-5)


def test_critic_from_a_reward_model_reads_the_reward_at_the_last_token(tmp_path, tiny_model_dir, rl_files):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_reward_backbone(str(tiny_model_dir), tokenizer, seed=3)
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    scorer = RewardModel.from_pretrained(tmp_path / "rm", device="cpu")
    # through the trainer's own entry point (ARCHITECTURE.md rule 8): the reward model's head, not a new zero one
    config = ppo_config(tiny_model_dir, rl_files, tmp_path / "x", estimator="gae", reward=str(tmp_path / "rm"))
    critic = load_critic(config, tokenizer, torch.float32).eval()
    from rlhfkit.data.chat import encode_prompt

    prompt = [{"role": "user", "content": "What colour is snow?"}]
    answer = tokenizer.encode("Snow is white.") + [tokenizer.eos_token_id]
    rollout = _rollout(tokenizer, [encode_prompt(tokenizer, prompt)], [answer], tokenizer.pad_token_id)
    with torch.no_grad():
        values = critic(**rollout.model_inputs())
    # the value at the answer's last token (EOS) is what the reward model scores for the whole answer
    last = rollout.query.shape[1] + len(answer) - 1
    assert values[0, last].item() == pytest.approx(scorer.score([prompt], ["Snow is white."])[0], abs=1e-4)


def test_a_critic_without_a_reward_model_starts_at_zero(tmp_path, tiny_model_dir, rl_files):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    critic = load_critic(ppo_config(tiny_model_dir, rl_files, tmp_path / "x", estimator="gae"), tokenizer,
                         torch.float32).eval()
    rollout = _rollout(tokenizer, [tokenizer.encode("Hello")], [[11, 12, tokenizer.eos_token_id]],
                       tokenizer.pad_token_id)
    with torch.no_grad():
        values = response_values(critic, rollout)
    assert (values == 0).all()
    critic(**rollout.model_inputs()).mean().backward()  # and it can learn: the zero head still has a gradient
    assert critic.head.weight.grad.abs().sum() > 0


def test_resume_after_interruption_gives_identical_weights(tmp_path, tiny_model_dir, rl_files):
    settings = dict(estimator="gae", max_steps=4, save_every=2, ppo_epochs=2, num_minibatches=2, batch_size=16,
                    target_kl=1.0, kl_horizon=100)
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "straight", **settings))

    class Stop(Exception):
        pass

    def interrupt(step):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "resumed", **settings), on_step=interrupt)
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "resumed", resume=True, **settings))
    for part in ("model.safetensors", "critic/model.safetensors"):
        straight, resumed = load_file(tmp_path / "straight" / part), load_file(tmp_path / "resumed" / part)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), part
    straight, resumed = metrics(tmp_path / "straight")[-1], metrics(tmp_path / "resumed")[-1]
    assert straight["step"] == resumed["step"] == 4
    assert straight["beta"] == resumed["beta"] != 0.2  # the KL controller's state was restored
    assert straight["score"] == resumed["score"]


def test_lora_policy_uses_the_disabled_adapter_as_reference(tmp_path, tiny_model_dir, rl_files):
    output = tmp_path / "lora"
    run_ppo(ppo_config(tiny_model_dir, rl_files, output, estimator="grpo", lora_r=4, max_steps=3))
    history = metrics(output)
    assert history[0]["kl_k1"] == pytest.approx(0.0, abs=1e-5)
    assert history[-1]["kl_k1"] != 0.0  # the adapters moved the policy away from the frozen base
    assert (output / "adapter").is_dir() and (output / "model.safetensors").exists()


def test_a_separate_reference_keeps_the_kl_to_it_when_continuing_an_earlier_policy(tmp_path, tiny_model_dir,
                                                                                   rl_files):
    first = tmp_path / "round-1"
    run_ppo(ppo_config(tiny_model_dir, rl_files, first, estimator="grpo", max_steps=4))
    moved = metrics(first)[-1]["kl_k1"]
    assert moved > 0.05
    alone, against_start = tmp_path / "alone", tmp_path / "against-start"
    run_ppo(ppo_config(first, rl_files, alone, estimator="grpo", max_steps=1))
    run_ppo(ppo_config(first, rl_files, against_start, estimator="grpo", max_steps=1, reference=str(tiny_model_dir)))
    assert metrics(alone)[0]["kl_k1"] == pytest.approx(0.0, abs=1e-5)  # its own start is its reference
    assert metrics(against_start)[0]["kl_k1"] > 0.05  # the KL to the original start carries on
    with pytest.raises(ConfigError, match="--reference .* --lora-r"):
        run_ppo(ppo_config(first, rl_files, tmp_path / "lora", lora_r=4, reference=str(tiny_model_dir)))


def test_non_finite_rewards_and_bad_reward_specs_are_clear_errors(tmp_path, tiny_model_dir, rl_files):
    with pytest.raises(RewardSpecError, match="non-finite"):
        run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "nan", reward=f"{rl_files / 'rewards.py'}:broken",
                           max_steps=1))
    with pytest.raises(RewardSpecError, match="returned 1 scores for 2"):
        load_reward_function(f"{rl_files / 'rewards.py'}:too_few")(["a", "b"], ["x", "y"])
    with pytest.raises(RewardSpecError, match="no callable 'nope'"):
        load_reward_function(f"{rl_files / 'rewards.py'}:nope")
    with pytest.raises(RewardSpecError, match="expected a reward-model folder"):
        load_reward_function("not-a-folder")
    with pytest.raises(ConfigError, match="at least 2"):
        run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "x", estimator="grpo", samples_per_prompt=1))
    assert issubclass(TrainingError, RuntimeError)


def test_missing_eos_score_replaces_the_reward_of_unfinished_answers(tmp_path, tiny_model_dir, rl_files):
    from rlhfkit.train.ppo import PPOTrainer

    trainer = PPOTrainer(ppo_config(tiny_model_dir, rl_files, tmp_path / "eos", estimator="rloo",
                                    missing_eos_score=-5.0, reward_clip=3.0))
    tokenizer = trainer.tokenizer
    rollout = _rollout(tokenizer, [[5], [6]], [[1, 2, tokenizer.eos_token_id], [3, 4, 5]], tokenizer.pad_token_id)
    rollout.finished = torch.tensor([True, False])
    rollout.texts = ["blue blue blue blue", "blue"]
    scores, raw = trainer.score(rollout)
    assert raw.tolist() == [4.0, 1.0] and scores.tolist() == [3.0, -3.0]  # clipped to ±3 after the penalty


def test_cli_runs_ppo(tmp_path, tiny_model_dir, rl_files):
    output = tmp_path / "cli"
    main(["ppo", "--policy", str(tiny_model_dir), "--reward", f"{rl_files / 'rewards.py'}:blue",
          "--prompts", str(rl_files / "prompts.jsonl"), "--output", str(output), "--device", "cpu",
          "--max-steps", "2", "--prompts-per-step", "4", "--estimator", "rloo", "--max-new-tokens", "4",
          "--eval-split", "0.25", "--sample-every", "1", "--track-reward", f"{rl_files / 'rewards.py'}:blue"])
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_kl" in r for r in records) and sum("score" in r for r in records) == 2
    # the watched reward is logged beside the optimised one (here the same function, so the same mean)
    assert all(r["track_score"] == pytest.approx(r["score"]) for r in records if "score" in r)
    assert all(r["eval_track_score"] == pytest.approx(r["eval_score"]) for r in records if "eval_score" in r)
    assert (output / "samples.jsonl").read_text().count("\n") >= 3
    with pytest.raises(SystemExit) as exit_info:
        main(["ppo", "--policy", str(tiny_model_dir), "--reward", "nowhere", "--prompts",
              str(rl_files / "prompts.jsonl"), "--output", str(tmp_path / "bad"), "--device", "cpu"])
    assert exit_info.value.code == 2


def assert_same_training(first: Path, second: Path, weights_atol: float) -> None:
    """Two runs' final weights (within ``weights_atol``) and logged metrics agree."""
    a_weights, b_weights = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.allclose(a_weights[k], b_weights[k], atol=weights_atol) for k in a_weights)
    for a, b in zip(metrics(first), metrics(second), strict=True):
        for name in ("kl_k1", "kl_k3", "entropy", "policy_loss", "score"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6), name


def test_single_update_reusing_its_own_logprobs_equals_a_separate_old_pass(tmp_path, tiny_model_dir, rl_files,
                                                                           monkeypatch):
    import rlhfkit.train.ppo_experience as ppo_experience

    settings = dict(estimator="grpo", kl_penalty="loss", ppo_epochs=1, num_minibatches=1, max_steps=3, batch_size=16)
    assert ppo_experience.reuses_update_logprobs(ppo_config(tiny_model_dir, rl_files, tmp_path / "x", **settings))
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "reused", **settings))
    monkeypatch.setattr(ppo_experience, "reuses_update_logprobs", lambda config: False)
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "separate", **settings))
    assert_same_training(tmp_path / "reused", tmp_path / "separate", weights_atol=1e-6)


def test_update_forward_before_the_rewards_equals_a_separate_old_pass(tmp_path, tiny_model_dir, rl_files,
                                                                      monkeypatch):
    """RLOO with the KL in the reward, one update on one micro-batch: the update's forward runs first and
    its detached log-probs are the old ones; the same training as with a separate old-log-prob pass."""
    import rlhfkit.train.ppo_experience as ppo_experience

    settings = dict(estimator="rloo", kl_penalty="reward", kl_estimator="k1", ppo_epochs=1, num_minibatches=1,
                    max_steps=3, batch_size=64, entropy_coef=0.01)
    config = ppo_config(tiny_model_dir, rl_files, tmp_path / "x", **settings)
    assert ppo_experience.forwards_before_rewards(config, config.prompts_per_step * config.samples_per_prompt)
    assert not ppo_experience.forwards_before_rewards(config, 65)  # more than one micro-batch: a separate pass
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "early", **settings))
    monkeypatch.setattr(ppo_experience, "forwards_before_rewards", lambda config, size: False)
    run_ppo(ppo_config(tiny_model_dir, rl_files, tmp_path / "separate", **settings))
    # the ratio is exactly 1 here and 1 +- 1e-7 there; Adam at lr 1e-2 turns that into ~1e-5 after 3 steps
    assert_same_training(tmp_path / "early", tmp_path / "separate", weights_atol=1e-4)


def test_left_padded_prompts_give_the_same_logprobs_and_values_as_each_row_alone(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    policy = load_causal_lm(str(tiny_model_dir), tokenizer).eval()
    critic = ValueModel(load_reward_backbone(str(tiny_model_dir), tokenizer, seed=2)).eval()
    eos = tokenizer.eos_token_id
    prompt_ids = [tokenizer.encode("What colour is snow? Tell me in detail."), tokenizer.encode("Hi")]
    answers = [[11, 12, eos], [13, 14, 15, 16, eos]]
    batch = _rollout(tokenizer, prompt_ids, answers, tokenizer.pad_token_id)
    assert (batch.query_mask == 0).any()  # the short prompt is left-padded
    with torch.no_grad():
        logprobs, values = response_logprobs(policy, batch, 1.0)[0], response_values(critic, batch)
        for row in range(2):
            alone = _rollout(tokenizer, [prompt_ids[row]], [answers[row]], tokenizer.pad_token_id)
            assert torch.allclose(response_logprobs(policy, alone, 1.0)[0][0], logprobs[row], atol=1e-5)
            assert torch.allclose(response_values(critic, alone)[0], values[row], atol=1e-5)
