"""DPO's examples: preference pairs (or KTO answers with mismatched partners), tokenized and collated.

Each example holds two tokenized sequences, prompt + answer with labels on the answer only:
(chosen, rejected) for pairs; for KTO (answer, *mismatched* answer), the second being the prompt with
another example's answer, which the KL reference point of the KTO paper is estimated from. The
mismatched partner is fixed once, by a seeded shuffle, instead of being re-drawn in every batch (same
estimate in expectation; it lets the reference log-probs be cached).

A batch stacks the first sequences of all its examples, then the second sequences, in one right-padded
batch, so chosen and rejected go through the model together (ARCHITECTURE.md rule 11); or one tree row
per pair, its prompt once (``models/prefix.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass

import torch

from rlhfkit.config import DPOConfig
from rlhfkit.data import load_binary_feedback, load_preferences
from rlhfkit.data.chat import (
    IGNORE_INDEX,
    TokenizedExample,
    pad_batch,
    tokenize_prompt_response,
    truncate_prompt_first_together,
)
from rlhfkit.models.prefix import TreeBatch, cache_layout
from rlhfkit.train.batches import load_train_and_held_out

log = logging.getLogger("rlhfkit.dpo")


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
                     share_prompt: bool | str = False) -> dict[str, torch.Tensor]:
    """One right-padded batch: rows 0..B-1 are the examples' first sequences, rows B..2B-1 their second.
    With ``share_prompt`` (True or "tree"), one row per example instead, its prompt once and then both
    answers (a :class:`~rlhfkit.models.prefix.TreeBatch`), with the answer tokens' positions and ids;
    with "cache", each prompt once and the answers continuing from its key/value cache
    (:func:`cache_answers`); the sequences keep the same order (first sequences, then second).

    ``reference_logps`` ([2B], same row order) is included when every example has cached values."""
    sequences = [e.first for e in examples] + [e.second for e in examples]
    batch = None
    if share_prompt == "cache":
        batch = cache_answers(examples, pad_token_id)
    elif share_prompt:
        batch = tree_answers(examples, pad_token_id)
    if batch is None:
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


def cache_answers(examples: list[PreferenceExample], pad_token_id: int) -> dict[str, torch.Tensor] | None:
    """The prompt-cache layout of :func:`collate_examples` (``share_prompt="cache"``, for attention without
    custom masks): :func:`~rlhfkit.models.prefix.cache_layout` of each pair, its shared prompt cut at the
    first answer token, the sequences reordered to firsts then seconds, with ``cache_answer_mask`` on
    their answer tokens. None when a pair shares no first token (the padded layout then)."""
    def first_answer(sequence) -> int:
        return next((t for t, label in enumerate(sequence.labels) if label != IGNORE_INDEX), len(sequence.labels))

    layout = cache_layout([[e.first.input_ids, e.second.input_ids] for e in examples], pad_token_id,
                          max_shared=[min(first_answer(e.first), first_answer(e.second)) for e in examples])
    if layout is None:
        return None
    # cache_layout numbers sequences pair by pair (first, second, first, ...): reorder to firsts, seconds
    order = torch.tensor([2 * i for i in range(len(examples))] + [2 * i + 1 for i in range(len(examples))])
    for key in ("cache_suffix_ids", "cache_suffix_mask", "cache_owner"):
        layout[key] = layout[key][order]
    sequences = [e.first for e in examples] + [e.second for e in examples]
    shared = layout["cache_prefix_mask"].sum(1).tolist()
    answer_mask = torch.zeros_like(layout["cache_suffix_mask"])
    for row, (sequence, owner) in enumerate(zip(sequences, layout["cache_owner"].tolist(), strict=True)):
        labels = torch.tensor(sequence.labels[shared[owner]:])
        answer_mask[row, : len(labels)] = (labels != IGNORE_INDEX).long()
    layout["cache_answer_mask"] = answer_mask
    return layout


def rows(batch: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    """The sequence rows ``part`` of a collated batch (input_ids, attention_mask, labels)."""
    return {key: batch[key][part] for key in ("input_ids", "attention_mask", "labels")}



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



def unique_prompts(examples: list[PreferenceExample], limit: int) -> list:
    seen, prompts = set(), []
    for example in examples:
        key = json.dumps(example.prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(example.prompt)
    return prompts[:limit]

