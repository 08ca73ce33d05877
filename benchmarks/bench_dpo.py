"""DPO training throughput: rlhfkit's ``run_dpo`` against TRL's ``DPOTrainer``, in one run.

Run by hand (never part of the test suite), after installing the ``bench`` extra, which pulls in TRL::

    pip install -e ".[bench]"
    python benchmarks/bench_dpo.py [--steps 30 --warmup 3 --batch-size 8 --threads 1]

Both sides train the same tiny Llama (rlhfkit's factory, 4 layers, width 256, vocabulary 1024) on the
same synthetic {prompt, chosen, rejected} pairs with the sigmoid DPO loss, the same β, batch size
(pairs per step), max length, learning rate, cosine schedule without warmup, gradient clipping and
weight decay, fp32, on the CPU (or the GPU with ``--device cuda``).

What is made equal, so that the step-0 numbers must match:
- weights and tokenizer: both load the same folder (pad token ``<|pad|>``, distinct from EOS);
- tokens: the prompts end with a newline and the answers start with a word, so TRL's tokenization of
  prompt + answer (+ EOS) gives the ids rlhfkit gets by tokenizing the parts; the benchmark checks it;
- data order: rlhfkit groups batches by length (its default, ``--group-by-length``); TRL samples
  sequentially (``train_sampling_strategy="sequential"``) over an order that starts with rlhfkit's first
  two batches (so equal step-0 and step-1 losses) and continues in plain random order, which is what
  TRL's default random sampler gives (``peers.peer_order``).

At step 0 the policy equals the reference, so both DPO losses are log 2 whatever the data: the step-0
loss agreeing is a weak check on its own. The mean chosen and rejected log-probs of the step-0 batch
(logged by both) and the loss after the first update are compared too.

TRL is timed in two configurations: its default, which runs the reference model at every step, and
with ``precompute_ref_log_probs=True`` (its option to cache them, as rlhfkit does by default). TRL
defaults that differ from rlhfkit's and are switched off in both: ``gradient_checkpointing=True`` and
``bf16=True`` (DPOConfig). Throughput counts pairs per second over the optimizer steps after the first
``--warmup``, from each trainer's own per-step clock; the reference pre-pass runs before that clock
starts on both sides, so the end-to-end wall time of each whole run (model loading, tokenization,
pre-pass and all steps) is printed as well.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from peers import TrainerClock, peer_order, throughput, write_pairs


def run_rlhfkit(model_dir: Path, data: Path, output: Path, args) -> dict:
    from rlhfkit.config import DPOConfig
    from rlhfkit.train.dpo import run_dpo

    steps = args.warmup + args.steps
    started = time.perf_counter()
    run_dpo(DPOConfig(model=str(model_dir), data=str(data), output=str(output), learning_rate=args.lr,
                      beta=args.beta, max_steps=steps, batch_size=args.batch_size, max_length=args.max_length,
                      eval_split=0, save_every=0, log_every=1, warmup_ratio=0, device=args.device, dtype="float32",
                      seed=args.seed, precompute_ref=True, eval_kl_prompts=0))
    wall = time.perf_counter() - started
    records = [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    times = {r["step"]: r["seconds"] for r in records}
    return {"losses": {r["step"]: r["loss"] for r in records}, "chosen": records[0]["logps_chosen"],
            "rejected": records[0]["logps_rejected"], "rate": throughput(times, args.warmup, steps, args.batch_size),
            "wall": wall}


def trl_dataset(model_dir: Path, data: Path, args):
    """The pairs as text, in rlhfkit's first-epoch order, and rlhfkit's token ids of them (to check TRL's)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from rlhfkit.data import load_preferences
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.prefix import group_cost, tree_support
    from rlhfkit.train.dpo import tokenize_pairs

    tokenizer = load_tokenizer(str(model_dir))
    pairs = load_preferences(data)
    # rlhfkit's first two batches (same step-0/1 losses), then TRL's usual random order
    examples = tokenize_pairs(tokenizer, pairs, args.max_length, "x")
    share = tree_support(AutoModelForCausalLM.from_pretrained(model_dir))  # as run_dpo decides
    lengths = [group_cost([e.first.input_ids, e.second.input_ids], share) for e in examples]
    order = peer_order(lengths, args.batch_size, args.seed)
    ordered = [pairs[i] for i in order]
    ids = [(e.first.input_ids, e.second.input_ids) for e in tokenize_pairs(tokenizer, ordered, args.max_length, "x")]
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in ordered], "chosen": [p.chosen for p in ordered],
                                 "rejected": [p.rejected for p in ordered]})
    return tokenizer, dataset, ids


def run_trl(model_dir: Path, data: Path, output: Path, args, precompute: bool) -> dict:
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    started = time.perf_counter()
    tokenizer, dataset, rlhfkit_ids = trl_dataset(model_dir, data, args)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    clock = TrainerClock()
    steps = args.warmup + args.steps
    config = TRLDPOConfig(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=args.beta,
        loss_type=["sigmoid"], max_length=args.max_length, precompute_ref_log_probs=precompute,
        disable_dropout=True, gradient_checkpointing=False, bf16=False, fp16=False,
        use_cpu=args.device == "cpu", train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[clock])
    trl_ids = [(p + c, p + r) for p, c, r in zip(trainer.train_dataset["prompt_ids"],
                                                   trainer.train_dataset["chosen_ids"],
                                                   trainer.train_dataset["rejected_ids"], strict=True)]
    if trl_ids != rlhfkit_ids:
        raise SystemExit("TRL tokenized the pairs differently from rlhfkit: the comparison would not be fair")
    trainer.train()
    wall = time.perf_counter() - started
    return {"losses": {step: logs["loss"] for step, logs in clock.logs.items()},
            "chosen": clock.logs[1]["logps/chosen"], "rejected": clock.logs[1]["logps/rejected"],
            "rate": throughput(clock.times, args.warmup, steps, args.batch_size), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=320, help="long enough that nothing is truncated")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    import trl

    from rlhfkit.demo.example import write_example
    from rlhfkit.models.tiny import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    files = write_example(folder / "data")
    model_dir = write_tiny_model(files["corpus"], folder / "model", arch="llama", layers=args.layers,
                                 width=args.width, heads=4, vocab_size=1024)
    data = folder / "pairs.jsonl"
    write_pairs(data, (args.warmup + args.steps) * args.batch_size, args.seed)  # one epoch: each pair once

    ours = run_rlhfkit(model_dir, data, folder / "rlhfkit", args)
    trl_default = run_trl(model_dir, data, folder / "trl", args, precompute=False)
    trl_cached = run_trl(model_dir, data, folder / "trl-precompute", args, precompute=True)

    print()
    print(f"DPO (sigmoid, beta {args.beta}), tiny llama ({args.layers} layers, width {args.width}, vocab 1024), "
          f"{args.device}" + (f" x{args.threads} threads" if args.device == "cpu" else "")
          + f", {args.batch_size} pairs/step, max length {args.max_length}, {args.steps} timed steps after "
          f"{args.warmup} warm-up")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    print(f"step-0 loss          rlhfkit {ours['losses'][1]:.6f}   TRL {trl_default['losses'][1]:.6f}   "
          f"|diff| {abs(ours['losses'][1] - trl_default['losses'][1]):.2e}")
    print(f"step-0 logp chosen   rlhfkit {ours['chosen']:.4f}   TRL {trl_default['chosen']:.4f}   "
          f"|diff| {abs(ours['chosen'] - trl_default['chosen']):.2e}")
    print(f"step-0 logp rejected rlhfkit {ours['rejected']:.4f}   TRL {trl_default['rejected']:.4f}   "
          f"|diff| {abs(ours['rejected'] - trl_default['rejected']):.2e}")
    print(f"step-1 loss          rlhfkit {ours['losses'][2]:.6f}   TRL {trl_default['losses'][2]:.6f}   "
          f"|diff| {abs(ours['losses'][2] - trl_default['losses'][2]):.2e}  (after one identical update)")
    last = args.warmup + args.steps
    print(f"last-step loss       rlhfkit {ours['losses'][last]:.6f}   TRL {trl_default['losses'][last]:.6f}   "
          "(different batches after step 0)")
    print(f"rlhfkit run_dpo (precomputed ref) : {ours['rate']:8.2f} pairs/s   whole run {ours['wall']:6.1f} s")
    print(f"TRL DPOTrainer, default           : {trl_default['rate']:8.2f} pairs/s   whole run "
          f"{trl_default['wall']:6.1f} s")
    print(f"TRL DPOTrainer, precompute ref    : {trl_cached['rate']:8.2f} pairs/s   whole run "
          f"{trl_cached['wall']:6.1f} s")
    print(f"ratio rlhfkit / TRL default       : {ours['rate'] / trl_default['rate']:8.2f}x  "
          f"(whole run {trl_default['wall'] / ours['wall']:.2f}x)")
    print(f"ratio rlhfkit / TRL precompute    : {ours['rate'] / trl_cached['rate']:8.2f}x  "
          f"(whole run {trl_cached['wall'] / ours['wall']:.2f}x)")


if __name__ == "__main__":
    main()
