"""Batched sampling of K answers per prompt (HF ``generate`` with the KV cache).

Prompts are encoded exactly as training encodes them (``encode_prompt``), left-padded, and sorted by
length so each batch wastes little padding. Every answer is cut after its first stop token (the EOS, or
another end of an answer the tokenizer records: :func:`~rlhfkit.data.stop_tokens.stop_token_ids`),
which it keeps; answers that hit ``max_new_tokens`` without one are flagged (``finished=False``) so RL
can penalise them.

The prompts are read in one forward pass, each distinct prompt once (a batch holds a prompt's K
answers together), and the key/value cache is repeated for each answer, into buffers with room for
the answer (:class:`PreallocatedLayer`).

The answers are then decoded by :func:`decode`, a plain token loop with HF's own logits processors
(suppressed tokens, temperature, top-k, top-p) that draws each token from one uniform number per row
(:func:`sample_tokens`), and the first token of every answer from the logits of its prompt's pass.
It does what ``generate`` does for these settings with less work per token (``torch.multinomial``
alone draws one random number per vocabulary entry, and ``generate`` rebuilds the attention mask at
every token). ``generate`` decodes instead when the model's generation config asks for anything
else (a repetition penalty, banned words, a minimum length, ...); it then continues from the cache of
all but the prompts' last tokens. Models whose cache is not HF's ``DynamicCache`` are left to
``generate`` entirely.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from rlhfkit.console import progress_bar
from rlhfkit.data.chat import encode_prompt, pad_batch
from rlhfkit.data.stop_tokens import stop_token_ids
from rlhfkit.models.loading import accepts_logits_to_keep
from rlhfkit.models.prefix import MASK_IMPLEMENTATIONS, prompt_cache, unwrap_hf_model
from rlhfkit.models.sharded import all_done, inference, sharded


@dataclass
class Sample:
    prompt_index: int
    token_ids: list[int]  # the answer's tokens, through the first stop token (EOS) when there is one
    text: str  # decoded without special tokens
    finished: bool  # ended with a stop token (rather than running out of max_new_tokens)
    logprobs: list[float] | None = None  # the engine's log-prob of each token, when the engine reports them
    version: int | None = None  # the policy version (updates done) that sampled it, when the engine knows


def cut_after_eos(token_ids: list[int], stop_ids: Collection[int]) -> tuple[list[int], bool]:
    """Tokens through the first stop token (any of ``stop_ids``: the EOS and the other ends of an answer),
    which stays the answer's last token, and whether there was one."""
    stops = set(stop_ids)
    end = next((i for i, token in enumerate(token_ids) if token in stops), None)
    if end is None:
        return token_ids, False
    return token_ids[: end + 1], True


@inference
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
    stops = stop_token_ids(tokenizer)
    options = dict(max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=stops, use_cache=True)
    if not greedy:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    processors = decoding_processors(model, options, device)
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    with progress_bar("generate", total=len(jobs), enabled=show_progress) as advance:
        for batch in batches:
            input_ids, attention_mask = pad_batch([encoded[i] for i, _ in batch], tokenizer.pad_token_id, side="left")
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            whole = processors is not None  # the decode loop starts after the prompts; generate runs their last token
            prefilled = prefill_prompts(model, [i for i, _ in batch], encoded, tokenizer.pad_token_id, device,
                                        room=max_new_tokens, whole=whole)
            if whole and prefilled is not None:
                new_tokens = decode(model, *prefilled, input_ids, attention_mask, processors, greedy=greedy,
                                    max_new_tokens=max_new_tokens, stop_ids=stops,
                                    pad_token_id=tokenizer.pad_token_id).tolist()
            else:
                cache = prefilled[0] if prefilled is not None else None
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                                     synced_gpus=sharded(model), **options)
                new_tokens = out[:, input_ids.shape[1] :].tolist()
            for (prompt_index, _), tokens in zip(batch, new_tokens, strict=True):
                answer, finished = cut_after_eos(tokens, stops)
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
                    room: int, whole: bool = True) -> tuple[DynamicCache, torch.Tensor | None] | None:
    """The key/value cache of every row's prompt, each distinct prompt computed once and its cache
    repeated for its rows, with ``room`` more positions reserved, and the logits after each row's
    prompt ``[rows, vocab]``. Without ``whole`` the prompts' last tokens are left out (``generate`` runs
    them) and there are no logits. None when the model keeps another kind of cache than HF's
    ``DynamicCache``, or without ``whole`` when a prompt has a single token."""
    distinct = list(dict.fromkeys(prompt_of_row))
    cut = 0 if whole else 1
    if min(len(encoded[i]) for i in distinct) <= cut:
        return None
    # left-padded like the batch (same width): a prompt's tokens sit in the same columns in both
    ids, mask = pad_batch([encoded[i] for i in distinct], pad_token_id, side="left")
    ids, mask = ids[:, : ids.shape[1] - cut].to(device), mask[:, : mask.shape[1] - cut].to(device)
    row = {prompt: k for k, prompt in enumerate(distinct)}
    index = torch.tensor([row[i] for i in prompt_of_row], device=device)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    out, cache = prompt_cache(model, ids, mask, index, **keep)
    if cache is None:
        return None
    cache.layers = [PreallocatedLayer(layer.keys, layer.values, ids.shape[1] + room) for layer in cache.layers]
    return cache, out.logits[:, -1][index] if whole else None


# generation-config fields that change nothing for :func:`decode` or that it applies itself; any other set
# field (a repetition penalty, bad words, a minimum length, beams, ...) is left to ``generate``
DECODE_HANDLES = {
    "do_sample", "temperature", "top_k", "top_p", "suppress_tokens", "max_new_tokens", "max_length",
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache", "transformers_version",
    "_from_model_config", "cache_implementation", "cache_config", "max_cache_len", "disable_compile",
    "compile_config", "low_memory", "length_penalty", "early_stopping", "output_attentions", "output_hidden_states",
    "output_scores", "output_logits", "return_dict_in_generate",
}


def decoding_processors(model, options: dict, device) -> LogitsProcessorList | None:
    """The logits processors ``generate`` would run for ``options`` on top of the model's generation
    config, or None when that config sets anything :func:`decode` does not apply."""
    config = copy.deepcopy(model.generation_config or GenerationConfig())
    config.update(**options)
    if set(config.to_diff_dict()) - DECODE_HANDLES:
        return None
    processors = LogitsProcessorList()
    if config.suppress_tokens:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
    if config.do_sample:  # the warpers, in generate's order
        if config.temperature is not None and config.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
    return processors


def sample_tokens(scores: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``scores`` ``[N, vocab]``, drawn from ``softmax(scores)`` by inverting its
    cumulative distribution at one uniform number per row (``uniform`` ``[N]``, random by default): the
    first token whose cumulative probability exceeds it, so a token of probability 0 is never drawn."""
    cumulative = torch.softmax(scores.float(), dim=-1).cumsum(-1)
    total = cumulative[:, -1:]
    if uniform is None:
        uniform = torch.rand(scores.shape[0], device=scores.device)
    # strictly below the total, which rounding could otherwise reach
    point = torch.minimum(uniform[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cumulative, point, right=True).squeeze(-1)


def decode(model, cache: DynamicCache, next_logits: torch.Tensor, input_ids: torch.Tensor,
           attention_mask: torch.Tensor, processors: LogitsProcessorList, *, greedy: bool, max_new_tokens: int,
           stop_ids: list[int], pad_token_id: int) -> torch.Tensor:
    """Answers ``[N, <= max_new_tokens]`` to the left-padded prompts ``input_ids``, which are in
    ``cache``, with ``next_logits`` ``[N, vocab]`` after them: padding after each answer's stop token
    (any of ``stop_ids``), and no more columns than the longest answer needs. ``generate``'s sampling loop for the settings of
    :func:`decoding_processors`."""
    rows, width = input_ids.shape
    sequences = torch.full((rows, width + max_new_tokens), pad_token_id, dtype=input_ids.dtype,
                           device=input_ids.device)
    sequences[:, :width] = input_ids
    mask = torch.ones_like(sequences, dtype=attention_mask.dtype)
    mask[:, :width] = attention_mask
    if getattr(unwrap_hf_model(model).config, "_attn_implementation", None) in MASK_IMPLEMENTATIONS:
        # the model's 4D mask made once, not at every token: 0 where a row may attend, the dtype's minimum elsewhere
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(rows, 1, 1, mask.shape[1], dtype=dtype, device=mask.device).masked_fill(
            mask[:, None, None, :] == 0, torch.finfo(dtype).min)
    positions = attention_mask.long().sum(1, keepdim=True)  # of the first answer token
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    stops = torch.tensor(stop_ids, dtype=input_ids.dtype, device=input_ids.device)
    keep = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}
    logits, end = next_logits, width
    while end < width + max_new_tokens:
        scores = processors(sequences[:, :end], logits.float())
        tokens = scores.argmax(-1) if greedy else sample_tokens(scores)
        sequences[:, end] = tokens.masked_fill(done, pad_token_id)
        done |= torch.isin(tokens, stops)
        end += 1
        if end == width + max_new_tokens or all_done(model, done):
            break
        logits = model(input_ids=sequences[:, end - 1 : end], attention_mask=mask[..., :end], position_ids=positions,
                       past_key_values=cache, use_cache=True, **keep).logits[:, -1]
        positions = positions + 1
    return sequences[:, width:end]
