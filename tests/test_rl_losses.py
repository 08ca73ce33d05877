"""The RL math of losses.py against hand-computed values."""

import math

import pytest
import torch

from rlhfkit.rl_losses import (
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    entropy_from_logits,
    entropy_from_logprobs,
    gae_advantages,
    group_advantages,
    kl_estimates,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
)


def test_k1_and_k3_means_equal_the_exact_kl_and_k3_is_never_negative():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimates = kl_estimates(p.log()[samples], q.log()[samples])
    assert float(estimates["k1"].mean()) == pytest.approx(exact, abs=5e-3)
    assert float(estimates["k3"].mean()) == pytest.approx(exact, abs=5e-3)
    assert (estimates["k1"] < 0).any()  # k1 is negative on some tokens
    random_logprobs = torch.randn(10_000) * 3
    assert (kl_estimates(random_logprobs, torch.randn(10_000) * 3)["k3"] >= 0).all()


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.5, 1.0, 2.0], [1.0, -1.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = kl_penalized_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.1)
    expected = torch.tensor([[-0.05, -0.1 + 2.0, 0.0], [-0.1, 0.1, -0.3 - 1.0]])
    assert torch.allclose(rewards, expected)


def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.8, 9.0]])  # the last position is padding: its value must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    d2 = 1.0 - 0.8  # no next state after the last real token
    d1 = 0.0 + gamma * 0.8 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.4, a2 + 0.8, 0.0]]))


def test_gae_with_lambda_one_and_gamma_one_is_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.5]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    mask = torch.ones(1, 3)
    advantages, _ = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    returns = discounted_returns(rewards, mask, gamma=1.0)
    assert torch.allclose(returns, torch.tensor([[1.4, 1.3, 1.5]]))
    assert torch.allclose(advantages, returns - values)


def test_discounted_returns_stop_at_the_mask():
    rewards = torch.tensor([[1.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(discounted_returns(rewards, mask, gamma=0.5), torch.tensor([[1.0 + 0.5 * 2.0, 2.0, 0.0]]))


def test_group_advantages_grpo_and_rloo():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0])
    rloo = group_advantages(scores, 3, "rloo")
    # each answer minus the mean of the other two of its prompt
    assert torch.allclose(rloo, torch.tensor([1 - 2.5, 2 - 2.0, 3 - 1.5, 6 - 0.0, 0 - 3.0, 0 - 3.0]))
    grpo = group_advantages(scores, 3, "grpo")
    std_first = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2) / 2)  # unbiased
    assert grpo[0].item() == pytest.approx((1 - 2) / (std_first + 1e-4))
    assert grpo[3].item() == pytest.approx((6 - 2) / (math.sqrt((16 + 4 + 4) / 2) + 1e-4))
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(scores, 1, "grpo")


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.7, 1.1]]))
    advantages = torch.tensor([[1.0, -2.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    # token 0: min(1.5*1, 1.2*1) = 1.2; token 1: min(0.7*-2, 0.8*-2) = -1.6; token 2 masked
    assert loss.item() == pytest.approx(-(1.2 - 1.6) / 2)
    assert stats["clip_fraction"].item() == pytest.approx(1.0)  # both real tokens are clipped
    # approx KL(old || new) by k3 with log ratio new - old
    expected_kl = sum(math.exp(-math.log(r)) - 1 + math.log(r) for r in (1.5, 0.7)) / 2
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-5)


def test_clipped_policy_loss_gradient_raises_good_tokens_and_respects_the_normaliser():
    logprobs = torch.zeros(1, 2, requires_grad=True)
    loss, _ = clipped_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2),
                                  num_tokens=4.0)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-0.25, 0.25]]))  # descent raises token 0, lowers token 1


def test_clipped_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.5]])
    returns = torch.tensor([[2.0, 0.0]])
    loss = clipped_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: V clipped to 0.7: max((1-2)^2, (0.7-2)^2) = 1.69; token 1: V clipped to 0.3: max(0, 0.3^2) = 0.09
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)


def test_masked_whiten_and_mean_ignore_masked_entries():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert torch.allclose(masked_whiten(values, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0.0, abs=1e-6)
    # p = (0.5, 0.25, 0.25): H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2, from the log-probs directly
    logprobs = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert entropy_from_logprobs(logprobs).item() == pytest.approx(1.5 * math.log(2))
    assert entropy_from_logits(logprobs + 3.0).item() == pytest.approx(1.5 * math.log(2))


def test_clipped_losses_ignore_whatever_is_in_masked_positions():
    # ARCHITECTURE.md rule 5: the same real tokens with different garbage after EOS give the same loss and gradient
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    real = torch.tensor([[-1.0, -2.0, 0.0, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    garbage = torch.tensor([[0.0, 0.0, 40.0, -300.0], [0.0, 25.0, -80.0, 7.0]])
    old = torch.tensor([[-1.2, -1.5, 0.0, 0.0], [-0.7, 0.0, 0.0, 0.0]])
    advantages = torch.tensor([[1.0, -2.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]])

    def policy_loss(extra):
        logprobs = (real + extra).requires_grad_()
        loss, metrics = clipped_policy_loss(logprobs, old - extra / 2, advantages + extra * 3, mask)
        loss.backward()
        return loss.item(), logprobs.grad * mask, metrics["clip_fraction"].item(), metrics["approx_kl"].item()

    clean, dirty = policy_loss(torch.zeros_like(real)), policy_loss(garbage)
    assert clean[0] == pytest.approx(dirty[0]) and torch.allclose(clean[1], dirty[1])
    assert clean[2:] == pytest.approx(dirty[2:])

    values, returns = torch.tensor([[0.5, 1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]), torch.ones(2, 4)
    clean_value = clipped_value_loss(values, values - 0.1, returns, mask)
    dirty_value = clipped_value_loss(values + garbage, values - 0.1 - garbage, returns + garbage, mask)
    assert clean_value.item() == pytest.approx(dirty_value.item())


def test_kl_controller_is_proportional_with_the_error_clipped_at_a_fifth():
    from rlhfkit.rl_losses import KLController

    fixed = KLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.beta == 0.1  # no target: β stays
    high = KLController(0.1, target=6.0, horizon=1000)
    high.update(100.0, 50)  # error clipped to +0.2: β·(1 + 0.2·50/1000)
    assert high.beta == pytest.approx(0.1 * 1.01)
    low = KLController(0.1, target=6.0, horizon=1000)
    low.update(4.5, 100)  # error 4.5/6 - 1 = -0.25, clipped to -0.2
    assert low.beta == pytest.approx(0.1 * (1 - 0.02))
    near = KLController(0.1, target=6.0, horizon=1000)
    near.update(6.6, 100)  # error +0.1, inside the clip
    assert near.beta == pytest.approx(0.1 * 1.01)


def test_ppo_defaults_follow_the_checklist():
    # ARCHITECTURE.md rule 9: GAE with γ = 1, λ = 0.95, whitened advantages, clipped policy (0.2) and value losses
    from rlhfkit.config import PPOConfig

    defaults = PPOConfig(policy="p", reward="r", prompts="x", output="o")
    assert (defaults.estimator, defaults.gamma, defaults.lam) == ("gae", 1.0, 0.95)
    assert defaults.whiten_advantages and defaults.clip_range == 0.2 and defaults.value_clip == 0.2


def test_engine_mismatch_and_truncated_importance_weights_match_hand_computed_values():
    from rlhfkit.rl_losses import engine_mismatch, truncated_importance_weights

    trainer = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, 9.0]])
    engine = torch.tensor([[-1.2, -1.5, -0.5], [-0.1, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last token is padding: never counted
    metrics = engine_mismatch(trainer, engine, mask)
    # |Δ| = 0.2, 0.5, 0, 0, 1 over 5 tokens
    assert metrics["engine_logprob_diff"].item() == pytest.approx(1.7 / 5)
    # k3 with log r = trainer - engine: (e^x - 1) - x for x = 0.2, -0.5, 0, 0, -1
    k3 = [math.expm1(x) - x for x in (0.2, -0.5, 0.0, 0.0, -1.0)]
    assert metrics["engine_kl"].item() == pytest.approx(sum(k3) / 5)
    weights = truncated_importance_weights(trainer.requires_grad_(), engine, mask, cap=1.1)
    # ratios e^0.2 = 1.2214 (capped at 1.1), e^-0.5, 1, 1, e^-1; padding 0
    expected = [[1.1, math.exp(-0.5), 1.0], [1.0, math.exp(-1.0), 0.0]]
    assert weights.tolist() == [pytest.approx(row) for row in expected]
    assert not weights.requires_grad  # a weight, not a path for the gradient
