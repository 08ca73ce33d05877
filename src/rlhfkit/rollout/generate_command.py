"""``rlhfkit generate``: sample K answers per prompt with the chosen engine, to JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import GenerateConfig
from rlhfkit.console import console
from rlhfkit.data.chat import encode_prompt


def fit_prompts(prompt_ids: list[list[int]], config: GenerateConfig) -> list[list[int]]:
    """The encoded prompts, each cut to its last tokens where prompt + ``--max-new-tokens`` would pass the
    positions the model reads (counted and said); a ConfigError when no prompt token would fit."""
    from rlhfkit.config import ConfigError
    from rlhfkit.models.loading import position_limit

    limit = position_limit(config.model)
    if limit is None:
        return prompt_ids
    room = limit - config.max_new_tokens
    if room < 1:
        raise ConfigError(f"--max-new-tokens {config.max_new_tokens}: {config.model} reads at most {limit} "
                          f"positions, prompt included; use at most {limit - 1}")
    cut = sum(len(ids) > room for ids in prompt_ids)
    if cut:
        console.print(f"[yellow]generate: {cut} of {len(prompt_ids)} prompts keep only their last {room} tokens "
                      f"({config.model} reads {limit} positions, --max-new-tokens {config.max_new_tokens})[/]")
    return [ids[-room:] if len(ids) > room else ids for ids in prompt_ids]


def run_generate(config: GenerateConfig) -> Path:
    """Sample ``num_samples`` answers per prompt and write ``{"prompt", "responses"}`` JSONL."""
    from transformers import set_seed

    from rlhfkit.data import load_prompts
    from rlhfkit.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype
    from rlhfkit.rollout.engines import model_sampler
    from rlhfkit.rollout.sampler import SamplingSettings

    set_seed(config.seed)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    tokenizer = load_tokenizer(config.model)
    records = load_prompts(config.prompts, skip_invalid=config.skip_invalid)
    sampler = model_sampler(config, config.model, tokenizer, dtype, device, config.seed,
                            lambda: load_causal_lm(config.model, tokenizer, dtype=dtype, device=device))
    prompts = [r.prompt for r in records]
    settings = SamplingSettings(config.max_new_tokens, config.temperature, config.top_p, config.batch_size,
                                config.seed)
    prompt_ids = fit_prompts([encode_prompt(tokenizer, p) for p in prompts], config)
    try:
        samples = sampler.sample(prompts, prompt_ids, config.num_samples, settings, show_progress=True)
    finally:
        sampler.close()
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
