"""``rlhfkit generate``: sample K answers per prompt with the chosen engine, to JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from rlhfkit.config import GenerateConfig
from rlhfkit.console import console
from rlhfkit.data.chat import encode_prompt


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
    try:
        samples = sampler.sample(prompts, [encode_prompt(tokenizer, p) for p in prompts], config.num_samples,
                                 settings, show_progress=True)
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
