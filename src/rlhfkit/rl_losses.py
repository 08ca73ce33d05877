"""Reinforcement learning's math: PPO and the GRPO family, advantage estimators, KL, as small pure functions.

The PPO step (``train/ppo*.py``) chooses by name from the tables here: :data:`ADVANTAGE_ESTIMATORS`
(``--estimator``), :data:`POLICY_LOSSES` (``--policy-loss``) and :data:`LOSS_AGGREGATIONS`
(``--loss-aggregation``); ``rlhfkit.config`` declares the same names as the choices of those options (a
test keeps them equal), and its ``--recipe`` presets (DAPO, Dr. GRPO, GSPO, CISPO) set these knobs as
their papers do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# Masks, KL, rewards and advantages
#
# Per-token tensors are ``[batch, response_length]`` over the *response* tokens, with a float ``mask``
# that is 1 up to and including the first EOS and 0 on the padding after it. Every function here
# ignores masked positions completely: changing a token after EOS changes no result.


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked entries to mean 0 (unless ``shift_mean`` is False) and variance 1; masked
    positions come back as 0."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimates of KL(π ‖ π_ref) from tokens sampled from π (Schulman, "Approximating KL").

    With ``log r = log π_ref(x) - log π(x)``:
    ``k1 = -log r`` is unbiased but can be negative per token;
    ``k3 = (r - 1) - log r`` is unbiased too and never negative (``e^y ≥ 1 + y``).
    """
    log_ratio = ref_logprobs - logprobs
    return {"k1": -log_ratio, "k3": torch.expm1(log_ratio) - log_ratio}


def engine_mismatch(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """How far the sampling engine's log-probs of its sampled tokens are from the trainer's, per token
    (masked means): ``engine_logprob_diff``, the mean |Δ log p|, and ``engine_kl``, KL(engine ‖ trainer)
    estimated by :func:`kl_estimates`' k3 on the engine's own samples."""
    k3 = kl_estimates(engine_logprobs, trainer_logprobs)["k3"]
    return {"engine_logprob_diff": masked_mean((trainer_logprobs - engine_logprobs).abs(), mask),
            "engine_kl": masked_mean(k3, mask)}


def truncated_importance_weights(trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                                 cap: float) -> torch.Tensor:
    """Truncated importance sampling (Yao et al. 2025): per token ``min(π_trainer / π_engine, C)`` of the
    sampled token, 0 on padding, with no gradient. The answers were drawn by the engine, whose numbers
    differ from the trainer's; weighting each token's policy-gradient term by this ratio makes the
    gradient the trainer's own policy gradient again, up to the cap that bounds its variance."""
    ratio = torch.exp(trainer_logprobs.detach() - engine_logprobs).clamp(max=cap)
    return ratio * mask


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: ``-β·KL_t`` on every response token, plus the sequence's score on its last
    real token (Ziegler et al. 2019; InstructGPT)."""
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): ``(advantages, returns)``.

    ``δ_t = r_t + γ·V_{t+1} - V_t`` (``V`` after the last real token is 0: the episode ends there) and
    ``A_t = δ_t + γλ·A_{t+1}``; returns ``A_t + V_t`` are the value targets. The recursion runs backwards
    over time, vectorised over the batch.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return-to-go ``G_t = Σ_{k≥t} γ^{k-t}·r_k`` of each response token (REINFORCE)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


GROUP_SCALES = ("group", "batch", "none")


def group_advantages(scores: torch.Tensor, group_size: int, method: str, scale: str = "group") -> torch.Tensor:
    """Sequence-level advantages from ``group_size`` consecutive samples per prompt, no critic.

    ``grpo`` (Shao et al. 2024): ``(s - mean_group) / (std + 1e-4)``, the unbiased std of the group
    (``scale="group"``), of the whole batch (``"batch"``, as Hu et al. 2025 argue for), or no division
    (``"none"``: Dr. GRPO, Liu et al. 2025, which finds the division weights easy and hard prompts
    unevenly). A group whose scores are all equal gets advantage 0 on every answer.
    ``rloo`` (Ahmadian et al. 2024): ``s_i`` minus the mean of the *other* samples of its prompt,
    ``= K/(K-1)·(s_i - mean_group)``; ``scale`` does not apply.
    """
    if group_size < 2:
        raise ValueError(f"{method} needs at least 2 samples per prompt, got {group_size}: one answer has no "
                         "group to be compared with (use --samples-per-prompt 2 or more)")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.float().view(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if method == "rloo":
        return (centred * group_size / (group_size - 1)).view(-1)
    if method != "grpo":
        raise ValueError(f"unknown group estimator {method!r}; expected grpo or rloo")
    if scale == "group":
        centred = centred / (groups.std(1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (groups.std() + 1e-4)
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; expected one of {', '.join(GROUP_SCALES)}")
    return centred.view(-1)


def uniform_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N / group_size]`` bool: the groups whose scores are all equal. Their group advantages are 0, so
    they carry no policy gradient: DAPO's dynamic sampling (Yu et al. 2025) replaces them."""
    groups = scores.view(-1, group_size)
    return (groups == groups[:, :1]).all(1)


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer_fraction: float,
                     penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to the score: 0 for answers of at most
    ``L_max - L_cache`` tokens, then falling linearly to ``-penalty`` at ``L_max``:

    ``R = penalty · ((L_max - L_cache) - |y|) / L_cache`` for ``L_max - L_cache < |y| <= L_max``,

    with ``L_max = max_new_tokens`` and ``L_cache = buffer_fraction · L_max`` (DAPO: 4096 of 20480, 0.2).
    ``lengths`` count the answer's tokens, its EOS included."""
    cache = buffer_fraction * max_new_tokens
    if cache <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    excess = (lengths.float() - (max_new_tokens - cache)).clamp(min=0)
    return -penalty * (excess / cache).clamp(max=1.0)


# ---------------------------------------------------------------------------------------------------
# Policy objectives and how their per-token losses are summed
#
# Each objective gives a per-token loss ``[N, R]``; :func:`aggregation_weights` turns the answer mask into
# per-token weights that sum the loss the chosen way. Weights are divided by counts of the whole global
# minibatch, so that micro-batches and processes add up to the loss of one big batch.

LOSS_AGGREGATIONS = ("token-mean", "sequence-mean", "token-sum-norm")


def aggregation_weights(mask: torch.Tensor, method: str, num_tokens, num_answers, max_tokens: int) -> torch.Tensor:
    """Per-token weights ``[N, R]`` (0 after EOS) whose product with a per-token loss, summed, aggregates it:

    * ``token-mean``: ``Σ_i Σ_t l_it / Σ_i |y_i|``, every token weighs the same (DAPO, Yu et al. 2025;
      TRL's default; rlhfkit's default, as it was before this option existed);
    * ``sequence-mean``: ``1/N Σ_i 1/|y_i| Σ_t l_it``, every answer weighs the same (the original GRPO,
      Shao et al. 2024; a long answer's tokens then weigh less each);
    * ``token-sum-norm``: ``Σ_i Σ_t l_it / (N · L_max)``, a constant divisor (Dr. GRPO, Liu et al. 2025,
      with ``L_max = max_tokens``): no length bias either way.

    ``num_tokens`` and ``num_answers`` are the counts of the whole (global) minibatch."""
    if method == "token-mean":
        return mask / num_tokens
    if method == "sequence-mean":
        return mask / (mask.sum(1, keepdim=True).clamp(min=1) * num_answers)
    if method == "token-sum-norm":
        return mask / (num_answers * max_tokens)
    raise ValueError(f"unknown loss aggregation {method!r}; expected one of {', '.join(LOSS_AGGREGATIONS)}")


def ppo_clip_token_loss(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float,
                        dual_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token (Schulman et al. 2017), with asymmetric bounds:

    ``l = -min(ρ·A, clip(ρ, 1-ε_low, 1+ε_high)·A)``, ``ρ = exp(log_ratio)``.

    ``ε_high > ε_low`` is DAPO's clip-higher (Yu et al. 2025): a low-probability token with ``A > 0`` may
    grow further before its gradient stops. ``dual_clip = c > 1`` (Ye et al. 2020) also bounds the loss of
    tokens with ``A < 0`` at ``-c·A``, so a huge ratio cannot give a huge step. Returns the per-token loss
    and where a clip bound is what the loss takes (no gradient there)."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    bounded = clipped > unclipped
    if dual_clip is not None:
        floor = -dual_clip * advantages
        dual = (advantages < 0) & (per_token > floor)
        per_token = torch.where(dual, floor, per_token)
        bounded = bounded | dual
    return per_token, bounded


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's sequence-level log-ratio (Zheng et al. 2025): ``log s_i = 1/|y_i| Σ_t log ρ_it``, the
    length-normalised log-ratio of the whole answer, on every token of it (``[N, R]``, 0 after EOS). Its
    gradient reaches every token of the answer equally."""
    per_answer = (log_ratio * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    return per_answer * mask


def cispo_token_loss(logprobs: torch.Tensor, log_ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                     clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, Chen et al. 2025): REINFORCE weighted by the clipped importance weight, which is
    itself not differentiated: ``l = -sg(clip(ρ, 1-ε_low, 1+ε_high))·A·log π``. Unlike PPO no token's
    gradient is dropped, only its weight bounded. Returns the per-token loss and where the weight is clipped."""
    ratio = torch.exp(log_ratio.detach())
    weight = ratio.clamp(1 - clip_low, 1 + clip_high)
    return -weight * advantages * logprobs, weight != ratio


POLICY_LOSSES = ("ppo", "gspo", "cispo")


def policy_loss(objective: str, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, weights: torch.Tensor, clip_low: float, clip_high: float,
                dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy loss ``Σ l_it · w_it`` of ``objective`` (``ppo``: per-token ratio, ``gspo``: GSPO's
    sequence ratio, both clipped as :func:`ppo_clip_token_loss`; ``cispo``: :func:`cispo_token_loss`), with
    ``weights`` from :func:`aggregation_weights`. Also returns the weighted share of clipped tokens and the
    approximate KL(π_old ‖ π) (k3 of the per-token ratios)."""
    log_ratio = (logprobs - old_logprobs) * mask
    if objective == "ppo":
        per_token, clipped = ppo_clip_token_loss(log_ratio, advantages, clip_low, clip_high, dual_clip)
    elif objective == "gspo":
        per_token, clipped = ppo_clip_token_loss(sequence_log_ratio(log_ratio, mask), advantages, clip_low,
                                                 clip_high, dual_clip)
    elif objective == "cispo":
        per_token, clipped = cispo_token_loss(logprobs, log_ratio, advantages, clip_low, clip_high)
    else:
        raise ValueError(f"unknown policy loss {objective!r}; expected one of {', '.join(POLICY_LOSSES)}")
    loss = (per_token * weights).sum()
    with torch.no_grad():
        clip_fraction = (clipped.float() * weights).sum()
        approx_kl = ((torch.expm1(-log_ratio) + log_ratio) * weights).sum()
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float = 0.2, num_tokens: float | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate with symmetric bounds, summed over tokens and divided by ``num_tokens``
    (default: this batch's token count): ``L = -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A)`` with ``ρ = π/π_old`` per
    token (:func:`policy_loss` with ``ppo`` and ``token-mean``)."""
    denominator = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    return policy_loss("ppo", logprobs, old_logprobs, advantages, mask, mask / denominator, clip, clip)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, clip: float = 0.2, num_tokens: float | None = None) -> torch.Tensor:
    """PPO's clipped value loss: ``½·max((V - R)², (clip(V, V_old ± ε) - R)²)``, token mean."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    denominator = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    return (per_token * mask).sum() / denominator


def entropy_from_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Entropy at each position from the full log-softmax ``[..., V]``: ``-Σ p·log p`` (so a caller
    that already has the log-probs does not normalise the logits a second time)."""
    return -(logprobs.exp() * logprobs).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at each position."""
    return entropy_from_logprobs(F.log_softmax(logits.float(), -1))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)``: 1 is a perfect critic, 0 no better than a constant."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - residual_variance / variance.clamp(min=1e-8))



# ---------------------------------------------------------------------------------------------------
# Advantage estimators by name
#
# Each takes the rollout's sequence ``scores`` [N], per-token ``kl`` [N, R] to the reference, the
# critic's ``values`` (gae only) and the answer ``mask``, with the settings as keywords, and returns
# per-token ``(advantages, returns)``; returns (value targets) only for gae.


def gae_estimator(scores, kl, values, mask, *, beta, gamma, lam, whiten, **_):
    """PPO with a critic: per-token rewards ``-β·KL_t`` plus the score at the end, then GAE."""
    advantages, returns = gae_advantages(kl_penalized_rewards(scores, kl, mask, beta), values, mask, gamma, lam)
    return (masked_whiten(advantages, mask) if whiten else advantages), returns


def reinforce_pp_estimator(scores, kl, values, mask, *, beta, gamma, whiten, **_):
    """REINFORCE++ (Hu 2025): the return-to-go of the KL-penalised rewards, whitened over the batch."""
    returns = discounted_returns(kl_penalized_rewards(scores, kl, mask, beta), mask, gamma)
    return (masked_whiten(returns, mask) if whiten else returns), None


def group_estimator(method: str):
    """GRPO or RLOO: the score minus β times the answer's summed KL, compared within each prompt's group
    of ``group_size`` consecutive answers (:func:`group_advantages`); the same advantage on every token."""

    def estimate(scores, kl, values, mask, *, beta, group_size, scale="group", **_):
        sequence_reward = scores - beta * (kl * mask).sum(1)
        return group_advantages(sequence_reward, group_size, method, scale)[:, None] * mask, None

    return estimate


ADVANTAGE_ESTIMATORS = {
    "gae": gae_estimator,
    "grpo": group_estimator("grpo"),
    "rloo": group_estimator("rloo"),
    "reinforce++": reinforce_pp_estimator,
}
CRITIC_ESTIMATORS = frozenset({"gae"})  # these need a value model
GROUP_ESTIMATORS = frozenset({"grpo", "rloo"})  # these compare K answers to the same prompt


def compute_advantages(estimator: str, scores: torch.Tensor, kl: torch.Tensor, values: torch.Tensor | None,
                       mask: torch.Tensor, beta: float, group_size: int, gamma: float, lam: float,
                       whiten: bool, scale: str = "group") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``(advantages, returns)`` by the estimator named ``estimator`` (``scale``: GRPO's
    division, see :func:`group_advantages`)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](scores, kl, values, mask, beta=beta, group_size=group_size,
                                           gamma=gamma, lam=lam, whiten=whiten, scale=scale)


# ---------------------------------------------------------------------------------------------------
# The KL coefficient


@dataclass
class KLController:
    """β for the KL penalty: fixed, or adaptive (Ziegler et al. 2019) when ``target`` is set:
    ``β ← β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)`` after each batch of ``n`` answers."""

    beta: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl_per_answer: float, num_answers: int) -> None:
        if self.target is None:
            return
        error = min(max(kl_per_answer / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * num_answers / self.horizon
