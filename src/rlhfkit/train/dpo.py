"""Direct preference optimisation: DPO and its family trained on preferences against a frozen reference.

Data. Offline, the examples are preference pairs (rankings expanded to their C(K,2) pairs, ties
skipped); for KTO, unpaired answers marked desirable or undesirable. Each example holds two tokenized
sequences, prompt + answer with labels on the answer only: (chosen, rejected) for pairs; for KTO
(answer, *mismatched* answer), the second being the prompt with another example's answer, which the
KL reference point of the KTO paper is estimated from. The mismatched partner is fixed once, by a
seeded shuffle, instead of being re-drawn in every batch (same estimate in expectation; it lets the
reference log-probs be cached).

One forward. A batch stacks the first sequences of all its examples, then the second sequences, in
one right-padded batch, so chosen and rejected go through the model together (ARCHITECTURE.md rule 11). Logits are
computed only at the positions that predict answer tokens (the model's ``logits_to_keep`` with a
boolean mask, where transformers supports it): no vocabulary-sized logits for prompts or padding.
A sequence's log-prob is the sum of its answer tokens' log-probs.

Reference. With ``--precompute-ref`` (the default) the reference log-probs of every sequence are
computed once before training and cached in the examples; the reference is not kept in memory while
training. Otherwise, with ``--lora-r > 0`` and no other ``--reference``, the reference is the policy
with its adapters disabled (no second copy); otherwise a frozen copy loaded from ``--reference`` (by
default ``--model``). SimPO and ORPO need no reference.

Online DPO (``--online``): see :mod:`rlhfkit.train.online_dpo`.

Where things are: this module checks the config and dispatches; ``dpo_data.py`` tokenizes and collates,
``dpo_reference.py`` holds the reference and its cached log-probs, ``dpo_batch.py`` the batch loss,
metrics and held-out evaluation, ``dpo_offline.py`` the training run, ``online_dpo.py`` the rounds; the
losses themselves are in ``losses.py`` (``DPO_LOSSES``).

Simplifications, on purpose: the KTO reference point is estimated per micro-batch (not gathered over
processes); implicit rewards of the reference-free losses are β·(mean answer log-prob), as in SimPO.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.models.loading import fit_max_length
from rlhfkit.rollout.logprobs import sequence_logps, supports_logit_mask
from rlhfkit.rollout.ray_engine import placed_run
from rlhfkit.train.dpo_batch import LOSS_NAMES, PAIR_LOSSES, LikelihoodWatch, needs_reference, training_loss
from rlhfkit.train.dpo_data import PreferenceExample, collate_examples, tokenize_pairs
from rlhfkit.train.dpo_offline import train_dpo_offline
from rlhfkit.train.dpo_reference import Reference, precompute_reference
from rlhfkit.train.online_dpo import best_and_worst_pairs, run_online_dpo
from rlhfkit.train.placement import check_placement, run_placed

# names tests, benchmarks and callers import from here
__all__ = ["LOSS_NAMES", "PAIR_LOSSES", "LikelihoodWatch", "PreferenceExample", "Reference", "best_and_worst_pairs",
           "collate_examples", "needs_reference", "precompute_reference", "run_dpo", "run_online_dpo",
           "sequence_logps", "supports_logit_mask", "tokenize_pairs", "training_loss"]


def check_config(config: DPOConfig) -> None:
    """Settings that depend on each other (single-field choices such as ``--loss`` are checked when the
    config is built)."""
    if config.online:
        missing = [flag for flag, value in (("--reward", config.reward), ("--prompts", config.prompts)) if not value]
        if missing:
            raise ConfigError(f"--online needs {' and '.join(missing)}")
    elif not config.data:
        raise ConfigError("missing required setting: --data (or --online with --prompts and --reward)")
    if config.placement == "ray":
        if not config.online:
            raise ConfigError("--placement ray places the engine actors of an online run; offline dpo samples "
                              "nothing: scale it with torchrun and --fsdp")
        if config.trainer_processes > 1:
            raise ConfigError("dpo --online trains each round in one process: --trainer-processes must be 1")
        if config.reward_actors:
            raise ConfigError("dpo --online scores its answers in the trainer's process: --reward-actors is "
                              "for ppo")
    if config.async_steps and config.online:
        raise ConfigError("dpo --online: each round samples from the policy the round before trained, so "
                          "there is nothing to sample ahead: --async-steps does not apply")
    check_placement(config)


def run_dpo(config: DPOConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train ``config.model`` on ``config.data`` with ``config.loss``; returns the output folder (an HF
    model). ``--online`` runs :func:`~rlhfkit.train.online_dpo.run_online_dpo` instead. ``on_step(step)``
    is called after every optimizer step (tests use it to interrupt a run)."""
    check_config(config)
    if config.placement == "ray" and placed_run() is None:  # this process drives a trainer and engine actors
        return run_placed("dpo", run_dpo, config)
    config.max_length = fit_max_length(config.max_length, config.model)
    if config.online:
        return run_online_dpo(config)
    return train_dpo_offline(config, on_step)
