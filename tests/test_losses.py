"""Losses against hand-computed values."""

import math

import torch

from rlhfkit.losses import IGNORE_INDEX, sft_loss, token_logprobs


def test_sft_loss_hand_computed():
    # vocab 2, one sequence of 3 tokens [0, 1, 1]; position 0 predicts token 1, position 1 predicts token 1
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 1]])
    # p(1 | pos 0) = 1/2; p(1 | pos 1) = 1/(3+1) = 1/4
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert torch.allclose(sft_loss(logits, labels), torch.tensor(expected))
    # a given normaliser divides the sum
    assert torch.allclose(sft_loss(logits, labels, num_target_tokens=4), torch.tensor(expected * 2 / 4))


def test_loss_ignores_prompt_tokens():
    """Token-level check: logits at positions that predict masked tokens get zero gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 6))
    labels[:, :3] = IGNORE_INDEX  # prompt: tokens 0..2
    labels[1, 5] = IGNORE_INDEX  # padding
    sft_loss(logits, labels).backward()
    grad_norm_per_position = logits.grad.norm(dim=-1)
    # position t predicts token t+1: positions 0, 1 predict prompt tokens 1, 2; position 5 predicts nothing
    assert torch.all(grad_norm_per_position[:, :2] == 0)
    assert torch.all(grad_norm_per_position[:, 5] == 0)
    assert grad_norm_per_position[1, 4] == 0  # predicts row 1's padding
    assert torch.all(grad_norm_per_position[0, 2:5] > 0)
    # changing the masked tokens' ids changes nothing
    other = labels.clone()
    other[:, :3] = IGNORE_INDEX
    assert torch.equal(sft_loss(logits, labels), sft_loss(logits, other))


def test_token_logprobs_masked_and_temperature_scaled():
    logits = torch.tensor([[[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    lp = token_logprobs(logits, labels, temperature=2.0)
    expected = 1.5 - math.log(math.exp(0.5) + math.exp(1.5))
    assert torch.allclose(lp, torch.tensor([[expected, 0.0]]))
