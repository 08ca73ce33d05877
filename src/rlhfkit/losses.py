"""The math of SFT, reward models and the DPO family as small pure functions, and the table that names them.

The DPO trainer chooses its loss by name from :data:`DPO_LOSSES` at the end of this file;
``rlhfkit.config`` declares the same names as the choices of ``--loss`` (a test keeps the two equal).
Adding a loss is a function here, a row in its table, and a name in that config field's choices.
Reinforcement learning's math (PPO, the GRPO family, advantages, KL) is in :mod:`rlhfkit.rl_losses`.

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
    "kto_reference_point", "orpo_loss", "robust_dpo_loss", "rpo_loss", "sft_loss", "shift_for_next_token", "simpo_loss",
    "token_logprobs", "DPO_LOSSES", "PairLogps",
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


def rpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, chosen_tokens: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """RPO (Pang et al. 2024; Llama 3's DPO recipe adds the same term): ``-log σ(β·h) + α·L_SFT``.

    ``L_SFT = -log π(y_w) / |y_w|`` is the chosen answer's negative log-likelihood per token. DPO alone
    only pushes the pair apart, and the mass it takes from rejected answers may go anywhere (answers
    that neither side of a pair was, such as a vague non-answer); the SFT term keeps the chosen ones
    likely.
    """
    nll = -policy_chosen.float() / chosen_tokens
    return dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta) + alpha * nll


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
    "rpo": lambda lp, c: rpo_loss(lp.chosen, lp.rejected, lp.reference_chosen, lp.reference_rejected,
                                  lp.chosen_tokens, c.beta, c.rpo_alpha),
    "simpo": lambda lp, c: simpo_loss(lp.chosen_mean, lp.rejected_mean, c.beta, c.simpo_gamma),
    "orpo": lambda lp, c: orpo_loss(lp.chosen_mean, lp.rejected_mean, c.orpo_lambda),
}
"""Pairwise losses: name -> per-pair loss of (:class:`PairLogps`, settings with ``beta``,
``label_smoothing``, ``simpo_gamma``, ``orpo_lambda``, ``rpo_alpha``). KTO, on unpaired answers, is :func:`kto_loss`."""

UNPAIRED_LOSSES = ("kto",)
REFERENCE_FREE = frozenset({"simpo", "orpo"})


def needs_reference(loss: str) -> bool:
    """Whether the DPO-family loss ``loss`` compares with a reference policy."""
    return loss not in REFERENCE_FREE


