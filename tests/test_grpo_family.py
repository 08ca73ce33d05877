"""The GRPO family's math against hand-computed values, its recipes as presets, and DAPO's dynamic sampling."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import PPOConfig
from rlhfkit.config_parse import build_config
from rlhfkit.recipes import RECIPES
from rlhfkit.rl_losses import (
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    aggregation_weights,
    cispo_token_loss,
    group_advantages,
    overlong_penalty,
    policy_loss,
    ppo_clip_token_loss,
    sequence_log_ratio,
    uniform_groups,
)
from rlhfkit.rollout.logprobs import answer_rollout, join_rollouts
from rlhfkit.train.ppo_experience import RewardScorer
from rlhfkit.train.ppo_sampling import sample_scored_batch


def test_the_three_aggregations_by_hand():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    losses = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])
    total = {m: (losses * aggregation_weights(mask, m, num_tokens=4, num_answers=2, max_tokens=4)).sum().item()
             for m in LOSS_AGGREGATIONS}
    assert total["token-mean"] == pytest.approx((1 + 2 + 3 + 4) / 4)  # 2.5: every token weighs 1/4
    assert total["sequence-mean"] == pytest.approx((6 / 3 + 4 / 1) / 2)  # 3.0: every answer weighs 1/2
    assert total["token-sum-norm"] == pytest.approx(10 / (2 * 4))  # 1.25: Dr. GRPO's constant divisor
    # split into micro-batches, the global counts make the parts add up to the whole
    parts = sum((losses[i : i + 1] * aggregation_weights(mask[i : i + 1], "sequence-mean", 4, 2, 4)).sum()
                for i in range(2))
    assert parts.item() == pytest.approx(total["sequence-mean"])


def test_clip_higher_lets_a_good_low_probability_token_grow_further():
    log_ratio = torch.tensor([math.log(1.25)], requires_grad=True)
    advantage = torch.tensor([1.0])
    symmetric, clipped = ppo_clip_token_loss(log_ratio, advantage, 0.2, 0.2)
    assert symmetric.item() == pytest.approx(-1.2) and clipped.item()
    (grad,) = torch.autograd.grad(symmetric.sum(), log_ratio)
    assert grad.item() == 0.0  # PPO stops this token at 1 + ε
    higher, clipped = ppo_clip_token_loss(log_ratio, advantage, 0.2, 0.28)
    assert higher.item() == pytest.approx(-1.25) and not clipped.item()
    (grad,) = torch.autograd.grad(higher.sum(), log_ratio)
    assert grad.item() == pytest.approx(-1.25)  # descending the loss raises the token's probability
    # the lower bound still applies to a bad token: ratio 0.7 with A < 0 is clipped at 0.8
    low, clipped = ppo_clip_token_loss(torch.tensor([math.log(0.7)]), torch.tensor([-1.0]), 0.2, 0.28)
    assert low.item() == pytest.approx(0.8) and clipped.item()


def test_dual_clip_bounds_the_loss_of_negative_advantages_only():
    log_ratio = torch.tensor([math.log(5.0), math.log(5.0)], requires_grad=True)
    advantages = torch.tensor([-1.0, 1.0])
    plain, _ = ppo_clip_token_loss(log_ratio, advantages, 0.2, 0.2)
    assert plain.tolist() == pytest.approx([5.0, -1.2])  # -ρ·A = 5 for the bad token
    dual, bounded = ppo_clip_token_loss(log_ratio, advantages, 0.2, 0.2, dual_clip=3.0)
    assert dual.tolist() == pytest.approx([3.0, -1.2]) and bounded.tolist() == [True, True]
    (grad,) = torch.autograd.grad(dual.sum(), log_ratio)
    assert grad.tolist() == [0.0, 0.0]


def test_gspo_uses_one_length_normalised_ratio_per_answer_and_shares_its_gradient():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    log_ratio = torch.tensor([[0.1, 0.3, 7.0], [0.0, 0.3, 0.6]])
    assert torch.allclose(sequence_log_ratio(log_ratio, mask), torch.tensor([[0.2, 0.2, 0.0], [0.3, 0.3, 0.3]]))
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.5, -2.0]], requires_grad=True)
    old = logprobs.detach() - log_ratio
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]) * mask
    weights = aggregation_weights(mask, "sequence-mean", mask.sum(), 2, 3)
    loss, _ = policy_loss("gspo", logprobs, old, advantages, mask, weights, clip_low=0.5, clip_high=0.5)
    # per answer -min(s·A, clip(s)·A) with s = exp(mean log-ratio), inside the bounds here; mean over answers
    assert loss.item() == pytest.approx((-math.exp(0.2) + math.exp(0.3)) / 2, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad[0, 0] == pytest.approx(grad[0, 1].item()) and grad[0, 2] == 0  # one gradient per answer
    assert grad[1, 0] == pytest.approx(grad[1, 2].item())
    assert grad[0, 0] < 0 < grad[1, 0]  # the good answer's tokens rise, the bad one's fall


def test_cispo_clips_the_weight_but_never_drops_a_token_gradient():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    log_ratio = torch.tensor([[math.log(2.0), math.log(0.5)]])  # both far outside PPO's 1 ± 0.2
    advantages = torch.tensor([[1.0, 1.0]])
    per_token, clipped = cispo_token_loss(logprobs, log_ratio, advantages, clip_low=0.2, clip_high=0.28)
    assert per_token.tolist()[0] == pytest.approx([1.28 * 1.0, 0.8 * 2.0])  # -w·A·log π with w = clip(ρ)
    assert clipped.tolist() == [[True, True]]
    (grad,) = torch.autograd.grad(per_token.sum(), logprobs)
    assert grad.tolist()[0] == pytest.approx([-1.28, -0.8])  # d/dlog π of -sg(w)·A·log π: the weight has none
    # through policy_loss, the ratio comes from the log-probs themselves and still carries no gradient
    old = logprobs.detach() - log_ratio
    loss, _ = policy_loss("cispo", logprobs, old, advantages, torch.ones(1, 2), torch.ones(1, 2) / 2, 0.2, 0.28)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert grad.tolist()[0] == pytest.approx([-1.28 / 2, -0.8 / 2])
    assert POLICY_LOSSES == ("ppo", "gspo", "cispo")


def test_group_advantages_with_and_without_the_std_division():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    assert group_advantages(scores, 3, "grpo", "none").tolist() == pytest.approx([-1, 0, 1, 0, 0, 0])
    assert group_advantages(scores, 3, "grpo", "group").tolist() == pytest.approx(
        [-1 / (1 + 1e-4), 0, 1 / (1 + 1e-4), 0, 0, 0])  # the first group's std is 1; the second's 0
    batch_std = scores.std().item()
    assert group_advantages(scores, 3, "grpo", "batch").tolist() == pytest.approx(
        [-1 / (batch_std + 1e-4), 0, 1 / (batch_std + 1e-4), 0, 0, 0])
    with pytest.raises(ValueError, match="samples-per-prompt 2 or more"):
        group_advantages(scores, 1, "grpo")
    assert uniform_groups(scores, 3).tolist() == [False, True]


def test_overlong_penalty_falls_linearly_over_the_buffer():
    lengths = torch.tensor([5, 8, 9, 10])
    # L_max 10, buffer 0.2 -> L_cache 2: free up to 8 tokens, then -0.5 per token down to -1 at 10
    assert overlong_penalty(lengths, 10, 0.2).tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0])
    assert overlong_penalty(lengths, 10, 0.2, penalty=2.0).tolist() == pytest.approx([0.0, 0.0, -1.0, -2.0])
    assert overlong_penalty(lengths, 10, 0.0).tolist() == [0.0] * 4


REQUIRED = dict(policy="p", reward="r", prompts="q", output="o")


@pytest.mark.parametrize("recipe", ["dapo", "dr_grpo", "gspo", "cispo"])
def test_recipes_set_their_knobs_and_explicit_values_win(recipe):
    config = PPOConfig(**REQUIRED, recipe=recipe)
    assert all(getattr(config, name) == value for name, value in RECIPES[recipe].items())
    assert config.estimator == "grpo"
    # through the command line / YAML path, a value given explicitly wins even when it equals the default
    explicit = build_config(PPOConfig, {"clip_range": 0.2}, {**REQUIRED, "recipe": recipe, "beta": 0.05})
    assert explicit.beta == 0.05 and explicit.clip_range == 0.2
    assert explicit.loss_aggregation == RECIPES[recipe]["loss_aggregation"]


def scored_rollouts(groups: list[list[float]], group: int):
    """A fake sampler: ``draw(indices, round)`` gives prompt i's K answers, and the reward reads their scores."""
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)

    def draw(indices, round_):
        answers = [[2 + k] * (1 + k % 2) + [1] for _ in indices for k in range(group)]
        rollout = answer_rollout([[5] * (1 + i % 3) for i in indices for _ in range(group)], answers, tokenizer,
                                 torch.device("cpu"))
        rollout.prompts = [i for i in indices for _ in range(group)]
        rollout.texts = [f"{i}:{k}" for i in indices for k in range(group)]
        return rollout

    def reward(prompts, texts):
        return [groups[int(t.split(":")[0])][int(t.split(":")[1])] for t in texts]

    return draw, reward, tokenizer


def test_dynamic_sampling_keeps_equal_score_groups_out_and_the_batch_full():
    group = 2
    # prompts 0-3 tie (no signal); 4-9 do not
    groups = [[1.0, 1.0]] * 4 + [[0.0, 1.0]] * 6
    draw, reward, tokenizer = scored_rollouts(groups, group)
    config = PPOConfig(**REQUIRED, estimator="grpo", dynamic_sampling=True, max_sampling_rounds=3, reward_clip=0)
    rounds = iter([[4, 5], [6, 7, 8]])
    batch = sample_scored_batch(draw, [0, 1, 2, 3], RewardScorer(reward, config), config, group,
                                lambda round_: next(rounds), tokenizer.pad_token_id)
    assert len(batch.rollout) == 4 * group  # full: 4 prompts of 2 answers
    assert sorted(set(batch.rollout.prompts)) == [4, 5, 6, 7]  # no tied group reaches the loss
    assert batch.metrics == {"dropped_groups": 4.0, "sampling_rounds": 3.0, "filled_groups": 0.0}
    assert batch.raw_scores.tolist() == [reward(None, [t])[0] for t in batch.rollout.texts]
    # every answer keeps its own tokens through the re-padding
    assert batch.rollout.mask.sum(1).tolist() == [2.0, 3.0] * 4

    # out of rounds: the batch is filled with tied groups (their advantage is 0) to keep its size
    config.max_sampling_rounds = 0
    batch = sample_scored_batch(draw, [0, 4, 1, 2], RewardScorer(reward, config), config, group,
                                lambda round_: [], tokenizer.pad_token_id)
    assert batch.rollout.prompts == [4, 4, 0, 0, 1, 1, 2, 2] and batch.metrics["filled_groups"] == 3.0


def test_joined_rollouts_give_each_answer_the_same_tokens():
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    a = answer_rollout([[7]], [[3, 1]], tokenizer, torch.device("cpu"))
    b = answer_rollout([[8, 8, 8]], [[4, 4, 4, 1]], tokenizer, torch.device("cpu"))
    joined = join_rollouts([a, b], tokenizer.pad_token_id)
    assert joined.query.tolist() == [[0, 0, 7], [8, 8, 8]] and joined.query_mask.tolist() == [[0, 0, 1], [1, 1, 1]]
    assert joined.response.tolist() == [[3, 1, 0, 0], [4, 4, 4, 1]]
    assert joined.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
