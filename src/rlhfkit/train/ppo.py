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
   sampling temperature. The reference is the initial policy: the same model with its LoRA adapters
   disabled when ``--lora-r`` is set (no second copy in memory), otherwise a frozen copy.
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

Simplifications, said plainly: whitening statistics are per process; the rollout is generated with
HF ``generate`` (no vLLM); the critic is a separate model (no shared trunk with the policy).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_constant_schedule_with_warmup

from rlhfkit.config import ConfigError, PPOConfig, save_config
from rlhfkit.console import console, progress_bar
from rlhfkit.data import load_prompts
from rlhfkit.data.chat import encode_prompt
from rlhfkit.losses import (
    ADVANTAGE_ESTIMATORS,
    GROUP_ESTIMATORS,
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_advantages,
    explained_variance,
    kl_estimates,
    masked_mean,
)
from rlhfkit.models import (
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
    save_model,
)
from rlhfkit.models.prefix import (
    prompt_cache_support,
    tree_support,
)
from rlhfkit.models.reward import (
    head_module,
    is_reward_model_folder,
    load_reward_backbone,
)
from rlhfkit.rewards import RewardFunction, load_reward_function
from rlhfkit.rollout.logprobs import Rollout, in_chunks, response_logprobs, rollout_from_samples
from rlhfkit.rollout.sampler import HFSampler, SamplingSettings
from rlhfkit.train.batches import BatchPlan, split_held_out
from rlhfkit.train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.train.metrics import MetricsLog, tensorboard_writer
from rlhfkit.train.optimizer import TrainingError, make_accelerator, make_optimizer

ESTIMATORS = tuple(ADVANTAGE_ESTIMATORS)


# ---------------------------------------------------------------------------------------------------
# Rollouts




def truncate_prompt(ids: list[int], limit: int) -> list[int]:
    """Keep the last ``limit`` tokens of a prompt: the end (the question) matters most."""
    return ids[-limit:] if len(ids) > limit else ids


def generate_rollout(policy, tokenizer, prompts: list, prompt_ids: list[list[int]], num_samples: int,
                     config: PPOConfig, share_prompts: tuple[str, ...] = ()) -> Rollout:
    """Sample ``num_samples`` answers per prompt; answer ``i*K + k`` is the k-th answer to prompt ``i``."""
    sampler = HFSampler(policy, tokenizer)
    settings = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p,
                                config.generation_batch_size)
    samples = sampler.sample(prompts, prompt_ids, num_samples, settings)
    return rollout_from_samples(samples, prompts, prompt_ids, tokenizer.pad_token_id,
                                next(policy.parameters()).device, share_prompts)














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




# ---------------------------------------------------------------------------------------------------
# KL control and advantages








# ---------------------------------------------------------------------------------------------------
# The trainer


@dataclass
class Experience:
    """A scored rollout with everything the update needs."""

    rollout: Rollout
    old_logprobs: torch.Tensor | None  # None: the update takes them from its own forward pass
    ref_logprobs: torch.Tensor
    advantages: torch.Tensor
    old_values: torch.Tensor | None
    returns: torch.Tensor | None
    raw_scores: list[float]
    update_forward: tuple[torch.Tensor, torch.Tensor] | None = None  # (log-probs, entropy) with their graph


def reuses_update_logprobs(config: PPOConfig) -> bool:
    """Whether the old log-probs can come from the update's own forward pass instead of a separate one:
    with a single update per rollout the policy is still the sampling policy, and with the KL in the
    loss no reward needs the log-probs before the update (TRL's GRPO does the same)."""
    return config.ppo_epochs * config.num_minibatches == 1 and config.kl_penalty == "loss"


def forwards_before_rewards(config: PPOConfig, rollout_size: int) -> bool:
    """Whether the update's forward pass can run before the rewards, kept with its graph, its detached
    log-probs serving as the old ones for the KL in the reward (so no separate pass): with a single
    update per rollout, a rollout that is one micro-batch (keeping the graph costs no more memory
    than the update itself), and no critic."""
    return (config.ppo_epochs * config.num_minibatches == 1 and config.kl_penalty == "reward"
            and config.batch_size >= rollout_size and config.estimator != "gae")


def check_config(config: PPOConfig, num_processes: int) -> int:
    """Validate settings that depend on each other; returns the samples per prompt."""
    if config.estimator not in ESTIMATORS:
        raise ConfigError(f"--estimator {config.estimator!r}: expected one of {', '.join(ESTIMATORS)}")
    if config.kl_estimator not in ("k1", "k3"):
        raise ConfigError(f"--kl-estimator {config.kl_estimator!r}: expected k1 or k3")
    if config.kl_penalty not in ("reward", "loss"):
        raise ConfigError(f"--kl-penalty {config.kl_penalty!r}: expected reward or loss")
    if config.grad_accum != 1:
        raise ConfigError("--grad-accum does not apply to ppo: use --num-minibatches and --batch-size")
    if config.temperature <= 0:
        raise ConfigError("--temperature must be > 0 for RL (sampling is how the policy explores)")
    samples = config.samples_per_prompt or (4 if config.estimator in GROUP_ESTIMATORS else 1)
    if config.estimator in GROUP_ESTIMATORS and samples < 2:
        raise ConfigError(f"--estimator {config.estimator} compares answers to the same prompt: "
                          f"--samples-per-prompt must be at least 2, got {samples}")
    if config.prompts_per_step % num_processes:
        raise ConfigError(f"--prompts-per-step {config.prompts_per_step} must divide among {num_processes} processes")
    rollout_size = config.prompts_per_step // num_processes * samples
    if rollout_size % config.num_minibatches:
        raise ConfigError(f"the rollout batch ({rollout_size} answers per process) does not split into "
                          f"--num-minibatches {config.num_minibatches}")
    return samples


def load_critic(config: PPOConfig, tokenizer, dtype) -> ValueModel:
    """The critic starts from the reward model when it reads the policy's tokens (ARCHITECTURE.md rule 8), otherwise
    from the policy with a new scalar head at zero: a random head's values would be noise of about the
    rewards' scale, and GAE would pass that noise on to the first updates' advantages."""
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


class PPOTrainer:
    """Holds the models, the optimizer and the state of one ``rlhfkit ppo`` run."""

    def __init__(self, config: PPOConfig):
        self.config = config
        self.accelerator = accelerator = make_accelerator(config)
        self.samples_per_prompt = check_config(config, accelerator.num_processes)
        self.tokenizer = tokenizer = load_tokenizer(config.policy)
        dtype = resolve_dtype(config.dtype, resolve_device(config.device))
        records = load_prompts(config.prompts, skip_invalid=config.skip_invalid)
        if config.eval_data:
            train_records, eval_records = records, load_prompts(config.eval_data, skip_invalid=config.skip_invalid)
        else:
            train_records, eval_records = split_held_out(records, config.eval_split, config.seed)
        prompt_limit = config.max_length - config.max_new_tokens
        if prompt_limit <= 0:
            raise ConfigError(f"--max-length {config.max_length} leaves no room for prompts after "
                              f"--max-new-tokens {config.max_new_tokens}")
        self.prompts = [r.prompt for r in train_records]
        self.eval_prompts = [r.prompt for r in eval_records]
        encoded = [encode_prompt(tokenizer, p) for p in self.prompts + self.eval_prompts]
        truncated = sum(len(ids) > prompt_limit for ids in encoded)
        if truncated and accelerator.is_main_process:
            console.print(f"[yellow]ppo: {truncated} prompts longer than {prompt_limit} tokens keep their "
                          "last tokens[/]")
        encoded = [truncate_prompt(ids, prompt_limit) for ids in encoded]
        self.prompt_ids, self.eval_prompt_ids = encoded[: len(self.prompts)], encoded[len(self.prompts):]

        lora = lora_settings(config)
        policy = load_causal_lm(config.policy, tokenizer, dtype=dtype,
                                gradient_checkpointing=config.gradient_checkpointing, lora=lora)
        self.reference = None
        if lora is None:
            self.reference = load_causal_lm(config.policy, tokenizer, dtype=dtype).to(accelerator.device).eval()
            self.reference.requires_grad_(False)
        critic = load_critic(config, tokenizer, dtype) if config.estimator == "gae" else None
        self.reward_fn: RewardFunction = load_reward_function(
            config.reward, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
            max_length=config.max_length)
        self.track_fn: RewardFunction | None = None if not config.track_reward else load_reward_function(
            config.track_reward, device=config.device, dtype=config.dtype, batch_size=config.batch_size,
            max_length=config.max_length)
        self.kl = KLController(config.beta, config.target_kl, config.kl_horizon)

        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate}]
        if critic is not None:
            groups.append({"params": [p for p in critic.parameters() if p.requires_grad],
                           "lr": config.value_learning_rate or config.learning_rate})
        optimizer = make_optimizer(groups, weight_decay=config.weight_decay)
        self.plan = BatchPlan(len(self.prompts), config.prompts_per_step // accelerator.num_processes, 1,
                              accelerator.num_processes, config.seed)
        self.steps = config.max_steps or max(1, math.ceil(config.epochs * self.plan.steps_per_epoch))
        updates_per_step = config.ppo_epochs * config.num_minibatches
        self.scheduler = get_constant_schedule_with_warmup(optimizer, int(config.warmup_ratio * self.steps
                                                                          * updates_per_step))
        # K answers per prompt: the policy and reference passes run each prompt once (models/prefix.py)
        self.share_prompts: tuple[str, ...] = ()
        if self.samples_per_prompt > 1:
            models = [m for m in (policy, self.reference) if m is not None]
            self.share_prompts = tuple(name for name, supported in (("cache", prompt_cache_support),
                                                                      ("tree", tree_support))
                                       if all(supported(m) for m in models))
        if critic is None:
            self.policy, self.optimizer = accelerator.prepare(policy.to(accelerator.device), optimizer)
            self.critic = None
        else:
            self.policy, self.critic, self.optimizer = accelerator.prepare(
                policy.to(accelerator.device), critic.to(accelerator.device), optimizer)

    # -- the pieces of one step ------------------------------------------------------------------------

    def reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        if self.reference is not None:
            return response_logprobs(self.reference, rollout, self.config.temperature)[0]
        with self.accelerator.unwrap_model(self.policy).disable_adapter():
            return response_logprobs(self.policy, rollout, self.config.temperature)[0]

    def score(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores used for training, raw scores) of the rollout's answers."""
        config = self.config
        raw = torch.tensor(self.reward_fn(rollout.prompts, rollout.texts), dtype=torch.float32,
                           device=rollout.mask.device)
        if not torch.isfinite(raw).all():
            raise TrainingError(f"the reward gave a non-finite score ({raw[~torch.isfinite(raw)][0].item()}); "
                                f"the last good checkpoint is kept in {Path(config.output) / 'checkpoints'}")
        scores = raw.clone()
        if config.missing_eos_score is not None:
            scores = torch.where(rollout.finished, scores, torch.full_like(scores, config.missing_eos_score))
        if config.reward_clip > 0:
            scores = scores.clamp(-config.reward_clip, config.reward_clip)
        if config.whiten_rewards and len(scores) > 1:
            scores = (scores - scores.mean()) / (scores.std() + 1e-8)
        return scores, raw

    @torch.no_grad()
    def make_experience(self, rollout: Rollout) -> tuple[Experience, dict[str, float]]:
        config = self.config
        size = config.batch_size
        scores, raw_scores = self.score(rollout)
        mask = rollout.mask
        old_logprobs = entropy = update_forward = None
        if forwards_before_rewards(config, len(rollout)):
            with torch.enable_grad():
                update_forward = response_logprobs(self.policy, rollout, config.temperature, with_entropy=True)
            old_logprobs, entropy = (t.detach() for t in update_forward)
        elif not reuses_update_logprobs(config):
            pieces = in_chunks(lambda r: response_logprobs(self.policy, r, config.temperature, with_entropy=True),
                               rollout, size)
            old_logprobs = torch.cat([p[0] for p in pieces])
            entropy = torch.cat([p[1] for p in pieces])
        ref_logprobs = torch.cat(in_chunks(self.reference_logprobs, rollout, size))
        values = torch.cat(in_chunks(lambda r: response_values(self.critic, r), rollout, size)) \
            if self.critic is not None else None
        # with reused log-probs the KL is in the loss, not the reward: no KL is needed here
        kls = kl_estimates(old_logprobs, ref_logprobs) if old_logprobs is not None else None
        kl = kls[config.kl_estimator] * mask if kls is not None else torch.zeros_like(mask)
        reward_beta = self.kl.beta if config.kl_penalty == "reward" else 0.0
        advantages, returns = compute_advantages(
            config.estimator, scores, kl, values, mask, reward_beta, self.samples_per_prompt, config.gamma,
            config.lam, config.whiten_advantages)
        lengths = mask.sum(1)
        metrics = {"score": raw_scores.mean().item(), "beta": self.kl.beta,
                   "response_length": lengths.mean().item(), "eos_rate": rollout.finished.float().mean().item()}
        if self.track_fn is not None:
            metrics["track_score"] = sum(self.track_fn(rollout.prompts, rollout.texts)) / len(rollout)
        if kls is not None:  # otherwise the update reports them (see minibatch_loss)
            metrics.update(kl_k1=(kls["k1"] * mask).sum(1).mean().item(),
                           kl_k3=(kls["k3"] * mask).sum(1).mean().item(), entropy=masked_mean(entropy, mask).item())
        if values is not None:
            metrics["explained_variance"] = explained_variance(values, returns, mask)
        if self.accelerator.num_processes > 1:  # report means over all processes' rollouts
            names = sorted(metrics)
            values_ = torch.tensor([metrics[n] for n in names], device=self.accelerator.device)
            metrics = dict(zip(names, self.accelerator.reduce(values_, reduction="mean").tolist(), strict=True))
        return Experience(rollout, old_logprobs, ref_logprobs, advantages, values, returns, raw_scores.tolist(),
                          update_forward), metrics

    def update(self, experience: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatch updates; returns the mean of the per-update metrics."""
        config, accelerator = self.config, self.accelerator
        n = len(experience.rollout)
        minibatch = n // config.num_minibatches
        totals: dict[str, float] = {}
        updates = 0
        models = [m for m in (self.policy, self.critic) if m is not None]
        group = self.samples_per_prompt
        for _ in range(config.ppo_epochs):
            # minibatches of whole groups (a prompt's K answers stay together: their prompt runs once)
            order = (torch.randperm(n // group)[:, None] * group + torch.arange(group)).flatten()
            for start in range(0, n, minibatch):
                indices = order[start : start + minibatch].tolist()
                num_tokens = experience.rollout.mask[indices].sum()
                if accelerator.num_processes > 1:  # the token mean is over the global minibatch
                    num_tokens = accelerator.reduce(num_tokens, reduction="sum")
                micro = [indices[i : i + config.batch_size] for i in range(0, len(indices), config.batch_size)]
                for k, part in enumerate(micro):
                    last = k == len(micro) - 1
                    with contextlib.ExitStack() as stack:
                        if not last and accelerator.num_processes > 1:
                            for model in models:
                                stack.enter_context(accelerator.no_sync(model))
                        loss, metrics = self.minibatch_loss(experience, part, num_tokens.clamp(min=1),
                                                            len(indices) * accelerator.num_processes)
                        if not torch.isfinite(loss):
                            raise TrainingError(
                                f"non-finite loss ({loss.item()}); the last good checkpoint is kept in "
                                f"{Path(config.output) / 'checkpoints'}. Lower --learning-rate or clip rewards.")
                        accelerator.backward(loss * accelerator.num_processes)
                    for name, value in metrics.items():
                        totals[name] = totals.get(name, 0.0) + float(value)
                if config.max_grad_norm > 0:
                    for model in models:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        names = sorted(totals)
        summed = torch.tensor([totals[name] / updates for name in names], device=accelerator.device)
        if accelerator.num_processes > 1:  # each process holds its share of the global token mean
            summed = accelerator.reduce(summed, reduction="sum")
        return dict(zip(names, summed.tolist(), strict=True))

    def minibatch_loss(self, experience: Experience, indices: list[int], num_tokens: torch.Tensor,
                       num_answers: int):
        """The loss of micro-batch ``indices``, as its share of the minibatch's token mean (``num_tokens``
        over ``num_answers`` answers)."""
        config = self.config
        rollout = experience.rollout.select(indices)
        mask = rollout.mask
        reused = experience.old_logprobs is None
        if experience.update_forward is not None:  # run before the rewards (forwards_before_rewards)
            logprobs, entropy = (t[indices] for t in experience.update_forward)
        else:
            logprobs, entropy = response_logprobs(self.policy, rollout, config.temperature,
                                                  with_entropy=config.entropy_coef > 0 or reused)
        # a single on-policy update: the policy has not moved since sampling, so its log-probs now are the
        # old ones (exactly: same weights, same forward)
        old_logprobs = logprobs.detach() if reused else experience.old_logprobs[indices]
        loss, stats = clipped_policy_loss(logprobs, old_logprobs, experience.advantages[indices], mask,
                                          config.clip_range, num_tokens)
        metrics = {"policy_loss": loss.detach(), **stats}
        if reused:  # what the skipped pass would have reported
            kls = kl_estimates(old_logprobs, experience.ref_logprobs[indices])
            metrics.update(kl_k1=(kls["k1"] * mask).sum() / num_answers, kl_k3=(kls["k3"] * mask).sum() / num_answers,
                           entropy=(entropy.detach() * mask).sum() / num_tokens)
        if config.kl_penalty == "loss":  # β·k3(π, π_ref) per token, differentiated (GRPO)
            kl = kl_estimates(logprobs, experience.ref_logprobs[indices])["k3"]
            kl_loss = (kl * mask).sum() / num_tokens
            loss = loss + self.kl.beta * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        if self.critic is not None:
            values = response_values(self.critic, rollout)
            value_loss = clipped_value_loss(values, experience.old_values[indices], experience.returns[indices],
                                            mask, config.value_clip, num_tokens)
            loss = loss + config.value_coef * value_loss
            metrics["value_loss"] = value_loss.detach()
        if config.entropy_coef > 0:
            loss = loss - config.entropy_coef * (entropy * mask).sum() / num_tokens
        return loss, metrics

    # -- evaluation, samples and the run ---------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean score and KL per answer on the held-out prompts (one sampled answer each)."""
        policy = self.accelerator.unwrap_model(self.policy)
        rollout = generate_rollout(policy, self.tokenizer, self.eval_prompts, self.eval_prompt_ids, 1, self.config)
        _, raw = self.score(rollout)
        logprobs = torch.cat([p[0] for p in in_chunks(
            lambda r: response_logprobs(self.policy, r, self.config.temperature), rollout, self.config.batch_size)])
        ref = torch.cat(in_chunks(self.reference_logprobs, rollout, self.config.batch_size))
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

    def run(self, on_step=None) -> Path:
        config, accelerator = self.config, self.accelerator
        output = Path(config.output)
        output.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            save_config(config, output / "config.yaml")
        start = 0
        if config.resume:
            found = latest_checkpoint(output)
            if found is None:
                console.print(f"[yellow]--resume: no checkpoint in {output / 'checkpoints'}; starting fresh[/]")
            else:
                state = load_checkpoint(accelerator, found, self.scheduler)
                start, self.kl.beta = state["step"], state["beta"]
                console.print(f"resumed from {found} at step {start}")
        log = MetricsLog(output, accelerator.is_main_process, resume=start > 0)
        if accelerator.is_main_process and start == 0:
            (output / "samples.jsonl").unlink(missing_ok=True)
            console.print(f"ppo ({config.estimator}): {len(self.prompts)} prompts, {config.prompts_per_step} "
                          f"per step x {self.samples_per_prompt} answers, {self.steps} steps")
        writer = tensorboard_writer(output) if accelerator.is_main_process else None
        started = time.perf_counter()
        policy = accelerator.unwrap_model(self.policy)
        with progress_bar("ppo", total=self.steps, completed=start, enabled=accelerator.is_main_process) as advance:
            for step in range(start, self.steps):
                indices = self.plan.micro_batches(step, accelerator.process_index)[0]
                prompts = [self.prompts[i] for i in indices]
                rollout = generate_rollout(policy, self.tokenizer, prompts, [self.prompt_ids[i] for i in indices],
                                           self.samples_per_prompt, config, self.share_prompts)
                experience, metrics = self.make_experience(rollout)
                metrics.update(self.update(experience))
                self.kl.update(metrics["kl_k1"], len(rollout) * accelerator.num_processes)
                done = step + 1
                advance()
                if done % config.log_every == 0 or done == self.steps or done == 1:
                    record = {"step": done, **metrics, "lr": self.scheduler.get_last_lr()[0],
                              "seconds": round(time.perf_counter() - started, 2)}
                    log.write(record)
                    if writer is not None:
                        for name, value in record.items():
                            if name != "step":
                                writer.add_scalar(f"ppo/{name}", value, done)
                if accelerator.is_main_process and config.sample_every and (done % config.sample_every == 0
                                                                            or done == 1):
                    self.write_samples(done, rollout, experience.raw_scores)
                if self.eval_prompts and config.eval_every and done % config.eval_every == 0:
                    log.write({"step": done, **self.evaluate()})
                if config.save_every and done % config.save_every == 0 and done != self.steps:
                    save_checkpoint(accelerator, output, done, self.scheduler, {"beta": self.kl.beta})
                if on_step is not None:
                    on_step(done)
        if self.eval_prompts:
            log.write({"step": self.steps, **self.evaluate()})
        save_checkpoint(accelerator, output, self.steps, self.scheduler, {"beta": self.kl.beta})
        if accelerator.is_main_process:
            save_model(policy, self.tokenizer, output)
            if self.critic is not None:
                save_model(accelerator.unwrap_model(self.critic).model, self.tokenizer, output / "critic")
            console.print(f"ppo: policy saved to {output}")
        if writer is not None:
            writer.close()
        accelerator.wait_for_everyone()
        return output




def run_ppo(config: PPOConfig, on_step=None) -> Path:
    """Train ``config.policy`` against ``config.reward``; returns the output folder (an HF model).

    ``on_step(step)`` is called after every step (tests use it to interrupt a run).
    """
    return PPOTrainer(config).run(on_step)
