"""RL training and rollout throughput: rlhfkit's ``run_ppo`` (GRPO, RLOO) against TRL's ``GRPOTrainer`` and
``RLOOTrainer``, and rlhfkit's rollout sampler against a bare ``model.generate`` loop.

Run by hand (never part of the test suite), after installing the ``bench`` extra, which pulls in TRL::

    pip install -e ".[bench]"
    python benchmarks/bench_rl.py [--steps 12 --warmup 3 --group-size 8 --prompts-per-step 4 --max-new-tokens 32]
    python benchmarks/bench_rl.py --only grpo --repeats 3 --threads 2   # one part, repeated, two threads

Measured with torch 2.13.0 (CPU), transformers 5.23.0, trl 1.16.0, accelerate 1.15.0, datasets 5.2.0.

Every part uses the same tiny Llama (rlhfkit's factory, 4 layers, width 256, vocabulary 1024, random
weights, tokenizer trained on a corpus written here), fp32, on the CPU, with ``--threads`` threads.

**Training (GRPO, then RLOO).** Both sides get the same prompts in the same order (TRL's dataset is put in
the order of rlhfkit's first epoch and not shuffled, so step i sees the same prompts on both sides), the
same group size K (answers per prompt), prompts per step, answer length (``max_new_tokens`` =
``max_completion_length``), sampling (temperature 1, top-p 1, no top-k, KV cache, the whole rollout in
one ``generate`` call), β, clipping ε = 0.2, learning rate (constant, no warmup), fused AdamW without
weight decay (TRL's default ``optim="adamw_torch_fused"``, rlhfkit's ``make_optimizer``), gradient clipping at 1.0, the
same micro-batch size for every forward pass (``--micro-batch``: rlhfkit's ``batch_size``, TRL's
``per_device_train_batch_size``), and the same rule-based reward function (occurrences of one target
word in the answer). One rollout batch feeds exactly one optimizer step: rlhfkit ``ppo_epochs=1,
num_minibatches=1``; TRL ``num_iterations=1`` and ``steps_per_generation = gradient_accumulation_steps
= K x prompts / micro-batch``. Both keep a frozen copy of the initial policy as the reference and log
every step.

- GRPO: both put β·k3(π, π_ref) per token in the loss (rlhfkit ``kl_penalty="loss"``), take a token mean
  over the rollout (TRL ``loss_type="dapo"``) and scale advantages by the group's std. With a single
  on-policy update per rollout, both skip the separate no-grad "old log-probs" pass (the ratio is taken
  against the detached log-probs of the update's own forward). Per step, both run generate + reference
  pass + one forward/backward.
- RLOO: TRL's RLOO puts β·KL in the reward only, as the k1 estimate summed over the answer, which is
  what rlhfkit's ``kl_penalty="reward", kl_estimator="k1"`` does for ``estimator="rloo"``. TRL runs a
  separate pass for the old log-probs; rlhfkit, with one update on one micro-batch, runs the update's
  forward before the rewards and takes the old log-probs from it (the same numbers: the policy has
  not moved), so it runs one pass fewer. TRL's RLOO loss takes the
  ratio of whole sequences (summed log-probs) and averages per answer; rlhfkit clips per token and
  takes a token mean (a few element-wise operations; no extra pass). TRL's advantages are not
  normalised over the batch (``normalize_advantages=False``, its default; nor are rlhfkit's RLOO advantages).

Not counted against TRL: rlhfkit's default reward clipping (±10) is off (``reward_clip=0``), and the
TRL defaults that differ from rlhfkit's are switched off: ``gradient_checkpointing=True``,
``bf16=True`` and a linear learning-rate schedule.

Training throughput counts answers (completions) per second over the optimizer steps after the first
``--warmup`` steps, from each trainer's own per-step clock (rlhfkit's ``metrics.jsonl`` seconds, a TRL
callback at ``on_step_end``). EOS is suppressed on both sides (``suppress_tokens`` in the model folder's
generation config, which rlhfkit's sampler uses, and in TRL's ``generation_kwargs``), so every answer is
exactly ``max_new_tokens`` long and both sides push the same number of tokens through every pass; the
mean answer lengths are printed next to the rates as a check.

**Rollout.** rlhfkit's ``sample_responses`` (K answers per prompt, batched, prompts pre-encoded) against
the ceiling of HF generation: ``model.generate`` called on the same batches (same jobs, same order:
sorted by prompt length as rlhfkit sorts them, left-padded to the same tensors, built before the clock
starts), the same batch size, ``max_new_tokens``, sampling and KV cache, with nothing else inside the
clock (no cutting at EOS, no decoding). EOS is suppressed on both sides so every answer has exactly
``max_new_tokens`` tokens. Rates are answer tokens per second, the median of ``--rollout-repeats``
alternating runs.

Where rlhfkit's speed comes from: with K answers per prompt each prompt is read once, in sampling (the
prompt's key/value cache repeated per answer, in buffers written in place) and in the policy and
reference passes (the prompts' cache continued by their answers, or one row per prompt:
``models/prefix.py``); the tokens are drawn by rlhfkit's own decode loop (``rollout/generate.py``: the
attention mask built once, one random number per answer and token, the first token from the prompts'
pass).

Measured on 2026-11-22/23, 1 thread, ``--repeats 5`` (medians; ``--repeats 3`` for the long prompts), on
a shared 2-core machine whose speed drifted by ~20% over the day (only ratios from one run compare):

- Default prompts (8-16 words, about 18 tokens): GRPO 1.46x, 1.51x, 1.41x, 1.37x and 1.36x TRL (five
  runs); RLOO 1.57x, 1.63x and 1.58x; sampling 1.35x, 1.25x, 1.14x and 1.32x the generate loop.
- ``--prompt-words 48 96``, as long as real RLHF prompts (HH-RLHF's test prompts have a median of
  63-149 words): GRPO 2.63x, RLOO 2.95x (TRL 7.9 and 6.8 answers/s against 20.8 and 20.1).

Earlier, with the prompts shared as tree rows and sampled by ``generate``: GRPO 1.38x, RLOO 1.48x,
sampling 1.23x; before any sharing: 0.99x, 0.71-1.03x and 0.80-0.96x. Where a GRPO step with the
default prompts goes (32 answers of 32 tokens, one thread): about 0.4 s sampling, 0.15 s for the
reference pass and 0.45 s for the update's forward and backward, three quarters of it in matrix
products. TRL runs each prompt K times in every pass, which costs it little when prompts are short
next to the answers and a lot when they are long: with the default prompts its passes cover 1.5x our
token positions (32 x 50 against 4 x 18 + 32 x 31) and its sampling runs the same 32 decode steps
over the same 32 rows, so with every pass bound by its matrix products the ratio on this shape
cannot much exceed a mean of 1.5x (passes) and the sampling ratio (1.1-1.35x). ``torch.compile`` on the decode step (static
cache) gave nothing on this CPU: 0.401 s against 0.397 s eager for 32 decode steps.

Threads default to 1: on a machine shared with other jobs, intra-op threads wait on each other whenever
one of their cores is taken, and steps then take several times (up to ~15x) longer, at random: on a
2-core machine next to other jobs, ``--threads 2`` gave ratios anywhere from 0.3x to 1.1x for the same
code. On a quiet machine pass ``--threads 2`` (or more). ``--repeats`` alternates the sides and reports
the median.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peers import sentence

TARGET = "river"


def target_word_reward(prompts, completions, **kwargs) -> list[float]:
    """The rule-based reward both trainers use: how often the target word occurs in the answer."""
    return [float(str(text).lower().split().count(TARGET)) for text in completions]



def write_corpus(path: Path, lines: int, seed: int) -> Path:
    """The tokenizer's training text: short sentences over the benchmark's word list."""
    rng = random.Random(seed)
    path.write_text("\n".join(sentence(rng, 5, 25).capitalize() + rng.choice([".", "?", "!"])
                              for _ in range(lines)) + "\n")
    return path


def make_prompts(count: int, seed: int, words: tuple[int, int] = (8, 16)) -> list[str]:
    """Plain-string prompts of ``words`` (low, high) random words and a frame of three (both trainers
    tokenize plain strings the same way)."""
    rng = random.Random(seed)
    return [f"Question: {sentence(rng, *words)}?\nAnswer:" for _ in range(count)]


def throughput(step_times: dict[int, float], warmup: int, last: int, per_step: int) -> float:
    """Items per second between the end of step ``warmup`` and the end of step ``last`` (1-based)."""
    return (last - warmup) * per_step / (step_times[last] - step_times[warmup])


def suppress_eos(model_dir: Path) -> None:
    """Write ``suppress_tokens: [EOS]`` into the model folder's generation config: answers never end early."""
    from rlhfkit.models import load_tokenizer

    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text())
    config["suppress_tokens"] = [load_tokenizer(str(model_dir)).eos_token_id]
    path.write_text(json.dumps(config, indent=2))


# ---------------------------------------------------------------------------------------------------
# Training


def run_rlhfkit(estimator: str, model_dir: Path, prompts_file: Path, output: Path, args) -> tuple[float, float]:
    """(answers per second, mean answer length) of rlhfkit's ``run_ppo``."""
    from rlhfkit.config import PPOConfig
    from rlhfkit.train.ppo import run_ppo

    steps = args.warmup + args.steps
    kl = dict(kl_penalty="loss", kl_estimator="k3") if estimator == "grpo" else dict(kl_penalty="reward",
                                                                                      kl_estimator="k1")
    run_ppo(PPOConfig(
        policy=str(model_dir), reward=f"{Path(__file__).resolve()}:target_word_reward", prompts=str(prompts_file),
        output=str(output), estimator=estimator, beta=args.beta, **kl, prompts_per_step=args.prompts_per_step,
        samples_per_prompt=args.group_size, ppo_epochs=1, num_minibatches=1, batch_size=args.micro_batch,
        generation_batch_size=args.prompts_per_step * args.group_size, max_new_tokens=args.max_new_tokens,
        temperature=1.0, top_p=1.0, max_length=512, learning_rate=args.lr, max_steps=steps, warmup_ratio=0,
        weight_decay=0.0, max_grad_norm=1.0, clip_range=0.2, reward_clip=0, whiten_rewards=False,
        eval_split=0, save_every=0, log_every=1, sample_every=0, device="cpu", dtype="float32", seed=args.seed,
    ))
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "score" in r]
    times = {r["step"]: r["seconds"] for r in records}
    lengths = [r["response_length"] for r in records]
    answers = args.prompts_per_step * args.group_size
    return throughput(times, args.warmup, steps, answers), statistics.mean(lengths)


def run_trl(estimator: str, model_dir: Path, prompts: list[str], output: Path, args,
            grpo_settings: dict | None = None) -> tuple[float, float]:
    """(answers per second, mean answer length) of TRL's ``GRPOTrainer`` or ``RLOOTrainer``;
    ``grpo_settings`` replace the GRPO loss settings (bench_recipes.py)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.train.batches import epoch_order

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer)
    order = epoch_order(len(prompts), args.seed, 0)  # rlhfkit's first-epoch order: same prompts per step
    dataset = Dataset.from_dict({"prompt": [prompts[i] for i in order]})

    class Clock(TrainerCallback):
        def __init__(self):
            self.started = 0.0
            self.times: dict[int, float] = {}
            self.lengths: list[float] = []

        def on_train_begin(self, _args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            self.times[state.global_step] = time.perf_counter() - self.started

        def on_log(self, _args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    clock = Clock()
    steps = args.warmup + args.steps
    answers = args.prompts_per_step * args.group_size
    accumulation = answers // args.micro_batch
    common = dict(
        output_dir=str(output), max_steps=steps, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=accumulation, steps_per_generation=accumulation, num_iterations=1,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
        top_k=0, beta=args.beta, epsilon=0.2, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch_fused", weight_decay=0.0, max_grad_norm=1.0, disable_dropout=True, shuffle_dataset=False,
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=args.seed, dataloader_num_workers=0,
        generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]},
    )
    if estimator == "grpo":
        config = GRPOConfig(**{**common, **(grpo_settings or dict(loss_type="dapo", scale_rewards="group"))})
        trainer_class = GRPOTrainer
    else:
        config = RLOOConfig(**common, normalize_advantages=False)
        trainer_class = RLOOTrainer
    trainer = trainer_class(model=model, reward_funcs=target_word_reward, args=config, train_dataset=dataset,
                            processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    return throughput(clock.times, args.warmup, steps, answers), statistics.mean(clock.lengths)


# ---------------------------------------------------------------------------------------------------
# Rollout


def bench_rollout(model_dir: Path, prompts: list[str], args) -> tuple[float, float]:
    """Answer tokens per second: (rlhfkit ``sample_responses``, bare ``model.generate`` on the same batches)."""
    from rlhfkit.data.chat import encode_prompt, pad_batch
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.generate import sample_responses

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer).eval()  # its generation config suppresses EOS
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    k, size = args.group_size, args.rollout_batch
    # the peer gets exactly the batches rlhfkit builds: jobs sorted by prompt length, then cut in batch-size runs
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(k)), key=lambda job: -len(encoded[job[0]]))
    batches = []
    for start in range(0, len(jobs), size):
        ids, mask = pad_batch([encoded[i] for i, _ in jobs[start : start + size]], tokenizer.pad_token_id,
                              side="left")
        batches.append((ids, mask))
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                   use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    def ours() -> int:
        samples = sample_responses(model, tokenizer, prompts, num_samples=k, max_new_tokens=args.max_new_tokens,
                                   temperature=1.0, top_p=1.0, batch_size=size, show_progress=False,
                                   prompt_ids=encoded)
        return sum(len(s.token_ids) for per_prompt in samples for s in per_prompt)

    def peer() -> int:
        tokens = 0
        with torch.inference_mode():
            for ids, mask in batches:
                out = model.generate(input_ids=ids, attention_mask=mask, **options)
                tokens += out[:, ids.shape[1] :].numel()
        return tokens

    torch.manual_seed(args.seed)
    ours(), peer()  # warm-up (first-call allocations)
    ours_rates, peer_rates = [], []
    for _ in range(args.rollout_repeats):
        for function, rates in ((ours, ours_rates), (peer, peer_rates)):
            start = time.perf_counter()
            tokens = function()
            rates.append(tokens / (time.perf_counter() - start))
    return statistics.median(ours_rates), statistics.median(peer_rates)


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps (= rollout batches)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--group-size", type=int, default=8, help="answers per prompt (K)")
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="sequences per forward pass (0: the whole rollout, K x prompts per step)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, nargs=2, default=[8, 16], metavar=("LOW", "HIGH"),
                        help="random words per prompt (HH-RLHF test prompts: a median of 63-149 words)")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steady on a shared machine; see above)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="training runs per side, alternated; the median rate is reported")
    parser.add_argument("--rollout-prompts", type=int, default=32, help="prompts in the rollout benchmark")
    parser.add_argument("--rollout-batch", type=int, default=64, help="sequences per generate call (rollout)")
    parser.add_argument("--rollout-repeats", type=int, default=3)
    parser.add_argument("--only", choices=["grpo", "rloo", "rollout"], action="append",
                        help="run only these parts (repeatable; default: all)")
    args = parser.parse_args()
    answers = args.prompts_per_step * args.group_size
    args.micro_batch = args.micro_batch or answers
    if answers % args.micro_batch:
        parser.error("--micro-batch must divide K x --prompts-per-step")
    parts = args.only or ["grpo", "rloo", "rollout"]
    torch.set_num_threads(args.threads)

    import transformers
    import trl

    from rlhfkit.models.tiny import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    corpus = write_corpus(folder / "corpus.txt", 2000, args.seed)
    model_dir = write_tiny_model(corpus, folder / "model", arch="llama", layers=4, width=256, heads=4,
                                 vocab_size=1024)
    suppress_eos(model_dir)
    prompts = make_prompts((args.warmup + args.steps) * args.prompts_per_step, args.seed, args.prompt_words)
    prompts_file = folder / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    results = {}
    for estimator in ("grpo", "rloo"):
        if estimator in parts:
            runs = []
            for repeat in range(args.repeats):  # alternate the sides: a noisy machine hurts both alike
                ours = run_rlhfkit(estimator, model_dir, prompts_file, folder / f"rlhfkit_{estimator}_{repeat}", args)
                peer = run_trl(estimator, model_dir, prompts, folder / f"trl_{estimator}_{repeat}", args)
                runs.append((ours, peer))
            results[estimator] = runs
    if "rollout" in parts:
        rollout = bench_rollout(model_dir, make_prompts(args.rollout_prompts, args.seed + 1, args.prompt_words), args)

    print()
    print(f"tiny llama (4 layers, width 256, vocab 1024), fp32, CPU x{args.threads} threads; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
    if results:
        print(f"training: {args.prompts_per_step} prompts/step x K={args.group_size} = {answers} answers/step, "
              f"prompts of {args.prompt_words[0]}-{args.prompt_words[1]} words, "
              f"max_new_tokens {args.max_new_tokens}, micro-batch {args.micro_batch}, beta {args.beta}, "
              f"{args.steps} timed steps after {args.warmup} warm-up")
    names = {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}
    for estimator, runs in results.items():
        ours_rates, peer_rates = [o[0] for o, _ in runs], [p[0] for _, p in runs]
        ours_rate, peer_rate = statistics.median(ours_rates), statistics.median(peer_rates)
        ours_len, peer_len = statistics.mean(o[1] for o, _ in runs), statistics.mean(p[1] for _, p in runs)
        every = (lambda rates: "  runs " + ", ".join(f"{r:.2f}" for r in rates)) if len(runs) > 1 else (lambda _: "")
        tag = estimator.upper()
        print(f"  {tag}  rlhfkit run_ppo      : {ours_rate:8.2f} answers/s  (mean length {ours_len:.1f})"
              + every(ours_rates))
        print(f"  {tag}  TRL {names[estimator]:<16}: {peer_rate:8.2f} answers/s  (mean length {peer_len:.1f})"
              + every(peer_rates))
        print(f"  {tag}  ratio rlhfkit / TRL  : {ours_rate / peer_rate:8.2f}x")
    if "rollout" in parts:
        ours_rate, peer_rate = rollout
        print(f"rollout: {args.rollout_prompts} prompts x K={args.group_size}, batch {args.rollout_batch}, "
              f"{args.max_new_tokens} tokens per answer, median of {args.rollout_repeats}")
        print(f"  rlhfkit sample_responses : {ours_rate:9.1f} answer tokens/s")
        print(f"  bare model.generate loop : {peer_rate:9.1f} answer tokens/s")
        print(f"  ratio rlhfkit / generate : {ours_rate / peer_rate:9.2f}x")


if __name__ == "__main__":
    main()
