"""Reward models: a causal-LM backbone with a scalar head, stored as an HF sequence-classification model.

A reward model folder is what ``AutoModelForSequenceClassification.from_pretrained(DIR)`` (one label)
loads, so the rest of the ecosystem reads it as it is. The reward of a sequence is the head's output at
its last real token (the EOS that ends the answer); HF's own models find that token as the last one
that is not padding, which is why the pad token must differ from EOS.

Padding: position ids are computed from the attention mask, so left- and right-padded batches give
the same rewards (HF's plain forward would otherwise number positions from the first pad token).

Normalisation: ``config.reward_offset`` (0 unless set by ``rlhfkit rm --normalize-with``) is
subtracted from the raw head output by :class:`RewardModel`; it is the mean raw reward of reference
answers (e.g. SFT samples), so that they score 0 on average. Raw HF logits minus the offset equal
rlhfkit's scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.data.chat import pad_batch, tokenize_prompt_response
from rlhfkit.models.loading import (
    LoraSettings,
    apply_lora,
    check_family,
    disable_dropout,
    enable_checkpointing,
    fit_max_length,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from rlhfkit.models.prefix import (
    TreeBatch,
    cache_layout,
    continue_from_cache,
    prompt_cache,
    prompt_cache_support,
    row_width,
    tree_forward,
    tree_support,
    unwrap_hf_model,
)

OFFSET_KEY = "reward_offset"


def is_reward_model_folder(name_or_path: str) -> bool:
    """Whether the folder already holds a sequence-classification model (a trained reward model)."""
    architectures = AutoConfig.from_pretrained(name_or_path).architectures or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def score_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The scalar head of an HF sequence-classification model (``score`` in most architectures)."""
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    raise ValueError(f"cannot find the scalar head of {type(model).__name__}")


def head_module(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head as a module to call or hook, inside DDP and PEFT wrappers (under LoRA, PEFT wraps
    the head in ``modules_to_save``: not a Linear, so not :func:`score_head`)."""
    hf = unwrap_hf_model(model)
    for name in ("score", "classifier", "v_head"):
        if hasattr(hf, name):
            return getattr(hf, name)
    raise ValueError(f"cannot find the scalar head of {type(hf).__name__}")


def load_sequence_classifier(name_or_path: str, dtype: torch.dtype) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with one label, or a clear error for a family that
    transformers gives no sequence-classification model (it cannot be a reward model or a critic)."""
    config = AutoConfig.from_pretrained(name_or_path)
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ValueError(
            f"{name_or_path}: transformers has no sequence-classification model for the '{config.model_type}' "
            "family, so it cannot be a reward model or a PPO critic here; train the reward model from a family "
            "that has one (e.g. llama, qwen2, mistral, gemma2) or give PPO a reward function (module:function)")
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, dtype=dtype)


def load_reward_backbone(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    lora: LoraSettings | None = None,
    seed: int = 0,
    zero_head: bool = False,
) -> PreTrainedModel:
    """A reward model to train: a causal LM (e.g. the SFT model) with a new scalar head, or an existing
    reward model to continue training. A new head is initialised with std 1/sqrt(d+1) (ARCHITECTURE.md rule 8), or
    to zero with ``zero_head`` (a new critic: its first values are all 0, not noise)."""
    fresh_head = not is_reward_model_folder(name_or_path)
    model = load_sequence_classifier(name_or_path, dtype)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    check_family(model, name_or_path)
    if fresh_head:
        head = score_head(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if zero_head:
                head.weight.zero_()
            else:
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()
        setattr(model.config, OFFSET_KEY, 0.0)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora, "SEQ_CLS", gradient_checkpointing)  # the head stays fully trainable
    return model


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: the same for left and right padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def head_outputs(model: torch.nn.Module, forward) -> torch.Tensor:
    """The classification head's per-token output ``[B, T]`` in the last call of ``forward()``, read
    through a hook, so the forward still runs through DDP, FSDP and PEFT wrappers. HF's classification
    forward reads its head only at each row's last token that is not the pad id; these readers pick
    their positions themselves."""
    head = head_module(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        forward()
    finally:
        handle.remove()
    return captured[-1].squeeze(-1)


def last_real_token(mask: torch.Tensor) -> torch.Tensor:
    """Each row's last position where ``mask`` is 1 (left or right padding)."""
    return (torch.arange(mask.shape[1], device=mask.device) * mask.long()).argmax(-1)


def sequence_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw head output at each sequence's last real token, ``[batch]`` (float32). The token is found from
    the mask, not from the pad id, which can also be a real token (Qwen pads with ``<|endoftext|>``,
    which also ends text: HF's own pooling would read the token before it)."""
    outputs = head_outputs(model, lambda: model(input_ids=input_ids, attention_mask=attention_mask,
                                                position_ids=position_ids_from_mask(attention_mask)))
    return outputs[torch.arange(len(outputs), device=outputs.device), last_real_token(attention_mask)].float()


def tree_rewards(model: torch.nn.Module, batch: TreeBatch) -> torch.Tensor:
    """Raw head output at the last token of each sequence of a :class:`TreeBatch`, ``[sequences]``."""
    return head_outputs(model, lambda: tree_forward(model, batch)).flatten()[batch.last].float()


def cache_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Raw head output at the last token of each sequence of a :func:`cache_layout` batch, ``[sequences]``:
    each prefix runs once and its sequences continue from its key/value cache
    (:func:`~rlhfkit.models.prefix.prompt_cache`; gradients flow back through it). The prefix pass
    also runs the head (one output per hidden state: negligible next to the model) and is not read."""
    owner, prefix_mask, suffix_mask = batch["cache_owner"], batch["cache_prefix_mask"], batch["cache_suffix_mask"]

    def forward():
        _, cache = prompt_cache(model, batch["cache_prefix_ids"], prefix_mask, owner)
        if cache is None:  # chosen only where prompt_cache_support holds
            raise ValueError(f"{type(model).__name__} keeps no DynamicCache: the prompt-cache layout cannot run it")
        continue_from_cache(model, cache, prefix_mask[owner], batch["cache_suffix_ids"], suffix_mask)

    outputs = head_outputs(model, forward)
    return outputs[torch.arange(len(outputs), device=outputs.device), last_real_token(suffix_mask)].float()


class RewardModel:
    """Score (prompt, response) pairs with a reward model folder written by ``rlhfkit rm``.

    >>> rm = RewardModel.from_pretrained("runs/rm")
    >>> rm.score(["What is 2+2?"], ["4"])
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 1024):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._shares_prompts: bool | None = None  # decided (tree_support) at the first score()
        self._caches_prompts: bool | None = None  # without tree rows: the prompt cache (prompt_cache_support)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "auto", dtype: str = "auto",
                        max_length: int = 1024) -> RewardModel:
        torch_device = resolve_device(device)
        tokenizer = load_tokenizer(str(path))
        max_length = fit_max_length(max_length, str(path))
        model = load_sequence_classifier(str(path), resolve_dtype(dtype, torch_device))
        model.config.pad_token_id = tokenizer.pad_token_id
        disable_dropout(model)
        model.to(torch_device)
        check_family(model, str(path))
        return cls(model, tokenizer, max_length)

    @property
    def offset(self) -> float:
        return float(getattr(self.model.config, OFFSET_KEY, 0.0) or 0.0)

    @torch.inference_mode()
    def score(self, prompts: list, responses: list, batch_size: int = 16) -> list[float]:
        """Rewards of ``responses[i]`` to ``prompts[i]`` (strings or messages), minus the stored offset.

        Answers to the same prompt are scored in one row, the prompt computed once
        (:mod:`rlhfkit.models.prefix`), when the model supports it; each answer is tokenized (and
        truncated) on its own either way, so the scores do not depend on which answers come together."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [
            tokenize_prompt_response(self.tokenizer, p, r, self.max_length).input_ids
            for p, r in zip(prompts, responses, strict=True)
        ]
        by_prompt: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_prompt.setdefault(json.dumps(prompt, sort_keys=True), []).append(i)
        if self._shares_prompts is None:
            self._shares_prompts = tree_support(self.model)
            self._caches_prompts = not self._shares_prompts and prompt_cache_support(self.model)
        if (self._shares_prompts or self._caches_prompts) and any(len(group) > 1 for group in by_prompt.values()):
            # groups of at most batch_size answers, the widest rows first; a batch holds whole groups
            groups = [g[k : k + batch_size] for g in by_prompt.values() for k in range(0, len(g), batch_size)]
            groups.sort(key=lambda g: -row_width([encoded[i] for i in g]))
        else:
            groups = [[i] for i in sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))]
        batches: list[list[list[int]]] = [[]]  # whole groups, at most batch_size answers each
        for group in groups:
            if batches[-1] and sum(map(len, batches[-1])) + len(group) > batch_size:
                batches.append([])
            batches[-1].append(group)
        scores = [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        for batch in batches:
            rows = [i for g in batch for i in g]
            sequences = [[encoded[i] for i in g] for g in batch]
            grouped = len(rows) > len(batch)  # some answers share a prompt
            layout = cache_layout(sequences, self.tokenizer.pad_token_id) if grouped and self._caches_prompts else None
            if layout is not None:
                rewards = cache_rewards(self.model, {k: v.to(device) for k, v in layout.items()})
            elif grouped and self._shares_prompts:
                rewards = tree_rewards(self.model, TreeBatch.from_groups(sequences, self.tokenizer.pad_token_id).to(device))
            else:
                ids, mask = pad_batch([encoded[i] for i in rows], self.tokenizer.pad_token_id)
                rewards = sequence_rewards(self.model, ids.to(device), mask.to(device))
            for i, reward in zip(rows, (rewards - self.offset).tolist(), strict=True):
                scores[i] = reward
        return scores
