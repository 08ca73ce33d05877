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

Online DPO (``--online``): see :func:`run_online_dpo`.

Simplifications, on purpose: the KTO reference point is estimated per micro-batch (not gathered over
processes); implicit rewards of the reference-free losses are β·(mean answer log-prob), as in SimPO.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object

from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.console import console
from rlhfkit.data import load_binary_feedback, load_preferences, load_prompts
from rlhfkit.data.chat import (
    IGNORE_INDEX,
    TokenizedExample,
    encode_prompt,
    pad_batch,
    tokenize_prompt_response,
    truncate_prompt_first_together,
)
from rlhfkit.losses import (
    DPO_LOSSES,
    UNPAIRED_LOSSES,
    PairLogps,
    kto_loss,
    kto_reference_point,
)
from rlhfkit.losses import needs_reference as loss_needs_reference
from rlhfkit.models import (
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
    save_model,
)
from rlhfkit.models.prefix import TreeBatch, group_cost, tree_support
from rlhfkit.rollout.logprobs import sequence_logps, supports_logit_mask
from rlhfkit.train.batches import load_train_and_held_out
from rlhfkit.train.offline import Stage, train
from rlhfkit.train.optimizer import make_accelerator

log = logging.getLogger("rlhfkit.dpo")

# ---------------------------------------------------------------------------------------------------
# The losses by name







PAIR_LOSSES = DPO_LOSSES
LOSS_NAMES = (*DPO_LOSSES, *UNPAIRED_LOSSES)


def needs_reference(config: DPOConfig) -> bool:
    return loss_needs_reference(config.loss)


# ---------------------------------------------------------------------------------------------------
# Examples and batches


@dataclass
class PreferenceExample:
    """Two sequences that the loss compares: (chosen, rejected), or for KTO (answer, mismatched answer).

    ``reference`` holds the two sequences' reference log-probs once they are cached."""

    first: TokenizedExample
    second: TokenizedExample
    prompt: object = None
    desirable: bool = True  # KTO: a thumbs-up answer
    reference: tuple[float, float] | None = None


def answer_only(example: TokenizedExample) -> TokenizedExample:
    """The example with its first token's label removed: nothing predicts a sequence's first token (when
    truncation left no prompt, the answer's first token cannot carry loss)."""
    if example.labels and example.labels[0] != IGNORE_INDEX:
        example = dataclasses.replace(example, labels=[IGNORE_INDEX, *example.labels[1:]])
    return example


def tokenize_pairs(tokenizer, pairs, max_length: int, what: str) -> list[PreferenceExample]:
    """Tokenize preference pairs; pairs left with an empty answer after truncation are dropped (warned).
    A pair too long loses the same prompt tokens in both answers (one context; the prompt can be shared)."""
    examples, dropped, truncated = [], [], 0
    for pair in pairs:
        whole = [tokenize_prompt_response(tokenizer, pair.prompt, answer, sys.maxsize)
                 for answer in (pair.chosen, pair.rejected)]
        chosen, rejected = (answer_only(e) for e in truncate_prompt_first_together(whole, max_length))
        truncated += chosen.truncated or rejected.truncated
        if chosen.num_target_tokens and rejected.num_target_tokens:
            examples.append(PreferenceExample(chosen, rejected, pair.prompt))
        else:
            dropped.append(pair.location)
    report_tokenization(what, len(pairs), truncated, dropped, max_length)
    return examples


def tokenize_feedback(tokenizer, records, max_length: int, what: str, seed: int) -> list[PreferenceExample]:
    """Tokenize KTO records, each with a mismatched partner answer (another record's, by a seeded shuffle)."""
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    partner = {index: order[(k + 1) % len(order)] for k, index in enumerate(order)}
    examples, dropped, truncated = [], [], 0
    for index, record in enumerate(records):
        answer = answer_only(tokenize_prompt_response(tokenizer, record.prompt, record.completion, max_length))
        other = records[partner[index]].completion
        if isinstance(other, list) != isinstance(record.prompt, list):  # a string answer to a chat prompt
            other = other if isinstance(other, str) else other[-1]["content"]
        mismatched = answer_only(tokenize_prompt_response(tokenizer, record.prompt, other, max_length))
        truncated += answer.truncated
        if answer.num_target_tokens and mismatched.num_target_tokens:
            examples.append(PreferenceExample(answer, mismatched, record.prompt, desirable=record.desirable))
        else:
            dropped.append(record.location)
    report_tokenization(what, len(records), truncated, dropped, max_length)
    return examples


def report_tokenization(what: str, total: int, truncated: int, dropped: list[str], max_length: int) -> None:
    if truncated:
        log.warning("%s: %d of %d examples truncated to --max-length %d (prompts lose their start first)",
                    what, truncated, total, max_length)
    if dropped:
        shown = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        log.warning("%s: %d examples have an empty answer within --max-length %d and are left out: %s",
                    what, len(dropped), max_length, shown)


def collate_examples(examples: list[PreferenceExample], pad_token_id: int,
                     share_prompt: bool = False) -> dict[str, torch.Tensor]:
    """One right-padded batch: rows 0..B-1 are the examples' first sequences, rows B..2B-1 their second.
    With ``share_prompt``, one row per example instead, its prompt once and then both answers (a
    :class:`~rlhfkit.models.prefix.TreeBatch`), with the answer tokens' positions and ids; the
    sequences keep the same order (first sequences, then second).

    ``reference_logps`` ([2B], same row order) is included when every example has cached values."""
    sequences = [e.first for e in examples] + [e.second for e in examples]
    if share_prompt:
        batch = tree_answers(examples, pad_token_id)
    else:
        input_ids, attention_mask = pad_batch([s.input_ids for s in sequences], pad_token_id)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, sequence in enumerate(sequences):
            labels[row, : len(sequence.labels)] = torch.tensor(sequence.labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    batch["desirable"] = torch.tensor([e.desirable for e in examples])
    if all(e.reference is not None for e in examples):
        batch["reference_logps"] = torch.tensor([e.reference[0] for e in examples]
                                                + [e.reference[1] for e in examples])
    return batch


def tree_answers(examples: list[PreferenceExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The shared-prompt layout of :func:`collate_examples`: the rows, and for every sequence (firsts,
    then seconds) the positions and ids of its answer tokens (``answer_mask`` marks the real ones)."""
    tree = TreeBatch.from_groups([[e.first.input_ids, e.second.input_ids] for e in examples], pad_token_id)
    # TreeBatch numbers sequences group by group (first, second, first, ...): reorder to firsts, seconds
    order = torch.tensor([2 * i for i in range(len(examples))] + [2 * i + 1 for i in range(len(examples))])
    tree = dataclasses.replace(tree, last=tree.last[order], start=tree.start[order], shared=tree.shared[order],
                               owner=tree.owner[order])
    sequences = [e.first for e in examples] + [e.second for e in examples]
    answers = [[t for t, label in enumerate(s.labels) if label != IGNORE_INDEX] for s in sequences]
    positions, answer_mask = pad_batch(answers, 0)
    tokens = pad_batch([[s.input_ids[t] for t in a] for s, a in zip(sequences, answers, strict=True)], 0)[0]
    return {**tree.as_dict(), "answer_positions": positions, "answer_tokens": tokens, "answer_mask": answer_mask}


def rows(batch: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    """The sequence rows ``part`` of a collated batch (input_ids, attention_mask, labels)."""
    return {key: batch[key][part] for key in ("input_ids", "attention_mask", "labels")}


# ---------------------------------------------------------------------------------------------------
# Log-probs of answers








class Reference:
    """The frozen reference policy, for log-probs that are not (or cannot be) cached.

    ``lora_policy``: the policy's own base weights, its adapters disabled, serve as the reference. Else
    the reference is loaded from ``name_or_path``: kept in memory (``keep``), or loaded when first
    needed and released when the outermost :meth:`model` block ends (precomputed training, where only
    evaluation needs it again).
    """

    def __init__(self, name_or_path: str, tokenizer, dtype, device, *, lora_policy=None, keep: bool = False):
        self.name_or_path, self.tokenizer, self.dtype, self.device = name_or_path, tokenizer, dtype, device
        self.lora_policy = lora_policy
        self.keep = keep
        self._model = None
        self._depth = 0  # nested model() blocks share one loaded model / one disabled-adapter state

    @contextlib.contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        if self._depth:
            self._depth += 1
            try:
                yield self._model
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            if self.lora_policy is not None:
                with self.lora_policy.disable_adapter():
                    self._model = self.lora_policy
                    yield self.lora_policy
            else:
                if self._model is None:
                    self._model = load_causal_lm(self.name_or_path, self.tokenizer, dtype=self.dtype,
                                                 device=self.device).eval().requires_grad_(False)
                yield self._model
        finally:
            self._depth = 0
            if not self.keep or self.lora_policy is not None:
                self._model = None

    def logps(self, batch: dict[str, torch.Tensor], *, logit_mask: bool) -> torch.Tensor:
        with torch.no_grad(), self.model() as model:
            return sequence_logps(model, batch, logit_mask=logit_mask)[0]


def precompute_reference(examples: list[PreferenceExample], reference: Reference, pad_token_id: int,
                         batch_size: int, accelerator, logit_mask: bool, share_prompt: bool = False) -> None:
    """Cache both sequences' reference log-probs in every example (each process computes a share)."""
    mine = list(range(accelerator.process_index, len(examples), accelerator.num_processes))
    values = []
    with reference.model():  # loaded once for all batches
        for start in range(0, len(mine), batch_size):
            chunk = [examples[i] for i in mine[start : start + batch_size]]
            batch = {k: v.to(accelerator.device) for k, v in collate_examples(chunk, pad_token_id, share_prompt).items()}
            logps = reference.logps(batch, logit_mask=logit_mask).cpu().tolist()
            values.extend(zip(mine[start : start + batch_size], logps[: len(chunk)], logps[len(chunk) :],
                              strict=True))
    if accelerator.num_processes > 1:
        values = gather_object(values)
    for index, first, second in values:
        examples[index].reference = (first, second)


# ---------------------------------------------------------------------------------------------------
# Loss and metrics of a batch


def reference_logps(batch, reference: Reference | None, logit_mask: bool) -> torch.Tensor:
    if "reference_logps" in batch:
        return batch["reference_logps"]
    return reference.logps(batch, logit_mask=logit_mask)


def pair_outputs(model, batch, config: DPOConfig, reference: Reference | None, logit_mask: bool) -> dict:
    """Per-pair loss, implicit rewards, correctness and log-probs of a batch of preference pairs."""
    logps, counts = sequence_logps(model, batch, logit_mask=logit_mask)
    n = len(logps) // 2
    counts = counts.clamp(min=1)
    lp = PairLogps(logps[:n], logps[n:], counts[:n], counts[n:])
    if needs_reference(config):
        ref = reference_logps(batch, reference, logit_mask).to(logps.device)
        lp.reference_chosen, lp.reference_rejected = ref[:n], ref[n:]
        reward_chosen = config.beta * (lp.chosen - lp.reference_chosen).detach()
        reward_rejected = config.beta * (lp.rejected - lp.reference_rejected).detach()
        shift_chosen = ((lp.chosen - lp.reference_chosen) / lp.chosen_tokens).detach()
        shift_rejected = ((lp.rejected - lp.reference_rejected) / lp.rejected_tokens).detach()
    else:
        reward_chosen, reward_rejected = config.beta * lp.chosen_mean.detach(), config.beta * lp.rejected_mean.detach()
        shift_chosen = shift_rejected = None
    return {"loss": PAIR_LOSSES[config.loss](lp, config), "rewards_chosen": reward_chosen,
            "rewards_rejected": reward_rejected, "correct": (reward_chosen > reward_rejected).float(),
            "logps_chosen": lp.chosen.detach(), "logps_rejected": lp.rejected.detach(),
            "per_token_chosen": lp.chosen_mean.detach(), "per_token_rejected": lp.rejected_mean.detach(),
            "shift_chosen": shift_chosen, "shift_rejected": shift_rejected}


def kto_outputs(model, batch, config: DPOConfig, reference: Reference | None, logit_mask: bool) -> dict:
    """Per-answer KTO loss and rewards; the mismatched rows only estimate the reference point (no grad)."""
    n = len(batch["input_ids"]) // 2
    answers, mismatched = rows(batch, slice(0, n)), rows(batch, slice(n, 2 * n))
    logps, counts = sequence_logps(model, answers, logit_mask=logit_mask)
    with torch.no_grad():
        mismatched_logps, _ = sequence_logps(model, mismatched, logit_mask=logit_mask)
    ref = reference_logps(batch, reference, logit_mask).to(logps.device)  # both halves in one pass
    ref_answers, ref_mismatched = ref[:n], ref[n:]
    z0 = kto_reference_point(mismatched_logps, ref_mismatched)
    desirable = batch["desirable"].to(logps.device)
    loss = kto_loss(logps, ref_answers, desirable, z0, config.beta, config.kto_desirable_weight,
                    config.kto_undesirable_weight)
    reward = config.beta * (logps - ref_answers).detach()
    # "correct": the answer's reward is on its label's side of the reference point
    correct = torch.where(desirable, reward > config.beta * z0, reward < config.beta * z0).float()
    return {"loss": loss, "reward": reward, "desirable": desirable, "correct": correct, "kl": z0.expand(n),
            "logps": logps.detach()}


def batch_outputs(model, batch, config, reference, logit_mask) -> dict:
    compute = kto_outputs if config.loss == "kto" else pair_outputs
    return compute(model, batch, config, reference, logit_mask)


def summed_metrics(outputs: dict, loss_name: str) -> dict[str, torch.Tensor]:
    """Sums over the batch of the logged quantities (divided by the global normaliser by the caller)."""
    if loss_name == "kto":
        desirable = outputs["desirable"].float()
        return {"rewards_desirable_sum": (outputs["reward"] * desirable).sum(), "desirable": desirable.sum(),
                "rewards_undesirable_sum": (outputs["reward"] * (1 - desirable)).sum(),
                "accuracy": outputs["correct"].sum(), "kl": outputs["kl"].sum(), "logps": outputs["logps"].sum()}
    return {"rewards_chosen": outputs["rewards_chosen"].sum(), "rewards_rejected": outputs["rewards_rejected"].sum(),
            "reward_margin": (outputs["rewards_chosen"] - outputs["rewards_rejected"]).sum(),
            "accuracy": outputs["correct"].sum(), "logps_chosen": outputs["logps_chosen"].sum(),
            "logps_rejected": outputs["logps_rejected"].sum()}


class LikelihoodWatch:
    """Warns once when the policy's log-probs of chosen AND rejected answers have both fallen from where
    they started (the known DPO failure: probability mass moves to answers that are neither).

    "Where they started" is the reference (log-ratio per token) when there is one, else the first
    steps' per-token log-probs. Judged over windows of ``window`` steps, beyond ``tolerance`` nats/token.
    """

    def __init__(self, window: int = 10, tolerance: float = 0.05, enabled: bool = True):
        self.window, self.tolerance, self.enabled = window, tolerance, enabled
        self.pending: list[tuple[float, float, int]] = []  # this window's (chosen, rejected) sums and count
        self.baseline: tuple[float, float] | None = None
        self.warned = False

    def record(self, outputs: dict) -> None:
        if "per_token_chosen" not in outputs:
            return
        relative = outputs["shift_chosen"] is not None
        chosen = outputs["shift_chosen"] if relative else outputs["per_token_chosen"]
        rejected = outputs["shift_rejected"] if relative else outputs["per_token_rejected"]
        self.pending.append((chosen.sum().item(), rejected.sum().item(), len(chosen)))
        if relative:
            self.baseline = (0.0, 0.0)

    def on_step(self, step: int) -> None:
        if step % self.window or not self.pending:
            return
        count = sum(n for _, _, n in self.pending)
        chosen = sum(c for c, _, _ in self.pending) / count
        rejected = sum(r for _, r, _ in self.pending) / count
        self.pending = []
        if self.baseline is None:
            self.baseline = (chosen, rejected)
            return
        fell_chosen, fell_rejected = chosen - self.baseline[0], rejected - self.baseline[1]
        if fell_chosen < -self.tolerance and fell_rejected < -self.tolerance and not self.warned:
            self.warned = True
            if self.enabled:
                console.print(
                    f"[yellow]dpo: at step {step} the log-probs of both chosen ({fell_chosen:+.3f} nats/token) and "
                    f"rejected ({fell_rejected:+.3f}) answers are below where they started: the policy is moving "
                    "probability to answers that are neither (a known DPO failure). Consider a lower "
                    "--learning-rate, a larger --beta, or --loss orpo (which keeps an SFT term).[/]")


def training_loss(model, batch, normalizer, config, reference, logit_mask, watch: LikelihoodWatch):
    outputs = batch_outputs(model, batch, config, reference, logit_mask)
    watch.record(outputs)
    metrics = {name: value.detach() / normalizer for name, value in summed_metrics(outputs, config.loss).items()}
    return outputs["loss"].sum() / normalizer, metrics


# ---------------------------------------------------------------------------------------------------
# Evaluation


def held_out_metrics(model, examples, config, reference, pad_token_id, logit_mask, accelerator,
                     share_prompt: bool = False) -> dict[str, float]:
    """Loss, preference accuracy and implicit-reward margins over held-out examples (summed, then divided)."""
    mine = examples[accelerator.process_index :: accelerator.num_processes]
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, len(mine), config.batch_size):
        batch = collate_examples(mine[start : start + config.batch_size], pad_token_id, share_prompt)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        outputs = batch_outputs(model, batch, config, reference, logit_mask)
        sums = {"loss": outputs["loss"].sum().detach(), "examples": torch.tensor(float(len(outputs["loss"]))),
                **summed_metrics(outputs, config.loss)}
        for name, value in sums.items():
            totals[name] = totals.get(name, 0.0) + value.float().to(accelerator.device)
    names = sorted(totals)
    if not names:
        return {}
    stacked = torch.stack([totals[n] for n in names])
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, reduction="sum")
    summed = dict(zip(names, stacked.tolist(), strict=True))
    count = max(summed.pop("examples"), 1.0)
    return {f"eval_{name}": value / count for name, value in summed.items()}


def kl_to_reference(policy, reference: Reference, tokenizer, prompts: list, config: DPOConfig,
                    accelerator) -> dict[str, float]:
    """KL(policy ‖ reference) on ``prompts``: answers sampled from the policy, Σ_t log π - log π_ref over
    their tokens (log-probs at the sampling temperature), averaged over answers."""
    from rlhfkit.rollout.generate import sample_responses
    from rlhfkit.rollout.logprobs import answer_logprob_sums

    mine = prompts[accelerator.process_index :: accelerator.num_processes]
    total = torch.zeros(3, device=accelerator.device)  # [summed KL, answers, answer tokens]
    if mine:
        prompt_ids = [encode_prompt(tokenizer, prompt) for prompt in mine]
        samples = sample_responses(policy, tokenizer, mine, num_samples=1, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, top_p=config.top_p,
                                   batch_size=config.generation_batch_size, show_progress=False,
                                   prompt_ids=prompt_ids)
        answer_ids = [sample.token_ids for [sample] in samples]
        settings = dict(temperature=config.temperature, batch_size=config.batch_size)
        ours = answer_logprob_sums(policy, tokenizer, prompt_ids, answer_ids, **settings)
        with reference.model() as model:  # loaded once (or adapters disabled once) for all answers
            theirs = answer_logprob_sums(model, tokenizer, prompt_ids, answer_ids, **settings)
        total += torch.tensor([sum(ours) - sum(theirs), len(answer_ids), sum(map(len, answer_ids))],
                              device=accelerator.device)
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    kl, answers, tokens = total.tolist()
    return {"eval_kl": kl / max(answers, 1.0), "eval_answer_tokens": tokens / max(answers, 1.0)}


def unique_prompts(examples: list[PreferenceExample], limit: int) -> list:
    seen, prompts = set(), []
    for example in examples:
        key = json.dumps(example.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(example.prompt)
    return prompts[:limit]


# ---------------------------------------------------------------------------------------------------
# Offline training


def check_config(config: DPOConfig) -> None:
    if config.loss not in LOSS_NAMES:
        raise ConfigError(f"--loss {config.loss!r}: expected one of {', '.join(LOSS_NAMES)}")
    if config.loss == "robust" and not 0.0 <= config.label_smoothing < 0.5:
        raise ConfigError(f"--label-smoothing {config.label_smoothing}: robust DPO needs 0 <= ε < 0.5")
    if config.beta <= 0:
        raise ConfigError(f"--beta {config.beta}: expected a positive number")
    if config.online:
        missing = [flag for flag, value in (("--reward", config.reward), ("--prompts", config.prompts)) if not value]
        if missing:
            raise ConfigError(f"--online needs {' and '.join(missing)}")
        if config.samples_per_prompt < 2:
            raise ConfigError("--samples-per-prompt must be at least 2 to make a pair")
    elif not config.data:
        raise ConfigError("missing required setting: --data (or --online with --prompts and --reward)")


def load_examples(config: DPOConfig, tokenizer) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
    """(training, held-out) examples: preference pairs, or KTO feedback with mismatched partners."""
    if config.loss == "kto":
        train_records, held_records = load_train_and_held_out(load_binary_feedback, config)
        return (tokenize_feedback(tokenizer, train_records, config.max_length, config.data, config.seed),
                tokenize_feedback(tokenizer, held_records, config.max_length, "held-out", config.seed)
                if held_records else [])
    train_pairs, held_pairs = load_train_and_held_out(load_preferences, config)
    return (tokenize_pairs(tokenizer, train_pairs, config.max_length, config.data),
            tokenize_pairs(tokenizer, held_pairs, config.max_length, "held-out") if held_pairs else [])


def run_dpo(config: DPOConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train ``config.model`` on ``config.data`` with ``config.loss``; returns the output folder (an HF
    model). ``--online`` runs :func:`run_online_dpo` instead. ``on_step(step)`` is called after every
    optimizer step (tests use it to interrupt a run)."""
    check_config(config)
    if config.online:
        return run_online_dpo(config)
    accelerator = make_accelerator(config)
    tokenizer = load_tokenizer(config.model)
    train_set, held_set = load_examples(config, tokenizer)
    if not train_set:
        raise ConfigError(f"{config.data}: no training examples left after tokenization")
    main = accelerator.is_main_process
    if main:
        kind = "answers" if config.loss == "kto" else "pairs"
        console.print(f"dpo ({config.loss}): {len(train_set)} training and {len(held_set)} held-out {kind}")

    device = accelerator.device
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    model = load_causal_lm(config.model, tokenizer, dtype=dtype, gradient_checkpointing=config.gradient_checkpointing,
                           lora=lora_settings(config))
    model.to(device)
    logit_mask = supports_logit_mask(model)
    # a pair's prompt runs once for both answers (models/prefix.py); KTO's rows are read separately
    share = config.loss != "kto" and tree_support(model)
    reference_path = config.reference or config.model
    uses_lora_base = config.lora_r > 0 and reference_path == config.model
    reference = Reference(reference_path, tokenizer, dtype, device, lora_policy=model if uses_lora_base else None,
                          keep=not config.precompute_ref)
    pad = tokenizer.pad_token_id
    if config.precompute_ref and needs_reference(config):
        resumed = config.resume and cached_reference_path(config).exists()
        if resumed:
            load_cached_reference(cached_reference_path(config), train_set, held_set)
        else:
            precompute_reference(train_set + held_set, reference, pad, config.batch_size, accelerator, logit_mask,
                                 share)
            if main:
                save_cached_reference(cached_reference_path(config), train_set, held_set)
        if main:
            console.print(f"dpo: reference log-probs {'read from' if resumed else 'cached for'} "
                          f"{len(train_set) + len(held_set)} examples")

    kl_prompts = unique_prompts(held_set, config.eval_kl_prompts)
    last_eval: dict[str, float] = {}

    def evaluate(m) -> dict[str, float]:
        result = held_out_metrics(m, held_set, config, reference, pad, logit_mask, accelerator, share)
        if kl_prompts:
            result.update(kl_to_reference(accelerator.unwrap_model(m), reference, tokenizer, kl_prompts, config,
                                          accelerator))
        last_eval.clear()
        last_eval.update(result)
        return result

    watch = LikelihoodWatch(window=max(config.log_every, 1), enabled=main)

    def after_step(step: int) -> None:
        watch.on_step(step)
        if on_step is not None:
            on_step(step)

    stage = Stage(
        examples=train_set,
        collate=lambda batch: collate_examples(batch, pad, share),
        loss=lambda m, batch, norm: training_loss(m, batch, norm, config, reference, logit_mask, watch),
        weight=lambda example: 1.0,
        evaluate=evaluate if held_set else None,
        name=f"dpo-{config.loss}" if config.loss != "dpo" else "dpo",
        length=lambda example: group_cost([example.first.input_ids, example.second.input_ids], share),
    )
    trained = train(config, accelerator, model, stage, on_step=after_step)
    output = Path(config.output)
    if main:
        if last_eval:
            (output / "eval.json").write_text(json.dumps(last_eval, indent=2))
        save_model(trained, tokenizer, output)
        console.print(f"dpo: model saved to {output}")
    accelerator.wait_for_everyone()
    return output


def cached_reference_path(config: DPOConfig) -> Path:
    return Path(config.output) / "reference_logps.json"


def save_cached_reference(path: Path, train_set, held_set) -> None:
    """Keep the cached reference log-probs beside the checkpoints, so --resume need not recompute them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": [e.reference for e in train_set], "held_out": [e.reference for e in held_set]}))


def load_cached_reference(path: Path, train_set, held_set) -> None:
    cached = json.loads(path.read_text())
    if len(cached["train"]) != len(train_set) or len(cached["held_out"]) != len(held_set):
        raise ConfigError(f"{path}: cached reference log-probs do not match the data (was it changed?); "
                          "delete the file to recompute them")
    for example, values in zip(train_set + held_set, cached["train"] + cached["held_out"], strict=True):
        example.reference = tuple(values)


# ---------------------------------------------------------------------------------------------------
# Online (iterative) DPO


def round_dir(output: str | Path, index: int) -> Path:
    return Path(output) / f"round-{index:03d}"


def round_is_finished(folder: Path) -> bool:
    return (folder / "round.json").exists()


def best_and_worst_pairs(prompts: list, answers: list[list[str]], scores: list[list[float]]) -> tuple[list, int]:
    """One pair per prompt, its best-scored answer over its worst; prompts whose scores all tie are
    skipped (they say nothing about which answer is better). Returns (pairs, skipped count)."""
    pairs, skipped = [], 0
    for prompt, texts, values in zip(prompts, answers, scores, strict=True):
        best = max(range(len(values)), key=values.__getitem__)
        worst = min(range(len(values)), key=values.__getitem__)
        if values[best] == values[worst]:
            skipped += 1
            continue
        pairs.append({"prompt": prompt, "chosen": texts[best], "rejected": texts[worst],
                      "chosen_score": values[best], "rejected_score": values[worst]})
    return pairs, skipped


def sample_and_score(model_path: str, prompts: list, reward, config: DPOConfig, count: int):
    """``count`` answers per prompt from the model at ``model_path``, with their scores."""
    from rlhfkit.rollout.generate import sample_responses

    device = resolve_device(config.device)
    tokenizer = load_tokenizer(model_path)
    policy = load_causal_lm(model_path, tokenizer, dtype=resolve_dtype(config.dtype, device), device=device)
    samples = sample_responses(policy, tokenizer, prompts, num_samples=count, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, top_p=config.top_p,
                               batch_size=config.generation_batch_size)
    del policy
    answers = [[s.text for s in per_prompt] for per_prompt in samples]
    flat = reward([p for p, texts in zip(prompts, answers, strict=True) for _ in texts],
                  [t for texts in answers for t in texts])
    scores = [flat[i * count : (i + 1) * count] for i in range(len(prompts))]
    unfinished = sum(not s.finished for per_prompt in samples for s in per_prompt)
    return answers, scores, unfinished


def run_online_dpo(config: DPOConfig) -> Path:
    """Online DPO: ``rounds`` times, sample K answers per prompt from the current policy, score them with
    ``--reward``, pair each prompt's best answer with its worst, and train on those pairs.

    Round r writes ``OUTPUT/round-NNN/``: ``pairs.jsonl``, the loop's ``metrics.jsonl`` and checkpoints,
    the round's model and ``round.json`` (written last: the round is finished). ``OUTPUT/rounds.jsonl``
    has each round's mean sample reward, and after the last round that of the final policy. The reference
    is the initial model in every round. With ``--resume`` finished rounds are skipped, an unfinished
    round reuses its pairs and resumes from its last checkpoint. Answers are re-tokenized from their
    text for training (unfinished answers then end with EOS like any other); the DPO loss uses the
    policy at temperature 1.
    """
    from transformers import set_seed

    from rlhfkit.rewards import load_reward_function

    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        for old in output.glob("round-*"):
            shutil.rmtree(old)
        (output / "rounds.jsonl").unlink(missing_ok=True)
    prompts = [record.prompt for record in load_prompts(config.prompts, skip_invalid=config.skip_invalid)]
    reward = load_reward_function(config.reward, device=config.device, dtype=config.dtype,
                                  batch_size=config.generation_batch_size, max_length=config.max_length)
    policy_path = config.model
    for index in range(config.rounds):
        folder = round_dir(output, index)
        if round_is_finished(folder):
            policy_path = str(folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        pairs_file = folder / "pairs.jsonl"
        if not pairs_file.exists():
            set_seed(config.seed + index)
            answers, scores, unfinished = sample_and_score(policy_path, prompts, reward, config,
                                                           config.samples_per_prompt)
            pairs, skipped = best_and_worst_pairs(prompts, answers, scores)
            mean_reward = sum(map(sum, scores)) / (len(prompts) * config.samples_per_prompt)
            summary = {"round": index, "mean_reward": mean_reward, "pairs": len(pairs), "tied_prompts": skipped,
                       "unfinished_answers": unfinished}
            (folder / "samples.json").write_text(json.dumps(summary))
            tmp = pairs_file.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
            tmp.replace(pairs_file)
        summary = json.loads((folder / "samples.json").read_text())
        console.print(f"online dpo: round {index}: mean reward {summary['mean_reward']:.4f}, {summary['pairs']} pairs "
                      f"({summary['tied_prompts']} prompts with tied scores skipped)")
        if summary["pairs"]:
            round_config = dataclasses.replace(config, online=False, model=policy_path, data=str(pairs_file),
                                               output=str(folder), reference=config.reference or config.model,
                                               eval_data=None)
            run_dpo(round_config)
        else:
            log.warning("online dpo: round %d has no pairs (all scores tied); the policy is unchanged", index)
            copy_model_files(Path(policy_path), folder)
        (folder / "round.json").write_text(json.dumps(summary))
        with (output / "rounds.jsonl").open("a") as handle:
            handle.write(json.dumps(summary) + "\n")
        policy_path = str(folder)

    set_seed(config.seed + config.rounds)
    _, scores, _ = sample_and_score(policy_path, prompts, reward, config, config.samples_per_prompt)
    final = {"round": "final", "mean_reward": sum(map(sum, scores)) / (len(prompts) * config.samples_per_prompt)}
    with (output / "rounds.jsonl").open("a") as handle:
        handle.write(json.dumps(final) + "\n")
    copy_model_files(Path(policy_path), output)
    console.print(f"online dpo: final policy mean reward {final['mean_reward']:.4f}; model saved to {output}")
    return output


def copy_model_files(source: Path, destination: Path) -> None:
    """Copy an HF model folder's files (not its subfolders such as checkpoints) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in ("metrics.jsonl", "round.json", "samples.json", "pairs.jsonl",
                                                "reference_logps.json", "config.yaml", "eval.json"):
            shutil.copy2(path, destination / path.name)


__all__ = ["LOSS_NAMES", "PAIR_LOSSES", "PreferenceExample", "Reference", "run_dpo", "run_online_dpo",
           "sequence_logps"]
