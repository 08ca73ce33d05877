"""The algorithm's math as small pure functions over tensors.

Conventions: ``logits`` are ``[batch, time, vocab]`` from a causal LM over ``input_ids``;
``labels`` are ``[batch, time]`` with :data:`IGNORE_INDEX` (-100) where a token carries no loss. The
prediction for token ``t`` comes from position ``t - 1`` (the shift happens here, once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.data.chat import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "bradley_terry_loss", "sft_loss", "shift_for_next_token", "token_logprobs"]


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: logits at positions 0..T-2 predict labels at 1..T-1."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label token, ``[batch, time - 1]``; 0 where the label is ignored.

    ``temperature`` divides the logits first: log-probs of sampled tokens must use the sampling
    temperature (GUIDE §4.6).
    """
    logits, targets = shift_for_next_token(logits, labels)
    if temperature != 1.0:
        logits = logits / temperature
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    logprobs = -F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), safe_targets.reshape(-1), reduction="none"
    ).view_as(targets)
    return logprobs * mask


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, num_target_tokens: float | None = None) -> torch.Tensor:
    """Negative log-likelihood of the target tokens, summed, divided by ``num_target_tokens``.

    The divisor defaults to this batch's target-token count (a token mean). Trainers pass the count
    of the whole global batch (all micro-batches, all processes), so that gradient accumulation and
    data parallelism give the same gradient as one big batch.
    """
    logits, targets = shift_for_next_token(logits, labels)
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    if num_target_tokens is None:
        num_target_tokens = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return total / num_target_tokens


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float = 0.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley–Terry loss ``-log σ(r_chosen - r_rejected - margin)``.

    Under Bradley–Terry, P(chosen ≻ rejected) = σ(r_chosen - r_rejected). ``margin`` asks for a gap of at
    least that size (Llama 2's margin loss). ``label_smoothing`` ε treats each label as wrong with
    probability ε (noisy annotators): ``-(1-ε)·log σ(d) - ε·log σ(-d)``.
    """
    difference = chosen_rewards.float() - rejected_rewards.float() - margin
    loss = -F.logsigmoid(difference)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-difference)
    return loss
