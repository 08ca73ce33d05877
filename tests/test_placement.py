"""The parts of ``--placement ray`` that need no cluster: which policy version samples each step under
``--async-steps``, the settings refused at start, and the weight transport's bytes (tests/test_ray.py
runs the real thing on a two-node Ray cluster)."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.rollout.generate import Sample
from rlhfkit.rollout.sampler import SamplingSettings
from rlhfkit.train.ppo_sampling import RolloutsAhead


class QueueingEngine:
    """An engine that runs its jobs in the order they were queued, like an engine actor: each answer carries
    the version of the weights loaded when its job ran."""

    def __init__(self):
        self.jobs, self.version, self.done = [], 0, {}

    def submit(self, prompt_ids, num_samples, settings):
        self.jobs.append(("sample", prompt_ids, settings.seed))
        return len(self.jobs) - 1

    def load_weights(self, weights, version=None):
        self.jobs.append(("load", version, None))

    def run_queued(self):
        for ticket, (kind, value, seed) in enumerate(self.jobs):
            if ticket in self.done:
                continue
            if kind == "load":
                self.version = value
            self.done[ticket] = [[Sample(0, [seed], "", True, version=self.version)]]

    def collect(self, ticket):
        self.run_queued()
        return self.done[ticket]


@pytest.mark.parametrize("steps_ahead", [1, 2])
def test_rollouts_queued_ahead_are_sampled_by_the_policy_steps_ahead_versions_old(steps_ahead):
    engine = QueueingEngine()
    steps = 8
    ahead = RolloutsAhead(engine, steps_ahead, steps, lambda step: ([step], [[1]], 1, SamplingSettings(seed=step)))
    lags, seeds = [], []
    for step in range(steps):
        answer = ahead.take(step, [step])[0][0]
        lags.append(step - answer.version)
        seeds.append(answer.token_ids[0])
        engine.load_weights([], version=step + 1)  # the update of this step, then its sync
    assert seeds == list(range(steps))  # every step got its own request
    assert lags == [min(step, steps_ahead) for step in range(steps)]
    assert not ahead.queued  # nothing queued past the last step
    with pytest.raises(RuntimeError, match="other prompts"):
        RolloutsAhead(engine, 1, steps, lambda step: ([0], [[1]], 1, SamplingSettings())).take(0, [5])


@pytest.mark.parametrize("steps_ahead", [1, 2])
def test_a_checkpoint_keeps_the_rollouts_queued_ahead_so_a_resumed_run_takes_what_the_stopped_run_would(
        steps_ahead, tmp_path):
    steps, stop = 8, 3

    def run(engine, ahead, first, last, kept=None):
        taken = []
        for step in range(first, last):
            answer = ahead.take(step, [step])[0][0]
            taken.append((answer.token_ids[0], answer.version))
            engine.load_weights([], version=step + 1)
        if kept is not None:
            ahead.save(kept)  # the checkpoint after step last - 1: its update and sync are queued
        return taken

    def request(step):
        return [step], [[1]], 1, SamplingSettings(seed=step)

    uninterrupted = QueueingEngine()
    whole = run(uninterrupted, RolloutsAhead(uninterrupted, steps_ahead, steps, request), 0, steps)

    engine = QueueingEngine()
    first = run(engine, RolloutsAhead(engine, steps_ahead, steps, request), 0, stop, kept=tmp_path / "ahead.pt")
    restarted = QueueingEngine()  # a new engine actor, started on the checkpoint's weights
    restarted.load_weights([], version=stop)
    resumed = RolloutsAhead(restarted, steps_ahead, steps, request)
    resumed.restore(tmp_path / "ahead.pt")
    assert sorted(resumed.ready) == list(range(stop, stop + steps_ahead))
    assert first + run(restarted, resumed, stop, steps) == whole  # same answers, same policy versions
    # resumed with another number of processes, this process asks for other prompts: those are sampled anew
    other = RolloutsAhead(restarted, steps_ahead, steps, lambda step: ([step + 100], [[1]], 1, SamplingSettings()))
    assert other.restore(tmp_path / "ahead.pt") == steps_ahead and not other.ready
    assert [stop - version for _, version in whole[stop:stop + 1]] == [steps_ahead]


def ppo_config(tmp_path, **overrides) -> PPOConfig:
    return PPOConfig(policy=str(tmp_path), reward="x:y", prompts="p.jsonl", output=str(tmp_path / "out"), **overrides)


def test_placement_settings_that_cannot_work_are_refused_at_start(tmp_path):
    from rlhfkit.train.placement import check_placement

    with pytest.raises(ConfigError, match="--async-steps .* needs --placement ray"):
        check_placement(ppo_config(tmp_path, async_steps=1))
    with pytest.raises(ConfigError, match="--placement ray places vLLM engine actors: use --engine vllm"):
        check_placement(ppo_config(tmp_path, placement="ray", engine="hf"))
    with pytest.raises(ConfigError, match="--placement"):
        ppo_config(tmp_path, placement="slurm")


def test_async_steps_default_to_a_truncated_importance_cap(tmp_path):
    from rlhfkit.rollout.ray_engine import ray_available
    from rlhfkit.rollout.vllm_engine import vllm_available
    from rlhfkit.train.placement import ASYNC_TIS_CAP, check_placement

    if not (ray_available() and vllm_available()):
        pytest.skip("Ray and vLLM are not installed")
    config = ppo_config(tmp_path, placement="ray", async_steps=2)
    check_placement(config)
    assert config.tis_cap == ASYNC_TIS_CAP and config.engine == "vllm"
    config = ppo_config(tmp_path, placement="ray", async_steps=2, tis_cap=5.0)
    check_placement(config)
    assert config.tis_cap == 5.0


def test_the_safetensors_transport_carries_a_tied_embedding_under_both_names():
    from safetensors.torch import load

    from rlhfkit.rollout.vllm_engine import safetensors_bytes

    embedding = torch.randn(8, 4)
    loaded = load(safetensors_bytes([("model.embed_tokens.weight", embedding), ("lm_head.weight", embedding),
                                     ("norm.weight", torch.ones(4))]))
    assert torch.equal(loaded["lm_head.weight"], embedding) and torch.equal(loaded["model.embed_tokens.weight"],
                                                                            embedding)
    assert set(loaded) == {"model.embed_tokens.weight", "lm_head.weight", "norm.weight"}
