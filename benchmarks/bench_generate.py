"""Sampling throughput: rlhfkit's batched sampler against plain per-prompt ``model.generate``.

Run by hand: ``.venv/bin/python benchmarks/bench_generate.py [--prompts 64 --samples 4]``. Both sides use
the same tiny model, prompts, K and max_new_tokens; the peer calls ``generate`` once per prompt with
``num_return_sequences=K`` (the usual loop in scripts). Prints answers/second for each and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rlhfkit.data.chat import encode_prompt
from rlhfkit.demo.example import write_example
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import write_tiny_model
from rlhfkit.rollout.generate import sample_responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    files = write_example(folder / "data")
    model_dir = write_tiny_model(files["corpus"], folder / "model", layers=4, width=128, vocab_size=512)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer)
    questions = [f"What is the capital of country number {i}?" for i in range(args.prompts)]
    prompts = [[{"role": "user", "content": q}] for q in questions]
    # EOS can never be sampled, so both sides produce exactly max_new_tokens per answer
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]

    torch.manual_seed(0)
    start = time.perf_counter()
    sample_responses(model, tokenizer, prompts, num_samples=args.samples, max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size, show_progress=False)
    ours = time.perf_counter() - start

    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)])
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                           num_return_sequences=args.samples, max_new_tokens=args.max_new_tokens,
                           pad_token_id=tokenizer.pad_token_id)
    peer = time.perf_counter() - start

    answers = args.prompts * args.samples
    print(f"{answers} answers of {args.max_new_tokens} tokens, tiny model (4 layers, width 128), CPU")
    print(f"rlhfkit sample_responses : {answers / ours:8.1f} answers/s")
    print(f"per-prompt model.generate: {answers / peer:8.1f} answers/s")
    print(f"ratio: {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
