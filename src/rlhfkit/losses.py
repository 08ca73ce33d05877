"""The algorithm's math as small pure functions over tensors, and the tables that name them.

The trainers choose by name from the registries at the end of this file (:data:`DPO_LOSSES`,
:data:`ADVANTAGE_ESTIMATORS`) and adapt β with :class:`KLController`; ``rlhfkit.config`` declares the
same names as the choices of ``--loss`` and ``--estimator`` (a test keeps the two equal). Adding a loss
is a function here, a row in its table, and a name in that config field's choices.

Conventions: ``logits`` are ``[batch, time, vocab]`` from a causal LM over ``input_ids``;
``labels`` are ``[batch, time]`` with :data:`IGNORE_INDEX` (-100) where a token carries no loss. The
prediction for token ``t`` comes from position ``t - 1`` (the shift happens here, once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rlhfkit.data.chat import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX", "bradley_terry_loss", "conservative_dpo_loss", "dpo_loss", "ipo_loss", "kto_loss",
    "kto_reference_point", "orpo_loss", "robust_dpo_loss", "sft_loss", "shift_for_next_token", "simpo_loss",
    "token_logprobs", "ADVANTAGE_ESTIMATORS", "DPO_LOSSES", "KLController", "PairLogps", "compute_advantages",
]


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: logits at positions 0..T-2 predict labels at 1..T-1."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label token, ``[batch, time - 1]``; 0 where the label is ignored.

    ``temperature`` divides the logits first: log-probs of sampled tokens must use the sampling
    temperature (ARCHITECTURE.md rule 6).
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


# ---------------------------------------------------------------------------------------------------
# Direct preference optimisation (DPO) and its family
#
# Inputs are per-sequence log-probabilities of the *response* tokens, ``[pairs]``: ``policy_*`` from the
# model being trained, ``reference_*`` from the frozen reference π_ref. "Summed" log-probs are
# Σ_t log π(y_t | x, y_<t); "mean" log-probs divide that by the response length. Every function returns
# the per-pair (or per-example) loss; the trainer weights and averages. Notation: h is the difference of
# log-ratios, h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)), for the chosen
# (winning) answer y_w and the rejected (losing) y_l.


def preference_log_ratio_difference(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
) -> torch.Tensor:
    """h = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)), the quantity DPO-style losses
    push up: β·h is the difference of the implicit rewards of the two answers."""
    return (policy_chosen.float() - reference_chosen.float()) - (policy_rejected.float() - reference_rejected.float())


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): ``-log σ(β·h)`` on summed log-probs.

    The Bradley–Terry loss on the implicit reward r(x, y) = β·log(π(y|x) / π_ref(y|x)); β sets how far
    the policy may move from the reference (the KL coefficient of the RLHF objective it solves).
    """
    h = preference_log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return -F.logsigmoid(beta * h)


def conservative_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                          reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float,
                          label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (cDPO, Mitchell 2023): ``-(1-ε)·log σ(β·h) - ε·log σ(-β·h)``.

    Each label is assumed flipped with probability ε, so the target preference probability is 1-ε
    rather than 1: the loss is minimised at a finite margin instead of pushing h to infinity.
    """
    h = preference_log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def robust_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"):
    ``[-(1-ε)·log σ(β·h) + ε·log σ(-β·h)] / (1 - 2ε)``, for 0 ≤ ε < 1/2.

    With labels flipped at rate ε, the expectation of this loss over the noise equals the clean DPO
    loss (an unbiased estimate), where cDPO instead changes the target. Unlike DPO it can be negative.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs a label-flip rate ε in [0, 0.5), got {label_smoothing}")
    h = preference_log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    clean = -F.logsigmoid(beta * h)
    flipped = -F.logsigmoid(-beta * h)
    return ((1 - label_smoothing) * clean - label_smoothing * flipped) / (1 - 2 * label_smoothing)


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17): ``(h - 1/(2β))²``, β playing the part of the paper's τ.

    A squared loss that pulls h to a finite target 1/(2β) instead of to infinity, so the policy stays
    regularised even when preferences are deterministic; past the target the gradient pushes back.
    rlhfkit's trainer passes *mean* (per-token) log-probs here, the form the IPO authors used for their
    results (as TRL documents), so that β does not depend on answer length.
    """
    h = preference_log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return (h - 1 / (2 * beta)) ** 2


def simpo_loss(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor, beta: float,
               gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024): ``-log σ(β·(mean log π(y_w) - mean log π(y_l)) - γ)``, no reference.

    The implicit reward is the length-normalised log-likelihood β/|y|·log π(y|x) (the quantity that
    sampling ranks by), and γ is a target reward margin. The paper uses β ≈ 2-2.5, γ ≈ 0.5-1.5.
    """
    difference = policy_chosen_mean.float() - policy_rejected_mean.float()
    return -F.logsigmoid(beta * difference - gamma)


def log_odds(mean_logprob: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)) of a probability given as its log, P = exp(mean log-prob) < 1."""
    mean_logprob = mean_logprob.float().clamp(max=-1e-6)  # P = 1 has infinite odds
    return mean_logprob - torch.log(-torch.expm1(mean_logprob))


def orpo_loss(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor, lam: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024): ``L_SFT + λ·L_OR``, no reference.

    ``L_SFT = -mean log π(y_w)`` is the usual negative log-likelihood of the chosen answer (per token),
    ``L_OR = -log σ(log odds(y_w) - log odds(y_l))`` with odds(y) = P(y)/(1-P(y)) and P(y) the
    per-token (geometric mean) probability: fine-tuning and preference alignment in one stage.
    """
    odds_ratio = -F.logsigmoid(log_odds(policy_chosen_mean) - log_odds(policy_rejected_mean))
    return -policy_chosen_mean.float() + lam * odds_ratio


def kto_reference_point(policy_mismatched: torch.Tensor, reference_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z₀ = max(0, mean log(π(y'|x) / π_ref(y'|x))), a batch estimate of
    KL(π ‖ π_ref) from *mismatched* pairs (x, y'): each prompt with another example's answer, as in the
    KTO paper. It carries no gradient (the paper does not back-propagate through it)."""
    estimate = (policy_mismatched.float() - reference_mismatched.float()).mean()
    return estimate.detach().clamp(min=0.0)


def kto_loss(policy: torch.Tensor, reference: torch.Tensor, desirable: torch.Tensor, reference_point: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) on unpaired answers marked desirable or undesirable: ``λ_y - v(x, y)``.

    With r = log(π(y|x) / π_ref(y|x)) (summed log-probs) and z₀ the reference point
    (:func:`kto_reference_point`), the value is v = λ_D·σ(β·(r - z₀)) for a desirable answer and
    v = λ_U·σ(β·(z₀ - r)) for an undesirable one: a prospect-theory value, gains and losses measured
    against the policy's overall drift from the reference. ``desirable`` is a bool tensor.
    """
    reward = policy.float() - reference.float()
    z0 = reference_point.detach()
    gain = desirable_weight * (1 - torch.sigmoid(beta * (reward - z0)))
    loss = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - reward)))
    return torch.where(desirable, gain, loss)


# ---------------------------------------------------------------------------------------------------
# Reinforcement learning (PPO and critic-free estimators)
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


def group_advantages(scores: torch.Tensor, group_size: int, method: str) -> torch.Tensor:
    """Sequence-level advantages from ``group_size`` consecutive samples per prompt, no critic.

    ``grpo`` (Shao et al. 2024): ``(s - mean_group) / (std_group + 1e-4)``, std unbiased.
    ``rloo`` (Ahmadian et al. 2024): ``s_i`` minus the mean of the *other* samples of its prompt,
    ``= K/(K-1)·(s_i - mean_group)``.
    """
    if group_size < 2:
        raise ValueError(f"{method} needs at least 2 samples per prompt, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.float().view(-1, group_size)
    mean = groups.mean(1, keepdim=True)
    if method == "grpo":
        advantages = (groups - mean) / (groups.std(1, keepdim=True) + 1e-4)
    elif method == "rloo":
        advantages = (groups - mean) * group_size / (group_size - 1)
    else:
        raise ValueError(f"unknown group estimator {method!r}; expected grpo or rloo")
    return advantages.view(-1)


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float = 0.2, num_tokens: float | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), summed over tokens and divided by ``num_tokens``
    (default: this batch's token count):

    ``L = -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A)`` with ``ρ = π/π_old`` per token.
    Also returns the clip fraction and the approximate KL(π_old ‖ π) (k3) as metrics.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    per_token = torch.maximum(unclipped, clipped)
    denominator = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
    loss = (per_token * mask).sum() / denominator
    with torch.no_grad():
        clip_fraction = ((clipped > unclipped).float() * mask).sum() / denominator
        approx_kl = ((torch.expm1(-log_ratio) + log_ratio) * mask).sum() / denominator
    return loss, {"clip_fraction": clip_fraction, "approx_kl": approx_kl}


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
# The DPO family by name


@dataclass
class PairLogps:
    """Per-pair answer log-probs: summed over tokens, and token counts (means are sum / count)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    reference_chosen: torch.Tensor | None = None
    reference_rejected: torch.Tensor | None = None

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens


def _ipo(lp: PairLogps, c: Any) -> torch.Tensor:
    # per-token log-ratios (see ipo_loss): the reference sums are divided by the same lengths
    return ipo_loss(lp.chosen_mean, lp.rejected_mean, lp.reference_chosen / lp.chosen_tokens,
                    lp.reference_rejected / lp.rejected_tokens, c.beta)


DPO_LOSSES: dict[str, Callable[[PairLogps, Any], torch.Tensor]] = {
    "dpo": lambda lp, c: dpo_loss(lp.chosen, lp.rejected, lp.reference_chosen, lp.reference_rejected, c.beta),
    "cdpo": lambda lp, c: conservative_dpo_loss(lp.chosen, lp.rejected, lp.reference_chosen, lp.reference_rejected,
                                                c.beta, c.label_smoothing),
    "robust": lambda lp, c: robust_dpo_loss(lp.chosen, lp.rejected, lp.reference_chosen, lp.reference_rejected,
                                            c.beta, c.label_smoothing),
    "ipo": _ipo,
    "simpo": lambda lp, c: simpo_loss(lp.chosen_mean, lp.rejected_mean, c.beta, c.simpo_gamma),
    "orpo": lambda lp, c: orpo_loss(lp.chosen_mean, lp.rejected_mean, c.orpo_lambda),
}
"""Pairwise losses: name -> per-pair loss of (:class:`PairLogps`, settings with ``beta``,
``label_smoothing``, ``simpo_gamma``, ``orpo_lambda``). KTO, on unpaired answers, is :func:`kto_loss`."""

UNPAIRED_LOSSES = ("kto",)
REFERENCE_FREE = frozenset({"simpo", "orpo"})


def needs_reference(loss: str) -> bool:
    """Whether the DPO-family loss ``loss`` compares with a reference policy."""
    return loss not in REFERENCE_FREE


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

    def estimate(scores, kl, values, mask, *, beta, group_size, **_):
        sequence_reward = scores - beta * (kl * mask).sum(1)
        return group_advantages(sequence_reward, group_size, method)[:, None] * mask, None

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
                       whiten: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``(advantages, returns)`` by the estimator named ``estimator``."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](scores, kl, values, mask, beta=beta, group_size=group_size,
                                           gamma=gamma, lam=lam, whiten=whiten)


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
