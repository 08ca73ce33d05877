"""Reward model training: Bradley–Terry on human comparisons and rankings.

The unit of training is a *comparison group*: one prompt, its K responses, and the pairs people
expressed over them. A pair record is a group of 2 with one pair; a ranking of K is a group with all
C(K,2) pairs its ranks order (ties skipped: a tie says neither is better, and Bradley–Terry has no
term for it). As in InstructGPT, the K responses of a group are scored in one forward pass, kept in
the same batch element, and the group's loss is the mean over its pairs; the batch loss is the mean
over groups, so a prompt with many pairs does not outweigh one with a single pair.

The prompt of a group runs once for its K responses (:mod:`rlhfkit.models.prefix`): one row per
group, same rewards, same gradients, less work. Models whose attention cannot take the custom mask
(flash-attention 2) run each prompt once and its responses from its key/value cache instead
(:func:`~rlhfkit.models.prefix.cache_layout`), or, where neither works, every response in full.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from rich.table import Table

from rlhfkit.config import RMConfig
from rlhfkit.console import console
from rlhfkit.data import DataError, parse_preference, parse_ranking
from rlhfkit.data.chat import pad_batch, tokenize_prompt_response, truncate_prompt_first_together
from rlhfkit.data.readers import load_records
from rlhfkit.data.records import is_ranking_record, ranked_index_pairs
from rlhfkit.evaluate.preferences import pairwise_report
from rlhfkit.losses import bradley_terry_loss
from rlhfkit.models import (
    fit_max_length,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.models.prefix import TreeBatch, cache_layout, group_cost, shared_prefix_layout
from rlhfkit.models.reward import (
    OFFSET_KEY,
    RewardModel,
    cache_rewards,
    load_reward_backbone,
    sequence_rewards,
    tree_rewards,
)
from rlhfkit.train.batches import load_train_and_held_out
from rlhfkit.train.offline import Stage, train
from rlhfkit.train.optimizer import make_accelerator
from rlhfkit.train.sharding import eval_share, is_sharded, save_final_model


@dataclass
class ComparisonGroup:
    """One prompt, its responses, and (chosen index, rejected index, margin) pairs over them."""

    prompt: object
    responses: list
    pairs: list[tuple[int, int, float]]
    source: str | None = None
    location: str = ""


@dataclass
class TokenizedGroup:
    sequences: list[list[int]]
    pairs: list[tuple[int, int, float]]
    source: str | None = None
    truncated: int = 0
    location: str = ""


def parse_group(raw: dict, location: str) -> list[ComparisonGroup]:
    """A comparison group from a pair, ranking or HH record (no group when a ranking is all ties)."""
    if is_ranking_record(raw):
        ranking = parse_ranking(raw, location)
        pairs = [(better, worse, 0.0) for better, worse in ranked_index_pairs(ranking.ranks)]
        return [ComparisonGroup(ranking.prompt, ranking.responses, pairs, ranking.source, location)] if pairs else []
    pair = parse_preference(raw, location)
    margin = pair.margin or 0.0
    return [ComparisonGroup(pair.prompt, [pair.chosen, pair.rejected], [(0, 1, margin)], pair.source, location)]


def load_comparison_groups(path: str, *, skip_invalid: bool = False) -> list[ComparisonGroup]:
    groups = load_records(path, parse_group, skip_invalid=skip_invalid)
    if not groups:
        raise DataError(f"{path}: no comparisons (every ranking has only tied responses)")
    return groups


def tokenize_group(tokenizer, group: ComparisonGroup, max_length: int, use_margin: bool) -> TokenizedGroup:
    """The group's sequences; a group too long for ``max_length`` loses the same prompt tokens in every
    response (so they are compared in one context, and the prompt can be computed once)."""
    untruncated = [tokenize_prompt_response(tokenizer, group.prompt, r, sys.maxsize) for r in group.responses]
    examples = truncate_prompt_first_together(untruncated, max_length)
    pairs = group.pairs if use_margin else [(c, r, 0.0) for c, r, _ in group.pairs]
    return TokenizedGroup([e.input_ids for e in examples], pairs, group.source,
                          sum(e.truncated for e in examples), group.location)


def collate_groups(groups: list[TokenizedGroup], pad_token_id: int,
                   share_prefix: bool | str = False) -> dict[str, torch.Tensor]:
    """All responses of the groups in one batch, with pair indices into it: one right-padded batch
    (``input_ids``, ``attention_mask``), or with ``share_prefix`` (True or "tree") one row per group, its
    prompt once and its responses after it (:class:`~rlhfkit.models.prefix.TreeBatch` fields), or with
    "cache" each prompt once and its responses continuing from its key/value cache
    (:func:`~rlhfkit.models.prefix.cache_layout`).

    ``pair_weight`` is 1 / (pairs in the pair's group): summed, each group counts once.
    """
    sequences, chosen, rejected, margins, weights = [], [], [], [], []
    for group in groups:
        base = len(sequences)
        sequences.extend(group.sequences)
        for c, r, margin in group.pairs:
            chosen.append(base + c)
            rejected.append(base + r)
            margins.append(margin)
            weights.append(1.0 / len(group.pairs))
    tensors = None
    if share_prefix == "cache":
        tensors = cache_layout([g.sequences for g in groups], pad_token_id)
    elif share_prefix:
        tensors = TreeBatch.from_groups([g.sequences for g in groups], pad_token_id).as_dict()
    if tensors is None:
        tensors = dict(zip(("input_ids", "attention_mask"), pad_batch(sequences, pad_token_id), strict=True))
    return {**tensors, "chosen": torch.tensor(chosen), "rejected": torch.tensor(rejected),
            "margin": torch.tensor(margins), "pair_weight": torch.tensor(weights)}


def batch_rewards(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reward of every response in a :func:`collate_groups` batch, ``[responses]`` (float32)."""
    if "tree_last" in batch:
        return tree_rewards(model, TreeBatch.from_dict(batch))
    if "cache_prefix_ids" in batch:
        return cache_rewards(model, batch)
    return sequence_rewards(model, batch["input_ids"], batch["attention_mask"])


def rm_batch_loss(model, batch: dict[str, torch.Tensor], normalizer: float, label_smoothing: float = 0.0):
    rewards = batch_rewards(model, batch)
    chosen, rejected = rewards[batch["chosen"]], rewards[batch["rejected"]]
    losses = bradley_terry_loss(chosen, rejected, batch["margin"], label_smoothing)
    weight = batch["pair_weight"] / normalizer
    metrics = {"accuracy": ((chosen > rejected).float() * weight).sum().detach(),
               "reward_margin": ((chosen - rejected) * weight).sum().detach()}
    return (losses * weight).sum(), metrics


def reward_differences(model, groups: list[TokenizedGroup], pad_token_id: int, batch_size: int, device) -> list[float]:
    """r(chosen) - r(rejected) for every pair of ``groups``, in order."""
    differences = []
    share = shared_prefix_layout(model)
    for start in range(0, len(groups), batch_size):
        batch = collate_groups(groups[start : start + batch_size], pad_token_id, share)
        rewards = batch_rewards(model, {k: v.to(device) for k, v in batch.items()}).cpu()
        differences.extend((rewards[batch["chosen"]] - rewards[batch["rejected"]]).tolist())
    return differences


def evaluate_groups(model, groups: list[TokenizedGroup], pad_token_id: int, batch_size: int, accelerator) -> dict:
    """The pairwise report over held-out groups (sharded over processes, gathered)."""
    mine = eval_share(groups, accelerator)
    with torch.no_grad():
        differences = reward_differences(model, mine, pad_token_id, batch_size, accelerator.device)
    sources = [g.source for g in mine for _ in g.pairs]
    rows = list(zip(differences, sources, strict=True))
    if accelerator.num_processes > 1 and not is_sharded(accelerator):  # sharded: every process has all
        rows = gather_object(rows)
    return pairwise_report([d for d, _ in rows], [s for _, s in rows])


def print_report(report: dict, title: str) -> None:
    table = Table(title=title)
    for column in ("", "pairs", "accuracy", "mean margin"):
        table.add_column(column)
    table.add_row("all", str(report["pairs"]), f"{report['accuracy']:.3f}", f"{report['mean_margin']:.3f}")
    for source, row in report["by_source"].items():
        table.add_row(f"source {source}", str(row["pairs"]), f"{row['accuracy']:.3f}", f"{row['mean_margin']:.3f}")
    for bucket in report["calibration"]:
        if bucket["pairs"]:
            table.add_row(f"confidence {bucket['range']}", str(bucket["pairs"]), f"{bucket['accuracy']:.3f}",
                          f"(mean conf. {bucket['mean_confidence']:.3f})")
    console.print(table)


def run_rm(config: RMConfig) -> Path:
    """Train a reward model on ``config.data``; returns the output folder."""
    accelerator = make_accelerator(config)
    tokenizer = load_tokenizer(config.model)
    config.max_length = fit_max_length(config.max_length, config.model)
    train_groups, eval_groups = load_train_and_held_out(load_comparison_groups, config)
    train_set = [tokenize_group(tokenizer, g, config.max_length, config.use_margin) for g in train_groups]
    eval_set = [tokenize_group(tokenizer, g, config.max_length, config.use_margin) for g in eval_groups]
    truncated = sum(g.truncated for g in train_set + eval_set)
    if accelerator.is_main_process:
        pairs = sum(len(g.pairs) for g in train_set)
        console.print(f"rm: {len(train_set)} training groups ({pairs} pairs), {len(eval_set)} held-out groups")
        if truncated:
            console.print(f"[yellow]rm: {truncated} responses truncated to --max-length {config.max_length}; "
                          "their reward is read at the cut[/]")

    model = load_reward_backbone(
        config.model, tokenizer, dtype=resolve_dtype(config.dtype, resolve_device(config.device)),
        gradient_checkpointing=config.gradient_checkpointing, seed=config.seed,
        lora=lora_settings(config),
    )
    model.to(accelerator.device)
    pad = tokenizer.pad_token_id
    last_report: dict = {}  # the newest held-out report: the final one is written, not computed again

    def evaluate(m) -> dict[str, float]:
        last_report.clear()
        last_report.update(evaluate_groups(m, eval_set, pad, config.batch_size, accelerator))
        return {f"eval_{k}": v for k, v in last_report.items() if k in ("accuracy", "mean_margin")}

    share = shared_prefix_layout(model)  # each prompt computed once for its K responses
    if accelerator.is_main_process and not share:
        console.print("rm: this model shares no prompt (neither tree rows nor the prompt cache); each response "
                      "runs in full")
    stage = Stage(
        examples=train_set,
        collate=lambda batch: collate_groups(batch, pad, share),
        loss=lambda m, batch, norm: rm_batch_loss(m, batch, norm, config.label_smoothing),
        weight=lambda group: 1.0,
        evaluate=evaluate if eval_set else None,
        name="rm",
        length=lambda group: group_cost(group.sequences, share),
    )
    trained = train(config, accelerator, model, stage)
    output = Path(config.output)
    if eval_set and accelerator.is_main_process:  # the loop evaluated the final model last
        (output / "eval.json").write_text(json.dumps(last_report, indent=2))
        print_report(last_report, f"Reward model on {last_report['pairs']} held-out pairs")
    save_final_model(accelerator, trained, tokenizer, output)
    if accelerator.is_main_process:
        if config.normalize_with:
            normalize_reward_model(output, config.normalize_with, config.batch_size, config.max_length)
        console.print(f"rm: reward model saved to {output}")
    accelerator.wait_for_everyone()
    return output


def normalize_reward_model(folder: Path, references: str, batch_size: int, max_length: int) -> float:
    """Store the mean raw reward of the reference answers as the folder's offset; returns it."""
    from rlhfkit.evaluate.score import read_scoring_records

    _, prompts, responses = read_scoring_records(references)
    scorer = RewardModel.from_pretrained(folder, max_length=max_length)
    setattr(scorer.model.config, OFFSET_KEY, 0.0)
    offset = sum(scorer.score(prompts, responses, batch_size=batch_size)) / len(responses)
    setattr(scorer.model.config, OFFSET_KEY, offset)
    scorer.model.config.save_pretrained(folder)
    console.print(f"rm: offset {offset:.4f} stored: the {len(responses)} reference answers now score 0 on average")
    return offset
