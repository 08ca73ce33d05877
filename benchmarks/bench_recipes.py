"""The GRPO family's recipes against TRL: the step-0 loss on one rollout, and training throughput.

Run by hand (never part of the test suite), with the ``bench`` extra (TRL)::

    pip install -e ".[bench]"
    python benchmarks/bench_recipes.py [--steps 6 --warmup 2 --only dapo --only gspo --skip-throughput]

For each recipe TRL also has, rlhfkit's ``--recipe`` against the ``GRPOConfig`` that TRL documents for it:

- ``dapo``: TRL ``loss_type="dapo"``, ε 0.2 / ε_high 0.28, β 0 (DAPO's dynamic sampling and overlong
  penalty are rlhfkit's extras; TRL has neither in its loss, so they are off for the loss check).
- ``dr_grpo``: TRL ``loss_type="dr_grpo"``, ``scale_rewards="none"``, β 0.05 on both sides.
- ``gspo``: TRL ``importance_sampling_level="sequence"``, ``loss_type="grpo"``, ε 3e-4 / ε_high 4e-4, β 0.
- ``cispo``: TRL ``loss_type="cispo"`` with its weight cap ``epsilon_high=5`` (rlhfkit's 1 + 4), β 0.05.

**Loss.** One rollout is sampled once (rlhfkit's sampler; prompts cut to one token length so that no
side's position ids differ, EOS suppressed so answers are full length), scored by a reward that varies
between answers (distinct characters), and given rlhfkit's advantages. The "old" and reference
log-probs are the policy's own shifted by seeded noise (the same on both sides), so that the ratios
spread around 1 and the clipping, the weight caps and the KL term all take part. Both trainers then
compute the loss of that same batch from the same weights: rlhfkit's ``ppo_update.minibatch_loss`` and
TRL's ``GRPOTrainer._compute_loss`` (its inputs built from the rollout: prompt and completion ids and
masks, the advantages, the old and reference log-probs). The two must agree within 1e-4.

**Throughput.** Answers per second of ``run_ppo --recipe R`` against TRL's ``GRPOTrainer`` with the
matching config, the same setup as ``bench_rl.py`` (whose helpers this reuses): one rollout per
optimizer step, the whole rollout in one micro-batch, the same prompts per step, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_rl  # noqa: E402  (the shared set-up: tiny model, prompts, reward, throughput clock)

RECIPES = ("dapo", "dr_grpo", "gspo", "cispo")


def varied_reward(prompts, completions, **kwargs) -> list[float]:
    """Distinct characters of the answer over 10: different for almost every answer of a random model."""
    return [len(set(c)) / 10 for c in completions]


def trl_settings(recipe: str, beta: float) -> dict:
    """The ``GRPOConfig`` fields TRL's documentation gives for each recipe. TRL multiplies the KL term by
    the importance ratio by default (``use_bias_correction_kl``, after DeepSeek-V3.2); rlhfkit's KL loss
    is plain k3, so that correction is off here."""
    return {"use_bias_correction_kl": False, **{
        "dapo": dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, scale_rewards="group"),
        "dr_grpo": dict(loss_type="dr_grpo", epsilon=0.2, beta=beta, scale_rewards="none"),
        "gspo": dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4,
                     beta=0.0, scale_rewards="group"),
        "cispo": dict(loss_type="cispo", epsilon_high=5.0, beta=beta, scale_rewards="group"),
    }[recipe]}


def rlhfkit_config(recipe: str, model_dir: Path, prompts_file: Path, output: Path, args, **overrides):
    from rlhfkit.config import PPOConfig

    answers = args.prompts_per_step * args.group_size
    settings = dict(
        policy=str(model_dir), reward=f"{Path(bench_rl.__file__).resolve()}:target_word_reward",
        prompts=str(prompts_file), output=str(output), recipe=recipe, prompts_per_step=args.prompts_per_step,
        samples_per_prompt=args.group_size, batch_size=answers, generation_batch_size=answers,
        max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0, max_length=512, learning_rate=args.lr,
        max_steps=args.warmup + args.steps, warmup_ratio=0, weight_decay=0.0, max_grad_norm=1.0, reward_clip=0,
        eval_split=0, save_every=0, log_every=1, sample_every=0, device="cpu", dtype="float32", seed=args.seed,
        kl_estimator="k3")
    settings.update(overrides)
    config = PPOConfig(**settings)
    if recipe in ("dr_grpo", "cispo"):  # the recipes that keep the KL: the same β on both sides
        config.beta = args.beta
    config.ppo_epochs, config.num_minibatches = 1, 1  # as TRL here: one update per rollout, on one batch
    config.dynamic_sampling, config.overlong_buffer = False, 0.0  # not in TRL's loss (see the docstring)
    return config


def rlhfkit_step0(recipe: str, model_dir: Path, prompts: list[str], folder: Path, args):
    """rlhfkit's step-0 loss on one sampled rollout, and that rollout (ids, masks, advantages, ref log-probs)."""
    from rlhfkit.data.chat import encode_prompt
    from rlhfkit.train.ppo import PPOTrainer
    from rlhfkit.train.ppo_experience import make_experience
    from rlhfkit.train.ppo_sampling import generate_rollout
    from rlhfkit.train.ppo_update import minibatch_loss

    prompts_file = folder / "prompts.jsonl"
    config = rlhfkit_config(recipe, model_dir, prompts_file, folder / f"loss_{recipe}", args,
                            reward=f"{Path(__file__).resolve()}:varied_reward")
    trainer = PPOTrainer(config)
    chosen = prompts[: args.prompts_per_step]
    encoded = [encode_prompt(trainer.tokenizer, p) for p in chosen]
    width = min(map(len, encoded))
    ids = [e[-width:] for e in encoded]  # one prompt length: no left padding on either side
    torch.manual_seed(args.seed)
    rollout = generate_rollout(trainer.sampler, trainer.tokenizer, chosen, ids, args.group_size, config,
                               trainer.accelerator.device)
    scores, raw = trainer.score(rollout)
    experience, _ = make_experience(trainer.models, rollout, scores, raw, config, config.beta, args.group_size)
    with torch.no_grad():
        current = trainer.models.policy_logprobs(rollout)[0]
    noise = torch.Generator().manual_seed(args.seed)
    experience.old_logprobs = (current + 0.3 * torch.randn(current.shape, generator=noise)) * rollout.mask
    experience.ref_logprobs = (current + 0.3 * torch.randn(current.shape, generator=noise)) * rollout.mask
    everything = list(range(len(rollout)))
    loss, _ = minibatch_loss(trainer.models, experience, everything, rollout.mask.sum(), len(rollout), config,
                             config.beta)
    return loss.item(), rollout, experience, config


def trl_step0(recipe: str, model_dir: Path, prompts: list[str], folder: Path, args, rollout, experience) -> float:
    """TRL's ``_compute_loss`` on the same rollout and advantages, from the same initial weights."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(str(model_dir), tokenizer)
    answers = len(rollout)
    config = GRPOConfig(
        output_dir=str(folder / f"trl_loss_{recipe}"), per_device_train_batch_size=answers,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, temperature=1.0, learning_rate=args.lr, use_cpu=True,
        bf16=False, fp16=False, report_to="none", disable_tqdm=True, save_strategy="no", seed=args.seed,
        **trl_settings(recipe, args.beta))
    trainer = GRPOTrainer(model=model, reward_funcs=bench_rl.target_word_reward, args=config,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer)
    trainer.model.train()
    inputs = {"prompt_ids": rollout.query, "prompt_mask": rollout.query_mask, "completion_ids": rollout.response,
              "completion_mask": rollout.mask.long(), "advantages": experience.advantages[:, 0],
              "old_per_token_logps": experience.old_logprobs, "ref_per_token_logps": experience.ref_logprobs,
              "num_items_in_batch": rollout.mask.sum()}
    trainer.current_gradient_accumulation_steps = 1
    return trainer._compute_loss(trainer.model, inputs).item()


def run_rlhfkit_recipe(recipe: str, model_dir: Path, prompts_file: Path, output: Path, args) -> float:
    from rlhfkit.train.ppo import run_ppo

    run_ppo(rlhfkit_config(recipe, model_dir, prompts_file, output, args))
    records = [r for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines()) if "score" in r]
    return bench_rl.throughput({r["step"]: r["seconds"] for r in records}, args.warmup, args.warmup + args.steps,
                               args.prompts_per_step * args.group_size)


def run_trl_recipe(recipe: str, model_dir: Path, prompts: list[str], output: Path, args) -> float:
    """TRL's throughput with the recipe's settings (``bench_rl.run_trl``'s set-up)."""
    return bench_rl.run_trl("grpo", model_dir, prompts, output, args, trl_settings(recipe, args.beta))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=RECIPES, action="append")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    args.micro_batch = args.prompts_per_step * args.group_size
    args.prompt_words = (8, 16)
    torch.set_num_threads(args.threads)

    from rlhfkit.models.tiny import write_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="bench_recipes_"))
    corpus = bench_rl.write_corpus(folder / "corpus.txt", 2000, args.seed)
    model_dir = write_tiny_model(corpus, folder / "model", arch="llama", layers=4, width=256, heads=4,
                                 vocab_size=1024)
    bench_rl.suppress_eos(model_dir)
    prompts = bench_rl.make_prompts((args.warmup + args.steps) * args.prompts_per_step, args.seed)
    prompts_file = folder / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    rows = []
    for recipe in args.only or RECIPES:
        ours, rollout, experience, config = rlhfkit_step0(recipe, model_dir, prompts, folder, args)
        peer = trl_step0(recipe, model_dir, prompts, folder, args, rollout, experience)
        rates = None
        if not args.skip_throughput:
            rates = (run_rlhfkit_recipe(recipe, model_dir, prompts_file, folder / f"rlhfkit_{recipe}", args),
                     run_trl_recipe(recipe, model_dir, prompts, folder / f"trl_{recipe}", args))
        knobs = {k: getattr(config, k) for k in ("policy_loss", "loss_aggregation", "advantage_scale", "clip_range",
                                                 "clip_range_high", "beta")}
        rows.append((recipe, ours, peer, rates, knobs))

    print()
    print(f"tiny llama (4 layers, width 256), fp32, CPU x{args.threads}; {args.prompts_per_step} prompts x "
          f"K={args.group_size}, {args.max_new_tokens} tokens per answer")
    for recipe, ours, peer, rates, knobs in rows:
        verdict = "ok" if abs(ours - peer) <= 1e-4 else "MISMATCH"
        print(f"  {recipe:8s} step-0 loss rlhfkit {ours:+.7f}  TRL {peer:+.7f}  |diff| {abs(ours - peer):.1e}  "
              f"{verdict}   ({', '.join(f'{k}={v}' for k, v in knobs.items())})")
        if rates:
            print(f"  {recipe:8s} throughput rlhfkit {rates[0]:7.2f}  TRL {rates[1]:7.2f} answers/s  "
                  f"ratio {rates[0] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
