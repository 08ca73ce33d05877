"""Batched sampling of K answers per prompt (HF ``generate`` with the KV cache).

Prompts are encoded exactly as training encodes them (``encode_prompt``), left-padded, and sorted by
length so each batch wastes little padding. Every answer is cut after its first EOS; answers that hit
``max_new_tokens`` without EOS are flagged (``finished=False``) so RL can penalise them.

The prompts are read here, not by ``generate``: all but their last token run in one forward pass,
each distinct prompt once (a batch holds a prompt's K answers together), and the key/value cache is
repeated for each answer, into buffers with room for the answer (:class:`PreallocatedLayer`);
``generate`` continues from there. Models whose cache is not HF's ``DynamicCache`` (and one-token
prompts) leave the prompts to ``generate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from rlhfkit.config import GenerateConfig
from rlhfkit.console import console, progress_bar
from rlhfkit.data.chat import encode_prompt, pad_batch
from rlhfkit.models.loading import accepts_logits_to_keep


@dataclass
class Sample:
    prompt_index: int
    token_ids: list[int]  # the answer's tokens, through the first EOS when there is one
    text: str  # decoded without special tokens
    finished: bool  # ended with EOS (rather than running out of max_new_tokens)


def cut_after_eos(token_ids: list[int], eos_token_id: int) -> tuple[list[int], bool]:
    """Tokens through the first EOS, and whether there was one."""
    if eos_token_id in token_ids:
        end = token_ids.index(eos_token_id)
        return token_ids[: end + 1], True
    return token_ids, False


@torch.inference_mode()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    *,
    num_samples: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    show_progress: bool = True,
    prompt_ids: list[list[int]] | None = None,
) -> list[list[Sample]]:
    """``num_samples`` answers for each prompt (strings or message lists), in prompt order.

    ``prompt_ids`` are the prompts already encoded (e.g. truncated by the caller); by default each prompt
    is encoded with ``encode_prompt``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = prompt_ids if prompt_ids is not None else [encode_prompt(tokenizer, p) for p in prompts]
    jobs = sorted(
        ((i, k) for i in range(len(prompts)) for k in range(num_samples)), key=lambda job: -len(encoded[job[0]])
    )
    results: list[list[Sample]] = [[] for _ in prompts]
    greedy = temperature <= 0
    options = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id, use_cache=True)
    if not greedy:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    with progress_bar("generate", total=len(jobs), enabled=show_progress) as advance:
        for batch in batches:
            input_ids, attention_mask = pad_batch([encoded[i] for i, _ in batch], tokenizer.pad_token_id, side="left")
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            cache = prefill_prompts(model, [i for i, _ in batch], encoded, tokenizer.pad_token_id, device,
                                    room=max_new_tokens + 1)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, **options)
            new_tokens = out[:, input_ids.shape[1] :].tolist()
            for (prompt_index, _), tokens in zip(batch, new_tokens, strict=True):
                answer, finished = cut_after_eos(tokens, tokenizer.eos_token_id)
                text = tokenizer.decode(answer, skip_special_tokens=True)
                results[prompt_index].append(Sample(prompt_index, answer, text, finished))
            advance(len(batch))
    model.train(was_training)
    return results


class PreallocatedLayer(DynamicLayer):
    """HF's growing key/value cache layer, with room reserved for the answer: each new token's keys and
    values are written in place, where ``DynamicLayer`` concatenates and so copies the whole cache at
    every generated token (a fifth of the sampling time of a small model)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        shape = (*keys.shape[:2], capacity, keys.shape[-1])
        self._key_buffer, self._value_buffer = keys.new_empty(shape), values.new_empty(shape)
        self.length = 0
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.update(keys, values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:  # past the reserved room: grow as DynamicLayer does
            self._key_buffer = torch.cat([self._key_buffer[..., : self.length, :], key_states], dim=-2)
            self._value_buffer = torch.cat([self._value_buffer[..., : self.length, :], value_states], dim=-2)
        else:
            self._key_buffer[..., self.length : end, :] = key_states
            self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values


def prefill_prompts(model, prompt_of_row: list[int], encoded: list[list[int]], pad_token_id: int, device,
                    room: int) -> DynamicCache | None:
    """The key/value cache of every row's prompt but its last token (``generate`` runs that one), each
    distinct prompt computed once and its cache repeated for its rows, with ``room`` more positions
    reserved. None (``generate`` reads the prompts itself) when a prompt has a single token or the
    model keeps another kind of cache than HF's ``DynamicCache``."""
    distinct = list(dict.fromkeys(prompt_of_row))
    if min(len(encoded[i]) for i in distinct) < 2:
        return None
    # left-padded like the batch (same width): a prompt's tokens sit in the same columns in both
    ids, mask = pad_batch([encoded[i] for i in distinct], pad_token_id, side="left")
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True,
                **keep)
    cache = out.past_key_values
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    row = {prompt: k for k, prompt in enumerate(distinct)}
    index = torch.tensor([row[i] for i in prompt_of_row], device=device)
    capacity = ids.shape[1] - 1 + room
    cache.layers = [PreallocatedLayer(layer.keys[index], layer.values[index], capacity) for layer in cache.layers]
    return cache


def run_generate(config: GenerateConfig) -> Path:
    """Sample ``num_samples`` answers per prompt and write ``{"prompt", "responses"}`` JSONL."""
    from transformers import set_seed

    from rlhfkit.data import load_prompts
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    set_seed(config.seed)
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, tokenizer, dtype=resolve_dtype(config.dtype, device), device=device)
    records = load_prompts(config.prompts, skip_invalid=config.skip_invalid)
    samples = sample_responses(
        model, tokenizer, [r.prompt for r in records], num_samples=config.num_samples,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        batch_size=config.batch_size,
    )
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    unfinished = 0
    with output.open("w") as handle:
        for record, answers in zip(records, samples, strict=True):
            unfinished += sum(not s.finished for s in answers)
            handle.write(json.dumps({"prompt": record.prompt, "responses": [s.text for s in answers]}) + "\n")
    total = len(records) * config.num_samples
    console.print(f"generate: {total} answers for {len(records)} prompts written to {output} "
                  f"({unfinished} hit --max-new-tokens without EOS)")
    return output
