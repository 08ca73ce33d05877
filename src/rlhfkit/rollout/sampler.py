"""The sampling interface: what every stage that samples asks of a sampling engine.

A :class:`Sampler` does two things: sample K answers to each of a list of encoded prompts (their
tokens through the first EOS, their text, whether they ended, and the engine's log-probs of the
tokens when it reports them), and take new weights after a policy update. Trainers hold a sampler,
not a model, for their rollouts, so a second engine (vLLM, in its own process or beside the trainer)
plugs in here without touching the trainers (:mod:`rlhfkit.rollout.vllm_engine`, chosen by
:mod:`rlhfkit.rollout.engines`).

:class:`HFSampler` is rlhfkit's own decode loop (:func:`~rlhfkit.rollout.generate.sample_responses`)
on a Hugging Face model. It samples with the trained module itself, so a weight update is seen at
once: :meth:`HFSampler.load_weights` only copies when it was given a separate model. Its answers carry
no engine log-probs (``Sample.logprobs`` is None): the trainer's own forward pass over the same
weights gives them exactly, at no extra cost in PPO, where that pass runs anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from rlhfkit.rollout.generate import Sample, sample_responses


@dataclass(frozen=True)
class SamplingSettings:
    """How answers are drawn."""

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    batch_size: int = 16  # sequences decoded together
    seed: int | None = None  # engines that seed each request derive its seed from this and the answer's place


class Sampler(Protocol):
    """A sampling engine."""

    def sample(self, prompts: list, prompt_ids: list[list[int]], num_samples: int,
               settings: SamplingSettings, show_progress: bool = False) -> list[list[Sample]]:
        """``num_samples`` answers to each encoded prompt ``prompt_ids[i]`` (``prompts[i]`` is its
        record, kept for the caller), in prompt order."""
        ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Take the policy's new weights, by parameter name (a full, unsharded tensor each); ``version``: the
        updates they have had (engines that tag their answers with it keep it)."""
        ...

    def sleep(self) -> None:
        """Free what the engine holds while the trainer updates (where the engine can)."""
        ...

    def wake_up(self) -> None:
        ...

    def close(self) -> None:
        """Stop the engine and free what it holds."""
        ...


class HFSampler:
    """Samples with rlhfkit's decode loop on ``model`` (a Hugging Face causal LM, or a wrapper around
    one that ``unwrap`` removes, e.g. accelerate's DDP wrapper)."""

    def __init__(self, model: torch.nn.Module, tokenizer, unwrap=lambda model: model):
        self.model, self.tokenizer, self.unwrap = model, tokenizer, unwrap

    def sample(self, prompts: list, prompt_ids: list[list[int]], num_samples: int,
               settings: SamplingSettings, show_progress: bool = False) -> list[list[Sample]]:
        return sample_responses(self.unwrap(self.model), self.tokenizer, prompts, num_samples=num_samples,
                                max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, batch_size=settings.batch_size, show_progress=show_progress,
                                prompt_ids=prompt_ids)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Copy ``weights`` into the sampling model, in place. A tensor that is already the model's own
        (the sampler shares the trained module) is skipped; an unknown name is an error."""
        own = dict(self.unwrap(self.model).named_parameters())
        for name, tensor in weights:
            if name not in own:
                raise KeyError(f"load_weights: the sampling model has no parameter {name!r}")
            if own[name].data_ptr() != tensor.data_ptr():
                own[name].copy_(tensor)

    def sleep(self) -> None:
        """Nothing to free: the HF engine samples with the trained module itself."""

    def wake_up(self) -> None:
        """See :meth:`sleep`."""

    def close(self) -> None:
        """Nothing to stop: the model belongs to the caller."""
