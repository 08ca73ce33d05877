"""Supervised fine-tuning: learn to produce the demonstrated answers.

The loss is the token mean of the answer tokens' negative log-likelihood: prompt tokens, system and
user turns are masked (labels -100) and only assistant turns / completions are learnt.

With ``--packing`` whole examples share rows of at most ``--max-length`` tokens (best fit, longest
first), kept apart as if each ran alone: position ids restart at every example, and attention stays
within it, by a block-diagonal mask per row (sdpa and eager; the tree rows' mechanism,
``models/prefix.py``) or, under flash-attention, the position-id ("varlen") form of the whole batch
in one row. No example is cut, and no token predicts the next example's first, so each example's loss
is the one it has unpacked.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import SFTConfig
from rlhfkit.console import console
from rlhfkit.data import load_demonstrations
from rlhfkit.data.chat import IGNORE_INDEX, TokenizedExample, tokenize_demonstration_examples
from rlhfkit.losses import sft_loss
from rlhfkit.models import (
    fit_max_length,
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.models.prefix import TreeBatch, flat_forward, packing_layout, tree_forward
from rlhfkit.train.batches import load_train_and_held_out
from rlhfkit.train.offline import Stage, train
from rlhfkit.train.optimizer import make_accelerator
from rlhfkit.train.sharding import eval_share, save_final_model

log = logging.getLogger("rlhfkit.sft")


def tokenize_demonstrations(tokenizer, demos, max_length: int, what: str) -> list[TokenizedExample]:
    """Tokenize (one example per demonstration, or one per assistant turn where the chat template
    rewrites earlier turns: :func:`~rlhfkit.data.chat.tokenize_demonstration_examples`), report
    truncation, and leave out (with a warning naming them) examples that have no answer token left
    after truncation."""
    examples, empty = [], []
    for demo in demos:
        for example in tokenize_demonstration_examples(tokenizer, demo, max_length):
            if example.num_target_tokens == 0:
                empty.append(demo.location)
            else:
                examples.append(example)
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%s: %d of %d examples truncated to --max-length %d", what, truncated, len(examples) + len(empty), max_length)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        log.warning("%s: %d examples have no answer tokens within --max-length %d and are left out: %s",
                    what, len(empty), max_length, shown)
    if not examples:
        raise ValueError(f"{what}: no example has an answer within --max-length {max_length}")
    return examples


@dataclass
class PackedRow:
    """Whole examples that share one training row, in order."""

    examples: list[TokenizedExample]

    @functools.cached_property
    def input_ids(self) -> list[int]:
        return [token for example in self.examples for token in example.input_ids]

    @functools.cached_property
    def labels(self) -> list[int]:
        """The examples' labels, each example's first one ignored: nothing before it in its own sequence
        predicts it (unpacked, it has no predecessor either)."""
        return [label if i else IGNORE_INDEX for example in self.examples for i, label in enumerate(example.labels)]

    @functools.cached_property
    def num_target_tokens(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE_INDEX)


def pack_examples(examples: list[TokenizedExample], max_length: int) -> list[PackedRow]:
    """Rows of whole examples, at most ``max_length`` tokens each: best fit, longest example first (each
    goes into the fullest row it fits in, else a new row). Deterministic; the rows are in the order
    they were opened."""
    rows: list[list[TokenizedExample]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for index in sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids)):
        example = examples[index]
        size = len(example.input_ids)
        at = bisect.bisect_left(room, (size, -1))
        if at == len(room):
            rows.append([])
            free, row = max_length, len(rows) - 1
        else:
            free, row = room.pop(at)
        rows[row].append(example)
        if free - size > 0:
            bisect.insort(room, (free - size, row))
    packed = [PackedRow(row) for row in rows]
    return [row for row in packed if row.num_target_tokens]


def collate_packed(rows: list[PackedRow], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Packed rows as a :class:`~rlhfkit.models.prefix.TreeBatch` that shares nothing (each example its
    own segment, positions restarting), right-padded, with the rows' labels."""
    tree = TreeBatch.from_groups([[e.input_ids for e in row.examples] for row in rows], pad_token_id,
                                 share_prefix=False)
    labels = torch.full(tree.input_ids.shape, IGNORE_INDEX, dtype=torch.long)
    for i, row in enumerate(rows):
        labels[i, : len(row.labels)] = torch.tensor(row.labels)
    return {**tree.as_dict(), "labels": labels}


def packed_batch_loss(model, batch: dict[str, torch.Tensor], normalizer: float, layout: str):
    """:func:`sft_batch_loss` of :func:`collate_packed` rows, in ``layout`` (see
    :func:`~rlhfkit.models.prefix.packing_layout`)."""
    tree = TreeBatch.from_dict(batch)
    if layout == "varlen":
        logits = flat_forward(model, tree, use_cache=False).logits
        labels = batch["labels"][tree.segment >= 0][None]
    else:
        logits = tree_forward(model, tree, use_cache=False).logits
        labels = batch["labels"]
    return sft_loss(logits, labels, normalizer), {}


def collate_right_padded(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: padded positions get attention 0 and label -100."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sft_batch_loss(model, batch: dict[str, torch.Tensor], normalizer: float):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sft_loss(logits, batch["labels"], normalizer), {}


def held_out_loss(model, examples: list[TokenizedExample], pad_token_id: int, batch_size: int, accelerator) -> dict:
    """Token-mean loss and perplexity over ``examples`` (sharded over processes, sums reduced)."""
    mine = eval_share(examples, accelerator)
    total = torch.zeros(2, device=accelerator.device)  # [summed nll, target tokens]
    for start in range(0, len(mine), batch_size):
        batch = collate_right_padded(mine[start : start + batch_size], pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss, _ = sft_batch_loss(model, batch, 1.0)
        total += torch.stack([loss.float(), tokens.float()])
    if accelerator.num_processes > 1:
        total = accelerator.reduce(total, reduction="sum")
    mean = (total[0] / total[1].clamp(min=1)).item()
    return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0))}


def run_sft(config: SFTConfig, on_step=None) -> Path:
    """Fine-tune ``config.model`` on ``config.data``; returns the output folder (an HF model).

    ``on_step(step)`` is called after every optimizer step (tests use it to interrupt a run).
    """
    accelerator = make_accelerator(config)
    tokenizer = load_tokenizer(config.model)
    config.max_length = fit_max_length(config.max_length, config.model)
    train_demos, eval_demos = load_train_and_held_out(load_demonstrations, config)
    examples = tokenize_demonstrations(tokenizer, train_demos, config.max_length, config.data)
    eval_examples = tokenize_demonstrations(tokenizer, eval_demos, config.max_length, "held-out") if eval_demos else []
    rows = pack_examples(examples, config.max_length) if config.packing else None
    if accelerator.is_main_process:
        console.print(f"sft: {len(train_demos)} training and {len(eval_demos)} held-out demonstrations")

    device = accelerator.device
    model = load_causal_lm(
        config.model,
        tokenizer,
        dtype=resolve_dtype(config.dtype, resolve_device(config.device)),
        gradient_checkpointing=config.gradient_checkpointing,
        lora=lora_settings(config),
    )
    model.to(device)
    pad = tokenizer.pad_token_id
    if rows is not None:
        layout = packing_layout(model)
        if accelerator.is_main_process:
            console.print(f"sft: {len(examples)} examples packed into {len(rows)} rows of at most {config.max_length} "
                          f"tokens ({sum(len(r.input_ids) for r in rows) / (len(rows) * config.max_length):.0%} "
                          f"full), kept apart by {'block masks' if layout == 'mask' else 'position ids (varlen)'}")
    stage = Stage(
        examples=rows if rows is not None else examples,
        collate=(lambda batch: collate_packed(batch, pad)) if rows is not None
        else (lambda batch: collate_right_padded(batch, pad)),
        loss=functools.partial(packed_batch_loss, layout=layout) if rows is not None else sft_batch_loss,
        weight=lambda example: example.num_target_tokens - (example.labels[0] != IGNORE_INDEX),
        evaluate=(lambda m: held_out_loss(m, eval_examples, pad, config.batch_size, accelerator))
        if eval_examples
        else None,
        name="sft",
        length=lambda example: len(example.input_ids),
    )
    trained = train(config, accelerator, model, stage, on_step=on_step)
    save_final_model(accelerator, trained, tokenizer, config.output)
    if accelerator.is_main_process:
        console.print(f"sft: model saved to {config.output}")
    accelerator.wait_for_everyone()
    return Path(config.output)
