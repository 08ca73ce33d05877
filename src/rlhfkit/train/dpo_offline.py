"""Offline DPO: train the policy on a fixed set of preferences with one of the DPO family's losses.

``train_dpo_offline`` reads and tokenizes the examples (``dpo_data.py``), caches the reference's
log-probs or keeps a live reference (``dpo_reference.py``), and runs the shared offline loop
(``train/offline.py``) on the batch loss (``dpo_batch.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rlhfkit.config import ConfigError, DPOConfig
from rlhfkit.console import console
from rlhfkit.models import (
    load_causal_lm,
    load_tokenizer,
    lora_settings,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.models.prefix import group_cost, shared_prefix_layout
from rlhfkit.rollout.logprobs import supports_logit_mask
from rlhfkit.train.dpo_batch import (
    LikelihoodWatch,
    held_out_metrics,
    kl_to_reference,
    needs_reference,
    training_loss,
)
from rlhfkit.train.dpo_data import collate_examples, load_examples, unique_prompts
from rlhfkit.train.dpo_reference import (
    Reference,
    cached_reference_path,
    load_cached_reference,
    precompute_reference,
    save_cached_reference,
)
from rlhfkit.train.offline import Stage, train
from rlhfkit.train.optimizer import make_accelerator
from rlhfkit.train.sharding import save_final_model


def load_policy(config: DPOConfig, tokenizer, device):
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    model = load_causal_lm(config.model, tokenizer, dtype=dtype, gradient_checkpointing=config.gradient_checkpointing,
                           lora=lora_settings(config))
    return model.to(device), dtype


def make_reference(config: DPOConfig, model, tokenizer, dtype, device) -> Reference:
    """The policy's own base weights when LoRA trains against the model it started from, else a copy."""
    reference_path = config.reference or config.model
    uses_lora_base = config.lora_r > 0 and reference_path == config.model
    return Reference(reference_path, tokenizer, dtype, device, lora_policy=model if uses_lora_base else None,
                     keep=not config.precompute_ref)


def cache_reference(config: DPOConfig, reference: Reference, train_set, held_set, pad_token_id: int, accelerator,
                    logit_mask: bool, share: bool) -> None:
    """Cache the reference log-probs in the examples: read back on ``--resume``, else computed and saved."""
    path = cached_reference_path(config)
    resumed = config.resume and path.exists()
    if resumed:
        load_cached_reference(path, train_set, held_set)
    else:
        precompute_reference(train_set + held_set, reference, pad_token_id, config.batch_size, accelerator,
                             logit_mask, share)
        if accelerator.is_main_process:
            save_cached_reference(path, train_set, held_set)
    if accelerator.is_main_process:
        console.print(f"dpo: reference log-probs {'read from' if resumed else 'cached for'} "
                      f"{len(train_set) + len(held_set)} examples")


def train_dpo_offline(config: DPOConfig, on_step: Callable[[int], None] | None = None) -> Path:
    """Train ``config.model`` on ``config.data`` (a checked config); returns the output folder (an HF model)."""
    accelerator = make_accelerator(config)
    tokenizer = load_tokenizer(config.model)
    train_set, held_set = load_examples(config, tokenizer)
    if not train_set:
        raise ConfigError(f"{config.data}: no training examples left after tokenization")
    main = accelerator.is_main_process
    if main:
        kind = "answers" if config.loss == "kto" else "pairs"
        console.print(f"dpo ({config.loss}): {len(train_set)} training and {len(held_set)} held-out {kind}")
    model, dtype = load_policy(config, tokenizer, accelerator.device)
    logit_mask = supports_logit_mask(model)
    # a pair's prompt runs once for both answers (models/prefix.py): in one tree row, or, for attention
    # without custom masks (flash-attention), through its key/value cache; KTO's rows are read separately
    share = config.loss != "kto" and shared_prefix_layout(model)
    reference = make_reference(config, model, tokenizer, dtype, accelerator.device)
    pad = tokenizer.pad_token_id
    if config.precompute_ref and needs_reference(config):
        cache_reference(config, reference, train_set, held_set, pad, accelerator, logit_mask, share)

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
    save_final_model(accelerator, trained, tokenizer, output)
    if main:
        if last_eval:
            (output / "eval.json").write_text(json.dumps(last_eval, indent=2))
        console.print(f"dpo: model saved to {output}")
    accelerator.wait_for_everyone()
    return output
