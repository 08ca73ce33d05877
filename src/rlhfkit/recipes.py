"""The published recipes that ``rlhfkit ppo --recipe NAME`` stands for: which knobs each sets, and why.

Each row sets the knobs of :class:`rlhfkit.config.PPOConfig` as the recipe's paper does; every knob is a
plain option too, so a recipe is only a shorthand, and the saved ``config.yaml`` of a run lists the values
it set. The math behind the knobs is in :mod:`rlhfkit.rl_losses`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The knobs each --recipe sets, as its paper does (all are critic-free GRPO variants with the KL, where kept,
# in the loss). A recipe changes only knobs still at their defaults; build_config restores explicit values.
RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    # DAPO (Yu et al. 2025): clip-higher, token-mean, dynamic sampling, soft overlong penalty, no KL
    "dapo": {"estimator": "grpo", "clip_range": 0.2, "clip_range_high": 0.28, "loss_aggregation": "token-mean",
             "dynamic_sampling": True, "overlong_buffer": 0.2, "kl_penalty": "loss", "beta": 0.0},
    # Dr. GRPO (Liu et al. 2025): no std division, a constant divisor instead of per-answer lengths
    "dr_grpo": {"estimator": "grpo", "advantage_scale": "none", "loss_aggregation": "token-sum-norm",
                "kl_penalty": "loss"},
    # GSPO (Zheng et al. 2025, v2 section 5.1): sequence ratio clipped to [1-3e-4, 1+4e-4], sequence mean, no KL,
    # each rollout split into 4 minibatches (the ratio only matters off-policy)
    "gspo": {"estimator": "grpo", "policy_loss": "gspo", "clip_range": 3e-4, "clip_range_high": 4e-4,
             "loss_aggregation": "sequence-mean", "kl_penalty": "loss", "beta": 0.0, "ppo_epochs": 1,
             "num_minibatches": 4},
    # CISPO (MiniMax-M1, Chen et al. 2025): no lower bound on the weight (ε_low = 1), only an upper one,
    # which the paper tunes without giving a value: the preset caps the weight at 5; token mean
    "cispo": {"estimator": "grpo", "policy_loss": "cispo", "clip_range": 1.0, "clip_range_high": 4.0,
              "loss_aggregation": "token-mean", "kl_penalty": "loss"},
}


def apply_recipe(config: Any) -> None:
    """Set ``config.recipe``'s knobs on the fields still at their dataclass defaults."""
    if config.recipe not in RECIPES:
        return  # check_choices names the option
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name, value in RECIPES[config.recipe].items():
        if getattr(config, name) == defaults[name]:
            setattr(config, name, value)
