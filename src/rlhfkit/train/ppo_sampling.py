"""Steps 1-2 of a PPO step: sample K answers per prompt and score them, with DAPO's dynamic sampling.

Without ``--dynamic-sampling`` the step's prompts are sampled once. With it (group estimators only), a
prompt whose K answers all get the same score has a group advantage of 0 and teaches nothing, so its
group is dropped and other prompts, drawn at random from the training prompts (seeded by the step and
the round, so a resumed run draws the same), are sampled in further rounds until the batch holds the
step's number of prompts again (Yu et al. 2025, DAPO). After ``--max-sampling-rounds`` extra rounds a
batch still short is filled with dropped groups, so every step (and every process) trains on a full
batch of the same size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.rl_losses import uniform_groups
from rlhfkit.rollout.generate import Sample
from rlhfkit.rollout.logprobs import Rollout, join_rollouts, rollout_from_samples
from rlhfkit.rollout.sampler import Sampler, SamplingSettings
from rlhfkit.train.ppo_experience import RewardScorer


def sampling_settings(config: PPOConfig, seed: int | None) -> SamplingSettings:
    """How a PPO run draws its answers; ``seed`` seeds the draws of engines that seed each request (vLLM)."""
    return SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.generation_batch_size,
                            seed)


def generate_rollout(sampler: Sampler, tokenizer, prompts: list, prompt_ids: list[list[int]], num_samples: int,
                     config: PPOConfig, device: torch.device, share_prompts: tuple[str, ...] = (),
                     seed: int | None = None) -> Rollout:
    """Sample ``num_samples`` answers per prompt; answer ``i*K + k`` is the k-th answer to prompt ``i``."""
    samples = sampler.sample(prompts, prompt_ids, num_samples, sampling_settings(config, seed))
    return rollout_from_samples(samples, prompts, prompt_ids, tokenizer.pad_token_id, device, share_prompts)


class RolloutsAhead:
    """``--async-steps S``: when step ``t`` takes its rollout, the rollouts of steps up to ``t + S`` are queued
    on the engine actors, so the engine samples step ``t + S`` while the trainer updates on step ``t``, with
    the weights it holds then (``t`` updates done). Step ``t + S`` is trained after ``t + S`` updates: its
    answers come from a policy ``S`` versions old (its ``policy_lag``; the first ``S`` steps lag less).

    ``request(step) -> (prompt indices, prompt ids, samples per prompt, settings)`` is the rollout request
    of a step; ``steps`` is the run's number of steps (nothing is queued beyond the last).

    A checkpoint keeps the rollouts queued at that moment (:meth:`settle` waits for them; the file is
    :meth:`save`'s): a resumed run trains its next ``S`` steps on those answers, sampled by the older
    policies as in the run that was stopped, instead of asking the restarted engine (which holds the
    newest weights) for them, so it continues exactly as the uninterrupted run."""

    def __init__(self, sampler, steps_ahead: int, steps: int, request):
        self.sampler, self.steps_ahead, self.steps, self.request = sampler, steps_ahead, steps, request
        self.queued: dict[int, tuple[list[int], object]] = {}  # step -> (its prompts, the engine's ticket)
        self.ready: dict[int, tuple[list[int], list]] = {}  # step -> (its prompts, its answers): settled

    def take(self, step: int, indices: list[int]):
        """The answers of ``step``'s rollout (its prompts ``indices``), queueing the steps ahead first."""
        for ahead in range(step, min(step + self.steps_ahead, self.steps - 1) + 1):
            if ahead not in self.queued and ahead not in self.ready:
                wanted, prompt_ids, num_samples, settings = self.request(ahead)
                self.queued[ahead] = (wanted, self.sampler.submit(prompt_ids, num_samples, settings))
        if step in self.ready:
            wanted, samples = self.ready.pop(step)
        else:
            wanted, pending = self.queued.pop(step)
            samples = self.sampler.collect(pending)
        if wanted != list(indices):
            raise RuntimeError(f"step {step}: the rollout queued ahead was for other prompts")
        return samples

    def settle(self) -> dict[int, tuple[list[int], list]]:
        """Wait for every queued rollout; returns them all (step -> (prompts, answers)), kept for :meth:`take`."""
        for step, (wanted, pending) in sorted(self.queued.items()):
            self.ready[step] = (wanted, self.sampler.collect(pending))
        self.queued.clear()
        return dict(self.ready)

    def save(self, path: Path) -> None:
        """Write the rollouts queued now (settled) to ``path``."""
        torch.save({step: (wanted, [[dataclasses.asdict(s) for s in answers] for answers in samples])
                    for step, (wanted, samples) in self.settle().items()}, path)

    def restore(self, path: Path) -> int:
        """Take the rollouts a checkpoint kept (:meth:`save`) as the ones queued ahead; those of other prompts
        than this process now asks for (a run resumed with another number of processes) are left out and
        sampled anew. Returns how many were left out."""
        saved = torch.load(path, weights_only=True)
        self.queued.clear()
        self.ready = {int(step): (list(wanted), [[Sample(**s) for s in answers] for answers in samples])
                      for step, (wanted, samples) in saved.items() if list(wanted) == list(self.request(int(step))[0])}
        return len(saved) - len(self.ready)


def sampling_seed(config: PPOConfig, step: int, round_: int, process: int) -> int:
    """The seed of one sampling call: a function of the run's seed, the step, the dynamic-sampling round and
    the process, so a resumed run asks the engine for the same draws."""
    return (config.seed * 7_919 + step * 104_729 + round_ * 1_299_709 + process * 15_485_863) % (2**31 - 1)


@dataclass
class ScoredBatch:
    """A step's rollout with its shaped and raw scores, and how dynamic sampling got it."""

    rollout: Rollout
    scores: torch.Tensor
    raw_scores: torch.Tensor
    metrics: dict[str, float]


def extra_prompts(config: PPOConfig, step: int, round_: int, process: int, available: int, count: int) -> list[int]:
    """``count`` prompt indices for dynamic sampling's round ``round_`` of ``step``: seeded, so a resumed
    run draws the same ones."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1_009 + round_ * 31 + process)
    return torch.randperm(available, generator=generator)[:count].tolist()


def sample_scored_batch(draw: Callable[[list[int], int], Rollout], first: list[int], score: RewardScorer,
                        config: PPOConfig, group: int, more: Callable[[int], list[int]], pad_token_id: int,
                        everyone: Callable[[bool], bool] = bool) -> ScoredBatch:
    """Sample and score the prompts ``first``; with dynamic sampling, replace groups whose scores are all
    equal by groups of the prompts ``more(round)``, for at most ``max_sampling_rounds`` rounds.

    ``draw(indices, round)`` samples the answers of those prompts (a rollout of ``group`` answers each).
    ``everyone(enough)`` says whether every process has enough groups: under ``--fsdp`` the processes
    sample the same number of rounds (each forward of a sharded policy is a collective)."""
    rollout = draw(first, 0)
    raw = score.raw(rollout)
    if not config.dynamic_sampling:
        return ScoredBatch(rollout, score.shape(rollout, raw), raw, {})
    needed = len(first)
    kept: list[Rollout] = []
    dropped: list[Rollout] = []
    kept_raw: list[torch.Tensor] = []
    dropped_raw: list[torch.Tensor] = []
    for round_ in range(config.max_sampling_rounds + 1):
        if round_:
            rollout = draw(more(round_), round_)
            raw = score.raw(rollout)
        uniform = uniform_groups(score.shape(rollout, raw, whiten=False), group).tolist()
        for g, is_uniform in enumerate(uniform):
            rows = list(range(g * group, (g + 1) * group))
            (dropped if is_uniform else kept).append(rollout.select(rows))
            (dropped_raw if is_uniform else kept_raw).append(raw[rows])
        if everyone(len(kept) >= needed):
            break
    metrics = {"dropped_groups": float(len(dropped)), "sampling_rounds": float(round_ + 1),
               "filled_groups": float(max(0, needed - len(kept)))}
    parts = (kept + dropped)[:needed]
    joined = join_rollouts(parts, pad_token_id)
    joined_raw = torch.cat((kept_raw + dropped_raw)[:needed])
    return ScoredBatch(joined, score.shape(joined, joined_raw), joined_raw, metrics)
