"""RL against a reward with a KL penalty: PPO with a critic (GAE), or critic-free GRPO, RLOO, REINFORCE++.

One step, top to bottom (``run_ppo``):

1. **Rollout.** Take the step's prompts, sample K answers each from the current policy (batched, KV
   cache, ``inference_mode``), cut after the first EOS. The layout is
   ``[left-padded prompt | answer, padded after its EOS]``, so every answer starts at the same column
   and per-token tensors are ``[N, R]`` over the answer tokens with a 0/1 ``mask`` (1 through the EOS).
2. **Score.** The reward (a reward model or a Python function) scores each (prompt, answer text);
   answers without EOS may get ``--missing-eos-score`` instead; scores are clipped (and optionally
   whitened).
3. **Old log-probs, reference log-probs, values** in one no-grad pass each, with logits divided by the
   sampling temperature. The reference is the initial policy (or ``--reference``): the same model with its
   LoRA adapters disabled when ``--lora-r`` is set (no second copy in memory), otherwise a frozen copy.
4. **Rewards and advantages.** Per-token KL estimate (k1 or k3) to the reference; per-token reward
   ``-β·KL_t`` plus the score at the last answer token (or, with ``--kl-penalty loss``, the score alone
   and ``β·k3`` in the policy loss, as GRPO does). Then ``gae`` (critic values, γ, λ),
   ``reinforce++`` (return-to-go, whitened over the batch), or ``grpo`` / ``rloo`` (the score minus the
   answer's summed KL, compared within each prompt's group of K; the same advantage on every token).
5. **Update.** ``--ppo-epochs`` passes over the rollout in ``--num-minibatches`` minibatches: clipped
   surrogate, clipped value loss, optional entropy bonus; token means over each minibatch, padding and
   post-EOS tokens masked everywhere.
6. **β** follows the adaptive KL controller when ``--target-kl`` is set; metrics, samples and
   checkpoints are written (checkpoints include policy, critic, optimizer, scheduler, β and RNG states,
   so ``--resume`` continues exactly).

The pieces live beside this file: models and their passes in ``ppo_models.py``, steps 2-4 in
``ppo_experience.py``, step 5 in ``ppo_update.py``; the losses and estimators in ``losses.py``.

Sampling goes through the engine ``--engine`` chooses (``rollout/engines.py``): rlhfkit's HF decode
loop on the trained module itself, or a vLLM engine in this process, which gets the policy's weights
after every ``--sync-every`` updates, checked by a greedy probe (``rollout/weight_sync.py``); its
log-probs of the sampled tokens are compared with the trainer's every step (``engine_logprob_diff``,
``engine_kl``) and can correct the update (``--tis-cap``).

With ``--placement ray`` the process that calls :func:`run_ppo` drives Ray actors instead
(``placement.py``): trainer actors run this same trainer as one process group, their sampler is the
vLLM engine actors (``rollout/ray_engine.py``), and ``--async-steps`` queues later steps' rollouts on them
(:class:`~rlhfkit.train.ppo_sampling.RolloutsAhead`) so that sampling overlaps the update.

Simplifications, said plainly: whitening statistics are per process; the critic is a separate model
(no shared trunk with the policy).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from transformers import get_constant_schedule_with_warmup

from rlhfkit.config import ConfigError, PPOConfig
from rlhfkit.config_parse import save_config
from rlhfkit.console import console, progress_bar
from rlhfkit.data import load_prompts
from rlhfkit.data.chat import encode_prompt
from rlhfkit.models import fit_max_length, load_tokenizer, resolve_device, resolve_dtype
from rlhfkit.rewards import RewardFunction, load_reward_function
from rlhfkit.rl_losses import ADVANTAGE_ESTIMATORS, GROUP_ESTIMATORS, KLController, compute_advantages
from rlhfkit.rollout.engines import policy_engine, resolve_engine
from rlhfkit.rollout.logprobs import Rollout, in_chunks, response_logprobs, rollout_from_samples
from rlhfkit.rollout.ray_engine import RemoteReward, placed_run
from rlhfkit.train.batches import BatchPlan, split_held_out
from rlhfkit.train.checkpoints import (
    interruption_note,
    latest_checkpoint,
    resume_from_latest,
    save_checkpoint,
)
from rlhfkit.train.metrics import MetricsLog, tensorboard_writer
from rlhfkit.train.optimizer import TrainingError, make_accelerator, make_optimizer
from rlhfkit.train.placement import check_placement, run_placed
from rlhfkit.train.ppo_experience import Experience, RewardScorer, make_experience, mean_over_processes
from rlhfkit.train.ppo_models import (
    PPOModels,
    ValueModel,
    load_critic,
    load_ppo_models,
    prompt_sharing,
    response_values,
)
from rlhfkit.train.ppo_sampling import (
    RolloutsAhead,
    extra_prompts,
    generate_rollout,
    sample_scored_batch,
    sampling_seed,
    sampling_settings,
)
from rlhfkit.train.ppo_update import ppo_update
from rlhfkit.train.run_record import run_record
from rlhfkit.train.sharding import all_processes, is_sharded, save_final_model

# names tests and callers import from here
__all__ = ["PPOTrainer", "Rollout", "ValueModel", "compute_advantages", "load_critic", "response_logprobs",
           "response_values", "run_ppo"]

ESTIMATORS = tuple(ADVANTAGE_ESTIMATORS)


def check_config(config: PPOConfig, num_processes: int) -> int:
    """Validate settings that depend on each other; returns the samples per prompt. (Single-field
    choices such as ``--estimator`` are checked when the config is built.)"""
    if config.grad_accum != 1:
        raise ConfigError("--grad-accum does not apply to ppo: use --num-minibatches and --batch-size")
    check_placement(config)
    if config.max_length - config.max_new_tokens <= 0:
        raise ConfigError(f"--max-length {config.max_length} leaves no room for prompts after "
                          f"--max-new-tokens {config.max_new_tokens}")
    samples = config.samples_per_prompt or (4 if config.estimator in GROUP_ESTIMATORS else 1)
    if config.estimator in GROUP_ESTIMATORS and samples < 2:
        raise ConfigError(f"--estimator {config.estimator} compares answers to the same prompt: "
                          f"--samples-per-prompt must be at least 2, got {samples}")
    if config.dynamic_sampling and config.estimator not in GROUP_ESTIMATORS:
        raise ConfigError(f"--dynamic-sampling compares the answers to one prompt: it needs a group estimator "
                          f"({', '.join(sorted(GROUP_ESTIMATORS))}), not --estimator {config.estimator}")
    if config.prompts_per_step % num_processes:
        raise ConfigError(f"--prompts-per-step {config.prompts_per_step} must divide among {num_processes} processes")
    rollout_size = config.prompts_per_step // num_processes * samples
    if rollout_size % config.num_minibatches:
        raise ConfigError(f"the rollout batch ({rollout_size} answers per process) does not split into "
                          f"--num-minibatches {config.num_minibatches}")
    if config.reference not in (None, config.policy) and config.lora_r:
        raise ConfigError(f"--reference {config.reference}: with --lora-r the reference is the policy with its "
                          "adapters disabled; a separate reference needs full fine-tuning (--lora-r 0)")
    if config.tis_cap is not None and resolve_engine(config.engine, resolve_device(config.device)) == "hf":
        raise ConfigError("--tis-cap corrects for a sampling engine whose numbers differ from the trainer's; "
                          "the hf engine samples with the trained module itself: use it with --engine vllm")
    return samples


def truncate_prompt(ids: list[int], limit: int) -> list[int]:
    """Keep the last ``limit`` tokens of a prompt: the end (the question) matters most."""
    return ids[-limit:] if len(ids) > limit else ids


def reward_options(config: PPOConfig) -> dict:
    """How a reward model is loaded for this run (``load_reward_function``'s keyword arguments)."""
    return dict(device=config.device, dtype=config.dtype, batch_size=config.batch_size, max_length=config.max_length)


def load_reward(spec: str, config: PPOConfig) -> RewardFunction:
    return load_reward_function(spec, **reward_options(config))


class PPOTrainer:
    """Holds the models, the optimizer and the state of one ``rlhfkit ppo`` run."""

    def __init__(self, config: PPOConfig):
        self.config = config
        self.accelerator = accelerator = make_accelerator(config)
        self.samples_per_prompt = check_config(config, accelerator.num_processes)
        self.tokenizer = load_tokenizer(config.policy)
        config.max_length = fit_max_length(config.max_length, config.policy, "--max-length (prompt + answer)")
        if config.max_length - config.max_new_tokens <= 0:
            raise ConfigError(f"--max-new-tokens {config.max_new_tokens} leaves no room for prompts in the "
                              f"{config.max_length} positions {config.policy} reads")
        self.load_prompts()
        dtype = resolve_dtype(config.dtype, resolve_device(config.device))
        policy, reference, critic = load_ppo_models(config, self.tokenizer, dtype, accelerator.device)
        self.score = RewardScorer(self.reward_function(), config)
        self.track_fn = load_reward(config.track_reward, config) if config.track_reward else None
        self.kl = KLController(config.beta, config.target_kl, config.kl_horizon)
        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate}]
        if critic is not None:
            groups.append({"params": [p for p in critic.parameters() if p.requires_grad],
                           "lr": config.value_learning_rate or config.learning_rate})
        optimizer = make_optimizer(groups, weight_decay=config.weight_decay)
        self.plan = BatchPlan(len(self.prompts), config.prompts_per_step // accelerator.num_processes, 1,
                              accelerator.num_processes, config.seed)
        self.steps = config.max_steps or max(1, math.ceil(config.epochs * self.plan.steps_per_epoch))
        warmup = int(config.warmup_ratio * self.steps * config.ppo_epochs * config.num_minibatches)
        self.scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
        # K answers per prompt: the policy and reference passes run each prompt once (models/prefix.py)
        self.share_prompts = prompt_sharing(self.samples_per_prompt, [m for m in (policy, reference) if m is not None])
        trained = [m.to(accelerator.device) for m in (policy, critic) if m is not None]
        *trained, self.optimizer = accelerator.prepare(*trained, optimizer)
        if reference is not None and is_sharded(accelerator):  # sharded for inference too
            reference = accelerator.shard(reference)
        self.models = PPOModels(accelerator, trained[0], reference, trained[1] if critic else None,
                                config.temperature)
        self.sampler, self.sync = policy_engine(config, self.models.unwrapped_policy(), self.tokenizer, config.policy,
                                                dtype, accelerator.device, config.seed, self.prompt_ids,
                                                Path(config.output) / "engine-start", config.max_length)
        self.ahead = RolloutsAhead(self.sampler, config.async_steps, self.steps, self.rollout_request) \
            if config.async_steps else None
        self.current_step = 0
        self.versions: list[int | None] = []  # the policy versions that sampled the step's answers
        self.waited = 0.0  # seconds the step waited for its answers

    def reward_function(self):
        """The reward: loaded in this process, or with ``--reward-actors`` scoring on Ray actors."""
        config = self.config
        if config.placement == "ray" and config.reward_actors:
            return RemoteReward.start(placed_run(), config.reward_actors, config.reward, reward_options(config),
                                      {"num_cpus": config.reward_cpus, "num_gpus": config.reward_gpus},
                                      config.dist_timeout)
        return load_reward(config.reward, config)

    def load_prompts(self) -> None:
        """The training and held-out prompts, as text and as token ids cut to the room left for answers."""
        config = self.config
        records = load_prompts(config.prompts, skip_invalid=config.skip_invalid)
        if config.eval_data:
            train_records, eval_records = records, load_prompts(config.eval_data, skip_invalid=config.skip_invalid)
        else:
            train_records, eval_records = split_held_out(records, config.eval_split, config.seed)
        self.prompts = [r.prompt for r in train_records]
        self.eval_prompts = [r.prompt for r in eval_records]
        limit = config.max_length - config.max_new_tokens
        encoded = [encode_prompt(self.tokenizer, p) for p in self.prompts + self.eval_prompts]
        truncated = sum(len(ids) > limit for ids in encoded)
        if truncated and self.accelerator.is_main_process:
            console.print(f"[yellow]ppo: {truncated} prompts longer than {limit} tokens keep their last tokens[/]")
        encoded = [truncate_prompt(ids, limit) for ids in encoded]
        self.prompt_ids, self.eval_prompt_ids = encoded[: len(self.prompts)], encoded[len(self.prompts):]

    @property
    def policy(self) -> torch.nn.Module:
        return self.models.policy

    @property
    def critic(self) -> ValueModel | None:
        return self.models.critic

    # -- one step --------------------------------------------------------------------------------------

    def step(self, step: int) -> tuple[Rollout, Experience, dict[str, float]]:
        """Rollout -> score -> advantages -> update -> β; returns the rollout, its experience and the metrics."""
        config, accelerator, group = self.config, self.accelerator, self.samples_per_prompt
        self.current_step, self.versions, self.waited = step, [], 0.0
        batch = sample_scored_batch(
            self.sample, self.plan.micro_batches(step, accelerator.process_index)[0], self.score, config, group,
            lambda round_: extra_prompts(config, step, round_, accelerator.process_index, len(self.prompts),
                                         config.prompts_per_step // accelerator.num_processes),
            self.tokenizer.pad_token_id, everyone=lambda enough: all_processes(accelerator, enough))
        self.sampler.sleep()  # a colocated vLLM engine frees the GPU while the trainer works
        rollout = batch.rollout
        experience, metrics = make_experience(self.models, rollout, batch.scores, batch.raw_scores, config,
                                              self.kl.beta, group)
        metrics.update(batch.metrics, rollout_wait_seconds=self.waited)
        if self.versions and None not in self.versions:  # engine actors tag each answer with its policy version
            metrics.update(policy_lag=step - sum(self.versions) / len(self.versions),
                           policy_lag_max=float(step - min(self.versions)))
        if self.track_fn is not None:
            metrics["track_score"] = sum(self.track_fn(rollout.prompts, rollout.texts)) / len(rollout)
        metrics = mean_over_processes(accelerator, metrics)
        metrics.update(ppo_update(self.models, self.optimizer, self.scheduler, experience, config, self.kl.beta,
                                  group))
        self.kl.update(metrics["kl_k1"], len(rollout) * accelerator.num_processes)
        if self.sync is not None:  # the engine samples the next step from the updated weights
            metrics.update(self.sync.after_update(self.models.unwrapped_policy(), step + 1))
        return rollout, experience, metrics

    def sample(self, indices: list[int], round_: int = 0) -> Rollout:
        """``samples_per_prompt`` answers to each of the training prompts ``indices`` from the current policy
        (``round_``: the dynamic-sampling round, for the engine's seeds)."""
        started = time.perf_counter()
        prompts, prompt_ids = [self.prompts[i] for i in indices], [self.prompt_ids[i] for i in indices]
        if self.ahead is not None and round_ == 0:  # queued on the engines while an earlier step trained
            samples = self.ahead.take(self.current_step, indices)
        else:
            seed = sampling_seed(self.config, self.current_step, round_, self.accelerator.process_index)
            samples = self.sampler.sample(prompts, prompt_ids, self.samples_per_prompt,
                                          sampling_settings(self.config, seed))
        self.waited += time.perf_counter() - started
        self.versions += [s.version for answers in samples for s in answers]
        return rollout_from_samples(samples, prompts, prompt_ids, self.tokenizer.pad_token_id, self.accelerator.device,
                                    self.share_prompts)

    def rollout_request(self, step: int):
        """What step ``step`` samples first: its prompts (indices and ids), answers per prompt, settings."""
        indices = self.plan.micro_batches(step, self.accelerator.process_index)[0]
        seed = sampling_seed(self.config, step, 0, self.accelerator.process_index)
        return (list(indices), [self.prompt_ids[i] for i in indices], self.samples_per_prompt,
                sampling_settings(self.config, seed))

    def run(self, on_step=None) -> Path:
        config = self.config
        output = Path(config.output)
        start = self.start(output)
        log = MetricsLog(output, self.accelerator.is_main_process, resume=start > 0)
        writer = tensorboard_writer(output) if self.accelerator.is_main_process else None
        started = time.perf_counter()
        done = start
        with progress_bar("ppo", total=self.steps, completed=start, enabled=self.accelerator.is_main_process) as \
                advance, interruption_note(output, lambda: done, self.steps):
            for step in range(start, self.steps):
                try:
                    rollout, experience, metrics = self.step(step)
                except TrainingError as error:  # a non-finite reward or loss: say at which step
                    raise TrainingError(f"at step {step + 1}: {error}") from None
                done = step + 1
                advance()
                if done % config.log_every == 0 or done == self.steps or done == 1:
                    self.log(log, writer, done, {**metrics, "lr": self.scheduler.get_last_lr()[0],
                                                 "seconds": round(time.perf_counter() - started, 2)})
                if self.accelerator.is_main_process and config.sample_every and (done % config.sample_every == 0
                                                                                 or done == 1):
                    self.write_samples(done, rollout, experience.raw_scores)
                if self.eval_prompts and config.eval_every and done % config.eval_every == 0:
                    log.write({"step": done, **self.evaluate()})
                if config.save_every and done % config.save_every == 0 and done != self.steps:
                    save_checkpoint(self.accelerator, output, done, self.scheduler, {"beta": self.kl.beta, **self.record},
                                    per_process=self.save_rollouts_ahead if self.ahead is not None else None)
                if on_step is not None:
                    on_step(done)
        if self.eval_prompts:
            log.write({"step": self.steps, **self.evaluate()})
        self.finish(output, writer)
        return output

    # -- start, logging, evaluation and the end of a run -----------------------------------------------

    def start(self, output: Path) -> int:
        """Write the config, resume from the latest checkpoint when asked; returns the first step."""
        config, accelerator = self.config, self.accelerator
        output.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            save_config(config, output / "config.yaml")
        self.record = run_record(config)
        state = resume_from_latest(accelerator, output, self.scheduler, self.record) if config.resume else None
        start = 0
        if state is not None:
            start, self.kl.beta = state["step"], state["beta"]
            if self.ahead is not None:
                self.restore_rollouts_ahead(latest_checkpoint(output))
        if accelerator.is_main_process and start == 0:
            (output / "samples.jsonl").unlink(missing_ok=True)
            console.print(f"ppo ({config.estimator}): {len(self.prompts)} prompts, {config.prompts_per_step} "
                          f"per step x {self.samples_per_prompt} answers, {self.steps} steps")
        self.current_step = start
        if self.sync is not None:  # the engine starts on the weights the run continues from, checked
            probe = self.sync.push(self.models.unwrapped_policy(), start)
            console.print(f"ppo: vLLM engine on the policy's weights (probe |Δ log p| "
                          f"{probe['sync_probe_logprob_diff']:.2g}, greedy agreement {probe['sync_probe_agreement']:.0%})")
        return start

    def rollouts_ahead_file(self, checkpoint: Path) -> Path:
        return checkpoint / f"rollouts-ahead-{self.accelerator.process_index}.pt"

    def save_rollouts_ahead(self, checkpoint: Path) -> None:
        """``--async-steps``: keep this process's rollouts queued ahead in the checkpoint (see RolloutsAhead)."""
        self.ahead.save(self.rollouts_ahead_file(checkpoint))

    def restore_rollouts_ahead(self, checkpoint: Path) -> None:
        """``--async-steps`` resumed: train the next steps on the rollouts the checkpoint kept, sampled by the
        policies that sampled them in the stopped run."""
        path = self.rollouts_ahead_file(checkpoint)
        left_out = self.ahead.restore(path) if path.exists() else 0
        if left_out:
            console.print(f"[yellow]ppo: {left_out} rollout(s) the checkpoint kept were for other prompts than process "
                          f"{self.accelerator.process_index} samples now (another number of processes): sampled "
                          "anew by the resumed policy[/]")
        elif not path.exists():
            console.print(f"[yellow]ppo: {checkpoint} kept no rollouts queued ahead for process "
                          f"{self.accelerator.process_index}: the next {self.config.async_steps} step(s) are sampled "
                          "by the resumed policy (they lag less than in the stopped run)[/]")

    @staticmethod
    def log(log: MetricsLog, writer, step: int, metrics: dict[str, float]) -> None:
        log.write({"step": step, **metrics})
        if writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(f"ppo/{name}", value, step)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean score and KL per answer on the held-out prompts (one sampled answer each)."""
        models, size = self.models, self.config.batch_size
        rollout = generate_rollout(self.sampler, self.tokenizer, self.eval_prompts, self.eval_prompt_ids, 1,
                                   self.config, self.accelerator.device,
                                   seed=sampling_seed(self.config, self.current_step, -1, self.accelerator.process_index))
        _, raw = self.score(rollout)
        logprobs = torch.cat([p[0] for p in in_chunks(models.policy_logprobs, rollout, size)])
        ref = models.in_chunks(models.reference_logprobs, rollout, size)
        metrics = {"eval_score": raw.mean().item(),
                   "eval_kl": ((logprobs - ref) * rollout.mask).sum(1).mean().item()}
        if self.track_fn is not None:
            metrics["eval_track_score"] = sum(self.track_fn(rollout.prompts, rollout.texts)) / len(rollout)
        return metrics

    def write_samples(self, step: int, rollout: Rollout, scores: list[float], count: int = 3) -> None:
        path = Path(self.config.output) / "samples.jsonl"
        with path.open("a") as handle:
            for i in range(min(count, len(rollout))):
                record = {"step": step, "prompt": rollout.prompts[i], "response": rollout.texts[i],
                          "score": scores[i]}
                handle.write(json.dumps(record) + "\n")
                console.print(f"  [dim]sample[/] {rollout.texts[i][:200]!r} [dim]score[/] {scores[i]:.3f}")

    def finish(self, output: Path, writer) -> None:
        """The final checkpoint, the policy (and critic) as HF folders."""
        accelerator = self.accelerator
        save_checkpoint(accelerator, output, self.steps, self.scheduler, {"beta": self.kl.beta, **self.record})
        save_final_model(accelerator, self.models.unwrapped_policy(), self.tokenizer, output)
        if self.critic is not None:
            save_final_model(accelerator, accelerator.unwrap_model(self.critic).model, self.tokenizer, output / "critic")
        if accelerator.is_main_process:
            console.print(f"ppo: policy saved to {output}")
        if writer is not None:
            writer.close()
        accelerator.wait_for_everyone()
        if isinstance(self.score.reward_fn, RemoteReward):
            self.score.reward_fn.close()
        if self.sync is not None:  # last: closing an in-process vLLM engine ends torch.distributed's group
            self.sampler.close()
            shutil.rmtree(output / "engine-start", ignore_errors=True)


def run_ppo(config: PPOConfig, on_step=None) -> Path:
    """Train ``config.policy`` against ``config.reward``; returns the output folder (an HF model).

    ``on_step(step)`` is called after every step (tests use it to interrupt a run). With ``--placement
    ray`` this process is the driver of trainer and engine actors (``placement.py``).
    """
    if config.placement == "ray" and placed_run() is None:
        check_placement(config)
        return run_placed("ppo", run_ppo, config)
    return PPOTrainer(config).run(on_step)
