"""SFT throughput, packed against padded: ``run_sft --packing`` against ``run_sft`` on the same data.

Run by hand (never part of the test suite)::

    python benchmarks/bench_packing.py [--examples 512 --max-length 512 --batch-size 8 --threads 2]

Data: the chosen conversations of HH-RLHF's helpful-base test split (``../shared/data/hh-rlhf``; the
benchmark says so and stops when it is not there), as chat demonstrations, loss on every assistant
turn; the tokenizer is trained on that split's text and the model is rlhfkit's tiny Llama (4 layers,
width 256, vocabulary 1024), fp32 on the CPU.

Both runs train one epoch over the same examples at the same ``--max-length``, learning rate and seed.
The padded run uses rlhfkit's defaults (batches grouped by length, so little padding) with
``--batch-size`` examples per step; the packed run gets as many rows of ``--max-length`` per step as
carry about the same number of tokens (so both steps do similar work), and keeps the examples apart
(block-diagonal masks, position ids restarting: each example's loss is its unpacked one,
``tests/test_packing.py``). Throughput is examples (and real tokens) per second over the epoch after
the first ``--warmup`` steps, read from each run's ``metrics.jsonl`` clock.

Measured (2 threads shared with other work, so +-10%; 512 examples of mean 283 tokens, max length
512; torch 2.13 CPU, transformers 5.24), two runs: padded 12.95 and 10.64 examples/s, packed 13.37 and
12.39 (285 rows, 99% full): 1.03x and 1.16x; padded in random order (``--random-order``, as a trainer
without length grouping pads) 7.47: packed is 1.66x that. Length grouping already leaves rlhfkit's
padded batches little padding, and a packed row's block mask still costs the attention of a full
512-token row on the CPU (sdpa computes the masked scores); flash-attention's varlen form skips them,
so the gain on a GPU should be larger (``benchmarks/gpu_families.py`` times it; not measured here).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import tempfile
from pathlib import Path

import torch

HH_SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"


def write_demonstrations(path: Path, corpus: Path, count: int) -> None:
    """The first ``count`` chosen conversations as ``{"messages"}`` demonstrations, and the split's text."""
    from rlhfkit.data.hh import parse_hh_transcript

    with gzip.open(HH_SPLIT, "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    with path.open("w") as out:
        for record in records[:count]:
            out.write(json.dumps({"messages": parse_hh_transcript(record["chosen"])}) + "\n")
    corpus.write_text("\n".join(r["chosen"].replace("\n", " ") for r in records))


def run(model_dir: Path, data: Path, output: Path, *, packing: bool, batch_size: int, steps: int, args,
        group_by_length: bool = True) -> list[dict]:
    from rlhfkit.config import SFTConfig
    from rlhfkit.train.sft import run_sft

    run_sft(SFTConfig(model=str(model_dir), data=str(data), output=str(output), packing=packing,
                      batch_size=batch_size, max_steps=steps, max_length=args.max_length, learning_rate=args.lr,
                      eval_split=0.0, warmup_ratio=0.0, save_every=0, log_every=1, device="cpu", dtype="float32",
                      seed=args.seed, group_by_length=group_by_length))
    return [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step of the padded run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps of each run")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--random-order", action="store_true",
                        help="also time padded batches in random order (no --group-by-length), as most trainers pad")
    args = parser.parse_args()
    if not HH_SPLIT.is_file():
        print(f"bench_packing: {HH_SPLIT} is not there; nothing to measure")
        return
    torch.set_num_threads(args.threads)

    from rlhfkit.data import load_demonstrations
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.tiny import write_tiny_model
    from rlhfkit.train.sft import pack_examples, tokenize_demonstrations

    folder = Path(tempfile.mkdtemp(prefix="bench_packing_"))
    data, corpus = folder / "demos.jsonl", folder / "corpus.txt"
    write_demonstrations(data, corpus, args.examples)
    model_dir = write_tiny_model(corpus, folder / "model", arch="llama", layers=4, width=256, heads=4,
                                 vocab_size=1024, max_positions=args.max_length)
    tokenizer = load_tokenizer(str(model_dir))
    examples = tokenize_demonstrations(tokenizer, load_demonstrations(str(data)), args.max_length, "hh")
    tokens = sum(len(e.input_ids) for e in examples)
    rows = pack_examples(examples, args.max_length)
    row_batch = max(1, round(args.batch_size * tokens / len(examples) / args.max_length))
    padded_steps = math.ceil(len(examples) / args.batch_size)
    packed_steps = math.ceil(len(rows) / row_batch)

    padded = run(model_dir, data, folder / "padded", packing=False, batch_size=args.batch_size, steps=padded_steps,
                 args=args)
    packed = run(model_dir, data, folder / "packed", packing=True, batch_size=row_batch, steps=packed_steps, args=args)
    shuffled = run(model_dir, data, folder / "random", packing=False, batch_size=args.batch_size, steps=padded_steps,
                   args=args, group_by_length=False) if args.random_order else None

    def rate(records: list[dict], steps: int) -> float:  # the epoch's share after the warm-up steps, per second
        seconds = records[-1]["seconds"] - records[args.warmup - 1]["seconds"]
        return (steps - args.warmup) / steps * len(examples) / seconds

    padded_rate, packed_rate = rate(padded, padded_steps), rate(packed, packed_steps)
    print()
    print(f"SFT, HH-RLHF helpful-base chosen conversations, {len(examples)} examples ({tokens} tokens, mean "
          f"{tokens / len(examples):.0f}), max length {args.max_length}, tiny llama (4 layers, width 256), CPU "
          f"x{args.threads} threads, torch {torch.__version__}")
    print(f"padded : {args.batch_size} examples/step, {padded_steps} steps, {padded_rate:8.2f} examples/s "
          f"({padded_rate * tokens / len(examples):8.0f} tokens/s)")
    print(f"packed : {row_batch} rows/step ({len(rows)} rows, {tokens / (len(rows) * args.max_length):.0%} full), "
          f"{packed_steps} steps, {packed_rate:8.2f} examples/s ({packed_rate * tokens / len(examples):8.0f} tokens/s)")
    print(f"ratio packed / padded: {packed_rate / padded_rate:.2f}x")
    if shuffled is not None:
        shuffled_rate = rate(shuffled, padded_steps)
        print(f"padded in random order: {shuffled_rate:8.2f} examples/s; packed / random-order padded: "
              f"{packed_rate / shuffled_rate:.2f}x")


if __name__ == "__main__":
    main()
