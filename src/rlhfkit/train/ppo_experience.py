"""From a rollout to an experience: scores, old and reference log-probs, values, and advantages.

Steps 2-4 of a PPO step (see :mod:`rlhfkit.train.ppo`):

* :class:`RewardScorer` scores each (prompt, answer) with the reward; answers without EOS may get
  ``--missing-eos-score`` instead (ARCHITECTURE.md rule 3); scores are clipped, optionally whitened.
* :func:`make_experience` runs the no-grad passes (old log-probs, reference log-probs, values; each
  skipped when the update can provide it) and turns scores and the per-token KL into advantages with
  the configured estimator (``losses.compute_advantages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.rewards import RewardFunction
from rlhfkit.rl_losses import (
    compute_advantages,
    engine_mismatch,
    explained_variance,
    kl_estimates,
    masked_mean,
    overlong_penalty,
)
from rlhfkit.rollout.logprobs import Rollout, in_chunks
from rlhfkit.train.optimizer import TrainingError
from rlhfkit.train.ppo_models import PPOModels


@dataclass
class Experience:
    """A scored rollout with everything the update needs."""

    rollout: Rollout
    old_logprobs: torch.Tensor | None  # None: the update takes them from its own forward pass
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    old_values: torch.Tensor | None
    returns: torch.Tensor | None
    raw_scores: list[float]
    update_forward: tuple[torch.Tensor, torch.Tensor] | None = None  # (log-probs, entropy) with their graph


def reuses_update_logprobs(config: PPOConfig) -> bool:
    """Whether the old log-probs can come from the update's own forward pass instead of a separate one:
    with a single update per rollout the policy is still the sampling policy, and with the KL in the
    loss no reward needs the log-probs before the update (TRL's GRPO does the same)."""
    return config.ppo_epochs * config.num_minibatches == 1 and config.kl_penalty == "loss"


def forwards_before_rewards(config: PPOConfig, rollout_size: int) -> bool:
    """Whether the update's forward pass can run before the rewards, kept with its graph, its detached
    log-probs serving as the old ones for the KL in the reward (so no separate pass): with a single
    update per rollout, a rollout that is one micro-batch (keeping the graph costs no more memory
    than the update itself), and no critic."""
    return (config.ppo_epochs * config.num_minibatches == 1 and config.kl_penalty == "reward"
            and config.batch_size >= rollout_size and config.estimator != "gae")


class RewardScorer:
    """``(scores used for training, raw scores)`` of a rollout's answers under the reward.

    Shaping, in order: ``--missing-eos-score`` replaces the score of answers without EOS, DAPO's overlong
    penalty is added (``--overlong-buffer``), scores are clipped to ``±--reward-clip`` and, with
    ``--whiten-rewards``, normalised over the batch."""

    def __init__(self, reward_fn: RewardFunction, config: PPOConfig):
        self.reward_fn = reward_fn
        self.config = config

    def __call__(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw(rollout)
        return self.shape(rollout, raw), raw

    def raw(self, rollout: Rollout) -> torch.Tensor:
        """The reward's scores, checked finite."""
        raw = torch.tensor(self.reward_fn(rollout.prompts, rollout.texts), dtype=torch.float32,
                           device=rollout.mask.device)
        if not torch.isfinite(raw).all():
            raise TrainingError(f"the reward gave a non-finite score ({raw[~torch.isfinite(raw)][0].item()}); "
                                f"the last good checkpoint is kept in {Path(self.config.output) / 'checkpoints'}")
        return raw

    def shape(self, rollout: Rollout, raw: torch.Tensor, whiten: bool = True) -> torch.Tensor:
        config = self.config
        scores = raw.clone()
        if config.missing_eos_score is not None:
            scores = torch.where(rollout.finished, scores, torch.full_like(scores, config.missing_eos_score))
        if config.overlong_buffer > 0:
            scores = scores + overlong_penalty(rollout.mask.sum(1), config.max_new_tokens, config.overlong_buffer,
                                               config.overlong_penalty)
        if config.reward_clip > 0:
            scores = scores.clamp(-config.reward_clip, config.reward_clip)
        if whiten and config.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        return scores


def old_policy_pass(models: PPOModels, rollout: Rollout, config: PPOConfig):
    """``(old log-probs, entropy, update forward)``: the sampling policy's log-probs from a no-grad pass,
    from the update's own forward run now with its graph kept (:func:`forwards_before_rewards`), or
    ``None`` when the update will take them from its forward (:func:`reuses_update_logprobs`)."""
    if forwards_before_rewards(config, len(rollout)):
        with torch.enable_grad():
            update_forward = models.policy_logprobs(rollout, with_entropy=True)
        old_logprobs, entropy = (t.detach() for t in update_forward)
        return old_logprobs, entropy, update_forward
    if reuses_update_logprobs(config):
        return None, None, None
    pieces = in_chunks(lambda chunk: models.policy_logprobs(chunk, with_entropy=True), rollout, config.batch_size)
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces]), None


@torch.no_grad()
def make_experience(models: PPOModels, rollout: Rollout, scores: torch.Tensor, raw_scores: torch.Tensor,
                    config: PPOConfig, beta: float, group: int) -> tuple[Experience, dict[str, float]]:
    """The rollout's advantages from its (shaped) ``scores``; returns the experience and this rollout's metrics."""
    mask = rollout.mask
    old_logprobs, entropy, update_forward = old_policy_pass(models, rollout, config)
    ref_logprobs = models.in_chunks(models.reference_logprobs, rollout, config.batch_size)
    values = models.in_chunks(models.values, rollout, config.batch_size) if models.critic is not None else None
    # with reused log-probs the KL is in the loss, not the reward: no KL is needed here
    kls = kl_estimates(old_logprobs, ref_logprobs) if old_logprobs is not None else None
    kl = kls[config.kl_estimator] * mask if kls is not None else torch.zeros_like(mask)
    reward_beta = beta if config.kl_penalty == "reward" else 0.0
    advantages, returns = compute_advantages(config.estimator, scores, kl, values, mask, reward_beta, group,
                                             config.gamma, config.lam, config.whiten_advantages,
                                             config.advantage_scale)
    metrics = {"score": raw_scores.mean().item(), "beta": beta, "response_length": mask.sum(1).mean().item(),
               "eos_rate": rollout.finished.float().mean().item()}
    if kls is not None:  # otherwise the update reports them (see ppo_update.minibatch_loss)
        metrics.update(kl_k1=(kls["k1"] * mask).sum(1).mean().item(),
                       kl_k3=(kls["k3"] * mask).sum(1).mean().item(), entropy=masked_mean(entropy, mask).item())
    if rollout.engine_logprobs is not None and old_logprobs is not None:  # sampled by another engine (vLLM)
        metrics.update({name: value.item() for name, value in
                        engine_mismatch(old_logprobs, rollout.engine_logprobs, mask).items()})
    if values is not None:
        metrics["explained_variance"] = explained_variance(values, returns, mask)
    experience = Experience(rollout, old_logprobs, ref_logprobs, advantages, values, returns,
                            raw_scores.tolist(), update_forward)
    return experience, metrics


def mean_over_processes(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over all processes (the same on every one)."""
    if accelerator.num_processes == 1:
        return metrics
    names = sorted(metrics)
    values = torch.tensor([metrics[n] for n in names], device=accelerator.device)
    return dict(zip(names, accelerator.reduce(values, reduction="mean").tolist(), strict=True))
