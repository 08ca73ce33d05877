"""PPO's models: the policy being trained, its frozen reference, and the critic (GAE only).

:class:`PPOModels` holds them as ``accelerate`` prepared them and runs the three per-token passes a
step needs over a :class:`~rlhfkit.rollout.logprobs.Rollout`: the policy's log-probs (and entropy),
the reference's log-probs, and the critic's values. Every log-prob pass divides the logits by the
sampling temperature (ARCHITECTURE.md rule 6).

The reference is the initial policy: the same model with its LoRA adapters disabled when ``--lora-r``
is set (no second copy in memory), otherwise a frozen copy. The critic starts from the reward model
when it can (rule 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.console import console
from rlhfkit.models import load_causal_lm, load_tokenizer, lora_settings
from rlhfkit.models.prefix import prompt_cache_support, tree_support
from rlhfkit.models.reward import head_module, is_reward_model_folder, load_reward_backbone
from rlhfkit.rollout.logprobs import Rollout, in_chunks, response_logprobs


class ValueModel(torch.nn.Module):
    """A critic: a sequence-classification model (a reward model, or the policy with a new scalar head)
    read at every position rather than only the last, so it gives ``V(prefix)`` for each answer token."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.head = head_module(model)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         output_hidden_states=True)
        return self.head(out.hidden_states[-1]).squeeze(-1).float()


def response_values(critic, rollout: Rollout) -> torch.Tensor:
    """``V(prompt + answer[:t])`` for each answer token t, ``[N, R]`` (0 after EOS)."""
    width = rollout.response.shape[1]
    return critic(**rollout.model_inputs())[:, -width - 1 : -1] * rollout.mask


def load_critic(config: PPOConfig, tokenizer, dtype) -> ValueModel:
    """The critic starts from the reward model when it reads the policy's tokens (ARCHITECTURE.md rule 8),
    otherwise from the policy with a new scalar head at zero: a random head's values would be noise of about
    the rewards' scale, and GAE would pass that noise on to the first updates' advantages."""
    source = config.policy
    if Path(config.reward).is_dir() and is_reward_model_folder(config.reward):
        reward_vocab = load_tokenizer(config.reward).get_vocab()
        if reward_vocab == tokenizer.get_vocab():
            source = config.reward
        else:
            console.print("[yellow]ppo: the reward model has another tokenizer than the policy; the critic "
                          "starts from the policy with a new value head[/]")
    model = load_reward_backbone(source, tokenizer, dtype=dtype, gradient_checkpointing=config.gradient_checkpointing,
                                 lora=lora_settings(config), seed=config.seed, zero_head=source == config.policy)
    return ValueModel(model)


def load_ppo_models(config: PPOConfig, tokenizer, dtype, device: torch.device):
    """``(policy, reference, critic)`` before ``accelerate`` prepares them: the reference is
    ``--reference`` (default: the starting policy); none with LoRA (the adapters are disabled instead);
    no critic unless the estimator is GAE."""
    lora = lora_settings(config)
    policy = load_causal_lm(config.policy, tokenizer, dtype=dtype,
                            gradient_checkpointing=config.gradient_checkpointing, lora=lora)
    reference = None
    if lora is None:
        source = config.reference or config.policy
        if source != config.policy and load_tokenizer(source).get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"--reference {source}: its tokenizer is not the policy's ({config.policy}); the KL "
                              "penalty compares log-probs of the same tokens")
        reference = load_causal_lm(source, tokenizer, dtype=dtype).to(device).eval()
        reference.requires_grad_(False)
    critic = load_critic(config, tokenizer, dtype) if config.estimator == "gae" else None
    return policy, reference, critic


def prompt_sharing(samples_per_prompt: int, models: list[torch.nn.Module]) -> tuple[str, ...]:
    """The ways every one of ``models`` can run each prompt once for its K answers (models/prefix.py)."""
    if samples_per_prompt < 2:
        return ()
    return tuple(name for name, supported in (("cache", prompt_cache_support), ("tree", tree_support))
                 if all(supported(m) for m in models))


@dataclass
class PPOModels:
    """The prepared models of a run and the forward passes of one step."""

    accelerator: Accelerator
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: the policy with its LoRA adapters disabled
    critic: ValueModel | None
    temperature: float

    @property
    def trained(self) -> list[torch.nn.Module]:
        """The models the optimizer updates."""
        return [m for m in (self.policy, self.critic) if m is not None]

    def unwrapped_policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.policy)

    def policy_logprobs(self, rollout: Rollout, with_entropy: bool = False):
        """``(log-probs, entropy or None)`` of the answers under the policy, with the graph when grads are on."""
        return response_logprobs(self.policy, rollout, self.temperature, with_entropy=with_entropy)

    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        if self.reference is not None:
            return response_logprobs(self.reference, rollout, self.temperature)[0]
        with self.unwrapped_policy().disable_adapter():
            return response_logprobs(self.policy, rollout, self.temperature)[0]

    def values(self, rollout: Rollout) -> torch.Tensor:
        return response_values(self.critic, rollout)

    def in_chunks(self, function, rollout: Rollout, batch_size: int) -> torch.Tensor:
        """``function`` over the rollout in chunks of ``batch_size`` answers, concatenated."""
        return torch.cat(in_chunks(function, rollout, batch_size))
