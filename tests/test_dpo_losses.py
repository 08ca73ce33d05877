"""The DPO family's losses against hand-computed values, and the direction of their gradients.

Fixed log-probs used throughout: the policy gives the chosen answer -4.0 and the rejected -6.0 (summed
over tokens), the reference -5.0 and -5.5; so the log-ratios are +1.0 and -0.5 and h = 1.5.
"""

import math

import pytest
import torch

from rlhfkit.losses import (
    conservative_dpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)

BETA = 0.1
EPSILON = 0.1


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)."""
    return math.log(1 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def fixed_logps():
    """(policy chosen, policy rejected, reference chosen, reference rejected), policy ones with grad."""
    policy_chosen = torch.tensor([-4.0], requires_grad=True)
    policy_rejected = torch.tensor([-6.0], requires_grad=True)
    return policy_chosen, policy_rejected, torch.tensor([-5.0]), torch.tensor([-5.5])


def gradients(loss, policy_chosen, policy_rejected):
    loss.sum().backward()
    return policy_chosen.grad.item(), policy_rejected.grad.item()


def test_dpo_loss_hand_computed_and_gradient_direction():
    chosen, rejected, ref_chosen, ref_rejected = fixed_logps()
    loss = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA)
    # -log σ(β·h) with β·h = 0.1 · 1.5 = 0.15
    assert loss.item() == pytest.approx(softplus(-0.15), rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen, rejected)
    # d/d logπ(y_w) = -β·σ(-β·h): descent raises the chosen log-prob and lowers the rejected one equally
    assert grad_chosen == pytest.approx(-BETA * sigmoid(-0.15), rel=1e-6)
    assert grad_rejected == pytest.approx(BETA * sigmoid(-0.15), rel=1e-6)


def test_dpo_reference_enters_only_through_log_ratios():
    chosen, rejected, ref_chosen, ref_rejected = fixed_logps()
    shifted = dpo_loss(chosen + 3.0, rejected + 3.0, ref_chosen + 3.0, ref_rejected + 3.0, BETA)
    assert shifted.item() == pytest.approx(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA).item())
    # policy equal to the reference: h = 0 and the loss is log 2, whatever the log-probs
    assert dpo_loss(ref_chosen, ref_rejected, ref_chosen, ref_rejected, BETA).item() == pytest.approx(math.log(2))


def test_conservative_dpo_hand_computed_and_gradient_direction():
    chosen, rejected, ref_chosen, ref_rejected = fixed_logps()
    loss = conservative_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA, EPSILON)
    expected = 0.9 * softplus(-0.15) + 0.1 * softplus(0.15)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen, rejected)
    assert grad_chosen < 0 < grad_rejected
    # the target is a finite margin: with σ(β·h) above 1-ε the gradient pushes back
    far = torch.tensor([40.0], requires_grad=True)
    conservative_dpo_loss(far, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), BETA, EPSILON).backward()
    assert far.grad.item() > 0  # β·h = 4: σ(4) ≈ 0.982 > 0.9


def test_robust_dpo_hand_computed_and_gradient_direction():
    chosen, rejected, ref_chosen, ref_rejected = fixed_logps()
    loss = robust_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA, EPSILON)
    expected = (0.9 * softplus(-0.15) - 0.1 * softplus(0.15)) / (1 - 2 * 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen, rejected)
    assert grad_chosen < 0 < grad_rejected
    # unbiased: averaged over a label flipped with probability ε, it is the clean DPO loss
    flipped = robust_dpo_loss(rejected, chosen, ref_rejected, ref_chosen, BETA, EPSILON)
    noisy_mean = 0.9 * loss + 0.1 * flipped
    assert noisy_mean.item() == pytest.approx(softplus(-0.15), rel=1e-6)
    with pytest.raises(ValueError):
        robust_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA, 0.5)


def test_ipo_hand_computed_and_pulls_to_its_target():
    chosen, rejected, ref_chosen, ref_rejected = fixed_logps()
    loss = ipo_loss(chosen, rejected, ref_chosen, ref_rejected, BETA)
    # (h - 1/(2β))² = (1.5 - 5)²
    assert loss.item() == pytest.approx(12.25, rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen, rejected)
    assert grad_chosen == pytest.approx(2 * (1.5 - 5), rel=1e-6) and grad_chosen < 0 < grad_rejected
    # beyond the target h = 5 the paper's regulariser pushes back: chosen down, rejected up
    past = torch.tensor([3.0], requires_grad=True)
    ipo_loss(past, torch.tensor([-3.0]), torch.tensor([0.0]), torch.tensor([0.0]), BETA).backward()
    assert past.grad.item() == pytest.approx(2 * (6 - 5)) and past.grad.item() > 0


def test_simpo_hand_computed_and_gradient_direction():
    chosen_mean = torch.tensor([-0.8], requires_grad=True)
    rejected_mean = torch.tensor([-1.2], requires_grad=True)
    loss = simpo_loss(chosen_mean, rejected_mean, beta=2.0, gamma=0.5)
    # -log σ(β·(-0.8 + 1.2) - γ) = -log σ(0.8 - 0.5)
    assert loss.item() == pytest.approx(softplus(-0.3), rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen_mean, rejected_mean)
    assert grad_chosen == pytest.approx(-2.0 * sigmoid(-0.3), rel=1e-6) and grad_chosen < 0 < grad_rejected


def test_orpo_hand_computed_and_gradient_direction():
    chosen_mean = torch.tensor([-0.8], requires_grad=True)
    rejected_mean = torch.tensor([-1.2], requires_grad=True)
    loss = orpo_loss(chosen_mean, rejected_mean, lam=0.1)
    p_chosen, p_rejected = math.exp(-0.8), math.exp(-1.2)
    log_odds_ratio = math.log(p_chosen / (1 - p_chosen)) - math.log(p_rejected / (1 - p_rejected))
    expected = 0.8 + 0.1 * softplus(-log_odds_ratio)  # NLL of the chosen answer + λ·(-log σ(log OR))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    grad_chosen, grad_rejected = gradients(loss, chosen_mean, rejected_mean)
    assert grad_chosen < -1.0  # the SFT term alone gives -1; the odds-ratio term adds to it
    assert grad_rejected > 0


def test_rpo_is_dpo_plus_alpha_times_the_chosen_per_token_nll():
    chosen = torch.tensor([-6.0, -3.0], requires_grad=True)
    rejected = torch.tensor([-7.0, -2.0], requires_grad=True)
    reference_chosen, reference_rejected = torch.tensor([-6.5, -3.0]), torch.tensor([-6.5, -2.5])
    tokens = torch.tensor([4.0, 2.0])
    loss = rpo_loss(chosen, rejected, reference_chosen, reference_rejected, tokens, beta=0.5, alpha=2.0)
    # h = (-6 + 6.5) - (-7 + 6.5) = 1 and h = (-3 + 3) - (-2 + 2.5) = -0.5; NLL per token 6/4 and 3/2
    expected = [softplus(-0.5 * 1.0) + 2.0 * 1.5, softplus(-0.5 * -0.5) + 2.0 * 1.5]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    # d/d chosen: -β·σ(-β·h) - α/|y_w|: the SFT term pushes the chosen answers up
    assert chosen.grad.tolist() == pytest.approx([-0.5 * sigmoid(-0.5) - 2.0 / 4.0,
                                                  -0.5 * sigmoid(0.25) - 2.0 / 2.0], rel=1e-6)
    assert (rejected.grad > 0).all()
    plain = dpo_loss(chosen, rejected, reference_chosen, reference_rejected, beta=0.5)
    zero = rpo_loss(chosen, rejected, reference_chosen, reference_rejected, tokens, beta=0.5, alpha=0.0)
    assert torch.equal(plain, zero)


def test_kto_hand_computed_and_gradient_direction():
    policy = torch.tensor([-4.0, -6.0], requires_grad=True)
    reference = torch.tensor([-5.0, -5.5])
    desirable = torch.tensor([True, False])
    policy_mismatched = torch.tensor([-7.0, -8.0], requires_grad=True)
    z0 = kto_reference_point(policy_mismatched, torch.tensor([-7.5, -8.1]))
    assert z0.item() == pytest.approx(0.3, rel=1e-6)  # mean of 0.5 and 0.1
    assert not z0.requires_grad
    loss = kto_loss(policy, reference, desirable, z0, BETA, desirable_weight=1.0, undesirable_weight=1.5)
    # r = +1.0 (desirable) and -0.5 (undesirable): λ_D(1 - σ(β(r - z0))), λ_U(1 - σ(β(z0 - r)))
    expected = [1 - sigmoid(0.1 * (1.0 - 0.3)), 1.5 * (1 - sigmoid(0.1 * (0.3 + 0.5)))]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)
    loss.sum().backward()
    assert policy.grad[0].item() < 0 < policy.grad[1].item()  # desirable up, undesirable down
    assert policy_mismatched.grad is None  # no gradient through the reference point
    # a negative KL estimate is clamped to 0
    assert kto_reference_point(torch.tensor([-9.0]), torch.tensor([-8.0])).item() == 0.0
