"""Supervised fine-tuning: learn to produce the demonstrated answers.

The loss is the token mean of the answer tokens' negative log-likelihood: prompt tokens, system and
user turns are masked (labels -100) and only assistant turns / completions are learnt. With
``--packing`` several examples share one max-length sequence (attention then spans example
boundaries, the usual simple packing; the loss mask still covers answers only).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from rlhfkit.config import SFTConfig
from rlhfkit.console import console
from rlhfkit.data import load_demonstrations
from rlhfkit.data.chat import IGNORE_INDEX, TokenizedExample, tokenize_demonstration
from rlhfkit.losses import sft_loss
from rlhfkit.models import (
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
    save_model,
)
from rlhfkit.train.batches import load_train_and_held_out
from rlhfkit.train.offline import Stage, train
from rlhfkit.train.optimizer import make_accelerator

log = logging.getLogger("rlhfkit.sft")


def tokenize_demonstrations(tokenizer, demos, max_length: int, what: str) -> list[TokenizedExample]:
    """Tokenize, report truncation, and leave out (with a warning naming them) examples that have no
    answer token left after truncation."""
    examples, empty = [], []
    for demo in demos:
        example = tokenize_demonstration(tokenizer, demo, max_length)
        if example.num_target_tokens == 0:
            empty.append(demo.location)
        else:
            examples.append(example)
    truncated = sum(e.truncated for e in examples)
    if truncated:
        log.warning("%s: %d of %d examples truncated to --max-length %d", what, truncated, len(demos), max_length)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        log.warning("%s: %d examples have no answer tokens within --max-length %d and are left out: %s",
                    what, len(empty), max_length, shown)
    if not examples:
        raise ValueError(f"{what}: no example has an answer within --max-length {max_length}")
    return examples


def pack_examples(examples: list[TokenizedExample], max_length: int) -> list[TokenizedExample]:
    """Concatenate examples and cut the stream into ``max_length`` sequences (the last may be shorter)."""
    ids = [token for e in examples for token in e.input_ids]
    labels = [label for e in examples for label in e.labels]
    packed = []
    for start in range(0, len(ids), max_length):
        chunk = TokenizedExample(ids[start : start + max_length], labels[start : start + max_length])
        if chunk.num_target_tokens:
            packed.append(chunk)
    return packed


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
    mine = examples[accelerator.process_index :: accelerator.num_processes]
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
    train_demos, eval_demos = load_train_and_held_out(load_demonstrations, config)
    examples = tokenize_demonstrations(tokenizer, train_demos, config.max_length, config.data)
    eval_examples = tokenize_demonstrations(tokenizer, eval_demos, config.max_length, "held-out") if eval_demos else []
    if config.packing:
        examples = pack_examples(examples, config.max_length)
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
    stage = Stage(
        examples=examples,
        collate=lambda batch: collate_right_padded(batch, pad),
        loss=sft_batch_loss,
        weight=lambda example: example.num_target_tokens - (example.labels[0] != IGNORE_INDEX),
        evaluate=(lambda m: held_out_loss(m, eval_examples, pad, config.batch_size, accelerator))
        if eval_examples
        else None,
        name="sft",
        length=lambda example: len(example.input_ids),
    )
    trained = train(config, accelerator, model, stage, on_step=on_step)
    if accelerator.is_main_process:
        save_model(trained, tokenizer, config.output)
        console.print(f"sft: model saved to {config.output}")
    accelerator.wait_for_everyone()
    return Path(config.output)
