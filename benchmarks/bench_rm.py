"""Reward-model training throughput: rlhfkit's ``run_rm`` against TRL's ``RewardTrainer``.

Run by hand (never part of the test suite), after installing the ``bench`` extra, which pulls in TRL::

    pip install -e ".[bench]"
    python benchmarks/bench_rm.py [--data hh|synthetic --steps 30 --warmup 3 --batch-size 8 --pairs 512]

Measured with torch 2.13.0 (CPU), transformers 5.23.0, trl 1.16.0, accelerate 1.15.0, datasets 5.2.0.

Both sides train the same tiny Llama (rlhfkit's factory, 4 layers, width 256, vocabulary 1024) on the
same {prompt, chosen, rejected} pairs, with the same batch size (pairs per step), max length,
learning rate, cosine schedule without warmup, gradient clipping and weight decay, fp32, on the CPU.

Data: ``hh`` (the default when ``../shared/data/hh-rlhf`` is there) is the first ``--pairs`` records of
HH-RLHF's helpful-base test split, real multi-turn conversations, at max length 512; the tokenizer is
trained on that split's text, as a real model's tokenizer knows English. ``synthetic`` is random words
(``peers.write_pairs``), with the tokenizer trained on them, at max length 128.

What is made equal, so that the step-0 losses must match:
- initial weights: TRL gets the model built by rlhfkit's ``load_reward_backbone`` with the same seed
  (same scalar head, std 1/sqrt(d+1)), and the same tokenizer (pad token ``<|pad|>``, distinct from EOS);
- tokens: TRL's own tokenization joins prompt and answer into one string before tokenizing, which can
  merge tokens across the boundary; TRL is therefore given the dataset pre-tokenized by rlhfkit
  (``chosen_ids``/``rejected_ids`` columns, which TRL accepts as processed data);
- data order: rlhfkit groups batches by length (its default, ``--group-by-length``); TRL samples
  sequentially (``train_sampling_strategy="sequential"``) over rlhfkit's order, so both train on the
  same batches at every step (TRL's default random order would pad more and make it slower): the
  losses must agree at every step, to float rounding. rlhfkit groups by the width of its shared-prompt
  rows; ``--trl-own-order`` gives TRL batches grouped by its own padded length instead (the least
  padding for TRL; the batches, so the losses after step 0, then differ);
- loss: plain Bradley–Terry mean over pairs (``center_rewards_coefficient=None``, no margins).

TRL defaults that differ from rlhfkit's and are switched off here: ``gradient_checkpointing=True`` and
``bf16=True`` (RewardConfig), a linear learning-rate schedule (Trainer). Pass ``--trl-checkpointing`` to
time TRL with gradient checkpointing on, as its defaults would have it.

Where the speed comes from: rlhfkit runs a pair's prompt once for both answers (``models/prefix.py``);
on HH-RLHF the prompt is most of each sequence.

Measured on 2026-11-22 (2 threads): HH-RLHF 1.90x TRL on the same batches (equal losses at step 0 and
at the last step), 1.87x with ``--trl-own-order``; synthetic 1.16x (prompts of ~16 tokens: little to
share). Before the shared prompts: 0.96-1.01x.

Throughput counts pairs (examples) per second over the optimizer steps after the first ``--warmup``
steps, from each trainer's own per-step clock (rlhfkit's ``metrics.jsonl`` seconds, a TRL callback).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import torch
from peers import TrainerClock, throughput, write_pairs

from rlhfkit.train.batches import BatchPlan

HH_SPLIT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"


def run_rlhfkit(model_dir: Path, data: Path, output: Path, args) -> tuple[dict[int, float], float]:
    from rlhfkit.config import RMConfig
    from rlhfkit.train.rm import run_rm

    steps = args.warmup + args.steps
    run_rm(RMConfig(model=str(model_dir), data=str(data), output=str(output), learning_rate=args.lr,
                    max_steps=steps, batch_size=args.batch_size, max_length=args.max_length, eval_split=0,
                    save_every=0, log_every=1, warmup_ratio=0, device="cpu", dtype="float32", seed=args.seed))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    times = {r["step"]: r["seconds"] for r in records}
    return {r["step"]: r["loss"] for r in records}, throughput(times, args.warmup, steps, args.batch_size)


def run_trl(model_dir: Path, data: Path, output: Path, args) -> tuple[dict[int, float], float]:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.prefix import group_cost, tree_support
    from rlhfkit.models.reward import load_reward_backbone
    from rlhfkit.train.rm import load_comparison_groups, tokenize_group

    tokenizer = load_tokenizer(str(model_dir))
    groups = load_comparison_groups(str(data))
    tokenized = [tokenize_group(tokenizer, g, args.max_length, use_margin=False) for g in groups]
    model = load_reward_backbone(str(model_dir), tokenizer, seed=args.seed)
    # exactly rlhfkit's batches, in its order (same losses at every step); or, with --trl-own-order,
    # batches grouped by TRL's own padded cost (least padding for TRL; the batches then differ)
    lengths = [group_cost(g.sequences, tree_support(model) and not args.trl_own_order) for g in tokenized]
    plan = BatchPlan(len(lengths), args.batch_size, 1, 1, args.seed, tuple(lengths))
    order = list(plan.epoch_order(0))
    dataset = Dataset.from_dict({
        "chosen_ids": [tokenized[i].sequences[0] for i in order],
        "rejected_ids": [tokenized[i].sequences[1] for i in order],
    })

    clock = TrainerClock()
    steps = args.warmup + args.steps
    config = RewardConfig(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_length=args.max_length, center_rewards_coefficient=None, disable_dropout=True,
        gradient_checkpointing=args.trl_checkpointing, bf16=False, fp16=False, use_cpu=True,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[clock])
    trainer.train()
    losses = {step: logs["loss"] for step, logs in clock.logs.items()}
    return losses, throughput(clock.times, args.warmup, steps, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--data", choices=["hh", "synthetic"], default="hh" if HH_SPLIT.is_file() else "synthetic")
    parser.add_argument("--max-length", type=int, help="default: 512 for hh, 128 for synthetic")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trl-own-order", action="store_true",
                        help="TRL's batches grouped by its own padded length (not rlhfkit's batches)")
    parser.add_argument("--trl-checkpointing", action="store_true",
                        help="TRL with gradient checkpointing (its RewardConfig default)")
    args = parser.parse_args()
    if (args.warmup + args.steps) * args.batch_size > args.pairs:
        parser.error("--pairs must cover (warmup + steps) x batch-size: both sides are compared within one epoch")
    torch.set_num_threads(args.threads)
    if args.data == "hh" and not HH_SPLIT.is_file():
        parser.error(f"--data hh needs {HH_SPLIT}")
    args.max_length = args.max_length or (512 if args.data == "hh" else 128)

    import transformers
    import trl

    from rlhfkit.models.tiny import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="bench_rm_"))
    data, corpus = folder / "pairs.jsonl", folder / "corpus.txt"
    if args.data == "hh":
        with gzip.open(HH_SPLIT, "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        data.write_text("".join(json.dumps(r) + "\n" for r in records[: args.pairs]))
        corpus.write_text("\n".join(r["chosen"].replace("\n", " ") for r in records))
    else:
        write_pairs(data, args.pairs, args.seed)
        records = [json.loads(line) for line in data.read_text().splitlines()]
        corpus.write_text("\n".join(r["prompt"] + r["chosen"] + " " + r["rejected"] for r in records))
    model_dir = write_tiny_model(corpus, folder / "model", arch="llama", layers=4, width=256, heads=4,
                                 vocab_size=1024, max_positions=max(512, args.max_length))

    ours_losses, ours_rate = run_rlhfkit(model_dir, data, folder / "rlhfkit", args)
    peer_losses, peer_rate = run_trl(model_dir, data, folder / "trl", args)
    # losses are logged after each step (1-based) for the batch before the update: step 1 is the step-0 loss
    ours_loss, peer_loss = ours_losses[1], peer_losses[1]
    last = args.warmup + args.steps

    print()
    print(f"reward model, {args.data} data, tiny llama (4 layers, width 256, vocab 1024), CPU x{args.threads} threads, "
          f"{args.batch_size} pairs/step, max length {args.max_length}, {args.steps} timed steps "
          f"after {args.warmup} warm-up")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"
          + (" (TRL with gradient checkpointing)" if args.trl_checkpointing else ""))
    print(f"step-0 loss  rlhfkit {ours_loss:.6f}   TRL {peer_loss:.6f}   |diff| {abs(ours_loss - peer_loss):.2e}")
    print(f"last-step loss rlhfkit {ours_losses[last]:.6f}   TRL {peer_losses[last]:.6f}   "
          f"|diff| {abs(ours_losses[last] - peer_losses[last]):.2e}  "
          + ("(different batches)" if args.trl_own_order else "(same batches; float rounding differs)"))
    print(f"rlhfkit run_rm       : {ours_rate:8.2f} pairs/s")
    print(f"TRL RewardTrainer    : {peer_rate:8.2f} pairs/s")
    print(f"ratio rlhfkit / TRL  : {ours_rate / peer_rate:8.2f}x")


if __name__ == "__main__":
    main()
