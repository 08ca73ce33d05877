"""Step 5 of a PPO step: ``--ppo-epochs`` passes over the experience in ``--num-minibatches`` minibatches.

Each minibatch is one optimizer step (:func:`rlhfkit.train.optimizer.optimizer_step`, the same
accumulate-and-step helper as the offline trainers') over micro-batches of ``--batch-size`` answers.
The loss is the policy objective (``--policy-loss``: PPO's clipped surrogate, GSPO or CISPO), plus the
clipped value loss (GAE), ``β·k3`` to the reference (``--kl-penalty loss``) and an optional entropy
bonus. The per-token terms add up as ``--loss-aggregation`` says, over the whole minibatch (the value
loss is a token mean); padding and post-EOS tokens are masked everywhere (ARCHITECTURE.md rule 5).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.rl_losses import (
    aggregation_weights,
    clipped_value_loss,
    kl_estimates,
    policy_loss,
    truncated_importance_weights,
)
from rlhfkit.train.optimizer import optimizer_step
from rlhfkit.train.ppo_experience import Experience
from rlhfkit.train.ppo_models import PPOModels


def minibatch_order(size: int, group: int) -> list[int]:
    """A random order of the answers that keeps each prompt's ``group`` answers together (their prompt
    then runs once in a forward pass)."""
    return (torch.randperm(size // group)[:, None] * group + torch.arange(group)).flatten().tolist()


def ppo_update(models: PPOModels, optimizer, scheduler, experience: Experience, config: PPOConfig, beta: float,
               group: int) -> dict[str, float]:
    """All minibatch updates of one step; returns the mean of the per-update metrics over all processes."""
    accelerator = models.accelerator
    size = len(experience.rollout)
    minibatch = size // config.num_minibatches
    totals: dict[str, torch.Tensor] = {}
    updates = 0

    def non_finite(loss: torch.Tensor) -> str:
        return (f"non-finite loss ({loss.item()}); the last good checkpoint is kept in "
                f"{Path(config.output) / 'checkpoints'}. Lower --learning-rate or clip rewards.")

    for _ in range(config.ppo_epochs):
        order = minibatch_order(size, group)
        for start in range(0, size, minibatch):
            indices = order[start : start + minibatch]
            num_tokens = experience.rollout.mask[indices].sum()
            if accelerator.num_processes > 1:  # the token mean is over the global minibatch
                num_tokens = accelerator.reduce(num_tokens, reduction="sum")
            num_answers = len(indices) * accelerator.num_processes
            micro_batches = [partial(minibatch_loss, models, experience, indices[i : i + config.batch_size],
                                     num_tokens.clamp(min=1), num_answers, config, beta)
                             for i in range(0, len(indices), config.batch_size)]
            metrics, _ = optimizer_step(accelerator, models.trained, optimizer, scheduler, micro_batches,
                                        config.max_grad_norm, non_finite)
            for name, value in metrics.items():
                totals[name] = totals[name] + value if name in totals else value
            updates += 1
    names = sorted(totals)
    means = torch.stack([(totals[name] / updates).to(accelerator.device) for name in names])
    if accelerator.num_processes > 1:  # each process holds its share of the global token mean
        means = accelerator.reduce(means, reduction="sum")
    return dict(zip(names, means.tolist(), strict=True))


def minibatch_loss(models: PPOModels, experience: Experience, indices: list[int], num_tokens: torch.Tensor,
                   num_answers: int, config: PPOConfig, beta: float):
    """The loss of micro-batch ``indices``, as its share of the minibatch's token mean (``num_tokens``
    over ``num_answers`` answers), and its metrics."""
    rollout = experience.rollout.select(indices)
    mask = rollout.mask
    reused = experience.old_logprobs is None
    if experience.update_forward is not None:  # run before the rewards (forwards_before_rewards)
        logprobs, entropy = (t[indices] for t in experience.update_forward)
    else:
        logprobs, entropy = models.policy_logprobs(rollout, with_entropy=config.entropy_coef > 0 or reused)
    # a single on-policy update: the policy has not moved since sampling, so its log-probs now are the
    # old ones (exactly: same weights, same forward)
    old_logprobs = logprobs.detach() if reused else experience.old_logprobs[indices]
    weights = aggregation_weights(mask, config.loss_aggregation, num_tokens, num_answers, config.max_new_tokens)
    clip_high = config.clip_range if config.clip_range_high is None else config.clip_range_high
    engine = rollout.engine_logprobs  # sampled by another engine (vLLM): its log-probs of the tokens
    pg_weights = weights
    if config.tis_cap is not None and engine is not None:  # truncated importance sampling
        pg_weights = weights * truncated_importance_weights(old_logprobs, engine, mask, config.tis_cap)
    loss, stats = policy_loss(config.policy_loss, logprobs, old_logprobs, experience.advantages[indices], mask,
                              pg_weights, config.clip_range, clip_high, config.dual_clip)
    metrics = {"policy_loss": loss.detach(), **stats}
    if reused:  # what the skipped pass would have reported
        kls = kl_estimates(old_logprobs, experience.ref_logprobs[indices])
        metrics.update(kl_k1=(kls["k1"] * mask).sum() / num_answers, kl_k3=(kls["k3"] * mask).sum() / num_answers,
                       entropy=(entropy.detach() * mask).sum() / num_tokens)
        if engine is not None:
            metrics.update(engine_logprob_diff=((old_logprobs - engine).abs() * mask).sum() / num_tokens,
                           engine_kl=(kl_estimates(engine, old_logprobs)["k3"] * mask).sum() / num_tokens)
    if config.kl_penalty == "loss":  # β·k3(π, π_ref) per token, differentiated (GRPO), aggregated as the loss
        kl_loss = (kl_estimates(logprobs, experience.ref_logprobs[indices])["k3"] * weights).sum()
        loss = loss + beta * kl_loss
        metrics["kl_loss"] = kl_loss.detach()
    if models.critic is not None:
        value_loss = clipped_value_loss(models.values(rollout), experience.old_values[indices],
                                        experience.returns[indices], mask, config.value_clip, num_tokens)
        loss = loss + config.value_coef * value_loss
        metrics["value_loss"] = value_loss.detach()
    if config.entropy_coef > 0:
        loss = loss - config.entropy_coef * (entropy * weights).sum()
    return loss, metrics
